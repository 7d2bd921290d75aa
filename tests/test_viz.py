"""clrp.viz: colour limits, colormaps, overlays, export."""
import io
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from clrp import viz


def test_no_streamlit_import():
    import subprocess

    code = "import sys, clrp.viz; assert 'streamlit' not in sys.modules, 'viz imported streamlit'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_channel_sum_shapes():
    t = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    m = viz.channel_sum(t)
    assert m.shape == (3, 4) and m.dtype == np.float32
    np.testing.assert_allclose(m, t[0].sum(0).numpy())
    assert viz.channel_sum(t[0]).shape == (3, 4)
    assert viz.channel_sum(np.ones((5, 6))).shape == (5, 6)
    with pytest.raises(ValueError):
        viz.channel_sum(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError):
        viz.channel_sum(np.zeros(5))


def test_limits_shared_vs_per_map_and_signed():
    a = np.array([[0.0, 1.0], [0.5, 0.25]])
    b = np.array([[0.0, 4.0], [0.5, 0.25]])
    shared = viz.color_limits([a, b], scale="shared")
    assert [l.as_tuple() for l in shared] == [(0.0, 4.0), (0.0, 4.0)]
    per = viz.color_limits([a, b], scale="per_map")
    assert [l.as_tuple() for l in per] == [(0.0, 1.0), (0.0, 4.0)]
    s = np.array([[-3.0, 1.0], [0.0, 2.0]])
    lim = viz.color_limits([s], scale="per_map")[0]
    assert lim.as_tuple() == (-3.0, 3.0)  # symmetric around 0
    # a diverging colormap forces symmetric limits even for non-negative maps
    assert viz.color_limits([a], cmap="bwr")[0].as_tuple() == (-1.0, 1.0)
    # all-zero map: finite, non-degenerate limits
    assert viz.color_limits([np.zeros((2, 2))])[0].as_tuple() == (0.0, 1.0)
    with pytest.raises(ValueError):
        viz.color_limits([a], scale="global")


def test_clip_percentile_robust_to_outlier():
    a = np.ones((10, 10))
    a[0, 0] = 1000
    assert viz.color_limits([a], clip=100)[0].vmax == 1000
    assert viz.color_limits([a], clip=95)[0].vmax == pytest.approx(1.0)


