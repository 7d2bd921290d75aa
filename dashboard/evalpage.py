"""The two evaluation pages (Pointing Game, Ablation): dataset source, settings, a background
run with live progress and charts, cancel, downloads, and this session's past runs."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import clrp
from clrp import viz
from clrp.errors import ClrpError
from clrp.evaluation import perturbation as pert

from . import core, ui

FORMATS = ["auto", "voc", "coco", "csv", "folders"]
REFRESH_S = 1.0
_PLOT_CFG = {"displaylogo": False}


# ---------------------------------------------------------------------------------------------
# Inputs

def dataset_source(kind: str) -> dict | None:
    """Dataset chooser; returns a source dict for ``core.open_source`` or None (message shown)."""
    st.subheader("Dataset")
    src = st.radio("Source", ["Bundled scenes", "Upload an archive", "Folder on the server"], horizontal=True,
                   key=f"{kind}_src")
    if src == "Bundled scenes":
        c1, c2 = st.columns(2)
        n = c1.number_input("Number of scenes", 1, 5000, 16, key=f"{kind}_n",
                            help="Procedural scenes with exact boxes and masks, exported as a VOC dataset")
        seed = c2.number_input("First seed", 0, 2**31 - 1000000, core.SCENES_SEED, key=f"{kind}_scene_seed",
                               help="Seeds 20,000,000+ were never used to train the bundled model")
        return {"kind": "scenes", "n": int(n), "seed": int(seed)}
    if src == "Upload an archive":
        c1, c2 = st.columns([3, 1])
        up = c1.file_uploader("Dataset archive (zip / tar)", type=["zip", "tar", "tgz", "gz", "bz2", "xz"],
                              key=f"{kind}_archive",
                              help="PASCAL VOC (JPEGImages/ + Annotations/), COCO (instances JSON + images), "
                                   "CSV of boxes, or one folder per class. Extracted safely (no paths outside, "
                                   "no links, size limits).")
        fmt = c2.selectbox("Format", FORMATS, key=f"{kind}_fmt")
        if up is None:
            st.info("Upload an archive to evaluate on it.")
            return None
        return {"kind": "upload", "name": up.name, "data": up, "format": fmt}
    roots = core.data_roots()
    if not roots:
        st.info(f"Server folders are disabled. The server admin can allow some with the environment variable "
                f"`{core.ROOTS_ENV}` (colon-separated folders).")
        return None
    c1, c2 = st.columns([3, 1])
    entries = core.list_root_entries(roots)
    choice = c1.selectbox("Folder or file inside the allowed roots", ["(type a path)"] + entries,
                          key=f"{kind}_server_pick")
    path = c1.text_input("Path", value="" if choice == "(type a path)" else choice, key=f"{kind}_server_path",
                         help="Allowed roots: " + ", ".join(str(r) for r in roots))
    fmt = c2.selectbox("Format", FORMATS, key=f"{kind}_server_fmt")
    if not path:
        return None
    try:
        real = core.resolve_server_path(path, roots)
    except ClrpError as e:
        st.error(str(e), icon=":material/error:")
        return None
    return {"kind": "server", "path": str(real), "format": fmt}


def _methods(kind: str, default) -> tuple[list, str]:
    c1, c2 = st.columns([3, 1])
    methods = c1.multiselect("Methods", list(clrp.METHODS), default=list(default), format_func=ui.method_label,
                             key=f"{kind}_methods")
    presets = list(clrp.RULES)
    rules = c2.selectbox("Rule preset", presets, index=presets.index("paper"), key=f"{kind}_rules")
    return methods, rules


def pointing_settings() -> dict:
    methods, rules = _methods("pg", ["lrp", "clrp1", "clrp2", "sglrp", "gradient", "gradcam"])
    c1, c2, c3, c4 = st.columns(4)
    scaled = c1.checkbox("Scale tolerance with image size", False, key="pg_scaled",
                         help="15 px at 224 px, proportionally otherwise")
    tol = c1.number_input("Tolerance (px)", 0.0, 200.0, 15.0, 1.0, key="pg_tol", disabled=scaled)
    use_masks = c2.checkbox("Use masks when the dataset has them", True, key="pg_masks")
    center = c2.checkbox("Centre baseline", True, key="pg_center", help="Always point at the image centre")
    disc = c3.checkbox("Also class-discriminativeness", True, key="pg_disc",
                       help="Pearson r between the maps of the classes of each multi-class image")
    geometry = c3.selectbox("Geometry", ["full", "model"], key="pg_geom",
                            help="full: whole image resized to the model input; model: the model's own "
                                 "resize + centre crop")
    limit = c4.number_input("Max images (0 = all)", 0, 100000, 0, key="pg_limit")
    batch = c4.number_input("Images per batch", 1, 64, 4, key="pg_batch",
                            help="Results are written after each batch (resume and cancel keep them)")
    return {"methods": methods, "rules": rules,
            "protocols": ["pointing"] + (["discriminativeness"] if disc else []),
            "tolerance": "scaled" if scaled else float(tol), "use_masks": bool(use_masks), "center": bool(center),
            "geometry": geometry, "limit": int(limit) or None, "batch_size": int(batch)}


def ablation_settings(lm) -> dict:
    methods, rules = _methods("abl", ["lrp", "clrp1", "clrp2", "gradient"])
    protocols = st.multiselect("Protocols", ["perturbation", "ablation"], default=["perturbation", "ablation"],
                               key="abl_protocols",
                               format_func=lambda p: {"perturbation": "region perturbation (MoRF / LeRF, AOPC)",
                                                      "ablation": "hidden-unit ablation"}[p])
    c1, c2, c3, c4 = st.columns(4)
    patch = c1.number_input("Patch (px)", 2, 64, 8, key="abl_patch")
    steps = c1.number_input("Steps", 1, 1000, 30, key="abl_steps", help="Patches removed one per step")
    baseline = c2.selectbox("Replace with", list(pert.BASELINES), key="abl_baseline")
    orders = c2.multiselect("Orders", list(pert.ORDERS), default=list(pert.ORDERS), key="abl_orders")
    layers = core.feature_layers(lm) if lm is not None else []
    layer = c3.selectbox("Ablation layer", ["(default: the last feature map)"] + layers, key="abl_layer")
    ks = c3.text_input("k values", "1, 2, 4, 8, 16", key="abl_ks", help="Numbers of top units zeroed")
    repeats = c4.number_input("Random repeats", 1, 50, 3, key="abl_repeats")
    limit = c4.number_input("Max images (0 = all)", 0, 100000, 0, key="abl_limit")
    try:
        kvals = tuple(sorted({int(v) for v in ks.replace(";", ",").split(",") if v.strip()}))
        if not kvals or min(kvals) < 1:
            raise ValueError
    except ValueError:
        st.error("k values: give positive integers separated by commas, e.g. 1, 2, 4")
        kvals = None
    return {"methods": methods, "rules": rules, "protocols": protocols, "patch": int(patch), "steps": int(steps),
            "baseline": baseline, "orders": orders,
            "layer": None if layer.startswith("(") else layer, "ks": kvals, "random_repeats": int(repeats),
            "limit": int(limit) or None, "batch_size": 4}


# ---------------------------------------------------------------------------------------------
# Charts

def _pointing_charts(res, summ, key):
    s = summ.get("pointing")
    if s is None or len(s) == 0:
        return
    s = s.reset_index()
    fig = go.Figure()
    fig.add_bar(name="all", x=s["method"], y=s["all"], text=[f"{v:.2f}" for v in s["all"]], textposition="outside")
    if s["difficult"].notna().any():
        fig.add_bar(name="difficult", x=s["method"], y=s["difficult"],
                    text=["" if pd.isna(v) else f"{v:.2f}" for v in s["difficult"]], textposition="outside")
    fig.update_layout(barmode="group", height=320, yaxis=dict(range=[0, 1.1], title="accuracy (mean over classes)"),
                      margin=dict(l=0, r=0, t=30, b=0), title="Pointing Game accuracy per method")
    st.plotly_chart(fig, key=f"{key}_acc", config=_PLOT_CFG)
    cls_cols = [c for c in s.columns if c.startswith("class:")]
    if cls_cols:
        z = s[cls_cols].to_numpy(dtype=float)
        hm = go.Figure(go.Heatmap(z=z, x=[c[6:] for c in cls_cols], y=s["method"], zmin=0, zmax=1,
                                  colorscale=viz.plotly_colorscale("viridis"),
                                  text=np.where(np.isnan(z), "", np.round(z, 2).astype(str)), texttemplate="%{text}",
                                  hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>"))
        hm.update_layout(height=80 + 28 * len(s), margin=dict(l=0, r=0, t=30, b=0), title="Per-class accuracy")
        st.plotly_chart(hm, key=f"{key}_cls", config=_PLOT_CFG)
    cols = [c for c in ["all", "difficult", "n_all", "n_difficult", "n_classes"] if c in s.columns]
    st.dataframe(s[["method"] + cols], hide_index=True, width="stretch")
    if getattr(summ["pointing"], "attrs", {}).get("settings"):
        st.caption(summ["pointing"].attrs["settings"])
    d = summ.get("discriminativeness")
    if d is not None and len(d):
        st.markdown("**Class-discriminativeness** (Pearson r between the maps of two classes of one image; "
                    "lower = more discriminative)")
        st.dataframe(d.reset_index(), hide_index=True, width="stretch")


def _ablation_charts(res, summ, key):
    if "perturbation" in res and len(res["perturbation"]):
        table, curves = pert.aopc_summary(res["perturbation"].to_dict("records"))
        if len(table):
            fig = go.Figure()
            dash = {"morf": "solid", "lerf": "dash", "random": "dot"}
            palette = ["#b2182b", "#2166ac", "#1b7837", "#762a83", "#e08214", "#35978f", "#8c510a", "#4d4d4d",
                       "#c51b7d", "#5aae61", "#f4a582"]
            colour = {m: palette[i % len(palette)] for i, m in enumerate(dict.fromkeys(m for m, _ in curves))}
            for (m, o), c in sorted(curves.items()):
                fig.add_scatter(y=c, x=np.arange(len(c)), mode="lines", name=f"{ui.method_label(m)} {o.upper()}",
                                line=dict(dash=dash.get(o, "solid"), color=colour[m]))
            fig.update_layout(height=340, margin=dict(l=0, r=0, t=30, b=0), xaxis_title="perturbation step",
                              yaxis_title="target score (mean)", title="Region perturbation: MoRF / LeRF curves")
            st.plotly_chart(fig, key=f"{key}_curves", config=_PLOT_CFG)
            t = table.reset_index()
            aopc_cols = [c for c in t.columns if c.startswith("aopc_")]
            bar = go.Figure()
            for c in aopc_cols:
                bar.add_bar(name=c[5:].upper(), x=[ui.method_label(m) for m in t["method"]], y=t[c])
            bar.update_layout(barmode="group", height=300, margin=dict(l=0, r=0, t=30, b=0),
                              title="AOPC (MoRF: higher = better, LeRF: lower = better)", yaxis_title="AOPC")
            st.plotly_chart(bar, key=f"{key}_aopc", config=_PLOT_CFG)
            st.dataframe(t, hide_index=True, width="stretch")
    a = summ.get("ablation")
    if a is not None and len(a):
        a = a.reset_index()
        fig = go.Figure()
        for r, g in a.groupby("ranking", sort=False):
            fig.add_scatter(x=g["k"], y=g["target_drop"], mode="lines+markers", name=f"{r}: target")
            fig.add_scatter(x=g["k"], y=g["others_drop"], mode="lines+markers", name=f"{r}: other classes",
                            line=dict(dash="dash"))
        fig.update_layout(height=320, margin=dict(l=0, r=0, t=30, b=0), xaxis_title="units ablated (k)",
                          yaxis_title="logit drop (mean)", title="Hidden-unit ablation: top-k by relevance vs random")
        st.plotly_chart(fig, key=f"{key}_abl", config=_PLOT_CFG)
        st.dataframe(a, hide_index=True, width="stretch")


def results_view(run: core.EvalRun, key: str):
    """Charts + downloads of a run's results so far (read from disk)."""
    try:
        res, summ = core.run_results(run.out_dir)
    except Exception as e:  # a part being written while we read: try again at the next refresh
        st.caption(f"results not readable yet ({type(e).__name__})")
        return
    if not res:
        st.caption("No results written yet (results appear after each batch).")
        return
    if run.kind == "pointing":
        _pointing_charts(res, summ, key)
    else:
        _ablation_charts(res, summ, key)
    cols = st.columns(len(res) + 1)
    for i, proto in enumerate(res):
        cols[i].download_button(f"{proto} rows (CSV)", core.results_csv(res, proto), f"{run.id}_{proto}.csv",
                                "text/csv", key=f"{key}_csv_{proto}", icon=":material/download:")
    cols[-1].download_button("Settings (JSON)", viz.settings_json(run.settings()), f"{run.id}_settings.json",
                             "application/json", key=f"{key}_json", icon=":material/settings:")


