"""Op kinds that move or combine values (see :mod:`.ops`): index moves (views, reshapes,
concatenations, slices, pads), sums, products and gates, tuple access."""
from __future__ import annotations

import operator

from .graph import Graph, Ref
from .ops_core import Generic, Op, bind, first_ref, provably_nonnegative, reduce_to, register, vjp

# ---------------------------------------------------------------------------------------------
# Index moves: relevance follows the index.

@register("_to_copy", "to", "type_as", "alias", "contiguous", "clone", "detach", "lift_fresh_copy", "dropout",
          "feature_dropout", "alpha_dropout", "feature_alpha_dropout")
class Identity(Op):
    def backward(self, node, R, ctx):
        return [(first_ref(node), R)]

    def nonnegative(self, node, graph, nonneg):
        return nonneg[first_ref(node)]


@register("view", "_unsafe_view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as")
class Reshape(Identity):
    def row_agnostic(self, node, graph):
        return node.batch_first and graph.nodes[first_ref(node)].batch_first

    def backward(self, node, R, ctx):
        i = first_ref(node)
        shape = ctx.fwd.values[i].shape
        if ctx.plan.graph.nodes[i].batch_first and node.batch_first:
            return [(i, R.reshape(R.shape[0], *shape[1:]))]
        return [(i, R.reshape(shape))]


@register("permute")
class Permute(Identity):
    def backward(self, node, R, ctx):
        dims = [d % R.ndim for d in bind(node)["dims"]]
        inverse = sorted(range(len(dims)), key=dims.__getitem__)
        return [(first_ref(node), R.permute(inverse))]


@register("transpose", "t", "swapaxes")
class Transpose(Identity):
    def backward(self, node, R, ctx):
        if node.op_name == "t":
            return [(first_ref(node), R.t())]
        b = bind(node)
        d0, d1 = (b["dim0"], b["dim1"]) if "dim0" in b else (b["axis0"], b["axis1"])
        return [(first_ref(node), R.transpose(d0, d1))]


@register("cat", "concat", "concatenate")
class Cat(Op):
    def prepare(self, node, graph):
        b = bind(node)
        node.extra["dim"] = b["dim"]

    def backward(self, node, R, ctx):
        dim = node.extra["dim"] % R.ndim
        out, offset = [], 0
        for t in node.args[0]:
            size = ctx.fwd.values[t.index].shape[dim] if isinstance(t, Ref) else t.shape[dim]
            if isinstance(t, Ref) and ctx.plan.graph.carries[t.index]:
                out.append((t.index, R.narrow(dim, offset, size)))
            offset += size
        return out

    def nonnegative(self, node, graph, nonneg):
        return provably_nonnegative(node.args[0], graph, nonneg)


@register("stack")
class Stack(Cat):
    def backward(self, node, R, ctx):
        dim = node.extra["dim"] % R.ndim
        return [(t.index, R.select(dim, k)) for k, t in enumerate(node.args[0])
                if isinstance(t, Ref) and ctx.plan.graph.carries[t.index]]


@register("slice", "select", "narrow", "pad", "constant_pad_nd", "roll", "flip", "expand", "expand_as", "repeat",
          "channel_shuffle", "native_channel_shuffle", "pixel_shuffle", "pixel_unshuffle", "index_select",
          "reflection_pad1d", "reflection_pad2d", "replication_pad1d", "replication_pad2d", "tile", "movedim")
class Reindex(Identity):
    """A linear re-indexing of one tensor: relevance moves by the transpose of the op (duplicated
    elements sum their relevance back, padding is cropped away)."""

    def backward(self, node, R, ctx):
        i = first_ref(node)
        rest = tuple(ctx.resolve(a) for a in node.args[1:])
        kwargs = ctx.resolve(node.kwargs)
        shape = ctx.fwd.values[i].shape
        # inside nn.MultiheadAttention the batch is not the first dimension
        rows = None if node.batch_first and ctx.plan.graph.nodes[i].batch_first else shape[0]
        return [(i, vjp(lambda t: node.target(t, *rest, **kwargs), shape[1:], R, rows))]

    def lrp_problem(self, node, graph):
        if any(isinstance(a, Ref) and graph.carries[a.index] for a in node.args[1:]):
            return f"{node.op_name} with indices computed from the input"
        return None

    def nonnegative(self, node, graph, nonneg):
        value = bind(node).get("value", 0)  # a constant pad's fill value
        return nonneg[first_ref(node)] and provably_nonnegative((value,), graph, nonneg)


# ---------------------------------------------------------------------------------------------
# Sums and gates

