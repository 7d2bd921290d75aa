"""A traced model ready to run: its graph, the binding to the model's current tensors, the cache of
folded and rule-modified weights, and the static analyses the methods share.

Plans are built once per model and input size (:func:`plan_for`) and never hold the model itself
(a weak reference), so dropping the model frees its plans. The weight cache never serves stale
weights: an entry is valid only while every source tensor is the same object with the same
storage, version counter and contents (a checksum, :func:`fingerprint`, taken once per pass:
``param.data`` edits and BatchNorm running statistics bypass the version counter).
"""
from __future__ import annotations

import threading
import warnings
import weakref
from collections import OrderedDict

import torch
from torch import nn

from ..errors import InvalidInput, UnsupportedModel
from .graph import Graph, Leaf, Node, Ref
from .ops import AvgPool, Linear, first_ref
from .trace import trace, unwrap

__all__ = ["Plan", "plan_for", "forget", "ClrpWarning"]


class ClrpWarning(UserWarning):
    """Something clrp did differently from what the user might expect (said once per model)."""


_WORDS = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}


def fingerprint(t: torch.Tensor) -> torch.Tensor:
    """A cheap checksum of a tensor's contents, one read of its memory: the bits of each row (each
    output unit of a weight) summed as 64-bit integers. Integer sums are exact, so changing any
    element, or any set of elements of a row unless their bit patterns sum to the same, changes
    it; so does reordering the rows. Vectors (biases, BatchNorm statistics) are kept bit for bit.
    ``param.data`` edits bypass the version counter: this sees them."""
    t = t.detach()
    if t.numel() == 0:
        return t.new_zeros(0, dtype=torch.int64)
    if not t.is_contiguous():
        t = t.contiguous()
    flat = t.reshape(-1)
    if t.ndim <= 1:  # biases, BatchNorm parameters and statistics: small, kept bit for bit
        return flat.view(_WORDS[t.element_size()]).clone()
    rows = t.shape[0]
    row_bytes = t.numel() * t.element_size() // rows
    if row_bytes % 8 == 0 and flat.data_ptr() % 8 == 0:  # two float32 per word: half the adds
        return flat.view(torch.int64).view(rows, -1).sum(1)
    return flat.view(_WORDS[t.element_size()]).view(rows, -1).sum(1, dtype=torch.int64)


# False only to measure what the check costs (benchmarks/bench_engine.py --check-cost): stale weights.
CHECK_CONTENTS = True


class _Entry:
    __slots__ = ("refs", "stamp", "prints", "value")

    def __init__(self, tensors, prints, value):
        self.refs = [weakref.ref(t) for t in tensors]
        self.stamp = _stamp(tensors)
        self.prints = prints
        self.value = value

    def valid(self, tensors, prints) -> bool:
        return (len(tensors) == len(self.refs) and all(r() is t for r, t in zip(self.refs, tensors))
                and self.stamp == _stamp(tensors)
                and (prints is None or (self.prints is not None and len(prints) == len(self.prints)
                                        and all(torch.equal(a, b) for a, b in zip(self.prints, prints)))))


def _stamp(tensors):
    return tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype) for t in tensors)


