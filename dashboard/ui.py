"""Streamlit widgets, caches and error handling shared by ``app.py`` and ``pages/*.py``."""
from __future__ import annotations

import io
import json
import logging
import zipfile
from contextlib import contextmanager
from typing import Optional, Sequence

import numpy as np
import streamlit as st

from clrp import viz
from clrp.errors import ClrpError

from . import core

log = logging.getLogger("clrp.dashboard")

MODEL_STATE = "clrp_model_key"
IMAGE_STATE = "clrp_image"       # {"data": bytes, "name": str, "digest": str, "scene": seed | None}
DISPLAY_STATE = "clrp_display"   # shared display settings


# ---------------------------------------------------------------------------------------------
# Page frame and errors

def page(title: str, icon: str = ":material/insights:") -> None:
    st.set_page_config(page_title=f"{title} · clrp", page_icon=icon, layout="wide")


def _is_streamlit_control(e: BaseException) -> bool:
    # st.stop()/st.rerun() raise exceptions that must pass through.
    return type(e).__module__.startswith("streamlit")


@contextmanager
def guard(what: str = "this step"):
    """Show package errors as readable messages; unexpected errors get a generic message and a
    details expander (no traceback ever reaches the page)."""
    try:
        yield
    except ClrpError as e:
        st.error(str(e), icon=":material/error:")
    except Exception as e:
        if _is_streamlit_control(e):
            raise
        log.exception("unexpected error in %s", what)
        st.error(f"Something went wrong in {what}. The details below may help the maintainers.",
                 icon=":material/error:")
        with st.expander("Details"):
            st.code(f"{type(e).__name__}: {e}", language=None)


def session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return getattr(ctx, "session_id", None) or "local"


# ---------------------------------------------------------------------------------------------
# Models

@st.cache_resource(show_spinner="Loading the model (once per server)…", max_entries=8)
def get_model(key: str):
    """The model for a picker key, loaded once per server process and shared by every session.
    Never mutated: explanations run on its parameters without hooks, ``.train()`` or ``.to()``."""
    return core.load_model(key)


@st.cache_data(ttl=60, show_spinner=False)
def _choices():
    return core.model_choices()


def _unavailable_summary(missing) -> list[str]:
    """One line per unavailable lab/bundled/timm model; torchvision models sharing a reason (e.g.
    downloads off) as one line, so ~80 entries stay readable."""
    lines, shared = [], {}
    for c in missing:
        if c.kind == "torchvision" and "downloads are off" in (c.reason or ""):
            shared.setdefault("off", []).append(c)
        else:
            lines.append(f"**{c.key}** — {c.reason}")
    if shared.get("off"):
        cs = shared["off"]
        example = cs[0].reason.split(";")[0]
        lines.insert(0, f"**{len(cs)} torchvision models** — downloads are off on this server (CLRP_OFFLINE=1); "
                        f"an admin puts the weights into the torch hub cache (e.g. {example}).")
    return lines


def model_picker(where=None):
    """Sidebar model selector; returns the ``LoadedModel`` (or None with an ``st.error`` shown).
    Models whose weights are on the server come first; torchvision/timm models that are not are
    offered too when the server may download them (once, into its cache)."""
    where = where or st.sidebar
    choices = _choices()
    selectable = [c for c in choices if c.selectable]
    keys = [c.key for c in selectable]
    if st.session_state.get(MODEL_STATE) not in keys:
        # never a model that would have to be downloaded first: the user picks that one
        st.session_state[MODEL_STATE] = core.default_model_key(choices)
    with where:
        st.subheader("Model")
        if not selectable:
            st.error("No model is available on this server. " + "; ".join(
                f"{c.key}: {c.reason}" for c in choices if c.reason))
            return None
        by_key = {c.key: c for c in selectable}
        current = st.session_state[MODEL_STATE]
        picked = st.selectbox("Model", keys, index=keys.index(current) if current in keys else None,
                              format_func=lambda k: by_key[k].label, key="_model_picker",
                              label_visibility="collapsed", placeholder="Choose a model (weights downloaded once)",
                              help="The bundled model by default, then lab models, then every torchvision "
                                   "classifier (and listed timm models): those marked 'downloads on first use' "
                                   "fetch their ImageNet weights into the server's cache once. Type to search.")
        st.session_state[MODEL_STATE] = picked
        missing = [c for c in choices if not c.selectable]
        if missing:
            with st.expander(f"{len(missing)} model(s) not available"):
                for line in _unavailable_summary(missing):
                    st.caption(line)
        if picked is None:
            st.info("No model's weights are on this server yet: choose one to download.", icon=":material/download:")
            return None
        if picked.startswith("dev:"):
            st.warning("Random weights: explanations of this model mean nothing. For development and "
                       "benchmarks only.", icon=":material/warning:")
    choice = by_key[picked]
    lm = None
    with guard("loading the model"):
        try:
            if choice.downloadable and not choice.available:
                with st.spinner(f"Downloading the weights of {picked} into the server's cache (once)…"):
                    lm = get_model(picked)
                _choices.clear()  # it is available now
            else:
                lm = get_model(picked)
        except ClrpError:
            _choices.clear()  # e.g. a failed download: list it as unavailable, with the reason
            raise
    return lm


