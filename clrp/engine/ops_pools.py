"""Pooling op kinds (see :mod:`.ops`): max pools route relevance like their gradient, average pools
and means take the z rule."""
from __future__ import annotations

import torch

from ..rules import stabilize
from .ops_core import Op, bind, first_ref, register, vjp

# ---------------------------------------------------------------------------------------------
# Pools

@register("max_pool2d")
class MaxPool2d(Op):
    """Winner-takes-all: relevance follows the route of max_pool2d's gradient."""

    pool = True

    def forward(self, node, args, kwargs, ctx):
        if not ctx.lrp:
            return node.target(*args, **kwargs)
        b = bind(node, args, kwargs)
        y, idx = torch.ops.aten.max_pool2d_with_indices(
            b["self"], b["kernel_size"], b["stride"], b["padding"], b["dilation"], b["ceil_mode"])
        ctx.saved[node.index] = idx
        return y

    def backward(self, node, R, ctx):
        i = first_ref(node)
        a = ctx.fwd.values[i]
        idx = ctx.fwd.expand(ctx.fwd.saved[node.index])
        lead = R.shape[:-2]
        out = R.new_zeros((*lead, a.shape[-2] * a.shape[-1]))
        out.scatter_add_(-1, idx.reshape(*lead, -1), R.reshape(*lead, -1))
        return [(i, out.view(*lead, a.shape[-2], a.shape[-1]))]

    def nonnegative(self, node, graph, nonneg):
        return nonneg[first_ref(node)]


@register("max_pool1d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "amax")
class MaxPoolByGradient(MaxPool2d):
    def forward(self, node, args, kwargs, ctx):
        out = node.target(*args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def backward(self, node, R, ctx):
        i = first_ref(node)
        a = ctx.fwd.expand(ctx.fwd.values[i])
        rest = tuple(ctx.resolve(x) for x in node.args[1:])
        with torch.enable_grad():
            probe = a.detach().requires_grad_(True)
            out = node.target(probe, *rest, **ctx.resolve(node.kwargs))
            out = out[0] if isinstance(out, tuple) else out
            (g,) = torch.autograd.grad(out, probe, R)
        return [(i, g)]

    def row_agnostic(self, node, graph):
        return False


@register("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
          "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "mean", "sum")
class AvgPool(Op):
    """z rule (zennit's Norm): relevance proportional to each input's share of the average."""

    pool = True
    stabilizer = 1e-6

    def backward(self, node, R, ctx):
        i = first_ref(node)
        a = ctx.fwd.values[i]
        z = ctx.fwd.values[node.index]
        if tuple(a.shape) == tuple(z.shape):  # an identity-sized adaptive pool
            return [(i, R)]
        rest = tuple(ctx.resolve(x) for x in node.args[1:])
        kwargs = ctx.resolve(node.kwargs)
        eps = ctx.rules.get(node.index, self.stabilizer) if ctx.rules else self.stabilizer  # the composite's
        s = R / stabilize(ctx.fwd.expand(z), eps)
        g = vjp(lambda t: node.target(t, *rest, **kwargs), a.shape[1:], s)
        # a sum's vjp is a broadcast view (stride 0): multiply out of place there
        return [(i, g.mul_(ctx.fwd.expand(a)) if 0 not in g.stride() else g * ctx.fwd.expand(a))]

    def nonnegative(self, node, graph, nonneg):
        return nonneg[first_ref(node)]
