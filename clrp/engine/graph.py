"""The dataflow graph of a model: nodes in forward (topological) order, with the user's names.

A node computes one value from the values of earlier nodes (``Ref``), the model's tensors
(``Leaf``: parameters and buffers, read from the model at run time, never copied) and
constants. Names follow torchvision's feature-extraction convention: a leaf module called once
is named by its path (``layer1.0.conv1``), a second call gets ``_1`` (``layer1.0.relu_1``), an
operation written in a module's ``forward`` is ``<module>.<op>`` (``layer1.0.add``). Every module
path is also an alias of the node that produces the module's output (``layer1.0``, ``layer4``).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import InvalidTarget


class Ref(NamedTuple):
    """The value of node ``index``."""
    index: int


class Leaf(NamedTuple):
    """A tensor of the model (``kind`` "param" or "buffer", by its state_dict name) or a constant
    captured at trace time (``kind`` "const")."""
    kind: str
    name: str


@dataclass(eq=False)
class Node:
    index: int
    name: str
    op: Any  # clrp.engine.ops.Op
    target: Any  # the function the node calls (an ATen overload, or a Python callable)
    args: tuple
    kwargs: dict
    module: str = ""  # innermost module path ("" at the top level)
    module_type: type | None = None
    shape: tuple | None = None  # per-sample shape of a tensor value (without the batch dimension)
    tensor: bool = False  # the value is a tensor
    depends: bool = False  # the value depends on the model input
    batch_first: bool = False  # dimension 0 of the value is the batch
    symbolic: bool = False  # a size computed from the input's shape (the batch size)
    aliases: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # op-specific static data (fused BatchNorm, gate side, ...)

    @property
    def refs(self) -> list[int]:
        return [r.index for r in iter_refs((self.args, self.kwargs))]

    @property
    def op_name(self) -> str:
        return op_name(self.target)

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]

    def describe(self) -> str:
        """``layer1.0 (BasicBlock): add`` — the user's module path and type, then the operation."""
        where = self.module or "the model's forward"
        kind = f" ({self.module_type.__name__})" if self.module_type is not None else ""
        return f"{where}{kind}: {self.op_name}"


def op_name(target) -> str:
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return packet.__name__
    return getattr(target, "__name__", str(target))


def iter_refs(obj):
    if isinstance(obj, Ref):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from iter_refs(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from iter_refs(o)


class Graph:
    """Nodes in forward order, the input and output nodes, and the analyses every method shares."""

    def __init__(self, nodes: list[Node], input_index: int, output_index: int, batch_dynamic: bool):
        self.nodes = nodes
        self.input = input_index
        self.output = output_index
        self.batch_dynamic = batch_dynamic
        self.names: dict[str, int] = {}
        for node in nodes:
            self.names.setdefault(node.name, node.index)
        for node in nodes:
            for a in node.aliases:
                self.names.setdefault(a, node.index)
        self.consumers: list[list[int]] = [[] for _ in nodes]
        for node in nodes:
            for j in dict.fromkeys(node.refs):
                self.consumers[j].append(node.index)
        self.carries = [n.tensor and n.depends for n in nodes]  # relevance can flow through
        self.cuts = self._cuts()

    # -- names ---------------------------------------------------------------------------------
    def index(self, name: str) -> int:
        if name in self.names:
            return self.names[name]
        close = difflib.get_close_matches(name, list(self.names), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        listed = self.layer_names()
        shown = ", ".join(listed[:12]) + (f", ... ({len(listed)} in all; clrp.engine.layer_names(model) lists them)"
                                          if len(listed) > 12 else "")
        raise InvalidTarget(f"no layer named {name!r}{hint} Layers: {shown}")

    def layer_names(self) -> list[str]:
        """Names of the nodes relevance can flow through, in forward order (the input excluded)."""
        return [n.name for n in self.nodes if self.carries[n.index] and n.index != self.input]

    def preferred_name(self, i: int) -> str:
        """The shortest of a node's names (a module path such as ``layer4`` before ``layer4.1.relu_1``)."""
        node = self.nodes[i]
        return min(node.names, key=lambda n: (n.count("."), n != node.name, len(n)))

    # -- structure ----------------------------------------------------------------------------
    def carried_inputs(self, i: int) -> list[int]:
        return [j for j in dict.fromkeys(self.nodes[i].refs) if self.carries[j]]

    def ancestors(self, i: int) -> set[int]:
        seen, stack = {i}, [i]
        while stack:
            for j in self.nodes[stack.pop()].refs:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return seen

    def _cuts(self) -> set[int]:
        """Nodes every input-to-output path goes through (block outputs in a residual network)."""
        n = len(self.nodes)
        last = [-1] * n
        for node in self.nodes:
            if self.carries[node.index]:
                for j in node.refs:
                    if self.carries[j]:
                        last[j] = max(last[j], node.index)
        cover = [0] * (n + 1)
        for j in range(n):
            if self.carries[j] and last[j] > j:
                cover[j] += 1
                cover[last[j]] -= 1
        cuts, live = set(), 0
        on_path = self.ancestors(self.output)
        for i in range(n):
            live += cover[i]
            if self.carries[i] and i in on_path and (i == self.output or (last[i] > i and live == 1)):
                cuts.add(i)
        return cuts

    def last_feature_map(self, before: int | None = None) -> int | None:
        """The last node (before node ``before``) every path goes through whose value is a [C, h, w]
        map with h, w > 1 (pools excluded): Grad-CAM's default layer and feature ablation's."""
        for i in sorted(self.cuts, reverse=True):
            if before is not None and i >= before:
                continue
            node = self.nodes[i]
            s = node.shape
            if (s is not None and len(s) == 3 and all(isinstance(d, int) for d in s) and s[1] > 1 and s[2] > 1
                    and not getattr(node.op, "pool", False) and node.index != self.input):
                return i
        return None
