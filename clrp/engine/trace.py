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
import io
import logging
import operator
import threading
import warnings

import sympy
import torch
import torch.fx.experimental._config as _fx_config
from torch import nn
from torch.utils import _pytree

from ..errors import ClrpError, InvalidInput, UnsupportedModel
from .graph import Graph, Leaf, Node, Ref
from . import trace_cache
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


def _clean_copy(model: nn.Module) -> tuple[nn.Module, list[tuple]]:
    """A copy in eval mode without forward hooks (old-style weight_norm's hooks define the weight:
    they stay). Returns the copy and the dropped hooks as ``(module name, kind, hook, with_kwargs)``."""
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:
        raise UnsupportedModel(f"cannot copy {type(model).__name__} to trace it ({type(exc).__name__}: {exc})") from None
    dropped = []
    for name, m in clone.named_modules():
        for kind, hooks, kw in (("forward", m._forward_hooks, "_forward_hooks_with_kwargs"),
                                ("pre", m._forward_pre_hooks, "_forward_pre_hooks_with_kwargs")):
            for k in list(hooks):
                if type(hooks[k]).__name__ == "WeightNorm":
                    continue
                dropped.append((name, kind, hooks.pop(k), bool(getattr(m, kw, {}).get(k))))
        for attr in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs"):
            d = getattr(m, attr, None)
            if d:
                d.clear()
    return clone.eval(), dropped


def unwrap(model: nn.Module) -> nn.Module:
    """The model a data-parallel wrapper runs (its forward only scatters the batch over devices)."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def _tensors(obj) -> list:
    return [t for t in _pytree.tree_leaves(obj) if isinstance(t, torch.Tensor)]


def _hooks_that_change(clone: nn.Module, dropped: list, example: torch.Tensor, output) -> list[str]:
    """The modules among ``dropped`` whose hooks return a replacement or write into a value, found
    by running the copy once with the hooks watched (a hook that only observes returns None)."""
    changed: list[str] = []

    def watch(name, kind, fn, with_kwargs):
        def hook(*a):
            seen = a[-1] if kind == "forward" else (a[1:] if with_kwargs else a[1])
            before = [t.detach().clone() for t in _tensors(seen)]
            result = fn(*a)
            edited = any(not torch.equal(b, t.detach()) for b, t in zip(before, _tensors(seen)))
            if kind == "pre" and not with_kwargs and result is not None and not isinstance(result, tuple):
                result_seen = (result,)  # torch wraps a single returned value
            else:
                result_seen = result
            if edited or (result is not None and not _same(result_seen, seen)):
                changed.append(name or "<root>")
            return result
        return hook

    handles = []
    for name, kind, fn, with_kwargs in dropped:
        m = clone.get_submodule(name)
        register = m.register_forward_hook if kind == "forward" else m.register_forward_pre_hook
        handles.append(register(watch(name, kind, fn, with_kwargs), with_kwargs=with_kwargs))
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(example.shape, generator=g, dtype=example.dtype).to(example.device)
        with torch.no_grad():
            select_output(clone(x), output, type(clone).__name__)
    except ClrpError:
        raise
    except Exception as exc:  # the hooks themselves fail outside the engine: say so
        raise UnsupportedModel(f"{type(clone).__name__} has forward hooks on {_hook_names(dropped)} and could not be "
                               f"run with them to check that they leave the output unchanged "
                               f"({type(exc).__name__}: {str(exc).strip()[:200]}); remove them (handle.remove()) "
                               "to explain the model") from None
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(changed))


def _same(a, b) -> bool:
    """``a`` is ``b``, or holds the very same objects (a hook returning what it was given)."""
    if a is b:
        return True
    return (isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b)))


def _hook_names(dropped) -> str:
    names = list(dict.fromkeys(name or "<root>" for name, *_ in dropped))
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")


# -- which output is explained -----------------------------------------------------------------

def _describe_output(out) -> str:
    if isinstance(out, dict):
        return f"a {type(out).__name__} with keys {', '.join(repr(k) for k in out)}"
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return f"a {type(out).__name__} with fields {', '.join(out._fields)}"
    if isinstance(out, (tuple, list)):
        kinds = ", ".join(f"{i}: {'tensor ' + str(list(o.shape)) if isinstance(o, torch.Tensor) else type(o).__name__}"
                          for i, o in enumerate(out))
        return f"a {type(out).__name__} of {len(out)} ({kinds})"
    return f"a {type(out).__name__}"


def _example_choice(out) -> str:
    if isinstance(out, dict):
        return repr(next(iter(out)))
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return repr(out._fields[0])
    return "0"


def select_output(out, output, model_name: str = "the model") -> torch.Tensor:
    """The tensor of the model's output ``out`` to explain: ``output`` is None (the output must be
    one tensor, or a container holding exactly one), a key, an index, or a function of the output."""
    if output is None:
        if isinstance(out, torch.Tensor):
            return out
        tensors = _tensors(out)
        if len(tensors) == 1:
            return tensors[0]
        raise UnsupportedModel(
            f"{model_name} returns {_describe_output(out)}: say which output to explain with output= (a key, an "
            f"index, or a function of the output), e.g. output={_example_choice(out)}")
    if callable(output):
        chosen = output(out)
    elif isinstance(out, torch.Tensor):
        raise ClrpError(f"{model_name} returns a single tensor; output={output!r} selects from a tuple or a dict "
                        "(leave output=None)")
    elif isinstance(output, str) and isinstance(out, tuple) and hasattr(out, "_fields"):
        if output not in out._fields:
            raise ClrpError(f"output={output!r}: {model_name} returns {_describe_output(out)}")
        chosen = getattr(out, output)
    else:
        try:
            chosen = out[output]
        except (KeyError, IndexError, TypeError):
            raise ClrpError(f"output={output!r}: {model_name} returns {_describe_output(out)}") from None
    if not isinstance(chosen, torch.Tensor):
        raise ClrpError(f"output={output!r} selects a {type(chosen).__name__}, not a tensor, from {model_name}'s "
                        f"output ({_describe_output(out)})")
    return chosen


def _selecting(model: nn.Module, output) -> None:
    """Make the (copied) model's forward return the selected output tensor."""
    original = model.forward
    name = type(model).__name__

    def forward(*args, **kwargs):
        return select_output(original(*args, **kwargs), output, name)
    model.forward = forward


