#!/usr/bin/env python
"""Is the web server responsive while evaluations run? Measured, not a test (issue 16).

Starts ``streamlit run app.py`` on 127.0.0.1 (a free port, a private runs folder, a lab TOML whose
``[server.limits]`` lets two evaluations run at once), then twice -- idle, and while two
Pointing Game evaluations of two users run as jobs (worker processes started by the server's job
service) -- measures:

- ``/_stcore/health`` latency (``--health`` requests, 0.2 s apart);
- a fresh browser session's first heatmap on the Explain page (Playwright + Debian chromium,
  ``--repeats`` new contexts): from ``goto`` to the map grid's first drawn map;
- the server process's CPU share over the phase (CPU seconds / wall seconds; 1.0 = one core),
  and its worker processes' share (the jobs).

Prints median and p95 per phase and the ratio loaded/idle. Goal: first heatmap within 2x idle.

    python benchmarks/bench_server.py [--repeats 7] [--health 40] [--scenes 400] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("CLRP_DEV_RANDOM_MODELS", "1")

GRIDS_JS = ("(() => { const g = []; for (const e of document.querySelectorAll('*')) { const r = e.shadowRoot "
            "&& e.shadowRoot.querySelector('.clrp-map-grid'); if (r) g.push(r); } return g; })()")
FIRST_MAP_JS = f"() => {GRIDS_JS}.some(g => g.dataset.draws !== '0')"


def p95(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


def summary(xs) -> dict:
    return {"median": statistics.median(xs), "p95": p95(xs), "n": len(xs)}


class CpuShare:
    """CPU seconds of the server process (and, apart, its children: the job workers) over a span."""

    def __init__(self, pid: int):
        import psutil

        self.proc = psutil.Process(pid)

    def _times(self):
        import psutil

        t = self.proc.cpu_times()
        kids = 0.0
        for c in self.proc.children(recursive=True):
            try:
                ct = c.cpu_times()
                kids += ct.user + ct.system
            except psutil.Error:
                pass
        return t.user + t.system, kids

    def __enter__(self):
        self.t0, (self.s0, self.k0) = time.perf_counter(), self._times()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        s1, k1 = self._times()
        self.server = (s1 - self.s0) / wall
        self.workers = max(0.0, k1 - self.k0) / wall  # workers that ended meanwhile are not counted


def measure(url: str, browser, repeats: int, health_n: int, pid: int) -> dict:
    health = []
    heat = []
    with CpuShare(pid) as cpu:
        for _ in range(health_n):
            t0 = time.perf_counter()
            with urllib.request.urlopen(url + "/_stcore/health", timeout=120) as r:
                assert r.read().strip() == b"ok"
            health.append(time.perf_counter() - t0)
            time.sleep(0.2)
        for _ in range(repeats):
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            t0 = time.perf_counter()
            page.goto(url + "/Explain")
            page.wait_for_function(FIRST_MAP_JS, timeout=300_000)
            heat.append(time.perf_counter() - t0)
            ctx.close()
    return {"health_s": summary(health), "first_heatmap_s": summary(heat), "server_cpu_share": cpu.server,
            "workers_cpu_share": cpu.workers}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7, help="fresh sessions per phase")
    ap.add_argument("--health", type=int, default=40, help="health requests per phase")
    ap.add_argument("--scenes", type=int, default=400, help="scenes per evaluation job (they must outlast the phase)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright
    from test_browser import ARGS, CHROMIUM, start_server, stop_server

    from dashboard import jobs
    from dashboard.identity import User

    tmp = Path(tempfile.mkdtemp(prefix="clrp-bench-server-"))
    toml = tmp / "lab.toml"
    toml.write_text("[server.limits]\njobs_running_server = 2\njobs_running_per_user = 1\n")
    os.environ["CLRP_MODELS_CONFIG"] = str(toml)  # the same limits for this process's submits
    proc, url, log = start_server(tmp, {"CLRP_MODELS_CONFIG": str(toml)})
    out = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    try:
        t0 = time.perf_counter()
        while "warm-up done" not in log.read_text(errors="replace"):
            if time.perf_counter() - t0 > 300 or proc.poll() is not None:
                raise RuntimeError("the server's warm-up did not finish: " + log.read_text()[-2000:])
            time.sleep(0.2)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            # one visit of an evaluation page: the server's job service (and its scheduler) is up
            ctx = b.new_context()
            page = ctx.new_page()
            page.goto(url + "/Pointing_Game")
            page.wait_for_selector('[data-testid="stMain"] h1', timeout=300_000)
            ctx.close()
            warm = b.new_context().new_page()  # the Explain page's cache, warm for both phases
            warm.goto(url + "/Explain")
            warm.wait_for_function(FIRST_MAP_JS, timeout=300_000)
            warm.context.close()
            out["idle"] = measure(url, b, args.repeats, args.health, proc.pid)

            # two users' evaluations, submitted to the server's store; its scheduler starts the workers
            store = jobs.JobService(tmp / "runs", start=False)
            cfg = {"methods": ["lrp", "clrp2", "gradient"], "protocols": ["pointing"], "batch_size": 4}
            users = [User(f"bench:{n}", n) for n in ("alice", "bob")]
            ids = [store.submit(u, "pointing", "dev:bundled", {"kind": "scenes", "n": args.scenes}, cfg).id
                   for u in users]
            admin = User("bench:admin", "admin", True)
            deadline = time.time() + 300
            while not all(store.get(admin, i).done > 0 for i in ids):  # both workers past their start-up
                if time.time() > deadline:
                    raise RuntimeError(f"jobs did not start: {[store.get(admin, i) for i in ids]}")
                time.sleep(0.5)
            out["loaded"] = measure(url, b, args.repeats, args.health, proc.pid)
            states = [store.get(admin, i) for i in ids]
            out["jobs_while_measuring"] = [{"state": j.state, "done": j.done, "total": j.total} for j in states]
            if not all(j.state == "running" for j in states):
                print("WARNING: a job ended during the loaded phase; raise --scenes", file=sys.stderr)
            for i in ids:
                store.cancel(admin, i)
            for i in ids:
                store.wait(admin, i, 300)
            b.close()
    finally:
        stop_server(proc)
    out["ratio_first_heatmap_median"] = out["loaded"]["first_heatmap_s"]["median"] / out["idle"]["first_heatmap_s"]["median"]
    out["load_average_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
