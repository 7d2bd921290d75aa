"""Peak memory of one call, for the benchmarks: on CUDA ``torch.cuda.max_memory_allocated`` above
what was allocated before the call (the call's own working set); on the CPU the process's peak
resident set size during the call, sampled every 5 ms by a thread. The CPU number is the whole
process (Python, torch, every model the benchmark holds), not the call's own share: the allocator
reuses freed memory, so an increase over the size before the call would mostly read 0."""
from __future__ import annotations

import threading

import psutil
import torch


def peak_memory(fn, device):
    """``(fn(), peak bytes)`` on ``device`` (see the module docstring for what the bytes are)."""
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
    return out, peak[0]


def memory_kind(device) -> str:
    return ("peak allocated by the call (torch.cuda.max_memory_allocated)" if torch.device(device).type == "cuda"
            else "peak RSS of the whole process during the call (sampled every 5 ms)")
