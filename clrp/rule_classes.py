"""The LRP rules themselves: one class per rule and the weight modifiers they need (the stabilisers: :mod:`clrp.stabilizers`).

A layer rule maps the relevance R at the output of a linear layer (conv, dense, or an unfolded
BatchNorm seen as a per-channel affine layer) to its input. Every layer rule is written against
a small operator interface (``op.forward(x, w, b)``, ``op.transpose(s, w)`` and
``op.modified(modifier)`` for rule-modified weights, which the engine caches), so the same rule
serves convolutions, dense layers and affine layers. A sum rule splits the relevance of a
residual add between its summands. All rules are linear in R for a fixed forward pass, which is
what lets CLRP cost one backward pass.

Parameter conventions follow zennit (the reference PyTorch LRP library) so that presets of the
same name give the same numbers: the stabiliser adds ``eps * sign(z)`` (sign(0) = +1), and
``bias=True`` includes the (modified) bias in the denominator as zennit does by default.
Presets, rule names and the per-node assignment are in :mod:`clrp.rules`, which re-exports these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ClrpError
from .stabilizers import Relative, relative, stabilize, stabilizer_for  # noqa: F401  (re-exported)

__all__ = [
    "Rule", "ZPlus", "ZBox", "Epsilon", "Gamma", "AlphaBeta", "Flat", "WSquare", "Gradient", "SumRule", "ZSum",
    "AbsSum", "WeightModifier", "ProductRule", "Uniform", "GateConstant", "Relative", "relative",
    "stabilizer_for", "stabilize",
]


@dataclass(frozen=True)
class WeightModifier:
    """A change of a layer's weights a rule needs (w+, w-, ...). The engine caches the modified
    weights per layer and modifier, and recomputes them whenever the model's weights change."""

    name: str
    fn: Any = field(compare=False, hash=False, repr=False)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return self.fn(w)


POSITIVE = WeightModifier("w+", lambda w: w.clamp(min=0))
ABSOLUTE = WeightModifier("|w|", torch.abs)
NEGATIVE = WeightModifier("w-", lambda w: w.clamp(max=0))
ONES = WeightModifier("ones", torch.ones_like)
SQUARE = WeightModifier("w^2", lambda w: w * w)
# zB stacks [x, low, high] on the input-channel axis: one forward and one transpose per layer.
ZBOX_FORWARD = WeightModifier("zB forward", lambda w: torch.cat([w, -w.clamp(min=0), -w.clamp(max=0)], dim=1))
ZBOX_TRANSPOSE = WeightModifier("zB transpose", lambda w: torch.cat([w, w.clamp(min=0), w.clamp(max=0)], dim=1))


def _pos(t):
    return None if t is None else t.clamp(min=0)


def _neg(t):
    return None if t is None else t.clamp(max=0)


class Rule:
    """Base class of layer rules. Subclasses implement ``relevance(op, a, R, out)``.

    ``a`` is the layer input (rows may be shared by several relevance rows: ``op.expand`` maps
    them), ``R`` the relevance at the layer output, ``out`` the layer's forward output (with bias)
    for the unique input rows.
    """

    name = "rule"
    applies_to = frozenset({"conv", "linear", "norm"})

    def relevance(self, op, a, R, out):  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"

    def __eq__(self, other):
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted((k, repr(v)) for k, v in vars(self).items()))))


class Epsilon(Rule):
    """R_i = sum_j a_i w_ij / (z_j + eps sign z_j) R_j, z_j including the bias."""

    name = "epsilon"

    def __init__(self, epsilon: float = 1e-6, bias: bool = True):
        self.epsilon = epsilon
        self.bias = bias

    def relevance(self, op, a, R, out):
        w = op.weight
        z = out if (self.bias or op.bias is None) else op.forward(a, w, None)
        s = R / stabilize(op.expand(z), self.epsilon)
        return op.transpose(s, w).mul_(op.expand(a))


class AlphaBeta(Rule):
    """alpha * (positive contributions) - beta * (negative contributions); z+ is alpha=1, beta=0.

    Inputs of either sign are handled as zennit does: positive part = a+ w+ + a- w-.
    """

    name = "alpha_beta"

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6, bias: bool = True):
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1) > 1e-9:
            raise ClrpError("alpha-beta rule needs alpha >= 0, beta >= 0 and alpha - beta = 1")
        self.alpha = alpha
        self.beta = beta
        self.stabilizer = stabilizer
        self.bias = bias

    def _part(self, op, a_pos, a_neg, R, w_main, w_other, b, sign):
        # One signed part: denominator from (a+ w_main + b) + (a- w_other), whose sign is known.
        z = op.forward(a_pos, op.modified(w_main), b)
        if a_neg is not None:
            z = z + op.forward(a_neg, op.modified(w_other), None)
        z = op.expand(z)
        z = z.add_(sign * stabilizer_for(z, self.stabilizer))
        # z is ours: reuse its memory for s (large fresh allocations cost page faults on the CPU).
        s = torch.div(R, z, out=z) if z.shape == R.shape else R / z
        r = op.transpose(s, op.modified(w_main)).mul_(op.expand(a_pos))
        if a_neg is not None:
            r = r + op.expand(a_neg) * op.transpose(s, op.modified(w_other))
        return r

    def relevance(self, op, a, R, out):
        a_pos, a_neg = _split_input(op, a)
        b = op.bias if self.bias else None
        r = self._part(op, a_pos, a_neg, R, POSITIVE, NEGATIVE, _pos(b), 1.0)
        if self.alpha != 1:
            r = self.alpha * r
        if self.beta:
            r = r - self.beta * self._part(op, a_pos, a_neg, R, NEGATIVE, POSITIVE, _neg(b), -1.0)
        return r