def scoped_default(widget_key: str, scope, value) -> None:
    """Set a widget's value to ``value`` whenever ``scope`` (e.g. the model key, or model and layer)
    differs from the last time: class indices, layers and channel numbers belong to a model, and
    the previous model's picks would be dropped by the widget and leave the page empty. Widgets
    using this take no ``default``/``index`` of their own."""
    tag = f"_scope_of_{widget_key}"
    if st.session_state.get(tag) != scope or widget_key not in st.session_state:
        st.session_state[widget_key] = value
        st.session_state[tag] = scope


# ---------------------------------------------------------------------------------------------
# Images

@st.cache_data(max_entries=64, show_spinner=False)
def prepare_image(model_key: str, image_digest: str, _data: bytes):
    """Decode + preprocess an image for a model: ``(input tensor, display array, info)``."""
    lm = get_model(model_key)
    mi = lm.load_image(_data)
    info = {"original_size": list(mi.original_size), "format": mi.source_format, "mode": mi.source_mode}
    return mi.tensor, mi.display, info


def set_image(data: bytes, name: str, scene: Optional[int] = None) -> None:
    st.session_state[IMAGE_STATE] = {"data": data, "name": name, "digest": core.digest(data), "scene": scene}


def current_image() -> dict:
    if IMAGE_STATE not in st.session_state:
        seed = core.SAMPLE_SCENE
        set_image(core.scene_png(seed), f"scene {seed}", seed)
    return st.session_state[IMAGE_STATE]


def image_picker(key: str = "img") -> dict:
    """Upload an image or pick a bundled scene; the choice is shared by the pages."""
    img = current_image()
    with st.sidebar:
        st.subheader("Image")
        src = st.radio("Source", ["Bundled scene", "Upload"], key=f"{key}_img_src", horizontal=True,
                       index=0 if img.get("scene") is not None else 1)
        if src == "Bundled scene":
            seed = st.number_input("Scene seed", min_value=0, max_value=2**31 - 1, step=1,
                                   value=int(img["scene"]) if img.get("scene") is not None else core.SAMPLE_SCENE,
                                   key=f"{key}_img_seed", help="Procedural scenes with 1-3 shapes; the model never "
                                                           "saw these seeds in training.")
            if img.get("scene") != int(seed):
                set_image(core.scene_png(int(seed)), f"scene {int(seed)}", int(seed))
        else:
            up = st.file_uploader("Image file", type=None, key=f"{key}_img_upload",
                                  help="JPEG, PNG, WebP, BMP, TIFF, GIF, ... (EXIF rotation applied, "
                                       "transparency on white)")
            if up is not None:
                data = up.getvalue()
                if core.digest(data) != img.get("digest"):
                    set_image(data, up.name, None)
    return st.session_state[IMAGE_STATE]


def load_current(lm, model_key: str):
    """The current image prepared for ``lm``; raises ``InvalidImage`` (shown by ``guard``)."""
    img = current_image()
    x, display, info = prepare_image(model_key, img["digest"], img["data"])
    return img, x, display, info


# ---------------------------------------------------------------------------------------------
# Explanations (cached by model, image digest, method, settings)

def _opts_key(options: Optional[dict]) -> str:
    return json.dumps(options or {}, sort_keys=True, default=str)


# Bounded: a 224 px map is 0.6 MB, so 256 entries stay below ~150 MB per server.
@st.cache_data(max_entries=256, ttl=6 * 3600, show_spinner=False)
def _explain(model_key: str, image_digest: str, method: str, target: int, rules: str, options_key: str, _x):
    lm = get_model(model_key)
    return core.explain_array(lm, _x, target, method, rules, json.loads(options_key) or None)


