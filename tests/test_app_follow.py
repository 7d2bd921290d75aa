"""Issue 11, items 1, 2, 9 and 10 through AppTest: the explained class follows the image, the
channels follow the layer, maps share a colour scale only within a kind, the navigation names
the home page "Home", and the pages say what the model knows."""

import numpy as np
import pytest

pytest.importorskip("streamlit")

from clrp.scenes.presets import SAMPLE_SEED  # noqa: E402
from clrp.models import bundled  # noqa: E402
from dashboard import core  # noqa: E402
from tests.test_app import MODEL, _env, app, heatmaps, map_grids, no_errors, png_bytes  # noqa: E402,F401 (_env: autouse)

pytestmark = pytest.mark.skipif(not bundled.WEIGHTS_FILE.is_file(), reason="needs the bundled model's weights")


_LM = None


def _lm():
    global _LM
    if _LM is None:
        _LM = core.load_model(MODEL)
    return _LM


def top(data: bytes, k: int):
    lm = _lm()
    return [i for i, _, _ in lm.top_classes(lm.load_image(data).tensor, k)]


def scene_with_other_top(k: int = 1) -> int:
    """A scene seed whose top-k classes differ from the sample scene's."""
    first = top(core.scene_png(SAMPLE_SEED), k)
    for seed in range(20_000_100, 20_000_200):
        if set(top(core.scene_png(seed), k)).isdisjoint(first):
            return seed
    raise AssertionError("no scene with other top classes among 100 seeds")


def photo() -> bytes:
    """A non-square upload (squashed to the model's square input)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


PAGES = [("pages/1_Explain.py", "explain", "explain_classes", 1),
         ("pages/2_Class_contrast.py", "contrast", "contrast_classes", 2),
         ("pages/3_Neuron_contrast.py", "neuron", "neuron_class", 1)]


def _value(at, key):
    v = at.session_state[key]
    return v if isinstance(v, list) else [v]


@pytest.mark.parametrize("page,prefix,widget,k", PAGES)
def test_a_new_scene_or_upload_selects_its_top_classes(page, prefix, widget, k):
    at = app(page).run()
    no_errors(at)
    assert _value(at, widget) == top(core.scene_png(SAMPLE_SEED), k)
    seed = scene_with_other_top(k)
    at.number_input(key=f"{prefix}_img_seed").set_value(seed).run()
    no_errors(at)
    assert _value(at, widget) == top(core.scene_png(seed), k)  # used to keep the sample scene's class
    at.radio(key=f"{prefix}_img_src").set_value("Upload").run()
    data = photo()
    at.file_uploader(key=f"{prefix}_img_upload").set_value(("wide.png", data, "image/png")).run()
    no_errors(at)
    assert _value(at, widget) == top(data, k)


def test_a_class_the_user_pinned_stays_with_a_new_image():
    at = app("pages/1_Explain.py").run()
    first = top(core.scene_png(SAMPLE_SEED), 1)
    pinned = [c for c in range(3) if [c] != first][:1] + first
    at.multiselect(key="explain_classes").set_value(pinned).run()
    at.number_input(key="explain_img_seed").set_value(scene_with_other_top()).run()
    no_errors(at)
    assert at.multiselect(key="explain_classes").value == pinned


def test_a_new_layer_selects_its_top_channels_and_keeps_the_pair_row():
    at = app("pages/3_Neuron_contrast.py").run()
    no_errors(at)
    lm = _lm()
    x = lm.load_image(core.scene_png(SAMPLE_SEED)).tensor
    target = at.session_state["neuron_class"]
    layers = at.selectbox(key="neuron_layer").options
    other = next(layer for layer in layers if layer != at.selectbox(key="neuron_layer").value)
    at.selectbox(key="neuron_layer").set_value(other).run()
    no_errors(at)
    rel = lm.layer_relevance(x, [target], other, "lrp")[0].detach().numpy()
    order = [int(i) for i in np.argsort(-rel, kind="stable")]
    assert at.multiselect(key="neuron_picked").value == order[:3]
    assert at.multiselect(key="neuron_pair").value == order[:2]
    assert heatmaps(at) == 3 * 3 + 2  # neuron, vs rest, conditioned per neuron + the neuron-vs-neuron row


def test_explain_gives_lrp_and_gradients_separate_colour_scales():
    at = app("pages/1_Explain.py").run()
    no_errors(at)
    grid = map_grids(at)[-1]
    kind = {m["title"].split(" · ")[0]: m["group"] for m in grid["maps"]}
    assert kind["LRP"] == kind["CLRP1"] == kind["CLRP2"]  # relevance: one scale, magnitudes compare
    assert kind["Gradient"] != kind["LRP"] and kind["Grad-CAM"] not in (kind["LRP"], kind["Gradient"])
    index = {m["title"].split(" · ")[0]: i for i, m in enumerate(grid["maps"])}
    for colormap_kind in ("diverging", "sequential"):
        lim = grid["limits"]["shared"][colormap_kind]
        assert lim[index["LRP"]] == lim[index["CLRP1"]] == lim[index["CLRP2"]]
        assert lim[index["LRP"]] != lim[index["Gradient"]]
        per_map = grid["limits"]["per_map"][colormap_kind]
        assert per_map[index["LRP"]] != per_map[index["CLRP2"]]  # own maxima
    assert any("units" in c.value or "kind" in c.value for c in at.caption)


def test_navigation_names_the_home_page_home_and_switches_pages():
    at = app("app.py").run()
    no_errors(at)
    nav = ["Home", "Explain", "Class contrast", "Neuron contrast", "Pointing Game", "Ablation"]
    assert [p.proto.label for p in at.sidebar.get("page_link")] == nav
    at.switch_page("pages/1_Explain.py").run()
    no_errors(at)
    assert at.title[0].value == "Explain an image"
    assert [p.proto.label for p in at.sidebar.get("page_link")] == nav


def test_an_upload_to_the_scene_model_says_what_the_model_knows_and_the_geometry():
    at = app("pages/1_Explain.py").run()
    assert not at.warning or all("knows only" not in w.value for w in at.warning)  # a bundled scene: no warning
    at.radio(key="explain_img_src").set_value("Upload").run()
    at.file_uploader(key="explain_img_upload").set_value(("wide.png", photo(), "image/png")).run()
    no_errors(at)
    note = next(w.value for w in at.warning if "knows only" in w.value)
    assert "160×90" in note and "squashed" in note and "procedural scenes" in note
    at.file_uploader(key="explain_img_upload").set_value(("red.png", png_bytes((50, 50)), "image/png")).run()
    assert any("knows only" in w.value for w in at.warning)