@register("add", "sub")
class Add(Op):
    """A sum of two input-dependent values takes the preset's sum rule (``kind = "add"``); a
    constant summand (a bias) takes no relevance."""

    kind = "add"

    def prepare(self, node, graph):
        b = bind(node)
        sign = -1.0 if node.op_name == "sub" else 1.0
        terms = []
        for key, coef in (("self", 1.0), ("other", sign * float(b.get("alpha", 1)))):
            v = b[key]
            if isinstance(v, Ref) and graph.carries[v.index]:
                terms.append((v.index, coef))
        node.extra["terms"] = terms

    def rule_kind(self, node):
        return "add" if len(node.extra["terms"]) == 2 else None

    def backward(self, node, R, ctx):
        terms = node.extra["terms"]
        if len(terms) == 1:
            j, coef = terms[0]
            return [(j, reduce_to(R, ctx.fwd.values[j].shape[1:]))]
        parts = [ctx.fwd.expand(ctx.fwd.values[j]) if coef == 1 else ctx.fwd.expand(ctx.fwd.values[j]) * coef
                 for j, coef in terms]
        shares = ctx.rules[node.index].relevance(parts, R, ctx.fwd.expand(ctx.fwd.values[node.index]))
        return [(j, reduce_to(r, ctx.fwd.values[j].shape[1:])) for (j, _), r in zip(terms, shares)]

    def nonnegative(self, node, graph, nonneg):
        b = bind(node)
        return node.op_name == "add" and float(b.get("alpha", 1)) >= 0 and provably_nonnegative(
            (b["self"], b["other"]), graph, nonneg)


_GATES = {"sigmoid", "hardsigmoid", "softmax", "_softmax", "tanh", "hardtanh", "relu6"}
_THROUGH = {"view", "_unsafe_view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "expand", "expand_as",
            "contiguous", "clone", "permute", "transpose", "mul", "div", "add", "sub", "_to_copy", "to", "alias"}


@register("mul", "div")
class Mul(Op):
    """Products: a constant factor passes all relevance to the other factor; for two input-dependent
    factors one must be a gate (a sigmoid-like output, e.g. squeeze-and-excitation or
    ``x * sigmoid(x)``, or a per-channel scale broadcast over the other); the gate is a constant
    and all relevance goes to the signal (signal-take-all, Arras et al. 2017). A divisor is a gate."""

    def prepare(self, node, graph):
        b = bind(node)
        x, y = b["self"], b["other"]
        carried = [isinstance(v, Ref) and graph.carries[v.index] for v in (x, y)]
        node.extra["signal"] = None
        node.extra["problem"] = None
        if carried == [True, False]:
            node.extra["signal"] = x.index
        elif carried == [False, True]:
            if node.op_name == "div":
                node.extra["problem"] = "divides by a value computed from the input"
            else:
                node.extra["signal"] = y.index
        elif carried == [True, True]:
            if node.op_name == "div":
                node.extra["signal"] = x.index
                return
            gx, gy = (is_gate(graph, v.index) for v in (x, y))
            if gx != gy:
                node.extra["signal"] = y.index if gx else x.index
                return
            if gx and gy:  # x * sigmoid(f(x)) with x itself sigmoid-like (after a tanh, relu6): the gate is
                # the factor computed from the other
                if x.index in graph.ancestors(y.index):
                    node.extra["signal"] = x.index
                    return
                if y.index in graph.ancestors(x.index):
                    node.extra["signal"] = y.index
                    return
            nx, ny = (_numel(graph.nodes[v.index].shape) for v in (x, y))
            if nx is not None and ny is not None and nx != ny:
                node.extra["signal"] = x.index if nx > ny else y.index
                return
            node.extra["problem"] = ("multiplies two values computed from the input and neither is a gate "
                                     "(a sigmoid-like output or a broadcast per-channel scale)")

    def lrp_problem(self, node, graph):
        return node.extra["problem"]

    def backward(self, node, R, ctx):
        j = node.extra["signal"]
        return [(j, reduce_to(R, ctx.fwd.values[j].shape[1:]))]

    def nonnegative(self, node, graph, nonneg):
        b = bind(node)
        return provably_nonnegative((b["self"], b["other"]), graph, nonneg)


def _numel(shape):
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    n = 1
    for d in shape:
        n *= d
    return n


def is_gate(graph: Graph, i: int) -> bool:
    """Whether value ``i`` comes from a sigmoid-like op, possibly through reshapes and scalings."""
    seen = set()
    while i not in seen:
        seen.add(i)
        node = graph.nodes[i]
        name = node.op_name
        if name in _GATES:
            return True
        if name not in _THROUGH:
            return False
        inputs = graph.carried_inputs(i)
        if len(inputs) != 1:
            return False
        i = inputs[0]
    return False


@register(operator.getitem)
class GetItem(Generic):
    def lrp_problem(self, node, graph):
        return "takes an element of a tuple the engine cannot follow"