class Plan:
    def __init__(self, model: nn.Module, graph: Graph, constants: dict, signature: tuple):
        self.graph = graph
        self.signature = signature
        self._model = weakref.ref(model)
        self._modules = {name: weakref.ref(m) for name, m in model.named_modules()}
        self._module_ids = self.structure_of(model)
        self._constants = constants
        self._const_cache: dict = {}
        self._weights: dict = {}
        self._lock = threading.Lock()
        self._rules: "OrderedDict[int, tuple]" = OrderedDict()
        g = graph
        self.nonneg = [False] * len(g.nodes)
        for node in g.nodes:
            if g.carries[node.index] and node.index != g.input:
                self.nonneg[node.index] = bool(node.op.nonnegative(node, g, self.nonneg))
        self.problems = {}
        for node in g.nodes:
            if g.carries[node.index] and node.index != g.input:
                reason = node.extra.get("problem") or node.op.lrp_problem(node, g)
                if reason:
                    self.problems[node.index] = reason
        self.dedupe_ok = all(node.op.row_agnostic(node, g) for node in g.nodes if g.carries[node.index])
        # first layers: conv/dense nodes reached from the input without passing another one
        before = [False] * len(g.nodes)
        before[g.input] = True
        self.first_layers = set()
        for node in g.nodes:
            if node.index == g.input or not g.carries[node.index]:
                continue
            feeds = any(before[j] for j in g.carried_inputs(node.index))
            if isinstance(node.op, Linear):
                if feeds:
                    self.first_layers.add(node.index)
            else:
                before[node.index] = feeds
        # the input's preprocessing inside the model (e.g. Inception's transform_input): no features yet
        self.prefix = {i for i, b in enumerate(before) if b}
        self.output_layer = next((i for i in sorted(g.cuts, reverse=True) if isinstance(g.nodes[i].op, Linear)), None)
        self._sources = {node.index: self._leaves_of(node) for node in g.nodes if isinstance(node.op, Linear)
                         or node.op.rule_kind(node) == "norm"}

    # -- binding to the model -------------------------------------------------------------------
    @staticmethod
    def structure_of(model):
        """The modules and their plain settings (strides, eps, ...): what a trace bakes in."""
        return tuple((id(m), tuple((k, v) for k, v in vars(m).items() if k != "training" and not k.startswith("_")
                                   and isinstance(v, (int, float, bool, str, tuple))))
                     for m in model.modules())

    def model(self) -> nn.Module:
        m = self._model()
        if m is None:  # pragma: no cover - plans die with their model
            raise UnsupportedModel("the model of this plan no longer exists")
        return m

    def current(self, model) -> bool:
        """The model still has the modules and settings it was traced with (none replaced or added,
        no eps or stride changed)."""
        return self.structure_of(model) == self._module_ids

    def _tensor(self, leaf: Leaf):
        prefix, _, attr = leaf.name.rpartition(".")
        ref = self._modules.get(prefix)
        owner = ref() if ref is not None else None
        t = getattr(owner, attr, None) if owner is not None else None
        if not isinstance(t, torch.Tensor):
            raise UnsupportedModel(f"the model no longer has the tensor {leaf.name!r} it was traced with")
        return t

    def leaf(self, leaf: Leaf, device=None) -> torch.Tensor:
        if leaf.kind == "const":
            t = self._constants[leaf.name]
            if device is not None and t.device != device:
                key = (leaf.name, str(device))
                hit = self._const_cache.get(key)
                if hit is None:
                    hit = self._const_cache[key] = t.to(device)
                return hit
            return t
        return self._tensor(leaf).detach()

    def _leaves_of(self, node: Node) -> list[Leaf]:
        """The model tensors a conv/dense/norm node's weights are computed from."""
        out, stack, seen = [], [node.args[1:], node.kwargs, node.extra.get("bn_after"), node.extra.get("bn_before")], set()
        while stack:
            obj = stack.pop()
            if isinstance(obj, Leaf):
                out.append(obj)
            elif isinstance(obj, Ref):
                if obj.index not in seen and not self.graph.carries[obj.index]:
                    seen.add(obj.index)
                    n = self.graph.nodes[obj.index]
                    stack.extend([n.args, n.kwargs])
            elif isinstance(obj, (list, tuple)):
                stack.extend(obj)
            elif isinstance(obj, dict):
                stack.extend(obj.values())
        return list(dict.fromkeys(out))

    def _cached(self, key, node: Node, compute, ctx):
        leaves = self._sources[node.index]
        tensors = [self._constants[l.name] if l.kind == "const" else self._tensor(l) for l in leaves]
        # The contents are checked once per pass (a forward and its walks), not per use.
        memo = ctx.fwd.fingerprints
        prints = memo.get(node.index)
        if prints is None:
            prints = memo[node.index] = [fingerprint(t) for t in tensors] if CHECK_CONTENTS else None
        hit = self._weights.get(key)
        if hit is not None and hit.valid(tensors, prints):
            return hit.value
        with torch.no_grad():
            value = compute()
        entry = _Entry(tensors, prints, value)
        with self._lock:
            self._weights[key] = entry
        return value

    # -- weights ------------------------------------------------------------------------------------
    def folded(self, node: Node, bound: dict, ctx):
        """(weight, bias) of a conv/dense node with its BatchNorm folded in."""
        def compute():
            w = bound["weight"].detach()
            b = bound.get("bias")
            b = None if b is None else b.detach()
            after = node.extra.get("bn_after")
            before = node.extra.get("bn_before")
            if after is not None:
                scale, shift = _bn_affine(ctx.resolve(after), w.shape[0], w)
                w = w * scale.view(-1, *([1] * (w.ndim - 1)))
                b = shift if b is None else b * scale + shift
            if before is not None:
                scale, shift = _bn_affine(ctx.resolve(before), w.shape[1], w)
                if node.extra["conv"]:
                    extra = (w * shift.view(1, -1, *([1] * (w.ndim - 2)))).sum(dim=tuple(range(1, w.ndim)))
                    w = w * scale.view(1, -1, *([1] * (w.ndim - 2)))
                else:
                    extra = w @ shift
                    w = w * scale.view(1, -1)
                b = extra if b is None else b + extra
            return w, b
        if node.extra.get("bn_after") is None and node.extra.get("bn_before") is None:
            b = bound.get("bias")
            return bound["weight"].detach(), None if b is None else b.detach()
        return self._cached((node.index, None), node, compute, ctx)

    def affine(self, node: Node, bound: dict, ctx):
        """(scale, shift) per channel of an unfolded eval BatchNorm."""
        x = bound["input"]
        return self._cached((node.index, None), node, lambda: _bn_affine(
            {k: bound[k] for k in ("weight", "bias", "running_mean", "running_var", "eps")}, x.shape[1], x), ctx)

    def modified(self, node: Node, modifier, base: torch.Tensor, ctx):
        """A rule's modified weights of a conv/dense node (e.g. w+), cached like the base weights."""
        return self._cached((node.index, modifier), node, lambda: modifier(base), ctx)

    def nonnegative_input(self, node: Node) -> bool:
        return self.nonneg[first_ref(node)]

    # -- rules ------------------------------------------------------------------------------------
    def rules_for(self, composite) -> dict:
        """{node index: rule} for every node that takes a rule under ``composite``."""
        key = id(composite)
        hit = self._rules.get(key)
        if hit is not None and hit[0] is composite:
            return hit[1]
        rules = {}
        for node in self.graph.nodes:
            kind = node.op.rule_kind(node) if self.graph.carries[node.index] else None
            if kind is not None:
                rules[node.index] = composite.rule_for(node.names, node.module_type, kind,
                                                       node.index in self.first_layers)
            elif isinstance(node.op, AvgPool) and self.graph.carries[node.index]:
                rules[node.index] = getattr(composite, "pool", node.op.stabilizer)  # its z rule's stabiliser
        with self._lock:
            self._rules[key] = (composite, rules)
            while len(self._rules) > 16:
                self._rules.popitem(last=False)
        return rules

    def lrp_problem(self, start: int | None = None) -> str | None:
        """The first node (in forward order) between the input and ``start`` that LRP cannot pass."""
        if not self.problems:
            return None
        start = self.graph.output if start is None else start
        on_path = self.graph.ancestors(start)
        bad = [i for i in sorted(self.problems) if i in on_path]
        if not bad:
            return None
        node = self.graph.nodes[bad[0]]
        return f"{node.describe()}: {self.problems[bad[0]]}"

    def require_lrp(self, start: int | None = None) -> None:
        problem = self.lrp_problem(start)
        if problem:
            raise UnsupportedModel(f"the LRP methods cannot explain this model: {problem}")

    def layer_index(self, name: str) -> int:
        return self.graph.index(name)

    def last_feature_map(self) -> int | None:
        """Grad-CAM's and feature ablation's default layer: the graph's last feature map before the
        output layer."""
        return self.graph.last_feature_map(before=self.output_layer)