# -- torch.export --------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet(console: io.StringIO):
    """No logging, warnings or printed generated code from torch.export (kept in ``console``)."""
    loggers = [logging.getLogger(n) for n in ("torch.fx.experimental.symbolic_shapes", "torch._export",
                                               "torch.export", "torch._dynamo", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _chain(exc: BaseException) -> list:
    out = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _reason(error: BaseException) -> str:
    """What actually stopped the trace, in the user's terms."""
    chain = _chain(error)
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain)
    if names & {"GuardOnDataDependentSymNode", "DataDependentOutputException", "DynamicOutputShapeException"} \
            or "data-dependent" in text or "data dependent" in text:
        return ("its forward branches on tensor values or reads them into Python (`if x.sum() > 0`, `.item()`, "
                "`.tolist()`, `.nonzero()`), which torch.export cannot follow")
    if names & {"TimeoutError"}:
        return "tracing timed out"
    if "dynamic_shapes" in text or "Constraints violated" in text:
        return "its batch size cannot stay free (it fixes the batch dimension)"
    if names & {"MemoryError", "OutOfMemoryError"}:
        return "it ran out of memory while being traced"
    return "torch.export failed"


def _export(model: nn.Module, example: torch.Tensor):
    """torch.export with a free batch dimension (size 1 included: batch-size guards are recorded, not
    assumed away); errors name the innermost module being run and what failed."""
    stack: list[str] = []
    where: list[str] = []
    handles = []
    console = io.StringIO()
    for name, m in model.named_modules():
        def pre(mod, args, name=name):
            stack.append(name)

        def post(mod, args, out):
            if stack:
                stack.pop()
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    dynamic = torch.export.ShapesCollection()
    dynamic[example] = {0: torch.export.Dim.AUTO}
    try:
        with _LOCK, _quiet(console), _fx_config.patch(backed_size_oblivious=True):
            try:
                return torch.export.export(model, (example,), dynamic_shapes=dynamic, strict=False)
            except Exception as exc:
                where[:] = stack[-1:]
                error = exc
    finally:
        for h in handles:
            h.remove()
    own = next((e for e in _chain(error) if isinstance(e, ClrpError)), None)
    if own is not None:  # e.g. an output that needs output=
        raise own from None
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
    refusal = UnsupportedModel(f"could not trace {type(model).__name__}{at}: {_reason(error)} "
                               f"({type(error).__name__}: {first[:300]})")
    refusal.details = f"{type(error).__name__}: {error}\n{console.getvalue()}".strip()
    raise refusal from None


def _eager_error(model: nn.Module, x: torch.Tensor) -> str | None:
    """Run the (copied, eval) model once; the error it raises, named by module, or None."""
    stack: list[str] = []
    handles = []
    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda mod, a, name=name: stack.append(name)))
        handles.append(m.register_forward_hook(lambda mod, a, o: None if not stack else stack.pop() and None))
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            model(x)
        return None
    except ClrpError:
        return None  # ours (output selection): the trace's error says it
    except Exception as exc:  # any error of the user's forward
        path = stack[-1] if stack else ""
        where = f"{path} ({type(model.get_submodule(path)).__name__}): " if path else ""
        lines = str(exc).strip().splitlines()
        return f"{where}{lines[0] if lines else type(exc).__name__}"
    finally:
        for h in handles:
            h.remove()


