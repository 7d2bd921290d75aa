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
"""
from __future__ import annotations

import contextlib
import copy
import logging
import operator
import threading
import warnings

import torch
from torch import nn

from ..errors import InvalidInput, UnsupportedModel
from .graph import Graph, Leaf, Node, Ref
from .ops import bind, op_for

aten = torch.ops.aten
_LOCK = threading.Lock()  # torch.export is not known to be thread-safe

_LINEAR = {"conv1d", "conv2d", "conv3d", "linear", "convolution"}
# Value-preserving ops the canonical graph drops (contiguous stays: a later view may need it).
_IDENTITIES = {"alias", "clone", "detach", "lift_fresh_copy", "dropout", "feature_dropout", "alpha_dropout",
               "feature_alpha_dropout", "dropout_", "feature_dropout_", "alpha_dropout_", "feature_alpha_dropout_"}
_FACTORIES = {"new_zeros", "new_ones", "new_empty", "new_full", "zeros_like", "ones_like", "empty_like",
              "full_like", "rand_like", "randn_like", "sym_size", "sym_numel", "sym_stride", "sym_storage_offset"}
_VIEWS = {"slice", "select", "view", "_unsafe_view", "reshape", "transpose", "permute", "expand", "narrow",
          "unsqueeze", "squeeze", "as_strided", "diagonal", "t", "alias", "unflatten", "flatten", "split",
          "chunk", "unbind", "split_with_sizes", "view_as", "expand_as", "movedim", "swapaxes"}


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


def _name(target) -> str:
    packet = getattr(target, "overloadpacket", None)
    return packet.__name__ if packet is not None else getattr(target, "__name__", str(target))


def _clean_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy in eval mode without forward hooks (old-style weight_norm's hooks define the weight:
    they stay). Returns the copy and the names of the modules whose hooks were dropped."""
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:
        raise UnsupportedModel(f"cannot copy {type(model).__name__} to trace it ({type(exc).__name__}: {exc})") from None
    dropped = []
    for name, m in clone.named_modules():
        had = False
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            for k in list(hooks):
                if type(hooks[k]).__name__ == "WeightNorm":
                    continue
                del hooks[k]
                had = True
        for attr in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs"):
            d = getattr(m, attr, None)
            if d:
                d.clear()
        if had:
            dropped.append(name or type(model).__name__)
    return clone.eval(), dropped


@contextlib.contextmanager
def _quiet():
    loggers = [logging.getLogger(n) for n in ("torch.fx.experimental.symbolic_shapes", "torch._export",
                                               "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _export(model: nn.Module, example: torch.Tensor):
    """torch.export with a free batch dimension; errors name the innermost module being run."""
    stack: list[str] = []
    where: list[str] = []
    handles = []
    for name, m in model.named_modules():
        def pre(mod, args, name=name):
            stack.append(name)

        def post(mod, args, out):
            if stack:
                stack.pop()
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        with _LOCK, _quiet():
            try:
                return torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},),
                                           strict=False)
            except Exception as exc:
                where[:] = stack[-1:]
                error = exc
    finally:
        for h in handles:
            h.remove()
    path = where[0] if where else ""
    try:
        mod = model.get_submodule(path)
        at = f" in {path or '<root>'} ({type(mod).__name__})"
    except AttributeError:
        at = ""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    eager = _eager_error(model, example[:1])
    if eager is not None:  # the model cannot run on such inputs at all: the input is wrong, not the trace
        raise InvalidInput(f"{type(model).__name__} cannot run on inputs of shape [N, {', '.join(map(str, example.shape[1:]))}]: "
                           f"{eager}") from None
    raise UnsupportedModel(
        f"could not trace {type(model).__name__}{at}: {type(error).__name__}: {first[:400]}. The engine follows the "
        "model's forward with torch.export, which cannot follow control flow that depends on tensor values") from None


def _eager_error(model: nn.Module, x: torch.Tensor) -> str | None:
    """Run the (copied, eval) model once; the error it raises, named by module, or None."""
    stack: list[str] = []
    handles = []
    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda mod, a, name=name: stack.append(name)))
        handles.append(m.register_forward_hook(lambda mod, a, o: None if not stack else stack.pop() and None))
    try:
        with torch.no_grad():
            model(x)
        return None
    except Exception as exc:  # any error of the user's forward
        path = stack[-1] if stack else ""
        where = f"{path} ({type(model.get_submodule(path)).__name__}): " if path else ""
        lines = str(exc).strip().splitlines()
        return f"{where}{lines[0] if lines else type(exc).__name__}"
    finally:
        for h in handles:
            h.remove()


