"""Running ``torch.export`` on a model for :mod:`.trace`, and what it reports.

The model is copied (eval mode, without the user's forward hooks; a hook that changes a value is
refused), its output selected (``output=``), and exported with a free batch dimension, quietly
(torch's generated code goes into the error's ``details``). A failure is reported in the user's
terms: which module was running and what stopped the trace. The batch-size guards the model's
Python recorded are kept as :class:`BatchGuards`.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import threading
import warnings

import sympy
import torch
import torch.fx.experimental._config as _fx_config
from torch import nn
from torch.utils import _pytree

from ..errors import ClrpError, InvalidInput, UnsupportedModel

_LOCK = threading.Lock()  # torch.export is not known to be thread-safe


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
