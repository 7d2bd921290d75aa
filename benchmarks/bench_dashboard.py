#!/usr/bin/env python
"""Dashboard speed, measured (not a test). Prints a table; see docs/dashboard.md for results.

1. Time to the first heatmap on the home page, in a real browser (Debian chromium + Playwright)
   against ``streamlit run app.py``: the *first visitor* after the server started (once the
   server's warm-up -- model and first explanation, :mod:`dashboard.warmup` -- printed that it is
   done; also reported: the warm-up's duration and a visitor arriving the moment the server
   answers), and *warm* (a new browser session on a running server). Goal: < 3 s.
2. Re-render after a colormap / opacity change on the Explain page with 12 maps (6 methods x 2
   classes; explanations come from the cache): browser end-to-end, from the user's input to every
   map redrawn and painted (the grid redraws in the browser: dashboard/static/map_grid.js), and
   the server-side rerun the browser then triggers in the background (AppTest). Goal: < 0.3 s.
3. VGG16 (torchvision, RANDOM weights, ``CLRP_DEV_RANDOM_MODELS=1``) on a 224 px image: a
   dashboard rerun that computes one explanation (cache miss: a new class) versus the engine's
   own ``clrp.explain`` time for the same call. Goal: <= engine + 20 %.

    python benchmarks/bench_dashboard.py [--repeats 5] [--skip-browser]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CLRP_DEV_RANDOM_MODELS", "1")


def med(xs):
    return statistics.median(xs) if xs else float("nan")


GRIDS_JS = ("(() => { const g = []; for (const e of document.querySelectorAll('*')) { const r = e.shadowRoot "
            "&& e.shadowRoot.querySelector('.clrp-map-grid'); if (r) g.push(r); } return g; })()")
FIRST_MAP_JS = f"() => {GRIDS_JS}.some(g => g.dataset.draws !== '0')"
N_HEATMAPS_JS = f"{GRIDS_JS}.filter(g => g.dataset.draws !== '0').reduce((n, g) => n + Number(g.dataset.maps), 0)"
PAINTED_JS = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"


# ---------------------------------------------------------------------------------------------
def bench_browser(repeats: int) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_browser import ARGS, CHROMIUM, start_server, stop_server  # noqa: E402
    from playwright.sync_api import sync_playwright

    out = {}
    tmp = Path(tempfile.mkdtemp(prefix="clrp-bench-"))
    # a visitor the moment the server answers (the warm-up still running)
    (tmp / "a").mkdir()
    proc, url, _ = start_server(tmp / "a")
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            ctx = b.new_context(viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            t0 = time.perf_counter()
            page.goto(url + "/")
            page.wait_for_function(FIRST_MAP_JS, timeout=120_000)
            out["home: first heatmap, visitor at the moment the server answers (s)"] = time.perf_counter() - t0
            b.close()
    finally:
        stop_server(proc)
    proc, url, log = start_server(tmp)
    try:
        t0 = time.perf_counter()
        while "warm-up done" not in log.read_text(errors="replace"):
            if time.perf_counter() - t0 > 300 or proc.poll() is not None:
                raise RuntimeError("the server's warm-up did not finish: " + log.read_text()[-2000:])
            time.sleep(0.1)
        out["server warm-up after answering (s)"] = time.perf_counter() - t0
        out["server warm-up, as it printed (s)"] = float(re.search(r"warm-up done in ([\d.]+) s",
                                                                   log.read_text()).group(1))
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)

            def first_heatmap():
                ctx = b.new_context(viewport={"width": 1400, "height": 1000})
                page = ctx.new_page()
                t0 = time.perf_counter()
                page.goto(url + "/")
                # the home page's map grid has drawn its canvases
                page.wait_for_function(FIRST_MAP_JS, timeout=120_000)
                dt = time.perf_counter() - t0
                return ctx, page, dt

            ctx, page, cold = first_heatmap()
            ctx.close()
            out["home: first heatmap, first visitor after the server started (s)"] = cold
            warm = []
            for _ in range(repeats):
                ctx, page, dt = first_heatmap()
                warm.append(dt)
                ctx.close()
            out["home: first heatmap, warm server, new session (s, median)"] = med(warm)

            # re-render on the Explain page
            ctx = b.new_context(viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            page.goto(url + "/Explain")
            page.wait_for_function(FIRST_MAP_JS, timeout=120_000)
            # a second class: 6 default methods x 2 classes = 12 maps
            classes = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Class(es)")
            classes.locator("input").click()
            page.keyboard.type("circle")
            page.keyboard.press("Enter")
            page.keyboard.press("Escape")
            page.wait_for_function(f"() => {N_HEATMAPS_JS} === 12", timeout=120_000)
            page.wait_for_timeout(1500)
            grid = page.locator(".clrp-map-grid")
            draws = "() => " + GRIDS_JS + "[0].dataset.draws"
            cmap_times, opa_times = [], []
            cmaps = ["hot", "bwr", "viridis", "seismic", "inferno", "coolwarm"]
            for i in range(repeats):
                before = page.evaluate(draws)
                t0 = time.perf_counter()  # from the user's choice to every map redrawn and painted
                grid.locator("select").select_option(cmaps[i % len(cmaps)])
                page.wait_for_function(f"(b) => ({draws})() !== b", arg=before, timeout=30_000)
                page.evaluate(PAINTED_JS)
                cmap_times.append(time.perf_counter() - t0)
                page.wait_for_timeout(500)  # let the background rerun the choice triggered finish
                thumb = grid.locator("input[aria-label='Overlay opacity']")
                thumb.focus()
                before = page.evaluate(draws)
                t0 = time.perf_counter()
                page.keyboard.press("ArrowLeft" if i % 2 == 0 else "ArrowRight")
                page.wait_for_function(f"(b) => ({draws})() !== b", arg=before, timeout=30_000)
                page.evaluate(PAINTED_JS)
                opa_times.append(time.perf_counter() - t0)
                page.wait_for_timeout(500)
            n = page.evaluate(f"() => {N_HEATMAPS_JS}")
            out[f"explain: colormap change -> {n} maps redrawn, browser (s, median)"] = med(cmap_times)
            out[f"explain: colormap change -> {n} maps redrawn, browser (s, max)"] = max(cmap_times)
            out[f"explain: opacity change -> {n} maps redrawn, browser (s, median)"] = med(opa_times)
            out[f"explain: opacity change -> {n} maps redrawn, browser (s, max)"] = max(opa_times)
            ctx.close()
            b.close()
    finally:
        stop_server(proc)
    return out


# ---------------------------------------------------------------------------------------------
def bench_apptest(repeats: int) -> dict:
    import torch
    from streamlit.testing.v1 import AppTest

    import clrp
    from dashboard import core

    out = {}
    # the server-side rerun a display change triggers in the background (the browser has redrawn
    # already; cache hits only)
    from dashboard import ui

    at = AppTest.from_file(str(ROOT / "pages" / "1_Explain.py"), default_timeout=300).run()
    ts = []
    for i in range(repeats):
        at.session_state[ui.DISPLAY_STATE] = {**ui.DEFAULT_DISPLAY, "cmap": ["hot", "bwr"][i % 2]}
        t0 = time.perf_counter()
        at.run()
        ts.append(time.perf_counter() - t0)
    assert not at.exception
    out["explain: colormap change, server script rerun in the background (s, median)"] = med(ts)

    # VGG16 random weights, 224 px: dashboard rerun with one explanation vs the engine alone
    at = AppTest.from_file(str(ROOT / "pages" / "1_Explain.py"), default_timeout=600)
    at.session_state["clrp_model_key"] = "dev:vgg16"
    at.run()
    at.multiselect(key="explain_methods").set_value(["clrp2"]).run()
    assert not at.exception, [e.value for e in at.exception]
    lm = core.load_model("dev:vgg16")
    img = at.session_state["clrp_image"]
    x = lm.load_image(img["data"]).tensor
    def in_thread(fn):
        import threading

        box = {}
        th = threading.Thread(target=lambda: box.setdefault("t", fn()))
        th.start()
        th.join()
        return box["t"]

    def engine_once(cls):
        t0 = time.perf_counter()
        clrp.explain(lm.model, x, [cls], "clrp2", box=lm.box)
        return time.perf_counter() - t0

    dash, eng, eng_thread = [], [], []
    for i in range(repeats):
        cls = 100 + i  # a class not explained before: a cache miss
        t0 = time.perf_counter()
        at.multiselect(key="explain_classes").set_value([cls]).run()
        dash.append(time.perf_counter() - t0)
        assert not at.exception
        eng.append(engine_once(cls))
        # Streamlit runs scripts in a worker thread: time the engine there too (OpenMP behaves
        # differently off the main thread on a loaded machine)
        eng_thread.append(in_thread(lambda: engine_once(cls)))
        print(f"  class {cls}: dashboard {dash[-1]:.3f} s, engine {eng[-1]:.3f} s (main thread), "
              f"{eng_thread[-1]:.3f} s (worker thread)", flush=True)
    hit = []
    for i in range(repeats):
        t0 = time.perf_counter()
        at.multiselect(key="explain_classes").set_value([100 + i]).run()
        hit.append(time.perf_counter() - t0)
    out["vgg16 224px CLRP2: engine clrp.explain, main thread (s, median)"] = med(eng)
    out["vgg16 224px CLRP2: engine clrp.explain, worker thread (s, median)"] = med(eng_thread)
    out["vgg16 224px CLRP2: dashboard rerun incl. explanation (s, median)"] = med(dash)
    out["vgg16 224px CLRP2: dashboard rerun, cached (s, median)"] = med(hit)
    out["vgg16 dashboard / fastest engine"] = med(dash) / min(med(eng), med(eng_thread))
    out["torch threads"] = torch.get_num_threads()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-browser", action="store_true")
    ap.add_argument("--skip-apptest", action="store_true", help="browser measurements only")
    a = ap.parse_args(argv)
    res = {}
    if not a.skip_browser:
        res.update(bench_browser(a.repeats))
    if not a.skip_apptest:
        res.update(bench_apptest(a.repeats))
    print(f"\nclrp dashboard benchmark ({os.cpu_count()} CPUs, bundled model "
          f"{'present' if (ROOT / 'clrp/models/assets/bundled_scenes_vgg.pt').is_file() else 'MISSING: dev:bundled (random weights) used'})")
    w = max(len(k) for k in res)
    for k, v in res.items():
        print(f"  {k:<{w}}  {v:.3f}" if isinstance(v, float) else f"  {k:<{w}}  {v}")


if __name__ == "__main__":
    main()