def trace(model: nn.Module, sample_shape: tuple, dtype, device) -> tuple[Graph, dict, list[str]]:
    """The canonical graph of ``model`` for inputs of per-sample shape ``sample_shape``.

    Returns ``(graph, constants, dropped_hooks)``; ``constants`` maps a constant leaf's name to its
    tensor (values captured at trace time)."""
    clone, dropped = _clean_copy(model)
    example = torch.zeros((2, *sample_shape), dtype=dtype, device=device)
    ep = _export(clone, example)
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
    if not outputs:
        raise UnsupportedModel(f"{type(model).__name__} returns no tensor")


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
    batch = placeholder[user_input].meta["val"].shape[0]
    if not isinstance(batch, torch.SymInt):
        raise UnsupportedModel(f"{type(model).__name__} could only be traced for one fixed batch size")
    batch_expr = str(batch)
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
        raise UnsupportedModel(f"{type(model).__name__}: the first output is not a tensor computed by the model")
    # names of removed nodes that pointed at kept ones: aliases; then de-duplicate
    seen = set()
    for node in nodes:
        if node.name in seen:
            node.name = f"{node.name}#{node.index}"
        seen.add(node.name)
    for node in nodes:
        node.aliases = [a for a in node.aliases if a not in seen and a != node.name]
    graph = Graph(nodes, index[placeholder[user_input]], output_index, batch_dynamic=True)
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


# ---------------------------------------------------------------------------------------------
# Names


def _module_of(n: torch.fx.Node):
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return "", 0
    key, (path, _) = list(stack.items())[-1]
    call = int(key.rsplit("@", 1)[1]) if "@" in key else 0
    return path, call


def _name_nodes(model: nn.Module, fnodes: list) -> None:
    """torchvision feature-extraction style names, plus module-output aliases (see graph.py)."""
    calls: dict = {}
    computing = [n for n in fnodes if n.op == "call_function"]
    for n in computing:
        path, call = _module_of(n)
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            mod = None
        n.meta["clrp_module"] = (path, type(mod) if mod is not None else None)
        n.meta["clrp_call"] = (path, call)
        if isinstance(n.meta.get("val"), torch.Tensor):
            calls.setdefault((path, call), []).append(n)
    used: dict = {}

    def unique(base):
        k = used.get(base, 0)
        used[base] = k + 1
        return base if k == 0 else f"{base}_{k}"

    for n in computing:
        path, call = n.meta["clrp_call"]
        mod_type = n.meta["clrp_module"][1]
        mod = None
        if mod_type is not None:
            mod = model.get_submodule(path)
        leaf = path and mod is not None and next(mod.children(), None) is None
        if leaf and len(calls.get((path, call), [])) == 1:
            n.meta["clrp_name"] = unique(path)
        else:
            n.meta["clrp_name"] = unique(f"{path}.{_name(n.target).rstrip('_')}" if path else _name(n.target).rstrip("_"))
    # every module call's output node gets the module path as an alias
    position = {n: i for i, n in enumerate(fnodes)}
    scopes: dict = {}
    for n in computing:
        stack = n.meta.get("nn_module_stack") or {}
        for key, (path, _) in stack.items():
            if path:
                call = int(key.rsplit("@", 1)[1]) if "@" in key else 0
                scopes.setdefault((path, call), []).append(n)
    for (path, call), members in scopes.items():
        inside = set(members)
        outs = [m for m in members if isinstance(m.meta.get("val"), torch.Tensor)
                and any(u not in inside for u in m.users)]
        if outs:
            last = max(outs, key=position.__getitem__)
            last.meta.setdefault("clrp_aliases", []).append(path if call == 0 else f"{path}_{call}")


def _carry_names(src: torch.fx.Node, dst: torch.fx.Node) -> None:
    names = [src.meta.get("clrp_name"), *src.meta.get("clrp_aliases", [])]
    dst.meta.setdefault("clrp_aliases", []).extend(n for n in names if n)


# ---------------------------------------------------------------------------------------------
# Canonicalisation passes


def _functionalize(fx, fnodes, depends) -> None:
    """In-place ops on input-dependent values become functional (the engine keeps every value);
    later readers of the overwritten value read the op's result instead."""
    position = {n: i for i, n in enumerate(fnodes)}
    for n in fnodes:
        if n.op != "call_function" or not depends.get(n):
            continue
        name = _name(n.target)
        if not name.endswith("_") or name.startswith("_") or not n.args:
            continue
        functional = getattr(aten, name[:-1], None)
        overload = getattr(functional, n.target._overloadname, None) if functional is not None else None
        base = n.args[0]
        if overload is None or not isinstance(base, torch.fx.Node):
            continue
        here = position[n]
        if any(position.get(u, -1) > here for a in _aliases(base) if a is not base for u in a.users):
            n.meta["clrp_inplace_view"] = True  # another view of the same memory is read later
            continue
        n.target = overload
        base.replace_all_uses_with(n, delete_user_cb=lambda u: u is not n and position.get(u, 1 << 30) > here)


