"""What the evaluation pages (Pointing Game, Ablation) share: the dataset source, method and
protocol widgets, submitting a run (or a duration estimate) as a job (:mod:`dashboard.jobs`: worker
processes, never this server's threads), its live progress and charts, cancel, downloads and the
user's earlier runs (kept across reloads and server restarts; an admin sees everyone's). Each
page's own settings live in its page file."""
from __future__ import annotations

import time

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import dataclasses

import clrp
from clrp import viz
from clrp.scenes.presets import DEFAULT_SEED, PRESET_MODEL, PRESETS
from clrp.errors import ClrpError
from clrp.datasets import FORMATS as DATASET_FORMATS
from clrp.evaluation.runner import format_seconds
from clrp.evaluation.runs import rows_csv
from clrp.evaluation.protocol import REGISTRY, built_in_protocols, field_default

from . import core, identity, jobs, ui
from .safetext import plot_text

FORMATS = ["auto", *DATASET_FORMATS]
REFRESH_S = 1.0
_PLOT_CFG = {"displaylogo": False}


# ---------------------------------------------------------------------------------------------
# Inputs

def page_frame(kind: str, title: str, caption: str):
    """The top of an evaluation page: title, model picker, dataset source, the settings heading.
    Returns ``(LoadedModel or None, source dict or None)``."""
    ui.page(title)
    st.title(title)
    st.caption(caption)
    lm = ui.model_picker()
    source = dataset_source(kind)
    st.subheader("Settings")
    return lm, source


def dataset_source(kind: str) -> dict | None:
    """Dataset chooser; returns a source dict for ``core.open_source`` or None (message shown)."""
    st.subheader("Dataset")
    src = st.radio("Source", ["Bundled scenes", "Upload an archive", "Folder on the server"], horizontal=True,
                   key=f"{kind}_src")
    if src == "Bundled scenes":
        c0, c1, c2 = st.columns([2, 1, 1])
        preset = c0.selectbox("Preset", list(PRESETS), key=f"{kind}_preset",
                              format_func=lambda p: f"{p} — {PRESETS[p].description}",
                              help="The same datasets as `python -m clrp evaluate --dataset scenes:N` / `scenes-hard:N`; "
                                   "each preset has its model (" + ", ".join(f"{p}: {m}" for p, m in PRESET_MODEL.items())
                                   + "), any model with the same ten classes can be evaluated on it")
        n = c1.number_input("Number of scenes", 1, 5000, 16, key=f"{kind}_n",
                            help="Procedural scenes with exact boxes and masks, exported as a VOC dataset")
        seed = c2.number_input("First seed", 0, 2**31 - 1000000, DEFAULT_SEED, key=f"{kind}_scene_seed",
                               help="Evaluation scenes start at 30,000,000 (as the command line's scenes:N); "
                                    "seeds from 10,000,000 on were never used in training")
        return {"kind": "scenes", "preset": preset, "n": int(n), "seed": int(seed)}
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
    # admins see the server's paths; others see each root by its folder name (``root/sub``)
    shown_path = str if ui.is_admin() else (lambda p: core.display_path(p, roots))
    c1, c2 = st.columns([3, 1])
    entries = core.list_root_entries(roots)  # already "<root name>/<entry>": no server path
    choice = c1.selectbox("Folder or file inside the allowed roots", ["(type a path)"] + entries,
                          key=f"{kind}_server_pick")
    path = c1.text_input("Path", value="" if choice == "(type a path)" else choice,
                         key=f"{kind}_server_path",
                         help="Allowed roots: " + ", ".join(ui.md(shown_path(r)) for r in roots))
    fmt = c2.selectbox("Format", FORMATS, key=f"{kind}_server_fmt")
    if not path:
        return None
    try:
        real = core.resolve_server_path(path, roots)
    except ClrpError as e:
        st.error(ui.shown(e), icon=":material/error:")
        return None
    return {"kind": "server", "path": str(real), "format": fmt}


def method_picker(kind: str, default) -> tuple[list, str]:
    """Methods and the LRP rule preset."""
    c1, c2 = st.columns([3, 1])
    methods = c1.multiselect("Methods", list(clrp.METHODS), default=list(default), format_func=ui.method_label,
                             key=f"{kind}_methods")
    presets = list(clrp.RULES)
    rules = c2.selectbox("Rule preset", presets, index=presets.index("paper"), key=f"{kind}_rules")
    return methods, rules


_BUILT_IN = built_in_protocols()  # their options have own widgets