def explain(model_key: str, image_digest: str, x, method: str, target: int, rules: str = "paper",
            options: Optional[dict] = None) -> np.ndarray:
    """``[C, H, W]`` relevance (cached: changing colormap or opacity never recomputes)."""
    return _explain(model_key, image_digest, method, int(target), rules, _opts_key(options), x)


@st.cache_data(max_entries=128, ttl=6 * 3600, show_spinner=False)
def _neuron(model_key: str, image_digest: str, layer: str, channel: int, contrast, rules: str, _x):
    return core.neuron_array(get_model(model_key), _x, layer, channel, contrast, rules)


def explain_neuron(model_key, image_digest, x, layer, channel, contrast=None, rules="paper") -> np.ndarray:
    return _neuron(model_key, image_digest, layer, int(channel), contrast, rules, x)


@st.cache_data(max_entries=500, show_spinner=False)
def _layer_rel(model_key: str, image_digest: str, target: int, layer: str, method: str, rules: str, _x):
    return core.layer_relevance_array(get_model(model_key), _x, target, layer, method, rules)


def layer_relevance(model_key, image_digest, x, target, layer, method="lrp", rules="paper") -> np.ndarray:
    return _layer_rel(model_key, image_digest, int(target), layer, method, rules, x)


@st.cache_data(max_entries=500, show_spinner=False)
def _top(model_key: str, image_digest: str, k: int, _x):
    return get_model(model_key).top_classes(_x, k)


def top_classes(model_key, image_digest, x, k=5):
    return _top(model_key, image_digest, int(k), x)


# ---------------------------------------------------------------------------------------------
# Display settings and heatmap grids

def image_page(title: str, key: str, caption: str | None = None):
    """The frame shared by the single-image pages: title, model, image and display controls in the
    sidebar, the image prepared for the model. Stops the page (after a message) when there is no
    usable model or image. Returns ``(lm, model_key, display, img, x, image)``."""
    page(title)
    st.title(title)
    if caption:
        st.caption(caption)
    lm = model_picker()
    image_picker(key)
    display = display_controls(key)
    if lm is None:
        st.stop()
    model_key = st.session_state[MODEL_STATE]
    x = None
    with guard("reading the image"):
        img, x, image, _info = load_current(lm, model_key)
    if x is None:
        st.stop()
    return lm, model_key, display, img, x, image


def display_controls(key: str, where=None, signed_hint: bool = False) -> dict:
    """Colormap, opacity, shared/per-map scale, clip percentile. Shared across pages."""
    where = where or st.sidebar
    prev = st.session_state.get(DISPLAY_STATE, {})
    cmaps = list(viz.COLORMAPS)
    with where:
        st.subheader("Display")
        cmap = st.selectbox("Colormap", cmaps, index=cmaps.index(prev.get("cmap", "bwr")), key=f"{key}_cmap",
                            help="Diverging maps (bwr, seismic, ...) are centred at 0: white = no relevance. "
                                 "Sequential maps suit non-negative maps.")
        opacity = st.slider("Overlay opacity", 0.0, 1.0, float(prev.get("opacity", 0.7)), 0.05, key=f"{key}_opacity",
                            help="0 = the image only, 1 = the heatmap only")
        scale = st.radio("Colour scale", ["shared", "per_map"], horizontal=True, key=f"{key}_scale",
                         index=["shared", "per_map"].index(prev.get("scale", "shared")),
                         format_func=lambda s: {"shared": "shared", "per_map": "per map"}[s],
                         help="Shared: one scale for all maps, so magnitudes compare. Per map: each map "
                              "scaled to its own maximum.")
        clip = st.slider("Clip at percentile", 90.0, 100.0, float(prev.get("clip", 99.5)), 0.1, key=f"{key}_clip",
                         help="Colour limits from this percentile of |relevance| (100 = the maximum)")
    d = {"cmap": cmap, "opacity": float(opacity), "scale": scale, "clip": float(clip)}
    st.session_state[DISPLAY_STATE] = d
    return d


def heatmap_grid(items: Sequence[tuple[str, np.ndarray]], image: np.ndarray, display: dict, *, columns: int = 4,
                 key: str = "grid", height: int = 250) -> list:
    """Plot ``(title, map)`` items side by side in one plotly figure (hover shows values); returns
    the colour limits used."""
    maps = [viz.channel_sum(m) for _, m in items]
    limits = viz.color_limits(maps, scale=display["scale"], cmap=display["cmap"], clip=display["clip"])
    fig = viz.heatmap_grid_figure(maps, [t for t, _ in items], image, limits=limits, cmap=display["cmap"],
                                  opacity=display["opacity"], columns=columns, cell_height=height,
                                  shared=display["scale"] == "shared")
    st.plotly_chart(fig, key=key, config={"displaylogo": False, "displayModeBar": False})
    return limits