def _is_view(n) -> bool:
    return isinstance(n, torch.fx.Node) and n.op == "call_function" and _name(n.target) in _VIEWS


def _aliases(n: torch.fx.Node) -> set:
    """Every value sharing memory with ``n`` through view ops (its base and the base's views)."""
    root = n
    while _is_view(root) and isinstance(root.args[0], torch.fx.Node):
        root = root.args[0]
    out, stack = {root}, [root]
    while stack:
        for u in stack.pop().users:
            if _is_view(u) and u.args and u.args[0] in out and u not in out:
                out.add(u)
                stack.append(u)
    return out


def _remove_identities(fx, depends) -> None:
    for n in list(fx.nodes):
        if n.op != "call_function" or not depends.get(n) or _name(n.target) not in _IDENTITIES:
            continue
        name = _name(n.target)
        b = bind(_Shim(n))
        if "dropout" in name and b.get("train"):
            continue  # a dropout that is active (never in an eval copy)
        src = n.args[0]
        if not isinstance(src, torch.fx.Node):
            continue
        _carry_names(n, src)
        n.replace_all_uses_with(src)
        fx.erase_node(n)


class _Shim:
    """What ops.bind needs of a node: target, args, kwargs."""

    def __init__(self, n, args=None):
        self.target, self.args, self.kwargs = n.target, n.args if args is None else args, n.kwargs


def _splits_to_slices(fx) -> None:
    """``split``/``chunk``/``unbind`` followed by ``getitem`` become slices/selects of the input."""
    for n in list(fx.nodes):
        if n.op != "call_function" or _name(n.target) not in ("split", "split_with_sizes", "chunk", "unbind"):
            continue
        if not all(u.op == "call_function" and u.target is operator.getitem for u in n.users):
            continue
        b = bind(_Shim(n))
        x = b["self"]
        dim = b.get("dim", 0)
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if val is None or not isinstance(val.shape[dim], int):  # a symbolic size is the batch
            continue
        size = val.shape[dim]
        name = _name(n.target)
        if name == "unbind":
            for u in list(n.users):
                u.target, u.args, u.kwargs = aten.select.int, (x, dim, u.args[1]), {}
            fx.erase_node(n)
            continue
        if name == "split_with_sizes":
            sizes = list(b["split_sizes"])
        else:
            step = b["split_size"] if name == "split" else -(-size // b["chunks"])
            sizes = [min(step, size - s) for s in range(0, size, step)]
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        for u in list(n.users):
            k = u.args[1]
            u.target, u.args, u.kwargs = aten.slice.Tensor, (x, dim, starts[k], starts[k] + sizes[k]), {}
        fx.erase_node(n)


def _fold_batchnorm(fx, depends) -> None:
    """Fold each eval BatchNorm into the conv/dense layer right before it (or right after it when
    that layer does not pad); what remains is an affine layer with its own rule."""
    for n in list(fx.nodes):
        if n.op != "call_function" or _name(n.target) != "batch_norm" or not depends.get(n):
            continue
        b = bind(_Shim(n))
        if b["training"] or b["running_mean"] is None or b["running_var"] is None:
            continue
        bn = {k: b[k] for k in ("weight", "bias", "running_mean", "running_var", "eps")}
        prev = b["input"]
        if (isinstance(prev, torch.fx.Node) and prev.op == "call_function" and _name(prev.target) in _LINEAR
                and len(prev.users) == 1 and "bn_after" not in prev.meta.get("clrp_extra", {})
                and "bn_before" not in prev.meta.get("clrp_extra", {}) and _not_transposed(prev)):
            prev.meta.setdefault("clrp_extra", {})["bn_after"] = bn
            _carry_names(n, prev)
            n.replace_all_uses_with(prev)
            fx.erase_node(n)
            continue
        users = list(n.users)
        if len(users) == 1 and users[0].op == "call_function" and _name(users[0].target) in _LINEAR:
            nxt = users[0]
            nb = bind(_Shim(nxt))
            pad = nb.get("padding", 0)
            no_pad = pad == "valid" or (not isinstance(pad, str) and all(p == 0 for p in (pad if isinstance(pad, (list, tuple)) else [pad])))
            if (nb["input"] is n and no_pad and nb.get("groups", 1) == 1 and _not_transposed(nxt)
                    and not nxt.meta.get("clrp_extra")):
                nxt.meta.setdefault("clrp_extra", {})["bn_before"] = bn
                nxt.args = (prev,) + tuple(nxt.args[1:])
                fx.erase_node(n)


def _not_transposed(n) -> bool:
    return _name(n.target) != "convolution" or not bind(_Shim(n)).get("transposed")