def _status_line(run: core.EvalRun):
    total = run.total if run.total is not None else "?"
    elapsed = (run.finished or time.time()) - (run.started or run.created)
    text = f"{run.state} — {run.done}/{total} images — {elapsed:.0f} s"
    st.progress(run.fraction, text=text)
    if run.state == "done":
        st.success(run.message, icon=":material/check_circle:")
    elif run.state == "failed":
        st.error(run.message, icon=":material/error:")
        if run.detail:
            with st.expander("Details"):
                st.code(run.detail.splitlines()[0], language=None)
    elif run.state == "cancelled":
        st.warning(run.message, icon=":material/cancel:")
    elif run.state == "queued":
        st.info("Waiting for another evaluation on this server to finish…")
    if run.problems:
        with st.expander(f"{len(run.problems)} file(s) skipped"):
            st.code("\n".join(run.problems[:50]), language=None)


def live_panel(run_id: str, kind: str):
    """Progress + charts of the current run; refreshes itself every second while it runs."""
    run = core.REGISTRY.get(ui.session_id(), run_id)
    if run is None:
        return

    def panel():
        r = core.REGISTRY.get(ui.session_id(), run_id)
        st.markdown(f"**Run {r.id}** · {r.label}")
        _status_line(r)
        if r.active:
            st.button("Cancel", key=f"{kind}_cancel_{r.id}", on_click=r.cancel, icon=":material/stop:",
                      help="Stops after the current batch; finished batches stay")
        results_view(r, key=f"{kind}_live_{r.id}")
        if not r.active and st.session_state.get(f"{kind}_polling") == r.id:
            st.session_state[f"{kind}_polling"] = None
            st.rerun()  # stop polling: redraw the page once without the timer

    if run.active:
        st.session_state[f"{kind}_polling"] = run.id
        st.fragment(run_every=REFRESH_S)(panel)()
    else:
        panel()


