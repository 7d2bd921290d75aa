"""Transformer nodes: products of two activations, softmax, attention, LayerNorm as a linear map,
constant additions (position embeddings). Registered like every op (see :mod:`.ops`); the rules
come from the preset's ``product``, ``layer_norm`` and ``bias_add`` entries (clrp.rules), whose
defaults leave every CNN explanation as it was.

The rules are AttnLRP's (Achtibat et al., ICML 2024), written as relevance maps so that one pass
serves CLRP's contrast as for CNNs:

- a product of two input-dependent values ``O = A ⊗ B`` (matmul, bmm, einsum, an element-wise
  product that is not a gate): each factor's LRP-0 relevance ``A ⊙ ∂(s·O)/∂A`` with ``s = R / O``, times
  its share from the preset's product rule (uniform: 1/2 each; CP-LRP: a softmax/sigmoid factor
  is a constant and takes nothing);
- softmax: ``R_x = x ⊙ (R - s Σ R)`` (AttnLRP's softmax rule: gradient times input);
- ``scaled_dot_product_attention``: the two products and the softmax above, fused (the attention
  weights are kept from the forward; nothing is divided by the softmax input);
- LayerNorm/RMSNorm: the standard deviation is a constant (identity rule on the normalisation),
  what remains (centring, scale, shift) is a linear map that takes the preset's ``layer_norm``
  rule (epsilon: the shift absorbs its share);
- ``x + c`` for a constant tensor ``c`` (a position embedding, an attention bias): ``c`` takes its
  share under the preset's ``bias_add`` rule.
"""
from __future__ import annotations

import torch

from ..errors import ClrpError
from ..rules import stabilize
from .graph import Ref
from .ops import Add, Mul, Norm, Op, is_gate, bind, first_ref, reduce_to, register


def _carried(graph, v) -> bool:
    return isinstance(v, Ref) and graph.carries[v.index]


# ---------------------------------------------------------------------------------------------
# Products of two activations

class _Product(Op):
    """A product of named factors; ``FACTORS`` lists the argument names of the factors."""

    kind = "product"
    FACTORS: tuple = ()

    def prepare(self, node, graph):
        b = bind(node)
        node.extra["factors"] = [(name, b[name].index) for name in self.FACTORS if _carried(graph, b.get(name))]
        node.extra["gates"] = [is_gate(graph, j) for _, j in node.extra["factors"]]
        others = [k for k, v in b.items() if k not in self.FACTORS and _carried(graph, v)]
        if others:
            node.extra["problem"] = f"its argument {others[0]!r} is computed from the input"

    def backward(self, node, R, ctx):
        b = {k: ctx.fwd.expand(v) for k, v in bind(node, ctx.resolve(node.args), ctx.resolve(node.kwargs)).items()}
        return _split(node, R, ctx, b, lambda b: node.target(**b))


def _split(node, R, ctx, args, call):
    """Each factor ``args[key]`` of ``node.extra["factors"]`` ([(key, value index)]) takes its
    LRP-0 relevance times its share; ``call(args)`` recomputes the product."""
    factors = node.extra["factors"]
    rule = ctx.rules.get(node.index)
    shares = rule.shares(node.extra["gates"])
    out = ctx.fwd.expand(ctx.fwd.values[node.index])
    s = R / stabilize(out, rule.stabilizer)
    with torch.enable_grad():
        probes = []
        for key, j in factors:
            args[key] = args[key].detach().requires_grad_(True)
            probes.append(args[key])
        grads = torch.autograd.grad(call(args), probes, s)
    return [(j, reduce_to(p.detach() * g * share, ctx.fwd.values[j].shape[1:]))
            for (_, j), p, g, share in zip(factors, probes, grads, shares) if share]


@register("matmul", "bmm", "mm")
class MatMul(_Product):
    FACTORS = ("self", "other", "mat2")


@register("einsum")
class Einsum(_Product):
    """An einsum (MaxViT's attention: q·kᵀ and attention·v) is a product of its input-dependent
    operands; constant operands are part of the map, as a weight is."""

    def prepare(self, node, graph):
        operands = bind(node)["tensors"]
        node.extra["factors"] = [(k, t.index) for k, t in enumerate(operands) if _carried(graph, t)]
        node.extra["gates"] = [is_gate(graph, j) for _, j in node.extra["factors"]]

    def backward(self, node, R, ctx):
        b = bind(node, ctx.resolve(node.args), ctx.resolve(node.kwargs))
        operands = [ctx.fwd.expand(t) for t in b["tensors"]]
        return _split(node, R, ctx, operands, lambda ts: torch.einsum(b["equation"], *ts))


