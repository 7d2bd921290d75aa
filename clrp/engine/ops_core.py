"""The op registry and what every node kind shares: ``register``/``op_for``, the :class:`Op` base
class, argument binding by ATen schema, and the small helpers the kinds' backwards use
(``reduce_to``, ``vjp``, ``first_ref``, ``provably_nonnegative``). The kinds themselves live in
``ops_activations``, ``ops_structure``, ``ops_pools`` and ``ops_layers``; :mod:`.ops` gathers them.
"""
from __future__ import annotations

import torch

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
