"""Warm the server at start (and start its job service, :mod:`dashboard.jobs`): import torch and clrp, load the default model and compute the home
page's first explanation into the shared caches, in a background thread (the server answers at
once; a visitor arriving meanwhile waits on the same cached call instead of repeating it).

Used as the start-up hook of the ``st.App`` that ``streamlit run app.py`` serves. ``CLRP_WARMUP=0``
turns it off."""
from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import asynccontextmanager

log = logging.getLogger("clrp.dashboard")

WARMUP_ENV = "CLRP_WARMUP"
#: Set when the warm-up finished (or failed: visitors then compute, and see, what went wrong).
warmed = threading.Event()


def warm(timeout: float = 60.0) -> None:
    """Load the default model and compute the first explanation into the caches."""
    from streamlit import runtime

    t0 = time.perf_counter()
    # the caches warn once per call made outside a page run ("missing ScriptRunContext"): expected here
    quiet = logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        deadline = time.time() + timeout
        while not runtime.exists() and time.time() < deadline:  # the caches live in the runtime
            time.sleep(0.05)
        from dashboard import core, ui

        key = core.default_model_key(ui.cached_model_choices())
        if key is not None:
            ui.get_model(key)
            ui.first_explanation(key)
            ui.feature_layers(key)
        print(f"clrp: warm-up done in {time.perf_counter() - t0:.1f} s (model {key})", flush=True)
    except Exception:  # a broken default model is reported to visitors by the pages themselves
        log.exception("warm-up failed")
    finally:
        quiet.setLevel(level)
        warmed.set()


def start_jobs() -> None:
    """Start the job service at server start, so that jobs queued or left running by a previous
    server are resumed now, not when someone next opens an evaluation page."""
    try:
        from dashboard import jobs

        jobs.service()
    except Exception:  # a bad runs folder: the evaluation pages say what is wrong
        log.exception("the job service did not start")


@asynccontextmanager
async def lifespan(app):
    threading.Thread(target=start_jobs, name="clrp-jobs-start", daemon=True).start()
    if os.environ.get(WARMUP_ENV, "1").strip().lower() not in ("0", "false", "no", "off"):
        threading.Thread(target=warm, name="clrp-warm-up", daemon=True).start()
    yield
