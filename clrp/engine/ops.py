"""Graph operations: one registered class per kind of node, holding its forward and its backward.

``forward`` computes the node's value (by default: calls the traced function). ``backward`` maps
the relevance at the node's output to its inputs and returns ``[(input node, relevance), ...]``.
The conventions (method.md §7): conv/dense layers take the rule the preset assigns (BatchNorm
folded in); a residual add splits relevance by the summands' contributions (the preset's sum rule);
a multiplicative gate is a constant, all relevance goes to the signal; element-wise activations,
LayerNorm and GroupNorm pass relevance unchanged; average pools and means use the z rule, max
pools the winner-takes-all route of their gradient; reshapes, concatenations, slices, pads and
shuffles move relevance with the index. Adding a layer type is one class here.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from ..rules import stabilize
from .graph import Graph, Node, Ref, op_name

REGISTRY: dict = {}

# Backward modes of the gradient family (LRP has its own walk).
GRADIENT, GUIDED, DECONVNET = "gradient", "guided", "deconvnet"


def register(*names):
    """Register an op class for ATen packets (by name, e.g. ``"relu"``) or Python callables."""
    def deco(cls):
        inst = cls()
        for n in names:
            REGISTRY[n] = inst
        return cls
    return deco


def op_for(target) -> "Op":
    key = op_name(target) if isinstance(target, torch._ops.OpOverload) else target
    if isinstance(target, torch._ops.OpOverload) and target.namespace != "aten":
        key = None
    return REGISTRY.get(key, GENERIC)


def bind(node: Node, args=None, kwargs=None) -> dict:
    """Arguments of an ATen call by schema name, defaults filled in."""
    args = node.args if args is None else args
    kwargs = node.kwargs if kwargs is None else kwargs
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return {i: a for i, a in enumerate(args)}
    out = {}
    for i, a in enumerate(schema.arguments):
        if i < len(args) and not a.kwarg_only:
            out[a.name] = args[i]
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


def reduce_to(t: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Sum a (broadcast) relevance back to a per-sample ``shape``, keeping the rows of ``t``."""
    if tuple(t.shape[1:]) == tuple(shape):
        return t
    full = (t.shape[0], *shape)
    lead = t.ndim - len(full)
    if lead:
        t = t.sum(dim=tuple(range(1, 1 + lead)))
    dims = tuple(d for d in range(1, t.ndim) if full[d] == 1 and t.shape[d] != 1)
    return t.sum(dim=dims, keepdim=True) if dims else t


def vjp(fn, in_shape, g: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """Transpose of a linear re-indexing ``fn`` at the rows of ``g`` (``in_shape`` without batch;
    ``rows``: the input's first size when it is not the batch of ``g``)."""
    with torch.enable_grad():
        probe = torch.zeros((g.shape[0] if rows is None else rows, *in_shape), dtype=g.dtype, device=g.device,
                            requires_grad=True)
        out = fn(probe)
        (grad,) = torch.autograd.grad(out, probe, g, allow_unused=True)
    return torch.zeros_like(probe) if grad is None else grad


class Op:
    """Base class: a node kind. ``kind`` names the preset entry that gives its rule (if any)."""

    kind: str | None = None
    pool = False

    def prepare(self, node: Node, graph: Graph) -> None:
        """Static analysis at graph-build time (results go to ``node.extra``)."""

    def rule_kind(self, node: Node) -> str | None:
        """The preset entry whose rule this node takes (None: no rule)."""
        return self.kind

    def forward(self, node: Node, args, kwargs, ctx):
        return node.target(*args, **kwargs)

    def lrp_problem(self, node: Node, graph: Graph) -> str | None:
        """Why relevance cannot pass this node (None when it can)."""
        return None

    def row_agnostic(self, node: Node, graph: Graph) -> bool:
        """The backward works for a relevance with more rows than the forward (several targets of
        one image share one forward pass)."""
        return node.batch_first and all(graph.nodes[j].batch_first for j in graph.carried_inputs(node.index)) \
            and not any(graph.nodes[j].symbolic for j in node.refs)

    def backward(self, node: Node, R, ctx) -> list:  # pragma: no cover - interface
        raise NotImplementedError

    def nonnegative(self, node: Node, graph: Graph, nonneg: list) -> bool:
        return False


class Generic(Op):
    """Any other call: computed as traced (so gradients flow through it); no LRP rule."""

    def lrp_problem(self, node, graph):
        return (f"no LRP rule for the operation {node.op_name!r} (gradient, gradient_x_input, integrated_gradients, "
                f"smoothgrad and gradcam still work on this model)")


GENERIC = Generic()


def first_ref(node: Node) -> int:
    return node.args[0].index


def provably_nonnegative(values, graph: Graph, nonneg: list) -> bool:
    """Every value is provably >= 0: a Python number >= 0, None, or a carried value the analysis
    proved non-negative. A model tensor or constant (a buffer, a layer scale) proves nothing: its
    entries may be negative, now or after an edit."""
    for v in values:
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            if not v >= 0:
                return False
        elif isinstance(v, Ref) and graph.carries[v.index]:
            if not nonneg[v.index]:
                return False
        else:
            return False
    return True


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
        return [(i, g.mul_(ctx.fwd.expand(a)))]

    def nonnegative(self, node, graph, nonneg):
        return nonneg[first_ref(node)]


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
            gx, gy = (_is_gate(graph, v.index) for v in (x, y))
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


def _is_gate(graph: Graph, i: int) -> bool:
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


@register(operator.getitem)
class GetItem(Generic):
    def lrp_problem(self, node, graph):
        return "takes an element of a tuple the engine cannot follow"
