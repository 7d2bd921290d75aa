"""Where models run and how many images an explanation call takes: one policy for the CLI, the
runner and the dashboard.

Device (``resolve_device``), first match wins:

1. an explicit request (``--device cuda:1``, ``device="cpu"``); ``"auto"`` or ``None`` is not one;
2. the model's own ``device`` (the ``device = ...`` key of its ``[[models]]`` entry in the lab TOML);
3. the ``CLRP_DEVICE`` environment variable (the server's default for every model);
4. ``auto``: the accelerator the model already sits on, else ``cuda`` when CUDA is available,
   else the CPU.

A model is moved once (``place``) and then shared read-only; explanations never move it back.

Batch size (``batch_limit``): on a CUDA device one image is explained first while the peak of
allocated memory is recorded (``torch.cuda.max_memory_allocated`` above what was allocated
before); the rest go in batches of ``floor(HEADROOM * free / per_image)`` images
(``torch.cuda.mem_get_info``; ``HEADROOM`` = 0.7 leaves room for the allocator's fragmentation
and for other users of the card), between 1 and ``cap`` (default 64). On the CPU memory is not
what limits an explanation and a larger batch is not faster, so batches are ``cap`` images
(default 16). If a batch still runs out of memory it is retried with half as many images, down
to one; one image that does not fit is a ``DeviceOutOfMemory`` (a ``ClrpError``), never a crash.
"""
from __future__ import annotations

import logging
import math
import os
import threading

import torch

from .errors import ClrpError

__all__ = ["DEVICE_ENV", "DeviceOutOfMemory", "resolve_device", "place", "device_of", "describe",
           "batch_limit", "explain_batched", "without_oom_crash", "HEADROOM", "GPU_CAP", "CPU_CAP"]

DEVICE_ENV = "CLRP_DEVICE"
HEADROOM = 0.7
GPU_CAP = 64
CPU_CAP = 16

_log = logging.getLogger(__name__)


class DeviceOutOfMemory(ClrpError):
    """Even one image does not fit in the device's free memory."""


