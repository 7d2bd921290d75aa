"""Streamlit widgets, caches and error handling shared by ``app.py`` and ``pages/*.py``: the page
frame and navigation, the model and image pickers, cached explanations and the heatmap grids."""
from __future__ import annotations

import io
import logging
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
import streamlit as st
import torch

from clrp import notices, viz
from clrp.errors import ClrpError
from clrp.methods import MAP_KINDS, METHOD_LABELS, map_kind
from clrp.scenes.presets import SAMPLE_SEED

from . import core, identity
from .safetext import md, redact, safe_filename
from .settings import server_settings

log = logging.getLogger("clrp.dashboard")

MODEL_STATE = "clrp_model_key"
IMAGE_STATE = "clrp_image"       # {"data": bytes, "name": str, "digest": str, "scene": seed | None}
DISPLAY_STATE = "clrp_display"   # shared display settings


# ---------------------------------------------------------------------------------------------
# Page frame and errors

@dataclass(frozen=True)
class PageInfo:
    path: str         # relative to the app's folder (what st.page_link takes)
    title: str
    icon: str
    description: str


#: The dashboard's pages, in navigation order (the sidebar and the home page list them from here).
PAGES = (
    PageInfo("app.py", "Home", ":material/home:", "a first explanation of a sample scene"),
    PageInfo("pages/1_Explain.py", "Explain", ":material/image_search:",
             "any image, every method side by side, hover values, downloads"),
    PageInfo("pages/2_Class_contrast.py", "Class contrast", ":material/compare:",
             "LRP against CLRP for several classes of one image, with how much their maps agree"),
    PageInfo("pages/3_Neuron_contrast.py", "Neuron contrast", ":material/hub:",
             "the channels of a layer ranked for a class, neuron against neuron"),
    PageInfo("pages/4_Pointing_Game.py", "Pointing Game", ":material/my_location:",
             "does each map point at the object? Over a whole dataset, in the background"),
    PageInfo("pages/5_Ablation.py", "Ablation", ":material/content_cut:",
             "remove what a map calls relevant (pixels or hidden units) and watch the score"),
)


def page(title: str, icon: str = ":material/insights:") -> identity.User:
    """Page config, the identity gate (:func:`dashboard.identity.require_user`: a refused visitor
    sees why and nothing else), the open-server warning, and the sidebar: navigation (Streamlit's
    own list is off in .streamlit/config.toml: it would call the home page "app") and who is
    signed in. Every page calls this first; returns the user."""
    from streamlit.errors import StreamlitPageNotFoundError

    st.set_page_config(page_title=f"{title} · clrp", page_icon=icon, layout="wide")
    user = identity.require_user()
    warning = identity.open_server_warning()
    if warning:
        st.warning(md(warning), icon=":material/gpp_maybe:")
    with st.sidebar:
        try:
            for p in PAGES:
                st.page_link(p.path, label=p.title, icon=p.icon)
        except StreamlitPageNotFoundError:
            pass  # a page file run on its own (``streamlit run pages/...``, AppTest) has no app to link to
        else:
            st.divider()
        _signed_in(user)
    return user


def _signed_in(user: identity.User) -> None:
    role = " · admin" if user.is_admin else ""
    if user.kind == "anonymous":
        st.caption(f"{md(user.name)}{role} (no sign-in on this server)", help="Your runs belong to this browser "
                   "(a cookie): a reload keeps them, another browser does not see them.")
    else:
        st.caption(f"Signed in as **{md(user.name)}**{role}")
        if user.kind == "oidc":
            st.button("Log out", on_click=st.logout, key="_clrp_logout", icon=":material/logout:")


def is_admin() -> bool:
    return identity.current_user().is_admin


def shown(text) -> str:
    """Server or dataset text as a page shows it: escaped for Markdown and, for users who are not
    admins, without server paths and URLs (the full text is in the server log)."""
    text = str(text)
    if not is_admin():
        red = redact(text)
        if red != text:
            log.info("shown redacted: %s", text)
        text = red
    return md(text)


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
        st.error(shown(e), icon=":material/error:")
    except Exception as e:
        if _is_streamlit_control(e):
            raise
        log.exception("unexpected error in %s", what)
        st.error(f"Something went wrong in {md(what)}. The details below may help the maintainers.",
                 icon=":material/error:")
        with st.expander("Details"):
            detail = f"{type(e).__name__}: {e}"
            st.code(detail if is_admin() else redact(detail), language=None)


def session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return getattr(ctx, "session_id", None) or "local"


# ---------------------------------------------------------------------------------------------
# Models