def protocol_picker(kind: str, page: str, default) -> list:
    """The registry's protocols offered on this page (plug-ins appear here without code changes)."""
    names = [n for n, p in REGISTRY.items() if p.page == page]
    return st.multiselect("Protocols", names, default=[d for d in default if d in names], key=f"{kind}_protocols",
                          format_func=lambda n: REGISTRY[n].title,
                          help="; ".join(f"{REGISTRY[n].title}: {REGISTRY[n].description}" for n in names))


def plugin_options(kind: str, protocols) -> dict:
    """Widgets for the options of protocols without a hand-made form, from their Options dataclass."""
    out = {}
    for name in protocols:
        if name in _BUILT_IN:
            continue
        fields = dataclasses.fields(REGISTRY[name].Options)
        if not fields:
            continue
        st.markdown(f"**{REGISTRY[name].title}**")
        cols = st.columns(min(4, len(fields)))
        opts = {}
        for i, f in enumerate(fields):
            d, c, k = field_default(f), cols[i % len(cols)], f"{kind}_{name}_{f.name}"
            if isinstance(d, bool):
                opts[f.name] = c.checkbox(f.name, d, key=k)
            elif isinstance(d, int):
                opts[f.name] = int(c.number_input(f.name, value=d, step=1, key=k))
            elif isinstance(d, float):
                opts[f.name] = float(c.number_input(f.name, value=d, key=k))
            else:
                opts[f.name] = c.text_input(f.name, "" if d is None else str(d), key=k) or d
        out.setdefault("options", {})[name] = opts
    return out


# ---------------------------------------------------------------------------------------------
# Charts

_DASH = ["solid", "dash", "dot", "dashdot"]
_PALETTE = ["#b2182b", "#2166ac", "#1b7837", "#762a83", "#e08214", "#35978f", "#8c510a", "#4d4d4d", "#c51b7d",
            "#5aae61", "#f4a582"]


def _label(v):
    """Method names as the rest of the dashboard writes them (LRP, CLRP2, Centre baseline)."""
    return ui.method_label(v) if isinstance(v, str) else str(v)


def _plot_label(v) -> str:
    """A label inside a Plotly figure: dataset text (class names) cannot become Plotly markup."""
    return plot_text(_label(v))


_NAME_COLUMNS = ("method", "ranking")