def _is_auto(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto"))


def _parse(value, source: str) -> torch.device:
    text = str(value).strip().lower()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise ClrpError(f"{source}: {value!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ClrpError(f"{source}: {value!r} asks for CUDA but CUDA is not available on this machine "
                            f"(use auto or cpu)")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ClrpError(f"{source}: {value!r} does not exist: this machine has {n} CUDA device(s) "
                            f"(cuda:0..cuda:{n - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ClrpError(f"{source}: {value!r}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise ClrpError(f"{source}: {value!r} is not supported; use auto, cpu, cuda or cuda:N")
    return dev


def resolve_device(requested="auto", *, configured=None, current=None) -> torch.device:
    """The device to run on (see the module docstring for the order). ``configured``: the model's
    own setting (lab TOML); ``current``: where the model is now. Unknown or unavailable devices:
    ``ClrpError`` naming where the setting came from."""
    if not _is_auto(requested):
        return _parse(requested, "device")
    if not _is_auto(configured):
        return _parse(configured, "the model's device setting")
    env = os.environ.get(DEVICE_ENV)
    if not _is_auto(env):
        return _parse(env, f"${DEVICE_ENV}")
    if current is not None and torch.device(current).type != "cpu":
        return torch.device(current)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def device_of(model) -> torch.device:
    """The device of a module's (or a ``LoadedModel``'s) first parameter or buffer (CPU if none)."""
    net = getattr(model, "model", model)
    for t in (*net.parameters(), *net.buffers()):
        return t.device
    return torch.device("cpu")


def describe(device) -> str:
    """``cuda:0 (NVIDIA H200)`` / ``cpu``: how the dashboard and run settings name a device."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        try:
            return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
        except (RuntimeError, AssertionError):
            return f"cuda:{index}"
    return str(dev)


_MOVE_LOCK = threading.Lock()


def place(model, requested="auto") -> torch.device:
    """Move ``model`` (a module or a ``LoadedModel``, whose ``device`` setting counts) to the device
    the policy picks, once: a model already there is not touched. Returns the device."""
    net = getattr(model, "model", model)
    current = device_of(net)
    dev = resolve_device(requested, configured=getattr(model, "device", None), current=current)
    if _same(current, dev):
        return current
    with _MOVE_LOCK:
        try:
            net.to(dev)
        except (RuntimeError, torch.OutOfMemoryError) as e:
            net.to(current)
            raise ClrpError(f"cannot move the model to {dev}: {str(e).splitlines()[0]}") from None
    return dev


def _same(a: torch.device, b: torch.device) -> bool:
    """Same device; a bare "cuda" is the current CUDA device."""
    if a.type != b.type:
        return False
    if a.type != "cuda" or (a.index is not None and b.index is not None):
        return a.index == b.index
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


# ---------------------------------------------------------------------------------------------
# Batch sizes from free memory, and retries on out-of-memory

def free_memory(device) -> int | None:
    """Free bytes on a CUDA device (``torch.cuda.mem_get_info``); None elsewhere."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    return int(torch.cuda.mem_get_info(dev)[0])


def batch_limit(free: int | None, per_image: int | None, cap: int) -> int:
    """The documented rule: ``floor(HEADROOM * free / per_image)`` clamped to [1, cap]; ``cap``
    when the memory is unknown (the CPU)."""
    cap = max(1, int(cap))
    if not free or not per_image or per_image <= 0:
        return cap
    return max(1, min(cap, math.floor(HEADROOM * free / per_image)))


def _memory_device(x: torch.Tensor) -> torch.device:
    return x.device


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def _release(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def explain_batched(explain, inputs: torch.Tensor, targets, *, batch_size: int | None = None) -> torch.Tensor:
    """``explain(inputs[a:b], targets[a:b])`` over the rows in batches sized by :func:`batch_limit`
    (``batch_size``: an upper bound instead of the default cap), halving a batch that runs out of
    memory. Returns the rows concatenated (on the inputs' device)."""
    if not isinstance(inputs, torch.Tensor) or inputs.ndim == 0:
        return explain(inputs, targets)  # explain() says what is wrong with them
    n = int(inputs.shape[0])
    try:
        t = torch.as_tensor(targets).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        t = None  # explain() says what is wrong with them
    if t is not None and t.numel() == 1 and n > 1:
        t = t.expand(n)
    if t is None or t.numel() != n:
        # one image, several targets (and other shapes explain() itself checks): one call, no batching
        return _one_call(explain, inputs, targets, n)
    dev = _memory_device(inputs)
    cuda = dev.type == "cuda"
    cap = int(batch_size) if batch_size else (GPU_CAP if cuda else CPU_CAP)
    outs, start = [], 0
    if cuda and n > 1 and cap > 1:
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        outs.append(_one_call(explain, inputs[:1], t[:1], 1))
        per_image = torch.cuda.max_memory_allocated(dev) - before
        size = batch_limit(free_memory(dev), per_image, cap)
        _log.debug("explain batches of %d on %s (%.0f MiB per image)", size, dev, per_image / 2**20)
        start = 1
    else:
        size = min(cap, n)
    while start < n:
        stop = min(n, start + size)
        try:
            outs.append(explain(inputs[start:stop], t[start:stop]))
        except Exception as e:
            if not _is_oom(e):
                raise
            _release(dev)
            if stop - start == 1:
                raise _oom_error(dev, e) from None
            size = max(1, (stop - start) // 2)
            _log.warning("out of memory on %s with %d images per batch; retrying with %d", dev, stop - start, size)
            continue
        start = stop
    return outs[0] if len(outs) == 1 else torch.cat(outs, 0)


def _one_call(explain, inputs, targets, n):
    return without_oom_crash(lambda: explain(inputs, targets), _memory_device(inputs), n)


def without_oom_crash(call, device, n: int = 1):
    """``call()``; running out of memory on ``device`` becomes a ``ClrpError`` that says so (the
    cached blocks are released first), never a bare ``torch.OutOfMemoryError``."""
    try:
        return call()
    except Exception as e:
        if not _is_oom(e):
            raise
        _release(device)
        if n > 1:
            raise ClrpError(f"out of memory on {device} explaining {n} maps at once; explain fewer at a "
                            f"time") from None
        raise _oom_error(device, e) from None


def _oom_error(dev, e) -> DeviceOutOfMemory:
    free = free_memory(dev)
    room = f" ({free / 2**30:.1f} GiB free)" if free is not None else ""
    return DeviceOutOfMemory(f"out of memory on {dev}{room} explaining a single image: use a smaller input, "
                             f"another device (CLRP_DEVICE=cpu or the model's device setting) or free memory "
                             f"on the device")