def _models_in_memory() -> int:
    try:
        return server_settings().models.max_in_memory
    except ClrpError:
        return 4  # an invalid [server] table: every page refuses anyway (identity.require_user)


@st.cache_resource(show_spinner="Loading the model (once per server)…", max_entries=_models_in_memory())
def get_model(key: str):
    """The model for a picker key, loaded once per server process, moved once to the device the
    policy picks (``clrp.devices.place``: the lab TOML's ``device``, ``$CLRP_DEVICE``, else CUDA when
    available) and shared by every session, at most ``[server.models] max_in_memory`` at once (the
    least recently used is dropped). Never mutated after that: explanations run on its parameters
    without hooks, ``.train()`` or ``.to()``."""
    from clrp.devices import place

    lm = core.load_model(key)
    place(lm)
    return lm


@st.cache_data(ttl=60, show_spinner=False)
def cached_model_choices():
    """:func:`core.model_choices`, cached for a minute (``.clear()`` when availability changed)."""
    return core.model_choices()


def user_choices() -> list:
    """The models this user may pick: every one for admins; for others, downloads only of the
    models on ``[server.models] downloadable`` (:func:`core.restrict_downloads`)."""
    choices = cached_model_choices()
    if is_admin():
        return choices
    return core.restrict_downloads(choices, server_settings().models)


def model_table() -> list[dict]:
    """Every model the picker knows, as rows for a table (home page)."""
    return [{"model": c.key, "kind": c.kind,
             "available": "yes" if c.available else "on first use" if c.downloadable else "no",
             "note": (c.reason if is_admin() else redact(c.reason)) if c.reason else c.description}
            for c in user_choices()]


def _unavailable_summary(missing) -> list[str]:
    """One line per unavailable lab/bundled/timm model (Markdown, escaped); torchvision models
    sharing a reason (downloads off, not on the allow-list) as one line, so ~80 entries stay readable."""
    lines, off, not_allowed = [], [], []
    for c in missing:
        if c.kind == "torchvision" and "downloads are off" in (c.reason or ""):
            off.append(c)
        elif (c.reason or "").startswith(core.NOT_ALLOWED):
            not_allowed.append(c)
        else:
            lines.append(f"**{md(c.key)}** — {shown(c.reason)}")
    if not_allowed:
        lines.insert(0, f"**{len(not_allowed)} models** — {md(not_allowed[0].reason)}")
    if off:
        example = shown(off[0].reason.split(";")[0])
        lines.insert(0, f"**{len(off)} torchvision models** — downloads are off on this server "
                        f"({md('CLRP_OFFLINE=1')}); "
                        f"an admin puts the weights into the torch hub cache (e.g. {example}).")
    return lines


def model_picker(where=None):
    """Sidebar model selector; returns the ``LoadedModel`` (or None with an ``st.error`` shown).
    Models whose weights are on the server come first; torchvision/timm models that are not are
    offered too when this user may download them (once, into the server's cache)."""
    where = where or st.sidebar
    choices = user_choices()
    selectable = [c for c in choices if c.selectable]
    keys = [c.key for c in selectable]
    if st.session_state.get(MODEL_STATE) not in keys:
        # never a model that would have to be downloaded first: the user picks that one
        st.session_state[MODEL_STATE] = core.default_model_key(choices)
    with where:
        st.subheader("Model")
        if not selectable:
            st.error("No model is available on this server. " + "; ".join(
                f"{md(c.key)}: {shown(c.reason)}" for c in choices if c.reason))
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
        if by_key[picked].kind == "dev":
            st.warning("Random weights: explanations of this model mean nothing. For development and "
                       "benchmarks only.", icon=":material/warning:")
    choice = by_key[picked]
    lm = None
    with guard("loading the model"):
        try:
            if choice.downloadable and not choice.available:
                with st.spinner(f"Downloading the weights of {md(picked)} into the server's cache (once)…"):
                    lm = get_model(picked)
                cached_model_choices.clear()  # it is available now
            else:
                lm = get_model(picked)
        except ClrpError:
            cached_model_choices.clear()  # e.g. a failed download: list it as unavailable, with the reason
            raise
    if lm is not None:
        from clrp.devices import describe, device_of

        where.caption(f"Runs on {describe(device_of(lm))}", help="Set per model by `device` in the lab TOML, "
                      "for the server by $CLRP_DEVICE; otherwise the GPU when there is one")
    return lm