@register("baddbmm")
class BAddBMM(_Product):
    """``input + batch1 @ batch2`` (nn.MultiheadAttention with a mask): the product takes the rule,
    a constant ``input`` absorbs its share (as a bias does)."""

    FACTORS = ("batch1", "batch2")


@register("mul")
class ProductMul(Mul):
    """An element-wise product: a gate or a constant factor as in :class:`.ops.Mul` (all to the
    signal); two full-size input-dependent factors take the preset's product rule (a factor's
    LRP-0 relevance of ``x * y`` is R itself)."""

    def prepare(self, node, graph):
        super().prepare(node, graph)
        b = bind(node)
        if node.extra["problem"] and all(_carried(graph, b[k]) for k in ("self", "other")):
            node.extra["problem"] = None
            node.extra["factors"] = [b["self"].index, b["other"].index]
            node.extra["gates"] = [is_gate(graph, j) for j in node.extra["factors"]]

    def rule_kind(self, node):
        return "product" if "factors" in node.extra else None

    def backward(self, node, R, ctx):
        if "factors" not in node.extra:
            return super().backward(node, R, ctx)
        shares = ctx.rules.get(node.index).shares(node.extra["gates"])
        return [(j, reduce_to(R * share, ctx.fwd.values[j].shape[1:]))
                for j, share in zip(node.extra["factors"], shares) if share]


# ---------------------------------------------------------------------------------------------
# Softmax and attention

@register("softmax", "_softmax", "_safe_softmax")
class Softmax(Op):
    """AttnLRP's softmax rule: R_x = x ⊙ (R - s Σ R) along the softmax dimension."""

    def prepare(self, node, graph):
        node.extra["dim"] = bind(node)["dim"]

    def backward(self, node, R, ctx):
        i = first_ref(node)
        x = ctx.fwd.expand(ctx.fwd.values[i])
        s = ctx.fwd.expand(ctx.fwd.values[node.index])
        dim = node.extra["dim"]
        r = x * (R - s * R.sum(dim, keepdim=True))
        return [(i, torch.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0))]  # masked (-inf) logits take nothing

    def nonnegative(self, node, graph, nonneg):
        return True


@register("scaled_dot_product_attention")
class Attention(Op):
    """softmax(q kᵀ · scale + mask) v with the preset's product rule on both products and the
    softmax rule between them (AttnLRP), or the attention weights constant (CP-LRP)."""

    kind = "product"

    def prepare(self, node, graph):
        b = bind(node)
        node.extra["carried"] = [_carried(graph, b[k]) for k in ("query", "key", "value")]
        problem = None
        if _carried(graph, b.get("attn_mask")):
            problem = "its attention mask is computed from the input"
        elif b.get("enable_gqa"):
            problem = "grouped-query attention (enable_gqa=True)"
        elif b.get("dropout_p"):
            problem = "attention dropout is active"
        if problem:
            node.extra["problem"] = problem

    def forward(self, node, args, kwargs, ctx):
        if not ctx.lrp:
            return node.target(*args, **kwargs)
        b = bind(node, args, kwargs)
        q, k, v = b["query"], b["key"], b["value"]
        scale = b.get("scale")
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        logits = (q * scale) @ k.transpose(-2, -1)
        mask = b.get("attn_mask")
        if b.get("is_causal"):
            L, S = q.shape[-2], k.shape[-2]
            mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
        attn = logits.softmax(-1)
        ctx.saved[node.index] = (attn, scale)
        return attn @ v

    def backward(self, node, R, ctx):
        fwd = ctx.fwd
        rule = ctx.rules.get(node.index)
        b = bind(node)
        q_ref, k_ref, v_ref = b["query"], b["key"], b["value"]
        carried_q, carried_k, carried_v = node.extra["carried"]
        attn, scale = fwd.saved[node.index]
        attn = fwd.expand(attn)
        v = fwd.expand(ctx.resolve(v_ref))
        s = R / stabilize(fwd.expand(fwd.values[node.index]), rule.stabilizer)
        # attention · v: the attention weights are a softmax output (a gate)
        share_attn, share_v = rule.shares([True, False])
        out = []
        if carried_v and share_v:
            out.append((v_ref.index, reduce_to(v * (attn.transpose(-2, -1) @ s) * share_v, fwd.values[v_ref.index].shape[1:])))
        if share_attn and (carried_q or carried_k):
            g_attn = (s @ v.transpose(-2, -1)) * share_attn
            g_x = attn * (g_attn - (attn * g_attn).sum(-1, keepdim=True))  # softmax rule, as a gradient
            pairs = [(ref, other) for ref, other, c in ((q_ref, k_ref, carried_q), (k_ref, q_ref, carried_k)) if c]
            shares = rule.shares([False] * len(pairs))
            q, k = fwd.expand(ctx.resolve(q_ref)), fwd.expand(ctx.resolve(k_ref))
            for (ref, _), share in zip(pairs, shares):
                if ref is q_ref:
                    r = q * (g_x @ k) * (scale * share)
                else:
                    r = k * (g_x.transpose(-2, -1) @ q) * (scale * share)
                out.append((ref.index, reduce_to(r, fwd.values[ref.index].shape[1:])))
        return out


