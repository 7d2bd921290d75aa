"""Progress inside a batch: explained pairs, perturbation steps, ablations.

The runner reports finished images after each batch; an ablation batch can take minutes, so the
work inside it reports small units too. A caller listens on its own thread (the dashboard's run
thread, the CLI's main thread) with :func:`listening`; :func:`tick` is a no-op when nobody
listens (and on Ray workers, whose ticks are not forwarded)."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable

_local = threading.local()


@contextmanager
def listening(callback: Callable[[str, int], None]):
    """Call ``callback(unit, n)`` for every :func:`tick` on this thread while the block runs."""
    previous = getattr(_local, "callback", None)
    _local.callback = callback
    try:
        yield
    finally:
        _local.callback = previous


def tick(unit: str, n: int = 1) -> None:
    cb = getattr(_local, "callback", None)
    if cb is not None and n:
        cb(unit, int(n))