def follow_default(widget_key: str, default, *, owner, context=None, valid=lambda v: True) -> None:
    """Make a widget follow ``default`` (e.g. the image's top class) as ``context`` changes (a new
    image), unless the user changed it and the choice is still ``valid``; a new ``owner`` (what the
    values belong to: the model, or model and layer) always resets it, since class indices and
    channel numbers mean nothing in another model or layer. Widgets using this take no
    ``default``/``index`` of their own."""
    tag = f"_follow_{widget_key}"
    rec = st.session_state.get(tag)
    current = st.session_state.get(widget_key)
    if rec is None or widget_key not in st.session_state or rec["owner"] != owner:
        st.session_state[widget_key] = default
    elif rec["context"] != context:
        pinned = current != rec["default"]
        if not (pinned and valid(current)):
            st.session_state[widget_key] = default
    st.session_state[tag] = {"owner": owner, "context": context, "default": default}


# ---------------------------------------------------------------------------------------------
# Images

@st.cache_data(max_entries=64, show_spinner=False)
def prepare_image(model_key: str, image_digest: str, _data: bytes):
    """Decode + preprocess an image for a model: ``(input tensor, display array, info)``."""
    lm = get_model(model_key)
    mi = lm.load_image(_data)
    w, h = mi.original_size
    info = {"original_size": [w, h], "format": mi.source_format, "mode": mi.source_mode,
            "geometry": lm.preprocessing.describe_geometry(w, h)}
    return mi.tensor, mi.display, info


def set_image(data: bytes, name: str, scene: Optional[int] = None) -> None:
    st.session_state[IMAGE_STATE] = {"data": data, "name": name, "digest": core.digest(data), "scene": scene}


def current_image() -> dict:
    if IMAGE_STATE not in st.session_state:
        seed = SAMPLE_SEED
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
                                   value=int(img["scene"]) if img.get("scene") is not None else SAMPLE_SEED,
                                   key=f"{key}_img_seed", help="Procedural scenes with 1-3 shapes; the bundled model "
                                                           "never saw seeds from 10,000,000 on in training.")
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
# Explanations, cached by model, image digest, method and settings (changing the colormap or
# opacity never recomputes). Bounded: a 224 px map is 0.6 MB, so 256 entries stay below ~150 MB.

def _numpy(r: torch.Tensor) -> np.ndarray:
    return r[0].detach().to("cpu", torch.float32).numpy()


@st.cache_data(max_entries=256, ttl=6 * 3600, show_spinner=False)
def explain(model_key: str, image_digest: str, _x, method: str, target: int, rules: str = "paper",
            options: Optional[dict] = None) -> np.ndarray:
    """``[C, H, W]`` relevance of ``target`` by ``method`` (``LoadedModel.explain``: never mutates
    the shared model)."""
    return _numpy(get_model(model_key).explain(_x, [int(target)], method, rules, **(options or {})))


@st.cache_data(max_entries=128, ttl=6 * 3600, show_spinner=False)
def explain_neuron(model_key: str, image_digest: str, _x, layer: str, channel: int, contrast=None,
                   rules: str = "paper") -> np.ndarray:
    return _numpy(get_model(model_key).explain_neuron(_x, layer, int(channel), contrast, rules))


@st.cache_data(max_entries=500, show_spinner=False)
def layer_relevance(model_key: str, image_digest: str, _x, target: int, layer: str, method: str = "lrp",
                    rules: str = "paper") -> np.ndarray:
    return _numpy(get_model(model_key).layer_relevance(_x, [int(target)], layer, method, rules))


@st.cache_data(max_entries=500, show_spinner=False)
def top_classes(model_key: str, image_digest: str, _x, k: int = 5):
    return get_model(model_key).top_classes(_x, int(k))


@st.cache_data(max_entries=32, show_spinner=False)
def feature_layers(model_key: str) -> tuple[list[str], str]:
    """The model's explainable layers and its default (last feature map every path goes through)."""
    lm = get_model(model_key)
    return lm.feature_layers(), lm.default_feature_layer()


#: What the home page explains first: LRP and CLRP2 of the sample scene's two top classes.
FIRST_METHODS = ("lrp", "clrp2")


def first_explanation(model_key: str):
    """The home page's first explanation, from the caches: ``(image, top 3 classes, map items)``.
    The server computes it once at start (:mod:`dashboard.warmup`), so the first visitor gets it
    from the cache."""
    data = core.scene_png(SAMPLE_SEED)
    dig = core.digest(data)
    x, image, _ = prepare_image(model_key, dig, data)
    top = top_classes(model_key, dig, x, 3)
    items = [method_item(f"{method_label(m)} · {name}", explain(model_key, dig, x, m, idx), m)
             for idx, name, _ in top[:2] for m in FIRST_METHODS]
    return image, top, items


