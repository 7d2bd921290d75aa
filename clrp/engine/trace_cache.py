"""Traced graphs kept on disk across processes: the first explanation of a model skips torch.export.

torch.export dominates the cost of a first explanation (96 % of it on densenet121; the passes
after it and the plan take the rest), so the canonical graph it leads to is written to a cache
folder and read back by the next process that explains the same model. An entry is only used
for the same model:

- its key is a SHA-256 of everything the trace depends on: torch's and clrp's versions, the
  input shape, dtype and device type, the output selection, and the model's structure (every
  module's path and class, the code of the classes' methods and of the module-level functions
  they call, their plain settings, the names, shapes and dtypes of the parameters and buffers,
  and the values of other tensor attributes, which a trace captures as constants);
- after loading, the graph is run on a random input and must give the model's own output (on a
  copy, in eval mode), else the entry is ignored and rebuilt;
- the folder is created private (0700) and is not used when another user could write to it;
  unreadable, corrupt or mismatching entries are ignored and rebuilt.

Not cached: models with forward hooks, output selections given as functions, graphs whose
arguments are not plain data. ``CLRP_TRACE_CACHE`` chooses the folder (default
``$XDG_CACHE_HOME/clrp/traces``, i.e. ``~/.cache/clrp/traces``); ``off`` switches the cache off.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import sys
import tempfile
import types
import weakref
from pathlib import Path

import torch
from torch import nn

from .graph import Graph, Leaf, Node, Ref

ENV = "CLRP_TRACE_CACHE"
FORMAT = 1  # the entry layout; the engine's own source is part of every key (a changed pass = a new key)
_ENGINE_SOURCE: list = []


def _engine_digest() -> str:
    if not _ENGINE_SOURCE:
        h = hashlib.sha256()
        for f in sorted(Path(__file__).parent.glob("*.py")):
            h.update(f.name.encode() + f.read_bytes())
        _ENGINE_SOURCE.append(h.hexdigest())
    return _ENGINE_SOURCE[0]


class NotCacheable(Exception):
    """This trace cannot be written as plain data (it is still used, just not cached)."""


def folder() -> Path | None:
    """The cache folder, created private; None when switched off or not safe to use."""
    value = os.environ.get(ENV)
    if value is not None and value.strip().lower() in ("", "0", "off", "no", "false"):
        return None
    if value:
        path = Path(value).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "clrp" / "traces"
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except OSError:
        return None
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        return None  # another user could put entries there
    return path


# -- the key ------------------------------------------------------------------------------------------

_CODE: "weakref.WeakKeyDictionary[type, str]" = weakref.WeakKeyDictionary()


def _code_digest(code: types.CodeType, h, glob: dict, seen: set) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _code_digest(c, h, glob, seen)
        else:
            h.update(_const_repr(c).encode())
    for name in code.co_names:  # module-level helpers the method calls
        f = glob.get(name)
        if isinstance(f, types.FunctionType) and f not in seen:
            seen.add(f)
            _code_digest(f.__code__, h, f.__globals__, seen)


def _const_repr(c) -> str:
    """``repr`` of a code constant, the same in every process (a set literal's order follows the
    process's string hash seed)."""
    if isinstance(c, frozenset):
        return f"frozenset({sorted(_const_repr(x) for x in c)})"
    if isinstance(c, tuple):
        return f"({', '.join(_const_repr(x) for x in c)},)"
    return repr(c)


def _class_digest(cls: type) -> str:
    hit = _CODE.get(cls)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    for klass in cls.__mro__:
        if klass.__module__.startswith("torch.") and klass is not cls:
            continue  # torch's own classes: covered by torch's version
        h.update(f"{klass.__module__}.{klass.__qualname__}".encode())
        glob = vars(sys.modules[klass.__module__]) if klass.__module__ in sys.modules else {}
        for name, attr in sorted(vars(klass).items()):
            funcs = [attr] if isinstance(attr, types.FunctionType) else []
            if isinstance(attr, (staticmethod, classmethod)):
                funcs = [attr.__func__]
            elif isinstance(attr, property):
                funcs = [f for f in (attr.fget, attr.fset) if f is not None]
            for f in funcs:
                if isinstance(f, types.FunctionType):
                    h.update(name.encode())
                    _code_digest(f.__code__, h, glob, {f})
    _CODE[cls] = digest = h.hexdigest()
    return digest


def _plain(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return f"{type(v).__name__}({', '.join(_plain(x) for x in v)})"
    if isinstance(v, dict):  # e.g. timm's pretrained_cfg
        return f"{type(v).__name__}({', '.join(sorted(f'{_plain(k)}: {_plain(x)}' for k, x in v.items()))})"
    if isinstance(v, (torch.dtype, torch.device, torch.Size)):
        return repr(v)
    if isinstance(v, type):  # a layer class kept as a setting (norm_layer=nn.LayerNorm)
        return f"class {v.__module__}.{v.__qualname__} {_class_digest(v)}"
    if isinstance(v, functools.partial):  # torchvision's norm_layer=partial(nn.LayerNorm, eps=1e-6)
        return f"partial({_callable(v.func)}, {_plain(v.args)}, {_plain(v.keywords)})"
    raise NotCacheable(type(v).__name__)


def _callable(f) -> str:
    """A function or class by name and code (a lambda or a closure by its code and cell values)."""
    if isinstance(f, type):
        return _plain(f)
    if isinstance(f, types.FunctionType):
        h = hashlib.sha256()
        _code_digest(f.__code__, h, f.__globals__, {f})
        cells = tuple(c.cell_contents for c in f.__closure__ or ())
        return f"function {f.__module__}.{f.__qualname__} {h.hexdigest()} {_plain(cells)} {_plain(f.__defaults__)}"
    if isinstance(f, types.BuiltinFunctionType) and f.__module__ and f.__module__.split(".")[0] == "torch":
        return f"builtin {f.__module__}.{f.__qualname__}"  # torch's own: covered by torch's version
    raise NotCacheable(f"callable {f!r}")


def key(model: nn.Module, sample_shape, dtype, device, output, batch) -> str:
    """The cache key of tracing ``model`` (the user's module, not a copy) as :func:`trace` would."""
    if not (output is None or isinstance(output, (str, int))):
        raise NotCacheable("an output selection given as a function")
    h = hashlib.sha256()
    from .. import __version__ as clrp_version
    h.update(repr((FORMAT, _engine_digest(), clrp_version, torch.__version__, sys.version_info[:2], tuple(sample_shape), str(dtype),
                   torch.device(device).type, output, batch)).encode())
    tensors = {id(t) for t in [*model.parameters(), *model.buffers()]}
    for name, m in model.named_modules():
        h.update(f"|{name}|{type(m).__module__}.{type(m).__qualname__}|{_class_digest(type(m))}".encode())
        for k, v in sorted(vars(m).items()):
            if k in ("_parameters", "_buffers"):
                for pname, t in sorted(v.items()):
                    h.update(f"{k}:{pname}:{None if t is None else (tuple(t.shape), str(t.dtype))}".encode())
            elif k.startswith("_") or k == "training":
                if k in ("_forward_hooks", "_forward_pre_hooks") and any(
                        type(f).__name__ != "WeightNorm" for f in v.values()):
                    raise NotCacheable("forward hooks")
                continue
            elif isinstance(v, torch.Tensor):
                if id(v) not in tensors:  # captured by value: its values are part of the trace
                    h.update(f"{k}:{tuple(v.shape)}:{v.dtype}".encode())
                    h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")
            elif isinstance(v, nn.Module):
                continue
            elif callable(v) and not isinstance(v, (type, functools.partial)):
                raise NotCacheable(f"a callable attribute {k}")
            else:
                h.update(f"{k}={_plain(v)}".encode())
    return h.hexdigest()


# -- graphs as plain data ----------------------------------------------------------------------------------

def _target_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"op:{target.namespace}.{target._opname}.{target._overloadname}"
    mod = getattr(target, "__module__", None)
    name = getattr(target, "__qualname__", None)
    if mod in ("operator", "_operator", "math", "builtins", "torch") and name and _resolve_py(f"{mod}:{name}") is target:
        return f"py:{mod}:{name}"
    raise NotCacheable(f"target {target!r}")


def _resolve_py(text: str):
    mod, name = text.split(":", 1)
    obj = importlib.import_module(mod)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _target(text: str):
    if text.startswith("op:"):
        ns, name, overload = text[3:].split(".")
        return getattr(getattr(getattr(torch.ops, ns), name), overload)
    if text.startswith("py:"):
        mod = text[3:].split(":", 1)[0]
        if mod not in ("operator", "_operator", "math", "builtins", "torch"):
            raise ValueError(text)
        return _resolve_py(text[3:])
    raise ValueError(text)


def _encode(obj):
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Ref):
        return {"ref": obj.index}
    if isinstance(obj, Leaf):
        return {"leaf": [obj.kind, obj.name]}
    if isinstance(obj, tuple):
        return {"tuple": [_encode(o) for o in obj]}
    if isinstance(obj, list):
        return [_encode(o) for o in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise NotCacheable("a dict with non-string keys")
        return {"dict": {k: _encode(v) for k, v in obj.items()}}
    if isinstance(obj, torch.dtype):
        return {"dtype": str(obj).removeprefix("torch.")}
    if isinstance(obj, torch.device):
        return {"device": str(obj)}
    if isinstance(obj, torch.layout):
        return {"layout": str(obj).removeprefix("torch.")}
    if isinstance(obj, torch.memory_format):
        return {"memory_format": str(obj).removeprefix("torch.")}
    raise NotCacheable(type(obj).__name__)


def _decode(obj):
    if isinstance(obj, list):
        return [_decode(o) for o in obj]
    if not isinstance(obj, dict):
        return obj
    (tag, v), = obj.items()
    if tag == "ref":
        return Ref(int(v))
    if tag == "leaf":
        return Leaf(str(v[0]), str(v[1]))
    if tag == "tuple":
        return tuple(_decode(o) for o in v)
    if tag == "dict":
        return {k: _decode(x) for k, x in v.items()}
    if tag in ("dtype", "layout", "memory_format"):
        out = getattr(torch, v)
        if not isinstance(out, (torch.dtype, torch.layout, torch.memory_format)):
            raise ValueError(v)
        return out
    if tag == "device":
        return torch.device(v)
    raise ValueError(tag)


def _type_name(t) -> str | None:
    if t is None:
        return None
    name = f"{t.__module__}:{t.__qualname__}"
    if "<locals>" in name:
        raise NotCacheable("a module class defined inside a function")
    return name


def encode_nodes(nodes: list[Node]) -> list:
    """The nodes as JSON data (before their ops' ``prepare``: that runs again after loading)."""
    return [{"name": n.name, "target": None if n.target is None else _target_name(n.target),
             "args": _encode(n.args), "kwargs": _encode(n.kwargs), "module": n.module,
             "module_type": _type_name(n.module_type), "shape": _encode(n.shape), "tensor": n.tensor,
             "depends": n.depends, "batch_first": n.batch_first, "symbolic": n.symbolic, "aliases": list(n.aliases),
             "extra": _encode(n.extra)} for n in nodes]


def decode_nodes(data: list, input_op) -> list[Node]:
    from .ops import op_for

    nodes = []
    for i, d in enumerate(data):
        target = None if d["target"] is None else _target(d["target"])
        mtype = None if d["module_type"] is None else _resolve_py(d["module_type"])
        nodes.append(Node(i, d["name"], input_op if target is None else op_for(target), target,
                          _decode(d["args"]), _decode(d["kwargs"]), module=d["module"], module_type=mtype,
                          shape=_decode(d["shape"]), tensor=d["tensor"], depends=d["depends"],
                          batch_first=d["batch_first"], symbolic=d["symbolic"], aliases=list(d["aliases"]),
                          extra=_decode(d["extra"])))
    return nodes


# -- reading and writing entries -------------------------------------------------------------------------------

def save(path: Path, entry_key: str, record: dict, constants: dict) -> None:
    """Write an entry atomically (a reader sees the old entry, the new one, or none)."""
    blob = b""
    if constants:
        with tempfile.SpooledTemporaryFile() as f:
            torch.save({k: v.detach().cpu() for k, v in constants.items()}, f)
            f.seek(0)
            blob = f.read()
    record = {**record, "key": entry_key, "constants_sha256": hashlib.sha256(blob).hexdigest(),
              "constants_device": {k: str(v.device) for k, v in constants.items()}}
    for suffix, data in ((".pt", blob), (".json", json.dumps(record).encode())):
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path / f"{entry_key}{suffix}")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load(path: Path, entry_key: str) -> tuple[dict, dict] | None:
    """``(record, constants)`` of an entry, or None when absent, unreadable or inconsistent."""
    try:
        record = json.loads((path / f"{entry_key}.json").read_bytes())
        blob = (path / f"{entry_key}.pt").read_bytes()
        if record.get("key") != entry_key or hashlib.sha256(blob).hexdigest() != record.get("constants_sha256"):
            return None
        constants = {}
        if blob:
            import io
            loaded = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
            constants = {k: v.to(record["constants_device"][k]) for k, v in loaded.items()}
        return record, constants
    except Exception:  # absent, truncated, corrupt: rebuild
        return None


def rebuild_graph(record: dict, input_op) -> Graph:
    from .trace_export import BatchGuards

    nodes = decode_nodes(record["nodes"], input_op)
    graph = Graph(nodes, int(record["input"]), int(record["output"]), batch_dynamic=bool(record["batch_dynamic"]))
    graph.batch_guards = BatchGuards.from_json(record["batch_guards"])
    return graph


def agrees(model: nn.Module, clone: nn.Module, graph: Graph, constants: dict, sample_shape, dtype, device,
           output, batch: int) -> bool:
    """The graph computes the model's output on a random input (the clone: eval mode, no hooks)."""
    from .plan import Plan
    from .propagate import run_forward
    from .ops import GRADIENT
    from .trace_export import select_output

    for node in graph.nodes:
        node.op.prepare(node, graph)
    g = torch.Generator(device="cpu").manual_seed(1234)
    x = torch.randn((batch, *sample_shape), generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    try:
        with torch.no_grad():
            expected = select_output(clone(x), output)
        plan = Plan(model, graph, constants, (tuple(sample_shape), dtype, str(device), output))
        got = run_forward(plan, x, mode=GRADIENT, dedupe=False, check=False).logits.detach()
    except Exception:
        return False
    if got.shape != expected.shape or not bool(torch.isfinite(expected).all()):
        return False
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return bool(torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * max(scale, 1e-30)))

