"""Op kinds with weights or a normalisation (see :mod:`.ops`): conv and dense layers (BatchNorm
folded in), a BatchNorm left on its own, LayerNorm/GroupNorm; and the layer views the rules in
:mod:`clrp.rules` are written against."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .graph import Ref
from .ops_core import Op, bind, first_ref, register

# ---------------------------------------------------------------------------------------------
# Normalisation

@register("layer_norm", "group_norm", "instance_norm", "rms_norm")
class Norm(Op):
    """LayerNorm / GroupNorm: the identity rule (the normaliser treated as a constant; Ali et al.
    2022, Achtibat et al. 2024): relevance passes unchanged."""

    def backward(self, node, R, ctx):
        return [(first_ref(node), R)]


@register("batch_norm")
class BatchNorm(Op):
    """A BatchNorm that could not be folded into a neighbouring conv/dense layer: an affine layer
    ``x * scale + shift`` per channel with the preset's ``norm`` rule."""

    kind = "norm"

    def forward(self, node, args, kwargs, ctx):
        b = bind(node, args, kwargs)
        if not ctx.lrp or b["training"] or b["running_mean"] is None or not ctx.plan.graph.carries[node.index]:
            return node.target(*args, **kwargs)  # as traced (e.g. a weight standardisation, batch statistics)
        x = args[0]
        scale, shift = ctx.plan.affine(node, b, ctx)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        ctx.params[node.index] = (scale, shift)
        return torch.addcmul(shift.view(shape), x, scale.view(shape))

    def lrp_problem(self, node, graph):
        if bind(node)["training"]:
            return "BatchNorm normalises with batch statistics (no running statistics)"
        return None

    def backward(self, node, R, ctx):
        i = first_ref(node)
        scale, shift = ctx.fwd.params[node.index]
        view = AffineView(node, scale, shift, ctx)
        return [(i, ctx.rules[node.index].relevance(view, ctx.fwd.values[i], R, ctx.fwd.values[node.index]))]


# ---------------------------------------------------------------------------------------------
# Convolutions and dense layers