# ---------------------------------------------------------------------------------------------
# Display settings and heatmap grids

def image_page(title: str, key: str, caption: str | None = None):
    """The frame shared by the single-image pages: title, model, image and display controls in the
    sidebar, the image prepared for the model. Stops the page (after a message) when there is no
    usable model or image. Returns ``(lm, model_key, img, x, image)``."""
    page(title)
    st.title(title)
    if caption:
        st.caption(caption)
    lm = model_picker()
    image_picker(key)
    if lm is None:
        st.stop()
    model_key = st.session_state[MODEL_STATE]
    x = None
    with guard("reading the image"):
        img, x, image, info = load_current(lm, model_key)
    if x is None:
        st.stop()
    input_note(lm, img, info)
    return lm, model_key, img, x, image


def input_note(lm, img: dict, info: dict) -> None:
    """Say what the model knows and what geometry the image took, under the title."""
    text = f"**{md(img['name'])}** → model input: {md(info['geometry'])}."
    squashed = "squashed" in info["geometry"]
    domain = md(lm.domain.rstrip(".") + ".") if lm.domain else ""
    warnings = notices.input_warnings(lm, info["original_size"], known_scene=img.get("scene") is not None)
    if warnings:  # the text the command line prints too
        knows = [f"The model knows {domain}"] if domain and notices.domain_warning(lm) not in warnings else []
        st.warning(" ".join([text, *(md(w) for w in warnings), *knows]), icon=":material/info:")
    elif squashed:
        st.info(text + (f" The model knows {domain}" if domain else ""), icon=":material/aspect_ratio:")
    else:
        st.caption(text + (f" The model knows {domain}" if domain else ""))


SCALES = {"shared": "shared per kind", "per_map": "per map"}
DEFAULT_DISPLAY = {"cmap": "bwr", "opacity": 0.7, "scale": "shared", "clip": 99.5}

#: The map grid (custom component, ``dashboard/static``): canvases redrawn in the browser when the
#: colormap, opacity or scale changes; Plotly needed a server round trip and ~0.3 s of redraw.
_STATIC = Path(__file__).resolve().parent / "static"
_map_grid = st.components.v2.component("clrp_map_grid", js=(_STATIC / "map_grid.js").read_text(),
                                       css=(_STATIC / "map_grid.css").read_text())


def valid_display(value) -> dict:
    """Display settings from a browser (or the session), checked field by field: anything
    missing or out of range falls back to the default, never to an error."""
    d = dict(DEFAULT_DISPLAY)
    if not isinstance(value, dict):
        return d
    if value.get("cmap") in viz.COLORMAPS:
        d["cmap"] = value["cmap"]
    if value.get("scale") in SCALES:
        d["scale"] = value["scale"]
    for name, lo, hi in (("opacity", 0.0, 1.0), ("clip", 90.0, 100.0)):
        try:
            v = float(value.get(name))
        except (TypeError, ValueError):
            continue
        if lo <= v <= hi:
            d[name] = v
    return d


def current_display() -> dict:
    """The display settings of this session (shared by the pages; what the downloads use)."""
    return valid_display(st.session_state.get(DISPLAY_STATE))


def _display_changed(component_key: str) -> None:
    st.session_state[DISPLAY_STATE] = valid_display((st.session_state.get(component_key) or {}).get("display"))


def map_view(items: Sequence["MapItem"], image: np.ndarray, *, key: str, settings: dict, columns: int = 4,
             height: int = 250, caption: str = "", downloads: bool = True) -> None:
    """The maps with their display controls (colormap, opacity, colour scale, clip percentile),
    the colour-scale note and the downloads, as one fragment. The grid redraws itself in the
    browser for colormap, opacity and scale; it tells the server the choice, which reruns only
    this fragment (downloads, caption; the clip percentile's new limits)."""
    items = [MapItem(*it) for it in items]

    @st.fragment
    def view():
        display = current_display()
        st.caption((caption + " " if caption else "") + scale_caption(items, display))
        with guard("drawing the maps"):
            data = viz.map_grid_data([it.values for it in items], [it.title for it in items], image,
                                     groups=[it.kind for it in items], clip=display["clip"], columns=columns,
                                     cell_height=height)
            data["display"] = display
            ck = f"{key}_maps"
            _map_grid(data=data, key=ck, on_display_change=lambda: _display_changed(ck))
            if downloads:
                download_buttons(items, image, display, settings, key=f"{key}_dl", columns=columns)

    view()


class MapItem(NamedTuple):
    """One map of a grid: its title, the ``[C, H, W]`` (or ``[H, W]``) values, and its kind
    (:data:`clrp.methods.MAP_KINDS`): maps share a colour scale only within a kind."""
    title: str
    values: np.ndarray
    kind: str = "relevance"