def image_grid(items: Sequence[tuple[str, np.ndarray]], image: np.ndarray, display: dict, *, columns: int = 4,
               width: int = 200) -> list:
    """Static overlays (PNG) side by side: no plotly in the browser, so they appear fastest (used on
    the home page; the other pages use the interactive :func:`heatmap_grid`)."""
    maps = [viz.channel_sum(m) for _, m in items]
    limits = viz.color_limits(maps, scale=display["scale"], cmap=display["cmap"], clip=display["clip"])
    cols = st.columns(columns)
    scale = max(1, width // max(1, image.shape[1]))
    for i, ((title, _), m, lim) in enumerate(zip(items, maps, limits)):
        png = viz.to_png(viz.overlay(image, m, display["cmap"], lim.vmin, lim.vmax, display["opacity"]), scale=scale)
        cols[i % columns].image(png, caption=title if display["scale"] == "shared" else
                                f"{title} (±{max(abs(lim.vmin), abs(lim.vmax)):.3g})", width="stretch")
    if display["scale"] == "shared" and limits:
        st.image(viz.colorbar_png(display["cmap"], limits[0].vmin, limits[0].vmax, label="relevance (shared scale)"),
                 width=360)
    return limits


def maps_zip(items: Sequence[tuple[str, np.ndarray]], image: np.ndarray, display: dict, settings: dict) -> bytes:
    """PNG overlays + raw .npy maps + settings.json in one zip."""
    maps = [viz.channel_sum(m) for _, m in items]
    limits = viz.color_limits(maps, scale=display["scale"], cmap=display["cmap"], clip=display["clip"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for (title, raw), m, lim in zip(items, maps, limits):
            name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in title)
            zf.writestr(f"{name}.png", viz.to_png(viz.overlay(image, m, display["cmap"], lim.vmin, lim.vmax,
                                                              display["opacity"])))
            zf.writestr(f"{name}_heatmap.png", viz.to_png(viz.colorize(m, display["cmap"], lim.vmin, lim.vmax)))
            zf.writestr(f"{name}.npy", viz.npy_bytes(raw))
        zf.writestr("image.png", viz.to_png(image))
        zf.writestr("settings.json", viz.settings_json({**settings, "display": display,
                                                        "limits": [l.as_tuple() for l in limits]}))
    return buf.getvalue()


def downloads(items, image, display, settings: dict, key: str) -> None:
    """Download buttons: one zip of maps (PNG + .npy), the grid as PNG, the settings as JSON."""
    c1, c2, c3 = st.columns(3)
    c1.download_button("Maps (PNG + .npy, zip)", lambda: maps_zip(items, image, display, settings),
                       file_name="clrp_maps.zip", mime="application/zip", key=f"{key}_zip",
                       icon=":material/download:")

    def grid_png():
        maps = [viz.channel_sum(m) for _, m in items]
        lims = viz.color_limits(maps, scale=display["scale"], cmap=display["cmap"], clip=display["clip"])
        tiles = [viz.overlay(image, m, display["cmap"], l.vmin, l.vmax, display["opacity"]) for m, l in zip(maps, lims)]
        scale = max(1, 224 // max(1, image.shape[0]))
        return viz.render_grid_png(tiles, [t for t, _ in items], columns=4, scale=scale)

    c2.download_button("Grid (PNG)", grid_png, file_name="clrp_grid.png", mime="image/png", key=f"{key}_png",
                       icon=":material/image:")
    c3.download_button("Settings (JSON)", viz.settings_json({**settings, "display": display}),
                       file_name="clrp_settings.json", mime="application/json", key=f"{key}_json",
                       icon=":material/settings:")


def method_label(method: str) -> str:
    return {"lrp": "LRP", "clrp1": "CLRP1", "clrp2": "CLRP2", "sglrp": "SGLRP", "gradient": "Gradient",
            "gradient_x_input": "Gradient×Input", "deconvnet": "DeConvNet", "guided_backprop": "Guided BP",
            "gradcam": "Grad-CAM", "integrated_gradients": "Integrated Gradients",
            "smoothgrad": "SmoothGrad"}.get(method, method)


def class_label(lm, idx: int) -> str:
    return f"{lm.class_names[idx]} ({idx})"