class ZPlus(AlphaBeta):
    """z+ rule: only positive contributions (alpha=1, beta=0)."""

    name = "zplus"

    def __init__(self, stabilizer: float = 1e-6, bias: bool = True):
        super().__init__(1.0, 0.0, stabilizer, bias)


class Gamma(Rule):
    """Generalised gamma rule (as zennit): w + gamma w+ for positive outputs, w + gamma w- for negative.

    zennit's four products and four transposes (a± against w + gamma w±) share their terms: with
    z0 = a w and A = |a| |w|, a+ w+ + a- w- = (z0 + A) / 2, so each denominator is
    ``z0 + gamma (z0 ± A) / 2`` (one product; z0 comes from the forward where the layer's output is
    exact), and the relevance is ``(1 + gamma/2) a ⊙ wᵀσ + gamma/2 |a| ⊙ |w|ᵀ(sign(out) σ)`` with
    σ the stabilised ratio: two transposes."""

    name = "gamma"

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6, bias: bool = True):
        self.gamma = gamma
        self.stabilizer = stabilizer
        self.bias = bias

    def relevance(self, op, a, R, out):
        g = self.gamma
        w, b = op.weight, op.bias
        a_abs = a if getattr(op, "nonnegative_input", False) else a.abs()
        absw = op.modified(ABSOLUTE)
        if getattr(op, "exact_output", False):  # out = forward(a, w, b): no product for z0
            z0 = out if b is None else out - _bias_map(op, b, out)
        else:
            z0 = op.forward(a, w, None)
        sign = torch.sign(out)
        z = z0 + (g / 2) * (z0 + sign * op.forward(a_abs, absw, None))
        if self.bias and b is not None:  # b + g b+ where the output is positive, b + g b- elsewhere
            z = z + torch.where(out > 0, _bias_map(op, b + g * b.clamp(min=0), out),
                                _bias_map(op, b + g * b.clamp(max=0), out))
        s = (op.expand(out) != 0).to(R.dtype) * R / stabilize(op.expand(z), self.stabilizer)
        r = op.transpose(s, w).mul_(op.expand(a) * (1 + g / 2))
        return r.add_(op.expand(a_abs) * op.transpose(op.expand(sign) * s, absw), alpha=g / 2)


def _bias_map(op, b, like):
    """A layer's per-channel vector ``b`` laid out against its output ``like``: the layer's own
    broadcast, or (an element-wise affine layer) the layer run on zeros."""
    if hasattr(op, "broadcast"):
        return op.broadcast(b, like.ndim)
    return op.forward(torch.zeros_like(like[:1]), op.weight, b)


class ZBox(Rule):
    """zB rule for a bounded input domain [low, high] (first layer).

    Bounds are scalars or per-channel; ``None`` means "use the box given to explain()".
    """

    name = "zbox"

    def __init__(self, low=None, high=None, stabilizer: float = 1e-6):
        self.low = low
        self.high = high
        self.stabilizer = stabilizer

    def relevance(self, op, a, R, out):
        low, high = op.box if self.low is None else (self.low, self.high)
        lo = _bound_like(low, a)
        hi = _bound_like(high, a)
        # Biases cancel in zB (b - b+ - b- = 0), so none enter here.
        if getattr(op, "stackable", False):
            # One forward and one transpose over [x, low, high] stacked on the channel axis.
            n, c = a.shape[:2]
            stacked = torch.cat([a, lo.expand(a.shape), hi.expand(a.shape)], dim=1)
            z = op.forward(stacked, op.modified(ZBOX_FORWARD), None)
            s = R / stabilize(op.expand(z), self.stabilizer)
            g = op.transpose(s, op.modified(ZBOX_TRANSPOSE), channels=3 * c)
            return g[:, :c].mul_(op.expand(a)) - lo * g[:, c:2 * c] - hi * g[:, 2 * c:]
        w, wp, wn = op.weight, op.modified(POSITIVE), op.modified(NEGATIVE)
        z = op.forward(a, w, None) - op.forward(lo, wp, None) - op.forward(hi, wn, None)
        s = R / stabilize(op.expand(z), self.stabilizer)
        return op.transpose(s, w).mul_(op.expand(a)) - lo * op.transpose(s, wp) - hi * op.transpose(s, wn)