def method_item(title: str, values: np.ndarray, method: str, options: Optional[dict] = None) -> MapItem:
    return MapItem(title, values, map_kind(method, options))


def _limits(items: Sequence[MapItem], display: dict):
    maps = [viz.channel_sum(it.values) for it in items]
    kinds = [it.kind for it in items]
    return maps, kinds, viz.color_limits(maps, scale=display["scale"], cmap=display["cmap"], clip=display["clip"],
                                         groups=kinds)


def scale_caption(items: Sequence[MapItem], display: dict) -> str:
    kinds = list(dict.fromkeys(it.kind for it in items))
    if display["scale"] == "per_map":
        return "Each map on its own scale (its limits are in its title)."
    if len(kinds) == 1:
        return f"One colour scale: {MAP_KINDS.get(kinds[0], kinds[0])}; magnitudes compare."
    return ("One colour scale per kind of map, each with its colour bar; magnitudes compare within a kind, not "
            "across: " + "; ".join(f"**{k}** = {MAP_KINDS.get(k, k)}" for k in kinds) + ".")


def _colorbars(items: Sequence[MapItem], limits, display: dict) -> list[tuple]:
    if display["scale"] != "shared":
        return []
    first = {}
    for it, lim in zip(items, limits):
        first.setdefault(it.kind, lim)
    return [(k, display["cmap"], lim.vmin, lim.vmax) for k, lim in first.items()]


def maps_zip(items: Sequence[MapItem], image: np.ndarray, display: dict, settings: dict) -> bytes:
    """PNG overlays + raw .npy maps + settings.json in one zip."""
    items = [MapItem(*it) for it in items]
    maps, _, limits = _limits(items, display)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for it, m, lim in zip(items, maps, limits):
            name = safe_filename(it.title, default="map")
            zf.writestr(f"{name}.png", viz.to_png(viz.overlay(image, m, display["cmap"], lim.vmin, lim.vmax,
                                                              display["opacity"])))
            zf.writestr(f"{name}_heatmap.png", viz.to_png(viz.colorize(m, display["cmap"], lim.vmin, lim.vmax)))
            zf.writestr(f"{name}.npy", viz.npy_bytes(it.values))
        zf.writestr("image.png", viz.to_png(image))
        zf.writestr("settings.json", viz.settings_json({
            **settings, "display": display,
            "maps": [{"title": it.title, "kind": it.kind, "limits": lim.as_tuple()} for it, lim in zip(items, limits)]}))
    return buf.getvalue()


def grid_png(items: Sequence[MapItem], image: np.ndarray, display: dict, columns: int = 4) -> bytes:
    """The grid as one PNG, with a colour bar per kind of map (shared scale)."""
    items = [MapItem(*it) for it in items]
    maps, _, limits = _limits(items, display)
    tiles = [viz.overlay(image, m, display["cmap"], l.vmin, l.vmax, display["opacity"]) for m, l in zip(maps, limits)]
    titles = [it.title + (" (≈ 0)" if viz.is_zero(m) else "" if display["scale"] == "shared" else
                          f" (±{max(abs(l.vmin), abs(l.vmax)):.3g})") for it, m, l in zip(items, maps, limits)]
    return viz.render_grid_png(tiles, titles, columns=columns, scale=max(1, 224 // max(1, image.shape[0])),
                               colorbars=_colorbars(items, limits, display))


def download_buttons(items, image, display, settings: dict, key: str, columns: int = 4) -> None:
    """Download buttons: one zip of maps (PNG + .npy), the grid as PNG, the settings as JSON. A download
    does not rerun the page: a rerun would replace the other buttons' deferred files under a click."""
    c1, c2, c3 = st.columns(3)
    c1.download_button("Maps (PNG + .npy, zip)", lambda: maps_zip(items, image, display, settings),
                       file_name="clrp_maps.zip", mime="application/zip", key=f"{key}_zip",
                       icon=":material/download:", on_click="ignore")
    c2.download_button("Grid (PNG)", lambda: grid_png(items, image, display, columns), file_name="clrp_grid.png",
                       mime="image/png", key=f"{key}_png", icon=":material/image:", on_click="ignore")
    c3.download_button("Settings (JSON)", viz.settings_json({**settings, "display": display}),
                       file_name="clrp_settings.json", mime="application/json", key=f"{key}_json",
                       icon=":material/settings:", on_click="ignore")


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def class_label(lm, idx: int) -> str:
    return f"{lm.class_names[idx]} ({idx})"
