"""Stabilisers of LRP denominators: zennit's ``eps * sign(z)`` shift, absolute or relative to the
layer's output scale (:class:`Relative`). Re-exported by :mod:`clrp.rules`."""
from __future__ import annotations

import torch

__all__ = ["Relative", "relative", "stabilizer_for", "stabilize"]


class Relative(float):
    """A stabiliser relative to the layer's output scale: ``eps * mean |z|`` over each sample's
    denominators instead of ``eps``. An absolute stabiliser absorbs nearly all relevance on a
    network with tiny activations (default-init mnasnet, efficientnet: logits ~1e-14); a relative one
    keeps the same share at every scale. ``relative(1e-6)``, or ``rules={"preset": ...,
    "stabilizer": "relative"}`` for every rule of a preset."""

    def __repr__(self):
        return f"relative({float(self)!r})"

    def __eq__(self, other):  # never equal to the absolute stabiliser of the same size
        return isinstance(other, Relative) and float(self) == float(other)

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(("relative", float(self)))


def relative(eps: float) -> Relative:
    return Relative(eps)


def stabilizer_for(z: torch.Tensor, eps):
    """The stabiliser's size for denominators ``z``: ``eps`` (a number), or for a :class:`Relative`
    one ``eps * mean |z|`` per sample (shaped to broadcast; the absolute value where all z are 0)."""
    if not isinstance(eps, Relative):
        return eps
    scale = z.abs().flatten(1).mean(1) if z.ndim > 1 else z.abs().mean().reshape(1)
    scale = torch.where(scale > 0, scale * float(eps), torch.full_like(scale, float(eps)))
    return scale.view(-1, *([1] * (z.ndim - 1))) if z.ndim > 1 else scale


def stabilize(z: torch.Tensor, eps) -> torch.Tensor:
    # zennit's convention: shift away from zero by eps with the sign of z (zero counted as positive;
    # -0.0 gets -eps, which cannot matter: such a unit has only zero contributions).
    e = stabilizer_for(z, eps)
    if not isinstance(e, torch.Tensor):
        e = torch.tensor(e, dtype=z.dtype, device=z.device)
    return z + torch.copysign(e, z)