def _bn_affine(bn: dict, channels: int, like: torch.Tensor):
    var, mean = bn["running_var"].detach(), bn["running_mean"].detach()
    scale = torch.rsqrt(var + bn["eps"])
    if bn.get("weight") is not None:
        scale = scale * bn["weight"].detach()
    shift = -mean * scale
    if bn.get("bias") is not None:
        shift = shift + bn["bias"].detach()
    return scale.to(like.dtype), shift.to(like.dtype)


# ----------------------------------------------------------------------------------------------
# The plan cache

_PLANS: "weakref.WeakKeyDictionary[nn.Module, OrderedDict]" = weakref.WeakKeyDictionary()
_PLANS_LOCK = threading.Lock()
_WARNED: "weakref.WeakKeyDictionary[nn.Module, set]" = weakref.WeakKeyDictionary()
_MAX_PLANS_PER_MODEL = 4


def warn_once(model: nn.Module, key: str, message: str) -> None:
    with _PLANS_LOCK:
        seen = _WARNED.setdefault(model, set())
        if key in seen:
            return
        seen.add(key)
    warnings.warn(message, ClrpWarning, stacklevel=4)


def _device_dtype(model: nn.Module):
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def _output_key(output):
    """A cache key for an output selection: a key or index as is; a function by its code and
    closure values (a lambda written inline is a new object on every call but the same selection)."""
    if output is None or isinstance(output, (str, int)) and not isinstance(output, bool):
        return output
    if not callable(output):
        raise InvalidInput(f"output must be None, a key, an index or a function of the model's output; got {output!r}")
    code = getattr(output, "__code__", None)
    if code is None:
        return ("object", output)
    cells = tuple(c.cell_contents for c in (output.__closure__ or ()))
    key = ("function", code, cells, output.__defaults__, getattr(output, "__self__", None))
    try:
        hash(key)
    except TypeError:
        return ("object", output)
    return key