# -- batch-size guards -------------------------------------------------------------------------------

_SYMPY_FUNCTIONS = {k: v for k, v in vars(__import__("torch.utils._sympy.functions", fromlist=["x"])).items()
                    if isinstance(v, type) and issubclass(v, sympy.Basic)}


class BatchGuards:
    """The batch sizes a traced graph is valid for: torch.export's range and the shape guards on the
    batch symbol that the model's Python recorded (``if x.shape[0] == 1``), or one fixed size when
    the trace specialised it. Kept as text so a graph cached on disk carries them."""

    def __init__(self, symbol: str | None, guards: list[str], low: int = 0, high: int | None = None,
                 fixed: int | None = None):
        self.symbol, self.guards, self.low, self.high, self.fixed = symbol, list(guards), low, high, fixed
        sym = sympy.Symbol(symbol, integer=True) if symbol else None
        self._exprs = [sympy.sympify(g, locals={**_SYMPY_FUNCTIONS, symbol: sym}) for g in guards] if sym else []
        self._sym = sym

    @property
    def constrained(self) -> bool:
        """Some batch size is refused (the model's computation depends on the batch size)."""
        return self.fixed is not None or bool(self.guards) or self.low > 1 or self.high is not None

    def rejects(self, n: int) -> str | None:
        """Why a batch of ``n`` rows is outside what was traced (None: within)."""
        if self.fixed is not None:
            return None if n == self.fixed else f"traced for batch size {self.fixed} only"
        if n < self.low or (self.high is not None and n > self.high):
            return f"traced for batch sizes {self.low}..{'' if self.high is None else self.high}"
        for text, e in zip(self.guards, self._exprs):
            if not bool(e.xreplace({self._sym: sympy.Integer(n)})):
                return f"the model's forward checks {text.replace(self.symbol, 'batch')}"
        return None

    def to_json(self) -> dict:
        return {"symbol": self.symbol, "guards": self.guards, "low": self.low, "high": self.high, "fixed": self.fixed}

    @classmethod
    def from_json(cls, d: dict) -> "BatchGuards":
        return cls(d["symbol"], d["guards"], d["low"], d["high"], d["fixed"])


def _batch_guards(ep, batch) -> BatchGuards:
    if not isinstance(batch, torch.SymInt):
        return BatchGuards(None, [], fixed=int(batch))
    expr = batch.node.expr
    if not isinstance(expr, sympy.Symbol):
        raise UnsupportedModel("internal: the batch size was traced as an expression")
    env = batch.node.shape_env
    exprs = [g.expr for g in env.guards if expr in g.expr.free_symbols]
    exprs += [a.expr for a in env.deferred_runtime_asserts.get(expr, [])]
    texts = []
    for e in dict.fromkeys(exprs):
        text = str(e)
        guard = BatchGuards(str(expr), [text])  # must read back as the same expression
        if guard._exprs[0] != e.xreplace({expr: guard._sym}):
            raise UnsupportedModel(f"the model's forward checks its batch size in a way clrp cannot record ({text})")
        texts.append(text)
    vr = ep.range_constraints.get(expr) or env.var_to_range.get(expr)
    low = _finite(vr.lower) if vr is not None else None
    high = _finite(vr.upper) if vr is not None else None
    return BatchGuards(str(expr), texts, low or 0, high)


def _finite(v) -> int | None:
    try:
        return int(v) if bool(v.is_finite) else None
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None


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
                and "bn_before" not in prev.meta.get("clrp_extra", {}) and _not_transposed(prev)
                and _channels_on_dim1(prev)):
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
                    and not nxt.meta.get("clrp_extra") and _channels_on_dim1(nxt)):
                nxt.meta.setdefault("clrp_extra", {})["bn_before"] = bn
                nxt.args = (prev,) + tuple(nxt.args[1:])
                fx.erase_node(n)


def _channels_on_dim1(n) -> bool:
    """A conv's channels are dim 1; a dense layer's features are its last dim, which is BatchNorm's
    dim 1 only on [N, F] (on [N, L, F] BatchNorm1d normalises L: no fold)."""
    if _name(n.target) != "linear":
        return True
    val = n.meta.get("val")
    return val is not None and val.ndim == 2


def _not_transposed(n) -> bool:
    return _name(n.target) != "convolution" or not bind(_Shim(n)).get("transposed")
