"""Peak memory of one call, for the benchmarks: ``torch.cuda.max_memory_allocated`` above what was
allocated before (CUDA), or the process's resident set size above its size before, sampled every
5 ms by a thread (CPU: a lower bound on the true peak, which can fall between two samples)."""
from __future__ import annotations

import threading

import psutil
import torch


def peak_memory(fn, device):
    """``(fn(), peak bytes above the baseline)`` on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, torch.cuda.max_memory_allocated(device) - before
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.005):
            peak[0] = max(peak[0], proc.memory_info().rss)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        stop.set()
        t.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return out, peak[0] - before


def memory_kind(device) -> str:
    return "peak allocated (torch.cuda)" if torch.device(device).type == "cuda" else "peak RSS increase (sampled)"
