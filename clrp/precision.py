"""Precision policy: models in float16/bfloat16 are explained in float32, maps are never half precision.

Why: relevance is a ratio of contributions (``a_i w_ij / sum_i a_i w_ij``) carried through every
layer. In float16 the denominators underflow (the epsilon stabiliser 1e-6 is below float16's
normal range) and the products overflow after a few layers: torchvision's ResNet-18 gives all-NaN
LRP maps in float16, and VGG-11's CLRP2 maps in bfloat16 (8 bits of mantissa) are off by more than
their own size, because CLRP2 subtracts two nearly equal relevances.

How: a float32 copy of the model (a "twin", built once per model and kept while the model lives)
runs the whole explanation; inputs are cast to float32. Not an upcast per op inside the engine:
the twin needs no change to any rule, keeps the engine's weight cache and traced plan working
as for any float32 model, and costs the model's size in float32 once (a ResNet-50: 100 MB). The
user's model is never modified. The twin follows the model: parameters replaced or changed in
place (version counters) and buffers that differ (BatchNorm statistics) are copied over before
each explanation; a changed structure (a module replaced, a setting changed) builds a new twin.

float16 and bfloat16 values are exact in float32, so the twin computes the model's own function
with the model's own weights; what differs from the half-precision forward is only its rounding
(the maps explain the function without it). Models in float32 or float64 are explained in their
own precision, unchanged.
"""
from __future__ import annotations

import copy
import threading
import weakref

import torch
from torch import nn

__all__ = ["LOW_PRECISION", "is_low_precision", "float32_twin", "for_explanation"]

LOW_PRECISION = (torch.float16, torch.bfloat16)

_TWINS: "weakref.WeakKeyDictionary[nn.Module, _Twin]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def is_low_precision(model: nn.Module) -> bool:
    """Any floating parameter or buffer of ``model`` in float16 or bfloat16."""
    return any(t.dtype in LOW_PRECISION for t in (*model.parameters(), *model.buffers()))


def _structure(model):
    from .engine.plan import Plan  # the plan's own notion of "what a trace bakes in"

    return Plan.structure_of(model)


def _stamp(model):
    return tuple((id(p), p.data_ptr(), p._version) for p in model.parameters())


class _Twin:
    def __init__(self, model: nn.Module):
        self.structure = _structure(model)
        with torch.no_grad():
            self.model = _to_float32(copy.deepcopy(model))
        self.stamp = _stamp(model)

    def sync(self, model: nn.Module) -> bool:
        """Copy what changed in ``model`` since the last call (exactly: half -> float32 is lossless).
        False: the tensors no longer match the twin's (a parameter replaced by one of another shape)."""
        ours = (*self.model.parameters(), *self.model.buffers())
        theirs = (*model.parameters(), *model.buffers())
        if len(ours) != len(theirs) or any(a.shape != b.shape for a, b in zip(ours, theirs)):
            return False
        with torch.no_grad():
            if self.stamp != _stamp(model):
                for p, q in zip(model.parameters(), self.model.parameters()):
                    if not torch.equal(q.to(p.dtype), p):
                        q.copy_(p)
                self.stamp = _stamp(model)
            for b, c in zip(model.buffers(), self.model.buffers()):
                if not torch.equal(c.to(b.dtype), b):
                    c.copy_(b)
        for m, n in zip(model.modules(), self.model.modules()):
            n.training = m.training
        return True


def _to_float32(model: nn.Module) -> nn.Module:
    for t in (*model.parameters(), *model.buffers()):
        if t.dtype in LOW_PRECISION:
            t.data = t.data.float()
    return model


def float32_twin(model: nn.Module) -> nn.Module:
    """The float32 copy of a float16/bfloat16 ``model``, current with its tensors and settings."""
    with _LOCK:
        twin = _TWINS.get(model)
        if twin is None or twin.structure != _structure(model) or not twin.sync(model):
            twin = _TWINS[model] = _Twin(model)
        return twin.model


def for_explanation(model, inputs):
    """``(model, inputs)`` to explain: the float32 twin and float32 inputs for a half-precision
    model, the arguments unchanged otherwise."""
    if not isinstance(model, nn.Module) or not is_low_precision(model):
        return model, inputs
    if isinstance(inputs, torch.Tensor) and inputs.dtype in LOW_PRECISION:
        inputs = inputs.float()
    return float32_twin(model), inputs