class _InputIndependent(Rule):
    """Redistribution by modified weights alone, inputs set to one (flat, w^2).

    With ``bias=True`` the modified bias (ones, b^2) enters the denominator, as in zennit.
    """

    modifier: WeightModifier

    def __init__(self, stabilizer: float = 1e-6, bias: bool = True):
        self.stabilizer = stabilizer
        self.bias = bias

    def modified_bias(self, b):  # pragma: no cover - interface
        raise NotImplementedError

    def relevance(self, op, a, R, out):
        w = op.modified(self.modifier)
        b = self.modified_bias(op.bias) if (self.bias and op.bias is not None) else None
        z = op.forward(torch.ones_like(a[:1]), w, b)
        return op.transpose(R / stabilize(z, self.stabilizer), w)


class Flat(_InputIndependent):
    """Uniform redistribution over the receptive field (weights and inputs set to one; no bias, as zennit)."""

    name = "flat"
    modifier = ONES

    def __init__(self, stabilizer: float = 1e-6, bias: bool = False):
        super().__init__(stabilizer, bias)

    def modified_bias(self, b):
        return torch.ones_like(b)


class WSquare(_InputIndependent):
    """w^2 rule: input-independent redistribution proportional to squared weights."""

    name = "wsquare"
    modifier = SQUARE

    def modified_bias(self, b):
        return b * b


class Gradient(Rule):
    """Plain transpose (the gradient): used by the gradient-family methods."""

    name = "gradient"

    def relevance(self, op, a, R, out):
        return op.transpose(R, op.weight)


class SumRule(Rule):
    """Base class of the rules of a residual add: ``relevance(parts, R, total)`` splits the relevance
    of ``total = sum(parts)`` into one share per summand."""

    applies_to = frozenset({"add"})

    def relevance(self, parts, R, total):  # pragma: no cover - interface
        raise NotImplementedError


class ZSum(SumRule):
    """Shares proportional to the summands' contributions (the z rule on the sum, zennit's Norm):
    R_k = x_k / (sum + eps sign(sum)) R. Conserves relevance up to the stabiliser."""

    name = "z_sum"

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = stabilizer

    def relevance(self, parts, R, total):
        s = R / stabilize(total, self.stabilizer)
        return [p * s for p in parts]


class AbsSum(SumRule):
    """Shares proportional to the summands' absolute values: R_k = |x_k| / (sum_j |x_j| + eps) R
    (never flips the sign of the relevance)."""

    name = "abs_sum"

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = stabilizer

    def relevance(self, parts, R, total):
        mags = [p.abs() for p in parts]
        total = sum(mags)
        s = R / (total + stabilizer_for(total, self.stabilizer))
        return [m * s for m in mags]


class ProductRule(Rule):
    """Base class of the rules of a product of two input-dependent values (q·kᵀ, attention·v, a
    gated unit): each factor's LRP-0 relevance (factor times its gradient against R / output,
    which alone would give the product's relevance once per factor) times the share
    ``shares(gates)`` gives it. ``gates[k]``: factor k is a softmax/sigmoid output."""

    applies_to = frozenset({"product"})

    def __init__(self, stabilizer: float = 1e-9):
        self.stabilizer = stabilizer

    def shares(self, gates: list) -> list:  # pragma: no cover - interface
        raise NotImplementedError


class Uniform(ProductRule):
    """AttnLRP's uniform rule (Achtibat et al. 2024, Eq. 7): the n factors of a product share its
    relevance equally (1/n of each factor's LRP-0 relevance). Conserving."""

    name = "uniform"

    def shares(self, gates):
        return [1.0 / len(gates)] * len(gates)


class GateConstant(ProductRule):
    """CP-LRP (Ali et al. 2022; lxt's configuration for vision transformers): a factor that is a
    softmax/sigmoid output (the attention weights) is a constant, the other factor takes all the
    relevance; a product of two non-gates splits uniformly."""

    name = "gate_constant"

    def shares(self, gates):
        n_signal = sum(not g for g in gates)
        if 0 < n_signal < len(gates):
            return [0.0 if g else 1.0 / n_signal for g in gates]
        return [1.0 / len(gates)] * len(gates)


def _split_input(op, a):
    # Post-ReLU inputs are non-negative: skip the negative half (half the work) when it is empty.
    if not getattr(op, "nonnegative_input", False) and bool(a.amin() < 0):
        return a.clamp(min=0), a.clamp(max=0)
    return a, None


def _bound_like(bound, a):
    t = torch.as_tensor(bound, dtype=a.dtype, device=a.device)
    if t.ndim == 1:
        t = t.view(1, -1, *([1] * (a.ndim - 2)))
    return t.expand(1, *a.shape[1:])