@register("conv1d", "conv2d", "conv3d", "linear", "convolution")
class Linear(Op):
    """Conv (any groups, dilation, stride, padding) or dense layer, with BatchNorm folded in when
    one directly follows or precedes it. Takes the rule the preset assigns (``kind`` conv/linear)."""

    def prepare(self, node, graph):
        b = bind(node)
        node.extra["conv"] = node.op_name != "linear"
        if node.op_name == "convolution":
            node.extra["conv"] = True
            if b["transposed"]:
                node.extra["problem"] = "transposed convolution"
        pad = b.get("padding", 0)
        node.extra["pre_pad"] = None
        if node.extra["conv"] and isinstance(pad, str):
            kernel = node.extra.get("kernel")  # recorded at trace time
            dil = b["dilation"]
            if pad == "valid":
                pad = [0] * len(dil)
            elif kernel is not None:
                total = [d * (k - 1) for d, k in zip(dil, kernel)]
                if all(t % 2 == 0 for t in total):
                    pad = [t // 2 for t in total]
                else:  # PyTorch pads the extra row/column at the end
                    pre = []
                    for t in reversed(total):
                        pre += [t // 2, t - t // 2]
                    node.extra["pre_pad"] = pre
                    pad = [0] * len(dil)
            else:
                node.extra["problem"] = "padding='same' with an unknown kernel size"
        node.extra["padding"] = pad
        node.extra["bound"] = {k: b[k] for k in ("stride", "dilation", "groups") if k in b}
        for key in ("weight", "bias"):
            v = b.get(key)
            if isinstance(v, Ref) and graph.carries[v.index]:
                node.extra["problem"] = f"its {key} is computed from the input"

    def rule_kind(self, node):
        return "conv" if node.extra["conv"] else "linear"

    def lrp_problem(self, node, graph):
        return node.extra.get("problem")

    def arguments(self, node, args, kwargs):
        b = bind(node, args, kwargs)
        x = b["input"]
        if node.extra["pre_pad"]:
            x = F.pad(x, node.extra["pre_pad"])
        return x, b

    def forward(self, node, args, kwargs, ctx):
        x, b = self.arguments(node, args, kwargs)
        if not ctx.lrp and ("bn_after" in node.extra or "bn_before" in node.extra):
            # the gradient family differentiates the model's own ops (no folding rounding)
            if "bn_before" in node.extra:
                x = _batch_norm(x, ctx.resolve(node.extra["bn_before"]))
            y = self.apply(node, x, b["weight"], b.get("bias"), b)
            return _batch_norm(y, ctx.resolve(node.extra["bn_after"])) if "bn_after" in node.extra else y
        w, bias = ctx.plan.folded(node, b, ctx)
        ctx.params[node.index] = (w, bias)
        return self.apply(node, x, w, bias, b)

    @staticmethod
    def apply(node, x, w, bias, b=None):
        b = b if b is not None else node.extra["bound"]
        if not node.extra["conv"]:
            return F.linear(x, w, bias)
        nd = w.ndim - 2
        fn = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
        return fn(x, w, bias, b["stride"], node.extra["padding"], b["dilation"], b["groups"])

    def backward(self, node, R, ctx):
        i = first_ref(node)
        a = ctx.fwd.values[i]
        if node.extra["pre_pad"]:
            a = F.pad(a, node.extra["pre_pad"])
        w, bias = ctx.fwd.params[node.index]
        negate = getattr(ctx, "negate", False)  # CLRP2's dual: the layer with its weights negated
        view = LayerView(node, w, bias, a, ctx, negate=negate)
        out = ctx.fwd.values[node.index]
        r = ctx.rules[node.index].relevance(view, a, R, -out if negate else out)
        if node.extra["pre_pad"]:
            p = node.extra["pre_pad"]
            for d in range(len(p) // 2):
                dim = r.ndim - 1 - d
                r = r.narrow(dim, p[2 * d], r.shape[dim] - p[2 * d] - p[2 * d + 1])
        return [(i, r)]


def _batch_norm(x, bn):
    return F.batch_norm(x, bn["running_mean"], bn["running_var"], bn.get("weight"), bn.get("bias"), False, 0.0,
                        bn["eps"])


class LayerView:
    """The operator interface rules are written against (see clrp.rules): a conv or dense layer
    with its effective weights, the rule-modified weights (cached) and its forward/transpose."""

    def __init__(self, node, weight, bias, a, ctx, negate=False):
        self.node, self.ctx = node, ctx
        self.weight, self.bias = (-weight, None if bias is None else -bias) if negate else (weight, bias)
        self.negate = negate
        self.in_shape = a.shape[1:]
        self.nonnegative_input = ctx.plan.nonnegative_input(node) and not ctx.fwd.masked
        # zB stacks on dimension 1: the channels of a conv, the features of a dense layer on [N, F] only
        self.stackable = node.extra["bound"]["groups"] == 1 if node.extra["conv"] else len(self.in_shape) == 1
        self.exact_output = not ctx.fwd.masked  # rules may reuse the output as a·w + b (no ablation mask on it)

    def broadcast(self, b, ndim):  # a per-output-channel vector against an output of ``ndim`` dimensions
        return b.view((1, -1) + (1,) * (ndim - 2)) if self.node.extra["conv"] else b

    @property
    def box(self):  # computed only for the rules that use it (zB)
        return self.ctx.box_for(self.node)

    def expand(self, t):
        return self.ctx.fwd.expand(t)

    def modified(self, modifier):
        if self.negate:
            return modifier(self.weight)  # the output layer of CLRP2's dual: small, not cached
        return self.ctx.plan.modified(self.node, modifier, self.weight, self.ctx)

    def forward(self, x, w, b):
        return Linear.apply(self.node, x, w, b)

    def transpose(self, s, w, channels=None):
        node = self.node
        if not node.extra["conv"]:
            return s @ w
        b = node.extra["bound"]
        shape = (s.shape[0], channels or self.in_shape[0], *self.in_shape[1:])
        nd = w.ndim - 2
        fn = (torch.nn.grad.conv1d_input, torch.nn.grad.conv2d_input, torch.nn.grad.conv3d_input)[nd - 1]
        return fn(shape, w, s, b["stride"], node.extra["padding"], b["dilation"], b["groups"])


class AffineView:
    """An unfolded BatchNorm as a layer for the rules: y = x * scale + shift, per channel."""

    stackable = False

    def __init__(self, node, scale, shift, ctx):
        self.node, self.ctx = node, ctx
        self.weight, self.bias = scale, shift
        self.nonnegative_input = False

    @property
    def box(self):
        return self.ctx.box_for(self.node)

    def _view(self, t, ndim):
        return t.view((1, -1) + (1,) * (ndim - 2))

    def expand(self, t):
        return self.ctx.fwd.expand(t)

    def modified(self, modifier):
        return modifier(self.weight)

    def forward(self, x, w, b):
        y = x * self._view(w, x.ndim)
        return y if b is None else y + self._view(b, x.ndim)

    def transpose(self, s, w, channels=None):
        return s * self._view(w, s.ndim)