# ---------------------------------------------------------------------------------------------
# LayerNorm / RMSNorm

@register("layer_norm", "rms_norm")
class LayerNorm(Norm):
    """The normalisation's standard deviation is a constant (AttnLRP's identity rule on it); the
    rest, ``w ⊙ (x - mean x) / σ + b`` (no centring for RMSNorm), is a linear map that takes the
    preset's ``layer_norm`` rule. Without one (the CNN presets), relevance passes unchanged."""

    def rule_kind(self, node):
        return "layer_norm"

    def backward(self, node, R, ctx):
        rule = ctx.rules.get(node.index)
        if rule is None:
            return super().backward(node, R, ctx)
        i = first_ref(node)
        b = bind(node, ctx.resolve(node.args), ctx.resolve(node.kwargs))
        view = NormView(node, b, ctx)
        return [(i, rule.relevance(view, ctx.fwd.values[i], R, ctx.fwd.values[node.index]))]


class NormView:
    """A LayerNorm/RMSNorm with its standard deviation fixed, as a layer for the rules (clrp.rules):
    ``forward(x, w, b) = w ⊙ (x - mean x) / σ + b`` and its transpose."""

    stackable = False
    nonnegative_input = False
    box = None

    def __init__(self, node, bound, ctx):
        self.node, self.ctx = node, ctx
        self.center = node.op_name == "layer_norm"
        self.weight, self.bias = bound.get("weight"), bound.get("bias")
        self.dims = tuple(range(-len(bound["normalized_shape"]), 0))
        eps = bound.get("eps")
        x = ctx.fwd.expand(bound["input"])
        if self.center:
            var = x.var(dim=self.dims, unbiased=False, keepdim=True)
        else:
            var = x.pow(2).mean(dim=self.dims, keepdim=True)
            eps = torch.finfo(x.dtype).eps if eps is None else eps
        self.inv_std = torch.rsqrt(var + eps)

    def expand(self, t):
        return self.ctx.fwd.expand(t)

    def modified(self, modifier):
        raise ClrpError(f"{self.node.describe()}: a LayerNorm takes the epsilon rule (rules that modify weights "
                        "do not apply to it)")

    def forward(self, x, w, b):
        if self.center:
            x = x - x.mean(dim=self.dims, keepdim=True)
        y = x * self.inv_std
        if w is not None:
            y = y * w
        return y if b is None else y + b

    def transpose(self, s, w, channels=None):
        u = s * self.inv_std
        if w is not None:
            u = u * w
        return u - u.mean(dim=self.dims, keepdim=True) if self.center else u


# ---------------------------------------------------------------------------------------------
# Constant additions

@register("add", "sub")
class BiasAdd(Add):
    """``x + c`` with ``c`` a constant (a position embedding, an attention bias): under a preset with
    a ``bias_add`` rule ``c`` takes its share like a bias; otherwise (CNN presets) all relevance
    goes to ``x`` as in :class:`.ops.Add`."""

    def prepare(self, node, graph):
        super().prepare(node, graph)
        b = bind(node)
        sign = -1.0 if node.op_name == "sub" else 1.0
        node.extra["constants"] = [(key, coef) for key, coef in (("self", 1.0), ("other", sign * float(b.get("alpha", 1))))
                                   if not _carried(graph, b[key])]

    def rule_kind(self, node):
        if len(node.extra["terms"]) == 1 and node.extra["constants"]:
            return "bias_add"
        return super().rule_kind(node)

    def backward(self, node, R, ctx):
        rule = ctx.rules.get(node.index) if len(node.extra["terms"]) == 1 else None
        if rule is None:
            return super().backward(node, R, ctx)
        (j, coef), = node.extra["terms"]
        b = bind(node, ctx.resolve(node.args), ctx.resolve(node.kwargs))
        x = ctx.fwd.expand(ctx.fwd.values[j])
        parts = [x if coef == 1 else x * coef]
        for key, c in node.extra["constants"]:
            parts.append(ctx.fwd.expand(torch.as_tensor(b[key], dtype=x.dtype, device=x.device)) * c)
        total = ctx.fwd.expand(ctx.fwd.values[node.index])
        share = rule.relevance(parts, R, total)[0]
        return [(j, reduce_to(share, ctx.fwd.values[j].shape[1:]))]