def test_colorize_diverging_zero_is_centre():
    a = np.array([[-1.0, 0.0, 1.0]])
    rgb = viz.colorize(a, "bwr", -1, 1)
    assert rgb.shape == (1, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (0, 0, 255)       # blue for negative
    assert tuple(rgb[0, 2]) == (255, 0, 0)       # red for positive
    assert rgb[0, 1].min() >= 250                # white-ish at zero
    # saturates outside the limits
    assert tuple(viz.colorize(np.array([[5.0]]), "bwr", -1, 1)[0, 0]) == (255, 0, 0)
    # NaN drawn black
    assert tuple(viz.colorize(np.array([[np.nan, 1.0]]), "hot", 0, 1)[0, 0]) == (0, 0, 0)
    with pytest.raises(ValueError):
        viz.colorize(a, "no_such_colormap")


def test_default_colormap():
    assert viz.default_colormap([np.array([[0.0, 1.0]])]) == "hot"
    assert viz.default_colormap([np.array([[-0.1, 1.0]])]) == "bwr"
    assert viz.colormap_kind("seismic") == "diverging" and viz.colormap_kind("inferno") == "sequential"


def test_overlay_opacity_endpoints():
    img = np.full((4, 4, 3), 100, np.uint8)
    a = np.full((4, 4), 1.0)
    assert np.array_equal(viz.overlay(img, a, "hot", 0, 1, opacity=0.0), img)
    assert np.array_equal(viz.overlay(img, a, "hot", 0, 1, opacity=1.0), viz.colorize(a, "hot", 0, 1))
    half = viz.overlay(img, a, "hot", 0, 1, opacity=0.5).astype(int)
    expected = (img.astype(float) * 0.5 + viz.colorize(a, "hot", 0, 1) * 0.5).round().astype(int)
    assert np.abs(half - expected).max() <= 1
    # image of a different size is resized to the map
    big = np.zeros((8, 8, 3), np.uint8)
    assert viz.overlay(big, a, opacity=0.3).shape == (4, 4, 3)
    with pytest.raises(ValueError):
        viz.overlay(img, a, opacity=1.5)


def test_png_and_npy_roundtrip():
    rgb = viz.colorize(np.random.default_rng(0).normal(size=(16, 20)), "bwr")
    png = viz.to_png(rgb)
    back = np.asarray(Image.open(io.BytesIO(png)))
    assert np.array_equal(back, rgb)
    assert Image.open(io.BytesIO(viz.to_png(rgb, scale=2))).size == (40, 32)
    t = torch.randn(1, 3, 5, 5)
    arr = np.load(io.BytesIO(viz.npy_bytes(t)), allow_pickle=False)
    assert arr.shape == (1, 3, 5, 5) and np.allclose(arr, t.numpy())
    with pytest.raises(ValueError):
        viz.to_png(np.zeros((2, 2, 3), np.float32))


def test_colorbar_and_grid_png():
    cb = Image.open(io.BytesIO(viz.colorbar_png("bwr", -2, 2)))
    assert cb.size[0] > 100 and cb.format == "PNG"
    tiles = [np.zeros((10, 10, 3), np.uint8)] * 5
    grid = Image.open(io.BytesIO(viz.render_grid_png(tiles, ["a", "b", "c", "d", "e"], columns=3)))
    assert grid.size[0] >= 30 and grid.size[1] >= 20


def test_plotly_colorscale_matches_the_png_colours():
    """The evaluation charts' scale has the colours the maps get at their limits and centre."""
    scale = viz.plotly_colorscale("bwr", n=3)
    assert [p for p, _ in scale] == [0.0, 0.5, 1.0]
    ends = viz.colorize(np.array([[-1.0, 0.0, 1.0]]), "bwr", -1, 1)[0]
    assert [c for _, c in scale] == [f"rgb({r},{g},{b})" for r, g, b in ends]


def test_settings_json():
    s = json.loads(viz.settings_json({"a": (1, 2), "b": np.float32(0.5), "c": {3, 1}}))
    assert s == {"a": [1, 2], "b": 0.5, "c": [1, 3]}


def test_limits_are_shared_only_within_a_kind_and_zero_maps_stay_zero():
    """Issue 11 item 2: gradients (~0.5) must not set LRP's (~0.01) scale; SGLRP at 1e-9 is zero."""
    lrp, clrp, grad = np.full((4, 4), 0.01), np.full((4, 4), -0.02), np.full((4, 4), 0.5)
    zero = np.full((4, 4), 1e-9)
    lims = viz.color_limits([lrp, clrp, grad, zero], cmap="bwr",
                            groups=["relevance", "relevance", "sensitivity", "softmax relevance"])
    assert lims[0].as_tuple() == lims[1].as_tuple() == (-0.02, 0.02)
    assert lims[2].as_tuple() == (-0.5, 0.5)
    assert viz.is_zero(zero) and not viz.is_zero(lrp)
    rgb = viz.colorize(zero, "bwr", *lims[3].as_tuple())
    white = viz.colorize(np.zeros((1, 1)), "bwr", -1, 1)[0, 0]
    assert np.abs(rgb.astype(int) - white.astype(int)).max() <= 1  # drawn as zero, not stretched
    # without kinds (the old behaviour) the gradient flattens LRP to near white: the defect
    one = viz.color_limits([lrp, grad], cmap="bwr")
    assert one[0].as_tuple() == (-0.5, 0.5)


def test_grid_png_has_a_colour_bar_per_scale():
    tiles = [np.full((20, 20, 3), 200, np.uint8)] * 4
    plain = Image.open(io.BytesIO(viz.render_grid_png(tiles, list("abcd"), columns=4)))
    with_bars = Image.open(io.BytesIO(viz.render_grid_png(
        tiles, list("abcd"), columns=4, colorbars=[("relevance", "bwr", -0.02, 0.02), ("sensitivity", "bwr", -1, 1)])))
    assert with_bars.size[0] >= plain.size[0] and with_bars.size[1] > plain.size[1]
    extra = np.asarray(with_bars.convert("RGB"))[plain.size[1]:]
    red = ((extra[..., 0] > 150) & (extra[..., 2] < 80)).sum()
    blue = ((extra[..., 2] > 150) & (extra[..., 0] < 80)).sum()
    assert red > 20 and blue > 20  # the bars' colours are below the grid


def _decode_overlay(data, i, cmap, opacity, scale="shared"):
    """The browser grid's recipe (dashboard/static/map_grid.js), in NumPy."""
    import base64

    h, w = data["height"], data["width"]
    v = np.frombuffer(base64.b64decode(data["maps"][i]["values"]), "<f4").reshape(h, w)
    vmin, vmax = data["limits"][scale][data["colormaps"][cmap]["kind"]][i]
    lut = np.frombuffer(base64.b64decode(data["colormaps"][cmap]["lut"]), np.uint8).reshape(-1, 3)
    t = np.clip((v.astype(np.float64) - vmin) / (vmax - vmin), 0, 1)
    heat = lut[np.floor(t * 255 + 0.5).astype(int)].astype(np.float64)
    img = np.frombuffer(base64.b64decode(data["image"]), np.uint8).reshape(h, w, 3).astype(np.float64)
    return np.floor((1 - opacity) * img + opacity * heat + 0.5).astype(np.uint8)


def test_map_grid_data_lets_a_browser_redraw_every_display_choice():
    rng = np.random.default_rng(0)
    maps = [rng.normal(size=(3, 12, 10)).astype(np.float32) * s for s in (0.01, 0.02, 0.5)]
    maps.append(np.abs(rng.normal(size=(12, 10))).astype(np.float32))  # non-negative
    kinds = ["relevance", "relevance", "sensitivity", "cam"]
    image = rng.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)  # resized to the maps
    data = json.loads(json.dumps(viz.map_grid_data(maps, list("abcd"), image, groups=kinds, clip=99.0, columns=3)))
    assert (data["width"], data["height"], data["columns"]) == (10, 12, 3)
    flat = [viz.channel_sum(m) for m in maps]
    for scale in ("shared", "per_map"):
        for cmap in ("bwr", "hot"):
            kind = viz.colormap_kind(cmap)
            expect = [list(lim.as_tuple()) for lim in viz.color_limits(flat, scale=scale, cmap=cmap, clip=99.0,
                                                                      groups=kinds)]
            assert data["limits"][scale][kind] == expect
    # non-negative maps: symmetric under a diverging colormap, [0, m] under a sequential one
    pos = viz.map_grid_data([flat[3]], ["d"])["limits"]["per_map"]
    assert pos["diverging"][0][0] < 0 == pos["sequential"][0][0]
    # the recipe reproduces viz.overlay (off by one at most: rounding of float32 vs float64)
    small = viz._resize_rgb(image, 12, 10)
    for i, cmap, opacity in ((0, "bwr", 0.7), (2, "seismic", 0.3), (3, "hot", 1.0), (1, "viridis", 0.0)):
        lim = data["limits"]["shared"][viz.colormap_kind(cmap)][i]
        ref = viz.overlay(small, flat[i], cmap, *lim, opacity).astype(int)
        assert np.abs(_decode_overlay(data, i, cmap, opacity).astype(int) - ref).max() <= 1
    # a zero map is flagged; the digest follows the values, not the clip
    z = viz.map_grid_data([np.full((4, 4), 1e-9)], ["z"], None, clip=100.0)
    assert z["maps"][0]["zero"] and z["image"] is None
    assert viz.map_grid_data([flat[0]], ["a"], clip=90.0)["content"] == viz.map_grid_data([flat[0]], ["a"])["content"]
    assert viz.map_grid_data([flat[0]], ["a"])["content"] != viz.map_grid_data([flat[1]], ["a"])["content"]
    with pytest.raises(ValueError, match="one size"):
        viz.map_grid_data([np.zeros((4, 4)), np.zeros((5, 4))], ["a", "b"])
    with pytest.raises(ValueError, match="one title per map"):
        viz.map_grid_data([np.zeros((4, 4))], ["a", "b"])