# ---------------------------------------------------------------------------------------------
# The page

def render(kind: str):
    title = {"pointing": "Pointing Game", "ablation": "Ablation"}[kind]
    ui.page(title)
    st.title(title)
    if kind == "pointing":
        st.caption("For each (image, class present): is the map's arg-max within the tolerance of the class's "
                   "ground truth? Score = mean of per-class accuracies; “difficult” = small object with another "
                   "class present. Runs in the background: you can leave the page and come back.")
    else:
        st.caption("Region perturbation: remove the most (MoRF) or least (LeRF) relevant patches first and follow "
                   "the target score (AOPC). Hidden-unit ablation: zero the top-k units of a layer by relevance and "
                   "compare the drop of the target with the other classes'. Runs in the background.")
    lm = ui.model_picker()
    model_key = st.session_state.get(ui.MODEL_STATE)
    source = dataset_source(kind)
    st.subheader("Settings")
    with ui.guard("the settings"):
        config = pointing_settings() if kind == "pointing" else ablation_settings(lm)
    ready = lm is not None and source is not None and config.get("methods") and \
        (kind == "pointing" or (config.get("protocols") and config.get("ks")))
    if lm is not None and not config.get("methods"):
        st.info("Choose at least one method.")
    if st.button("Run", type="primary", disabled=not ready, key=f"{kind}_start", icon=":material/play_arrow:"):
        with ui.guard("starting the run"):
            src = dict(source)
            if src["kind"] == "upload":
                up = src.pop("data")
                src["path"] = str(core.save_upload(up.name, up.getvalue()))
            label = (f"{model_key} · " + (f"{src['n']} scenes" if src["kind"] == "scenes" else
                                          src.get("name") or src.get("path")) + " · " +
                     ", ".join(ui.method_label(m) for m in config["methods"]))
            run = core.REGISTRY.start(ui.session_id(), kind, model_key, src, config, model_loader=ui.get_model,
                                      label=label)
            st.session_state[f"{kind}_current"] = run.id
    current = st.session_state.get(f"{kind}_current")
    if current:
        st.subheader("Current run")
        live_panel(current, kind)
    past = [r for r in core.REGISTRY.list(ui.session_id(), kind) if r.id != current]
    if past:
        st.subheader("Earlier runs in this session")
        st.dataframe(pd.DataFrame([{"run": r.id, "state": r.state, "images": r.done, "what": r.label,
                                    "message": r.message} for r in past]), hide_index=True, width="stretch")
        pick = st.selectbox("Show the results of", [r.id for r in past], key=f"{kind}_past")
        r = next(r for r in past if r.id == pick)
        _status_line(r)
        results_view(r, key=f"{kind}_past_{r.id}")
