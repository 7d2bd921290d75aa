"""Element-wise activations (an op kind of :mod:`.ops`)."""
from __future__ import annotations

import torch

from .graph import Ref
from .ops_core import DECONVNET, GUIDED, Op, bind, first_ref, register

# ---------------------------------------------------------------------------------------------
# Element-wise activations: relevance passes unchanged; the gradient family uses their derivative.

class _FilteredGrad(torch.autograd.Function):
    """Guided backprop / DeconvNet through a ReLU-like op: only the positive part of the upper
    signal passes (guided: also masked by the op's own derivative)."""

    @staticmethod
    def forward(ctx, x, fn, args, kwargs, derivative, deconv):
        ctx.save_for_backward(derivative)
        ctx.deconv = deconv
        return fn(x, *args, **kwargs)

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved_tensors
        g = g.clamp(min=0)
        return (g if ctx.deconv else g * d), None, None, None, None, None


@register("relu", "relu6", "hardtanh", "leaky_relu", "silu", "gelu", "hardswish", "elu", "celu", "selu", "mish",
          "hardsigmoid", "sigmoid", "tanh", "softplus", "clamp", "clamp_min", "clamp_max", "threshold", "prelu",
          "_prelu_kernel", "log_sigmoid", "logsigmoid", "rrelu")
class Activation(Op):
    """Identity for relevance (method.md §7); guided backprop and DeconvNet defined on ReLU-like ops."""

    RELU_LIKE = {"relu", "relu6", "hardtanh", "leaky_relu"}
    NONNEGATIVE = {"relu", "relu6", "sigmoid", "hardsigmoid", "softplus"}

    def forward(self, node, args, kwargs, ctx):
        name = node.op_name
        if ctx.mode in (GUIDED, DECONVNET) and name in self.RELU_LIKE and torch.is_grad_enabled():
            x = args[0]
            b = bind(node, args, kwargs)
            if name == "hardtanh":
                d = (x > b["min_val"]) & (x < b["max_val"])
            elif name == "leaky_relu":
                d = torch.where(x > 0, 1.0, float(b["negative_slope"])).to(x.dtype)
            else:
                d = x > 0
            return _FilteredGrad.apply(x, node.target, tuple(args[1:]), kwargs, d.to(x.dtype), ctx.mode == DECONVNET)
        return node.target(*args, **kwargs)

    def backward(self, node, R, ctx):
        return [(first_ref(node), R)]

    def nonnegative(self, node, graph, nonneg):
        name = node.op_name
        if name == "hardtanh":
            return float(bind(node)["min_val"]) >= 0
        if name == "clamp" or name == "clamp_min":
            lo = bind(node).get("min")
            return lo is not None and not isinstance(lo, Ref) and float(lo) >= 0
        return name in self.NONNEGATIVE
