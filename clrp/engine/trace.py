"""Tracing a model into a :class:`~clrp.engine.graph.Graph` with ``torch.export``.

Why torch.export: it runs the model's own Python (control flow on shapes, ``x.shape[0]``, custom
padding modules, subclasses of ``nn.Conv2d`` with their own ``forward``) and records the ATen
calls it makes, each tagged with the module that made it; ``torch.fx.symbolic_trace`` fails on
such code (timm). The trace is non-strict, with a free batch dimension and fixed channel/spatial
sizes: one graph per input size, built once and cached. Limits: data-dependent control flow
(``if x.sum() > 0``) cannot be traced; such models still get the autograd-only methods.

Tracing works on a copy of the model in eval mode without the user's forward hooks, so the
user's model is never touched. The copy's graph is then canonicalised: in-place activations
become functional, identities (dropout, contiguous, clone) disappear, ``split``/``chunk`` become
slices and BatchNorm is folded into the conv/dense layer next to it.

The steps live in :mod:`.trace_export` (the copy, output selection, torch.export and its errors,
batch-size guards) and :mod:`.trace_passes` (canonicalisation and names); :func:`trace` runs them
and builds the :class:`~clrp.engine.graph.Graph`, through the on-disk cache of :mod:`.trace_cache`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UnsupportedModel
from .graph import Graph, Leaf, Node, Ref
from . import trace_cache
from .ops import op_for
from .trace_export import (BatchGuards, _batch_guards, _clean_copy, _export, _hooks_that_change, _selecting,
                           select_output, unwrap)
from .trace_passes import (_LINEAR, _fold_batchnorm, _functionalize, _name, _name_nodes, _remove_identities,
                           _splits_to_slices)

__all__ = ["trace", "select_output", "unwrap", "BatchGuards", "Input", "INPUT"]

_FACTORIES = {"new_zeros", "new_ones", "new_empty", "new_full", "zeros_like", "ones_like", "empty_like",
              "full_like", "rand_like", "randn_like", "sym_size", "sym_numel", "sym_stride", "sym_storage_offset"}


class Input:
    """The op of the model-input node (its value is given, never computed)."""

    kind = None
    pool = False

    def rule_kind(self, node):
        return None

    def prepare(self, node, graph):
        pass

    def lrp_problem(self, node, graph):
        return None

    def row_agnostic(self, node, graph):
        return True

    def nonnegative(self, node, graph, nonneg):
        return False


INPUT = Input()


def trace(model: nn.Module, sample_shape: tuple, dtype, device, *, output=None,
          batch: int = 2) -> tuple[Graph, dict, list[str]]:
    """The canonical graph of ``model`` for inputs of per-sample shape ``sample_shape``, explaining
    the output tensor ``output`` selects (see :func:`select_output`). The example traced has ``batch``
    rows; ``graph.batch_guards`` says which batch sizes the graph is valid for.

    Returns ``(graph, constants, dropped_hooks)``; ``constants`` maps a constant leaf's name to its
    tensor (values captured at trace time); ``dropped_hooks`` names the modules whose forward hooks
    are not called (they were checked to leave every value unchanged; others are refused)."""
    clone, hooks = _clean_copy(model)
    cache_dir, entry = None, None
    if not hooks:
        cache_dir = trace_cache.folder()
        try:
            entry = trace_cache.key(model, sample_shape, dtype, device, output, batch) if cache_dir else None
        except trace_cache.NotCacheable:
            entry = None
    if entry is not None:
        hit = trace_cache.load(cache_dir, entry)
        if hit is not None:
            record, constants = hit
            try:
                graph = trace_cache.rebuild_graph(record, INPUT)
            except Exception:  # an entry this code cannot read: rebuild it
                graph = None
            if graph is not None and trace_cache.agrees(model, clone, graph, constants, sample_shape, dtype, device,
                                                        output, batch):
                return graph, constants, []
    _selecting(clone, output)
    example = torch.zeros((batch, *sample_shape), dtype=dtype, device=device)
    ep = _export(clone, example)
    dropped = list(dict.fromkeys(name or type(model).__name__ for name, *_ in hooks))
    if hooks:
        changing = _hooks_that_change(clone, hooks, example, output)
        if changing:
            raise UnsupportedModel(
                f"{type(model).__name__} has forward hooks on {', '.join(changing[:5])} that change what the module "
                "computes; clrp explains the model's own computation and would explain a different function. Remove "
                "the hooks (handle.remove()) or make the change part of the model's forward")
    gm = ep.graph_module
    fx = gm.graph
    leaves, user_input = {}, None
    for spec in ep.graph_signature.input_specs:
        kind = spec.kind.name
        if kind == "USER_INPUT":
            user_input = spec.arg.name
        elif kind == "PARAMETER":
            leaves[spec.arg.name] = Leaf("param", spec.target)
        elif kind == "BUFFER":
            leaves[spec.arg.name] = Leaf("buffer", spec.target)
        elif kind == "CONSTANT_TENSOR":
            leaves[spec.arg.name] = Leaf("const", spec.target)
        else:
            raise UnsupportedModel(f"{type(model).__name__}: unsupported traced input of kind {kind}")
    constants = {k: v for k, v in ep.constants.items() if isinstance(v, torch.Tensor)}
    outputs = [s for s in ep.graph_signature.output_specs if s.kind.name == "USER_OUTPUT"]
    if len(outputs) != 1:
        raise UnsupportedModel(f"internal: {type(model).__name__}'s selected output is {len(outputs)} values")


    fnodes = [n for n in fx.nodes]
    depends = {}  # the value (not only the shape) depends on the model input
    for n in fnodes:
        if n.op == "placeholder":
            depends[n] = n.name == user_input
        elif n.op == "call_function" and _name(n.target) in _FACTORIES:
            depends[n] = False
        else:
            depends[n] = any(depends.get(a, False) and not isinstance(a.meta.get("val"), (torch.SymInt, int, float))
                             for a in n.all_input_nodes)
    _name_nodes(model, fnodes)
    _remove_identities(fx, depends)
    fnodes = [n for n in fx.nodes]
    _functionalize(fx, fnodes, depends)
    _splits_to_slices(fx)
    _fold_batchnorm(fx, depends)
    for n in fx.nodes:  # kernel sizes, for padding="same"
        if n.op == "call_function" and _name(n.target) in _LINEAR and len(n.args) > 1:
            w = n.args[1].meta.get("val") if isinstance(n.args[1], torch.fx.Node) else None
            if w is not None and w.ndim > 2:
                n.meta.setdefault("clrp_extra", {})["kernel"] = [int(k) for k in w.shape[2:]]

    # -- into our nodes ----------------------------------------------------------------------
    placeholder = {n.name: n for n in fx.nodes if n.op == "placeholder"}
    batch_size = placeholder[user_input].meta["val"].shape[0]
    guards = _batch_guards(ep, batch_size)
    batch_expr = str(batch_size)
    index, nodes = {}, []

    def convert(a):
        if isinstance(a, torch.fx.Node):
            if a in index:
                return Ref(index[a])
            if a.op == "placeholder" and a.name in leaves:
                return leaves[a.name]
            raise UnsupportedModel(f"internal: unresolved graph value {a.name}")
        if isinstance(a, (list, tuple)):
            return type(a)(convert(x) for x in a)
        if isinstance(a, dict):
            return {k: convert(v) for k, v in a.items()}
        return a

    output_index = None
    for n in fx.nodes:
        if n.op == "placeholder" and n.name != user_input:
            continue
        if n.op == "output":
            first = n.args[0][0] if isinstance(n.args[0], (list, tuple)) else n.args[0]
            output_index = index.get(first)
            continue
        if n.op == "placeholder":
            op, target, args, kwargs = INPUT, None, (), {}
        elif n.op == "call_function":
            op, target, args, kwargs = op_for(n.target), n.target, convert(n.args), convert(n.kwargs)
        else:
            raise UnsupportedModel(f"internal: unexpected graph node {n.op} {n.target}")
        val = n.meta.get("val")
        is_tensor = isinstance(val, torch.Tensor)
        shape = tuple(_static(d) for d in val.shape[1:]) if is_tensor and val.ndim else (() if is_tensor else None)
        path, mtype = n.meta.get("clrp_module", ("", None))
        node = Node(len(nodes), n.meta.get("clrp_name", n.name), op, target, args, kwargs, module=path,
                    module_type=mtype, shape=shape, tensor=is_tensor, depends=depends.get(n, False) or n.name == user_input,
                    batch_first=is_tensor and val.ndim > 0 and str(val.shape[0]) == batch_expr,
                    symbolic=isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)),
                    aliases=list(dict.fromkeys(a for a in n.meta.get("clrp_aliases", []) if a)))
        node.extra.update(convert(n.meta.get("clrp_extra", {})))
        if n.meta.get("clrp_inplace_view"):
            node.extra["problem"] = "writes in place into a view of another value"
        index[n] = node.index
        nodes.append(node)
    if output_index is None or not nodes[output_index].tensor:
        raise UnsupportedModel(f"{type(model).__name__}: the explained output is not a tensor computed by the model")
    # names of removed nodes that pointed at kept ones: aliases; then de-duplicate
    seen = set()
    for node in nodes:
        if node.name in seen:
            node.name = f"{node.name}#{node.index}"
        seen.add(node.name)
    for node in nodes:
        node.aliases = [a for a in node.aliases if a not in seen and a != node.name]
    graph = Graph(nodes, index[placeholder[user_input]], output_index, batch_dynamic=guards.fixed is None)
    graph.batch_guards = guards
    if entry is not None:
        try:
            trace_cache.save(cache_dir, entry, {"nodes": trace_cache.encode_nodes(nodes), "input": graph.input,
                                                "output": graph.output, "batch_dynamic": graph.batch_dynamic,
                                                "batch_guards": guards.to_json()}, constants)
        except (trace_cache.NotCacheable, OSError):
            pass  # used, not cached
    for node in nodes:
        node.op.prepare(node, graph)
    return graph, constants, dropped


def _static(d):
    if isinstance(d, int):
        return d
    try:
        return int(str(d))
    except ValueError:
        return None
