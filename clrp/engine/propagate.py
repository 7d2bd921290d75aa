"""Running a plan: the forward pass that records every value, the relevance walk, and gradients.

The forward re-runs the traced computation on the model's current tensors (detached: nothing of
the model is changed and no hook is registered) and keeps every value. The LRP backward visits
the nodes in reverse forward order and sums the relevance a value receives from all its
consumers before passing it on. The gradient family differentiates the same forward with
autograd (ReLU-like ops filter the signal for guided backprop and DeconvNet).

Rows of the input batch that are identical share one forward pass (several targets of one image
cost one forward) wherever every op's backward allows more relevance rows than forward rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ClrpError, InvalidInput, UnsupportedModel
from .graph import Leaf, Ref
from .ops import DECONVNET, GRADIENT, GUIDED, first_ref
from .plan import Plan

LRP = "lrp"

__all__ = ["LRP", "GRADIENT", "GUIDED", "DECONVNET", "Forward", "check_inputs", "run_forward", "propagate",
           "layer_step", "gradients", "box_at"]


@dataclass
class Forward:
    """A recorded forward pass on the unique input rows: ``values[i]`` is node i's value, ``inv``
    maps each batch row to its unique row (None when the rows were kept as given)."""

    plan: Plan
    values: list
    inv: torch.Tensor | None
    n: int
    saved: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    masked: bool = False  # ablation masks applied: values may lose their static sign
    fingerprints: dict = field(default_factory=dict)  # the weight cache's checksums of this pass

    def expand(self, t):
        if self.inv is None or not isinstance(t, torch.Tensor) or t.ndim == 0 or t.shape[0] != self.rows:
            return t
        return t.index_select(0, self.inv)

    @property
    def rows(self) -> int:
        return self.values[self.plan.graph.input].shape[0]

    def value(self, i: int) -> torch.Tensor:
        return self.expand(self.values[i])

    @property
    def logits(self) -> torch.Tensor:
        return self.value(self.plan.graph.output)


class _Context:
    """What ops see while running: values, the plan's weights, the mode, and resolution of
    references to values and model tensors."""

    def __init__(self, plan, fwd, mode, device, rules=None, box=None):
        self.plan, self.fwd, self.mode, self.device = plan, fwd, mode, device
        self.lrp = mode == LRP
        self.saved, self.params = fwd.saved, fwd.params
        self.rules = rules
        self._box = box
        self._boxes: dict = {}

    def resolve(self, obj):
        if isinstance(obj, Ref):
            return self.fwd.values[obj.index]
        if isinstance(obj, Leaf):
            return self.plan.leaf(obj, self.device)
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.resolve(o) for o in obj)
        if isinstance(obj, dict):
            return {k: self.resolve(v) for k, v in obj.items()}
        return obj

    def box_for(self, node):
        """zB bounds at a first layer's input: the given box, carried through whatever re-indexing
        lies between the model input and that layer."""
        if self._box is None or node.index not in self.plan.first_layers:
            return self._box
        inp = first_ref(node)
        if inp == self.plan.graph.input:
            return self._box
        if inp not in self._boxes:
            self._boxes[inp] = box_at(self.plan, inp, self._box, self.fwd.values[self.plan.graph.input])
        return self._boxes[inp]


def box_at(plan: Plan, i: int, box, x: torch.Tensor):
    """The bounds ``box`` (at the model input, shaped like a row of ``x``) at the value of node ``i``:
    both bounds run through the nodes between (re-indexing, or a normalisation in the model)."""
    lo, hi = (_bound_tensor(b, x) for b in box)
    v = run_forward(plan, torch.cat([lo, hi]), stop=i, dedupe=False, check=False).values[i]
    return torch.minimum(v[:1], v[1:2]), torch.maximum(v[:1], v[1:2])


def _bound_tensor(bound, x):
    t = torch.as_tensor(bound, dtype=x.dtype, device=x.device)
    if t.ndim == 1 and x.ndim >= 2:
        t = t.view(1, -1, *([1] * (x.ndim - 2)))
    return t.expand(1, *x.shape[1:]).contiguous()


def check_inputs(plan: Plan, inputs) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise InvalidInput(f"inputs must be a torch.Tensor of shape [N, C, H, W], got {type(inputs).__name__}")
    expected = plan.signature[0]
    if inputs.ndim != len(expected) + 1:
        raise InvalidInput(f"inputs must have shape [N, {', '.join(map(str, expected))}]; got shape {tuple(inputs.shape)}")
    if len(expected) >= 1 and inputs.shape[1] != expected[0]:
        raise InvalidInput(f"the model expects {expected[0]} input channels; got {inputs.shape[1]}")
    if not inputs.is_floating_point():
        raise InvalidInput(f"inputs must be a floating point tensor, got {inputs.dtype}")
    if inputs.shape[0] == 0:
        raise InvalidInput("inputs is an empty batch")
    model = plan.model()
    p = next(model.parameters(), None)
    if p is not None and p.device != inputs.device:
        raise InvalidInput(f"inputs are on {inputs.device} but the model is on {p.device}; move one of them")
    if p is not None and p.dtype != inputs.dtype:
        raise InvalidInput(f"inputs are {inputs.dtype} but the model is {p.dtype}")
    if not bool(torch.isfinite(inputs).all()):
        raise InvalidInput("inputs contain NaN or infinite values")
    return inputs.detach()


def _dedupe(x: torch.Tensor):
    n = x.shape[0]
    if n == 1:
        return x, None
    if x.stride(0) == 0:  # x.expand(...): one image repeated
        return x[:1].contiguous(), torch.zeros(n, dtype=torch.long, device=x.device)
    flat = x.reshape(n, -1)
    probe = flat[:, :: max(1, flat.shape[1] // 257)]  # cheap pre-check on a few columns
    if torch.unique(probe, dim=0).shape[0] == n:
        return x, None
    uniq, inv = torch.unique(flat, dim=0, return_inverse=True)
    if uniq.shape[0] == n:
        return x, None
    return uniq.reshape(-1, *x.shape[1:]), inv


def run_forward(plan: Plan, x: torch.Tensor, *, ablate: dict | None = None, stop: int | None = None,
                dedupe: bool = True, mode: str = LRP, check: bool = True) -> Forward:
    """Forward pass keeping every value. ``stop``: compute only what node ``stop`` needs.
    ``ablate``: {layer name: mask} multiplies those values (masks broadcast against them)."""
    if check:
        x = check_inputs(plan, x)
    g = plan.graph
    guards = g.batch_guards
    # sharing a forward between identical rows changes the batch size the model sees
    use_dedupe = dedupe and mode == LRP and plan.dedupe_ok and not guards.constrained
    why = guards.rejects(x.shape[0]) if check else None  # unchecked: two bounds of a zB box through the prefix
    if why is not None:
        raise UnsupportedModel(f"a batch of {x.shape[0]} cannot run on this plan of {type(plan.model()).__name__}: {why} "
                               "(explain with clrp.explain, which traces the model for that batch size)")
    xu, inv = _dedupe(x) if use_dedupe else (x.contiguous() if x.stride(0) == 0 else x, None)
    masks = {}
    for name, mask in (ablate or {}).items():
        m = torch.as_tensor(mask, dtype=x.dtype, device=x.device)
        if inv is not None and m.ndim > 0 and m.shape[0] == x.shape[0] != xu.shape[0]:
            xu, inv = x, None  # per-row masks: rows are no longer identical
        masks[plan.layer_index(name)] = m
    if mode != LRP:
        xu = xu.detach().requires_grad_(True)
    fwd = Forward(plan, [None] * len(g.nodes), inv, x.shape[0], masked=bool(masks))
    fwd.values[g.input] = xu
    ctx = _Context(plan, fwd, mode, x.device)
    needed = None if stop is None else g.ancestors(stop)
    grad = torch.enable_grad() if mode != LRP else torch.no_grad()
    with grad:
        for node in g.nodes:
            i = node.index
            if i == g.input or (needed is not None and i not in needed):
                continue
            args, kwargs = ctx.resolve(node.args), ctx.resolve(node.kwargs)
            try:
                value = node.op.forward(node, args, kwargs, ctx)
            except ClrpError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                raise InvalidInput(f"{node.describe()} cannot run on an input of shape {tuple(x.shape)}: "
                                   f"{str(exc).splitlines()[0]}") from None
            if i in masks:
                value = value * masks[i]
            fwd.values[i] = value
    return fwd


class _Backward(_Context):
    def __init__(self, plan, fwd, rules, box):
        super().__init__(plan, fwd, LRP, fwd.values[plan.graph.input].device, rules, box)


def propagate(plan: Plan, fwd: Forward, seeds: dict, *, rules: dict, box=None, condition: dict | None = None,
              until: int | None = None) -> torch.Tensor:
    """LRP walk from ``seeds`` ({node: relevance at its output}) down to the input (or to the output
    of node ``until``). ``condition``: {node: mask} keeps only the relevance that flows through that
    node, multiplied by the mask (relevance bypassing it, e.g. over a skip connection, is dropped)."""
    g = plan.graph
    ctx = _Backward(plan, fwd, rules, box)
    pending = dict(seeds)
    lowest = g.input if until is None else until
    with torch.no_grad():
        for i in range(max(pending), lowest - 1, -1):
            R = pending.pop(i, None)
            if R is None:
                continue
            if condition is not None and i in condition:
                R = R * condition[i]
                pending.clear()
            if i == until or i == g.input:
                return R
            node = g.nodes[i]
            for j, r in node.op.backward(node, R, ctx):
                if g.carries[j]:
                    pending[j] = r if j not in pending else pending[j] + r
    rows = next(iter(seeds.values())).shape[0]
    target = g.input if until is None else until
    v = fwd.values[target]
    return torch.zeros((rows, *v.shape[1:]), dtype=v.dtype, device=v.device)


def layer_step(plan: Plan, fwd: Forward, i: int, R: torch.Tensor, *, rules: dict, box=None,
               negate: bool = False) -> torch.Tensor:
    """Relevance at the input of conv/dense node ``i`` given ``R`` at its output (``negate``: with the
    layer's weights and bias negated, CLRP2's dual)."""
    ctx = _Backward(plan, fwd, rules, box)
    ctx.negate = negate
    node = plan.graph.nodes[i]
    ((_, r),) = node.op.backward(node, R, ctx)
    return r


def gradients(plan: Plan, x: torch.Tensor, seed_fn, *, mode: str = GRADIENT, wrt: tuple = ()) -> list:
    """Gradient of ``(logits * seed_fn(logits)).sum()`` with respect to the input and to the values of
    the nodes in ``wrt``; returns ``[grad_input, *grad_wrt, fwd]``."""
    fwd = run_forward(plan, x, mode=mode, dedupe=False)
    logits = fwd.values[plan.graph.output]
    seed = seed_fn(logits.detach())
    targets = [fwd.values[plan.graph.input], *(fwd.values[i] for i in wrt)]
    grads = torch.autograd.grad(logits, targets, seed, allow_unused=True)
    grads = [torch.zeros_like(t) if gr is None else gr for gr, t in zip(grads, targets)]
    return [*grads, fwd]