def _check_not_meta(model: nn.Module) -> None:
    if not any(t.is_meta for t in model.parameters()) and not any(t.is_meta for t in model.buffers()):
        return
    meta = next((n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
    if meta is not None:
        raise InvalidInput(f"{type(model).__name__} has meta tensors ({meta!r} has a shape but no values): load "
                               "its weights first (e.g. model.to_empty(device='cpu') then load_state_dict)")


def plan_for(model: nn.Module, inputs: torch.Tensor | None = None, *, output=None) -> Plan:
    """The (cached) plan of ``model`` for inputs shaped like ``inputs`` (default: the last plan
    built for the model, else a 3 x 224 x 224 input), explaining the model output ``output``
    selects (None: the model's only output tensor; a key, an index, or a function of the output).

    ``nn.DataParallel`` and ``DistributedDataParallel`` are explained through their ``.module``. A
    plan is only used for batch sizes its trace is valid for (a model whose forward checks
    ``x.shape[0]`` is traced again for a batch size the first trace excluded)."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModel(f"expected a torch.nn.Module, got {type(model).__name__}")
    model = unwrap(model)
    if isinstance(inputs, torch.Tensor) and inputs.is_meta:
        raise InvalidInput("inputs are meta tensors (shapes without values): there is nothing to explain; pass real "
                           "tensors")
    if model.training:
        warn_once(model, "training", f"{type(model).__name__} is in training mode: clrp explains it with eval-mode "
                  "semantics (BatchNorm running statistics, no dropout). Call model.eval() to silence this warning.")
    plans = _PLANS.get(model)
    out_key = _output_key(output)
    rows = None
    if inputs is None:
        if plans:
            plan = next(reversed(plans.values()))
            if plan.current(model) and plan.signature[3] == out_key:
                return plan
        device, dtype = _device_dtype(model)
        first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))), None)
        shape = (3, 224, 224)
        if isinstance(first, nn.Conv2d):
            shape = (first.in_channels, 224, 224)
        elif isinstance(first, nn.Linear) and first is next(iter(model.modules()), None):
            shape = (first.in_features,)
        sig = (shape, dtype, str(device), out_key)
    else:
        if not isinstance(inputs, torch.Tensor):
            raise InvalidInput(f"inputs must be a torch.Tensor of shape [N, C, H, W], got {type(inputs).__name__}")
        if inputs.ndim < 2:
            raise InvalidInput(f"inputs must have a batch dimension: [N, C, H, W]; got shape {tuple(inputs.shape)}")
        sig = (tuple(inputs.shape[1:]), inputs.dtype, str(inputs.device), out_key)
        rows = int(inputs.shape[0]) or None

    def cached():
        found = False
        for (s, _), plan in reversed((plans or {}).items()):
            if s == sig and plan.current(model):
                found = True
                if rows is None or plan.graph.batch_guards.rejects(rows) is None:
                    return plan, True
        return None, found

    plan, traced = cached()
    if plan is not None:
        return plan
    with _PLANS_LOCK:
        plans = _PLANS.setdefault(model, OrderedDict())
        plan, traced = cached()
        if plan is not None:
            return plan
    _check_not_meta(model)
    batch = 2 if not traced else rows  # a size the first trace excluded: trace that size
    graph, constants, dropped = trace(model, sig[0], sig[1], torch.device(sig[2]), output=output, batch=batch)
    why = graph.batch_guards.rejects(rows) if rows is not None else None
    if why is not None and batch != rows:
        batch = rows
        graph, constants, dropped = trace(model, sig[0], sig[1], torch.device(sig[2]), output=output, batch=batch)
        why = graph.batch_guards.rejects(rows)
    if why is not None:
        raise UnsupportedModel(f"{type(model).__name__} could not be traced for a batch of {rows}: {why}")
    if dropped:
        warn_once(model, "hooks", f"{type(model).__name__} has forward hooks on {', '.join(dropped[:5])}"
                  f"{' ...' if len(dropped) > 5 else ''}: clrp re-runs the model's own computation and does not "
                  "call them (they were checked to change nothing).")
    plan = Plan(model, graph, constants, sig)
    with _PLANS_LOCK:
        plans = _PLANS.setdefault(model, OrderedDict())
        plans[(sig, batch)] = plan
        while len(plans) > _MAX_PLANS_PER_MODEL:
            plans.popitem(last=False)
    return plan


def forget(model: nn.Module) -> None:
    """Drop the cached plans of ``model`` (the next explanation traces it again)."""
    with _PLANS_LOCK:
        _PLANS.pop(unwrap(model), None)