def draw_chart(chart, key: str):
    """Draw a protocol's :class:`~clrp.evaluation.protocol.Chart` (bar, line, heatmap, table)."""
    df = chart.data
    if df is None or len(df) == 0:
        return
    if chart.kind == "table":
        df = df.copy()
        for c in _NAME_COLUMNS:
            if c in df.columns:
                df[c] = df[c].map(_label)
        st.dataframe(df, hide_index=True, width="stretch")
    elif chart.kind == "heatmap":
        z = df.pivot_table(index=chart.y, columns=chart.x, values=chart.value, sort=False)
        hm = go.Figure(go.Heatmap(z=z.to_numpy(dtype=float), x=[plot_text(c) for c in z.columns],
                                  y=[_plot_label(v) for v in z.index],
                                  zmin=(chart.y_range or (None, None))[0], zmax=(chart.y_range or (None, None))[1],
                                  colorscale=viz.plotly_colorscale("viridis"), texttemplate="%{z:.2f}",
                                  hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>"))
        hm.update_layout(height=80 + 28 * len(z), margin=dict(l=0, r=0, t=30, b=0), title=chart.title)
        st.plotly_chart(hm, key=key, config=_PLOT_CFG)
    else:
        fig = go.Figure()
        colours = {g: _PALETTE[i % len(_PALETTE)] for i, g in enumerate(dict.fromkeys(df[chart.series]))} \
            if chart.series else {}
        dashes = {d: _DASH[i % len(_DASH)] for i, d in enumerate(dict.fromkeys(df[chart.dash]))} if chart.dash else {}
        for g, part in (df.groupby(chart.series, sort=False) if chart.series else [(None, df)]):
            if chart.kind == "bar":
                fig.add_bar(name=_plot_label(g) if g is not None else chart.y, x=[_plot_label(v) for v in part[chart.x]],
                            y=part[chart.y], text=[f"{v:.2f}" for v in part[chart.y]], textposition="outside")
            else:
                for d, line in (part.groupby(chart.dash, sort=False) if chart.dash else [(None, part)]):
                    name = " ".join(_plot_label(v) for v in (g, d) if v is not None)
                    fig.add_scatter(x=line[chart.x], y=line[chart.y], mode="lines+markers" if len(line) < 20 else "lines",
                                    name=name or chart.y, line=dict(color=colours.get(g), dash=dashes.get(d, "solid")))
        fig.update_layout(barmode="group", height=320, margin=dict(l=0, r=0, t=30, b=0), title=chart.title,
                          xaxis_title=chart.x_title, yaxis=dict(title=chart.y_title, range=list(chart.y_range)
                                                                if chart.y_range else None))
        st.plotly_chart(fig, key=key, config=_PLOT_CFG)
    if chart.caption:
        st.caption(chart.caption)


def results_view(run: jobs.Job, key: str):
    """Charts + downloads of a run's results so far (read from disk)."""
    try:
        res, summ = core.run_results(run.out_dir)
    except Exception as e:  # a part being written while we read: try again at the next refresh
        st.caption(f"results not readable yet ({ui.md(type(e).__name__)})")
        return
    if not res:
        st.caption("No results written yet (results appear after each batch).")
        return
    for proto in res:
        if proto in REGISTRY and proto in summ:
            st.markdown(f"**{REGISTRY[proto].title}**")
            for i, chart in enumerate(REGISTRY[proto].charts(summ[proto], rows=res[proto])):
                draw_chart(chart, f"{key}_{proto}_{i}")
    if run.active:  # a refreshing view: downloads come with the final page, which holds every row
        st.caption("Downloads appear when the run ends (cancel keeps what is done).")
        return
    cols = st.columns(len(res) + 1)
    for i, proto in enumerate(res):
        # read from disk when clicked: a button rendered before the run's last batch still gives every row
        cols[i].download_button(f"{ui.md(proto)} rows (CSV)", lambda proto=proto: rows_csv(
                                    core.run_results(run.out_dir)[0][proto]), ui.safe_filename(f"{run.id}_{proto}.csv"),
                                "text/csv", key=f"{key}_csv_{proto}", icon=":material/download:", on_click="ignore")
    cols[-1].download_button("Settings (JSON)", viz.settings_json(run.settings()), ui.safe_filename(f"{run.id}_settings.json"),
                             "application/json", key=f"{key}_json", icon=":material/settings:", on_click="ignore")


def status_line(run: jobs.Job):
    total = run.total if run.total is not None else "?"
    now = time.time()
    elapsed = (run.finished or now) - (run.started or run.created)
    fraction, left = run.progress_estimate(now)
    text = f"{run.state} — {run.done}/{total} images — {format_seconds(elapsed)}"
    if run.active and run.state == "running":
        text += f", about {format_seconds(left)} left" if left is not None else ", time left known after the first image"
    work = ", ".join(f"{n} {u}" for u, n in run.units.items())
    st.progress(fraction, text=text + (f" — {work}" if work else ""))
    if run.state == "done":
        st.success(ui.shown(run.message), icon=":material/check_circle:")
    elif run.state == "failed":
        st.error(ui.shown(run.message), icon=":material/error:")
        if run.detail:
            with st.expander("Details"):
                first = run.detail.splitlines()[0]
                st.code(first if ui.is_admin() else ui.redact(first), language=None)
    elif run.state in ("cancelled", "interrupted"):
        st.warning(ui.shown(run.message), icon=":material/cancel:")
    elif run.state == "queued":
        st.info("Waiting for another evaluation on this server to finish…")
    if run.problems:
        with st.expander(f"{len(run.problems)} file(s) skipped"):
            text = "\n".join(run.problems[:50])
            st.code(text if ui.is_admin() else ui.redact(text), language=None)


def live_panel(run_id: str, kind: str, slot: str = "current"):
    """Progress + charts of a run; refreshes itself every second while it runs (reading the job
    store and the run folder: the work is done by a worker process)."""
    user = identity.current_user()
    run = jobs.service().get(user, run_id)
    if run is None:
        return
    polling = f"{kind}_polling_{slot}"

    def panel():
        r = jobs.service().get(user, run_id)
        if r is None:
            return
        if not r.active and st.session_state.get(polling) == r.id:
            st.session_state[polling] = None
            st.rerun()  # the run ended: redraw the whole page once, without the timer (and with downloads)
        who = f" · {ui.md(r.owner)}" if r.owner != user.id else ""
        st.markdown(f"**Run `{r.id}`** · {ui.shown(r.label)}{who}")  # ids are our own tokens
        status_line(r)
        if r.active:
            st.button("Cancel", key=f"{kind}_cancel_{slot}_{r.id}", on_click=jobs.service().cancel, args=(user, r.id),
                      icon=":material/stop:", help="Stops after the current batch; finished batches stay")
        results_view(r, key=f"{kind}_{slot}_{r.id}")

    if run.active:
        st.session_state[polling] = run.id
        st.fragment(run_every=REFRESH_S)(panel)()
    else:
        panel()


def estimate_view(kind: str, job_id: str) -> None:
    """The duration estimate's job: "timing…" while a worker runs it, then its result."""
    user = identity.current_user()
    polling = f"{kind}_estimate_polling"

    def panel():
        j = jobs.service().get(user, job_id)
        if j is None:
            return
        if j.active:
            st.session_state[polling] = j.id
            st.info("Estimating: timing the first images in a worker…", icon=":material/timer:")
        elif st.session_state.get(polling) == j.id:
            st.session_state[polling] = None
            st.rerun()
        elif j.state == "done":
            st.info(f"Estimate: {j.message} on this server now.", icon=":material/timer:")
        else:
            st.warning(f"No estimate: {j.message}", icon=":material/timer:")

    j = jobs.service().get(user, job_id)
    if j is not None and j.active:
        st.fragment(run_every=REFRESH_S)(panel)()
    else:
        panel()


# ---------------------------------------------------------------------------------------------
# Starting runs, the current run, earlier runs

def _submit(kind: str, model_key: str, source: dict, config: dict) -> jobs.Job:
    src = dict(source)
    upload = None
    if src["kind"] == "upload":
        up = src.pop("data")
        upload = (up.name, up.getvalue())  # stored once per content in the user's upload store
        src["name"] = up.name
    where = (f"{src['n']} {src.get('preset', 'scenes')}" if src["kind"] == "scenes" else src.get("name")
             or core.display_path(src["path"], core.data_roots()))  # a server folder as '<root name>/...'
    label = (f"{model_key} · {where} · " +
             ", ".join(ui.method_label(m) for m in config["methods"]))
    return jobs.service().submit(identity.current_user(), kind, model_key, src, config, label=label, upload=upload)


def _settings_key(model_key, source, config) -> str:
    import json

    src = {k: (v.name if k == "data" else v) for k, v in (source or {}).items()}
    return json.dumps([model_key, src, config], sort_keys=True, default=str)


def run_controls(kind: str, lm, source: dict | None, config: dict | None, ready: bool) -> None:
    """The Run button, the current run (live), the user's earlier runs of this page and, for an
    admin, everyone's."""
    model_key = st.session_state.get(ui.MODEL_STATE)
    ready = bool(ready and lm is not None and source is not None and config)
    c1, c2, c3 = st.columns([1, 1.6, 5])
    if c1.button("Run", type="primary", disabled=not ready, key=f"{kind}_start", icon=":material/play_arrow:"):
        with ui.guard("starting the run"):
            st.session_state[f"{kind}_current"] = _submit(kind, model_key, source, config).id
    if c2.button("Estimate duration", disabled=not ready, key=f"{kind}_estimate", icon=":material/timer:",
                 help="Runs these settings on the dataset's first 2 images in a worker and extrapolates (the first "
                      "image's one-off costs counted once)"):
        with ui.guard("estimating the duration"):
            job = _submit(jobs.ESTIMATE, model_key, source, config)
            st.session_state[f"{kind}_estimate_job"] = (_settings_key(model_key, source, config), job.id)
    shown = st.session_state.get(f"{kind}_estimate_job")
    if shown and shown[0] == _settings_key(model_key, source, config):
        with c3:
            estimate_view(kind, shown[1])
    user = identity.current_user()
    current = st.session_state.get(f"{kind}_current")
    if current:
        st.subheader("Current run")
        live_panel(current, kind)
    past = [r for r in jobs.service().list(user, kind) if r.id != current]
    if past:
        st.subheader("Your earlier runs")
        st.dataframe(pd.DataFrame([{"run": r.id, "state": r.state, "images": r.done, "what": r.label,
                                    "message": r.message} for r in past]), hide_index=True, width="stretch")
        pick = st.selectbox("Show the results of", [r.id for r in past], key=f"{kind}_past")
        live_panel(pick, kind, slot="past")
    if user.is_admin:
        others = [r for r in jobs.service().list_all(user, kind) if r.owner != user.id]
        if others:
            with st.expander(f"Every user's runs (admin): {len(others)}"):
                st.dataframe(pd.DataFrame([{"run": r.id, "owner": r.owner, "state": r.state, "images": r.done,
                                            "what": r.label} for r in others]), hide_index=True, width="stretch")
                active = [r.id for r in others if r.active]
                if active:
                    a1, a2 = st.columns([3, 1])
                    pick = a1.selectbox("Active run", active, key=f"{kind}_admin_pick")
                    a2.button("Cancel it", key=f"{kind}_admin_cancel", on_click=jobs.service().cancel,
                              args=(user, pick), icon=":material/stop:")
