"""Checking and completing what explain() is given: inputs, targets, channels, positions and the
zB rule's box (the range of the model's inputs)."""
from __future__ import annotations

import numpy as np
import torch

from . import engine
from .errors import ClrpError, InvalidInput, InvalidTarget
from .rules import IMAGENET_MEAN, IMAGENET_STD, REFERENCE_BOX, ZBox, box_from_normalization


def resolve_box(box, plan, x, composite):
    """zB bounds: ``(low, high)`` (scalars or one value per input channel) or "reference"; default
    ImageNet normalisation. Checked against the input only when a zB rule will use them."""
    if isinstance(box, str):
        if box != "reference":
            raise ClrpError("box must be (low, high) or 'reference'")
        return REFERENCE_BOX
    rules = plan.rules_for(composite)
    needs = any(isinstance(r, ZBox) and r.low is None for r in rules.values())
    channels = x.shape[1] if x.ndim >= 2 else 1
    if box is None:
        if needs and channels != 3:
            raise ClrpError(
                f"the zB rule of this preset needs the range of the model's inputs; the default is ImageNet's "
                f"3-channel normalisation but this model takes {channels} channel(s). Pass box=(low, high) (e.g. "
                f"clrp.box_from_normalization(mean, std)) or use a preset without zB (e.g. rules='zplus')")
        return default_box(plan, x) if needs else box_from_normalization(IMAGENET_MEAN, IMAGENET_STD)
    try:
        low, high = box
    except (TypeError, ValueError):
        raise ClrpError("box must be (low, high) or 'reference'") from None
    for b in (low, high):
        try:
            t = torch.as_tensor(b, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ClrpError(f"box bounds must be numbers, got {b!r}") from None
        if t.ndim > 1 or (t.ndim == 1 and t.numel() not in (1, channels)):
            raise ClrpError(f"box bounds must be scalars or {channels} values (one per input channel); got shape "
                            f"{tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ClrpError("box bounds must be finite")
    return low, high


def default_box(plan, x):
    """ImageNet images, in the model's input space: normalised by ImageNet's statistics, unless the
    model normalises them itself before its first layer (a torchvision-style ``Normalize`` module,
    ``(x - mean) / std`` in its forward): then it takes pixels in [0, 1], recognised by [0, 1] reaching
    the first layer as ImageNet's normalised range. A model that transforms its input otherwise
    (other than Inception's ``transform_input``, which maps normalised images to [-1, 1]) gets a
    warning: the box may not be its inputs' range."""
    normalised = box_from_normalization(IMAGENET_MEAN, IMAGENET_STD)
    g = plan.graph
    firsts = {engine.first_ref(g.nodes[i]) for i in plan.first_layers} - {g.input}
    firsts = [i for i in sorted(firsts) if g.nodes[i].shape == tuple(x.shape[1:])]
    if not firsts:
        return normalised
    want = tuple(engine.propagate_box(plan, g.input, normalised, x))
    pixels = [engine.propagate_box(plan, i, (0.0, 1.0), x) for i in firsts]
    if all(torch.allclose(p, w, atol=1e-4) for lo_hi in pixels for p, w in zip(lo_hi, want)):
        return 0.0, 1.0
    reached = [engine.propagate_box(plan, i, normalised, x) for i in firsts]
    unchanged = all(torch.allclose(r, w, atol=1e-4) for lo_hi in reached for r, w in zip(lo_hi, want))
    inception = all(torch.allclose(lo_hi[0], torch.full_like(lo_hi[0], -1.0), atol=1e-4)
                    and torch.allclose(lo_hi[1], torch.ones_like(lo_hi[1]), atol=1e-4) for lo_hi in reached)
    if not (unchanged or inception):
        model = plan.model()
        node = g.nodes[firsts[0]]
        engine.warn_once(model, "box", f"{type(model).__name__} transforms its inputs before its first layer "
                         f"({node.describe()}) in a way clrp does not recognise: the zB rule's default box assumes "
                         "ImageNet-normalised inputs and may not be their range; pass box=(low, high) with your "
                         "inputs' range")
    return normalised


def check_inputs_untraced(model, inputs) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise InvalidInput(f"inputs must be a torch.Tensor of shape [N, C, H, W], got {type(inputs).__name__}")
    if not inputs.is_floating_point() or inputs.ndim < 2 or inputs.shape[0] == 0:
        raise InvalidInput(f"inputs must be a non-empty floating point batch [N, C, H, W]; got {inputs.dtype} "
                           f"{tuple(inputs.shape)}")
    if not bool(torch.isfinite(inputs).all()):
        raise InvalidInput("inputs contain NaN or infinite values")
    return inputs.detach()


def batch_targets(x, targets):
    n = x.shape[0]
    if isinstance(targets, (int, np.integer)) and not isinstance(targets, bool):
        t = torch.full((n,), int(targets), dtype=torch.long)
    else:
        try:
            t = torch.as_tensor(targets)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidTarget(f"targets must be an int, a sequence or a tensor of class indices, "
                                f"got {targets!r}") from None
        if t.is_floating_point() or t.dtype == torch.bool:
            raise InvalidTarget("targets must be integer class indices")
        t = t.reshape(-1).long()
        if t.numel() != n:
            if n == 1 and t.numel() > 0:
                x = x.expand(t.numel(), *x.shape[1:])  # one image, several targets: one forward
            else:
                raise InvalidTarget(f"got {t.numel()} targets for {n} inputs; give one target per sample")
    return x, t.to(x.device)


def check_targets(t, n_cls):
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_cls):
        bad = t[(t < 0) | (t >= n_cls)][0].item()
        raise InvalidTarget(f"class index {bad} is out of range: the model has {n_cls} classes (0..{n_cls - 1})")
    return t


def check_channel(c, k, layer):
    if not isinstance(c, (int, np.integer)) or isinstance(c, bool) or not 0 <= int(c) < k:
        raise InvalidTarget(f"channel {c!r} does not exist in layer {layer!r} (it has {k} channels)")


def check_batch_first(plan, idx, layer):
    """A layer's channels are dimension 1 of a [N, ...] value; where dimension 0 is not the batch
    (sequence-first code inside nn.MultiheadAttention) they would mix the samples."""
    if not plan.graph.nodes[idx].batch_first:
        raise InvalidTarget(f"layer {layer!r} does not have the batch as its first dimension (sequence-first code); "
                            "name a layer before or after it")


def position_index(position, A, layer):
    """Index of one position along the dimensions after the channel: (row, col) on a feature map
    [N, C, H, W], (index,) on a token layer [N, tokens, dim] (dim 1 is the channel)."""
    if position is None:
        return ()
    dims = tuple(A.shape[2:])
    if not dims or len(position) != len(dims):
        want = "(row, col)" if len(dims) == 2 else f"{len(dims)} indices" if dims else "no position"
        raise InvalidTarget(f"position {tuple(position)} does not fit layer {layer!r} of shape {tuple(A.shape[1:])}: "
                            f"it takes {want}")
    pos = tuple(int(p) for p in position)
    if not all(0 <= p < d for p, d in zip(pos, dims)):
        raise InvalidTarget(f"position {tuple(position)} is outside the {'x'.join(map(str, dims))} map of {layer!r}")
    return pos
