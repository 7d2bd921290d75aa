"""Reading weights files safely and putting them into a model."""
from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ._errors import ModelLoadError, UnsafeWeights, WeightsNotFound

__all__ = ["load_state_dict", "apply_state_dict"]


def _strip_prefix(sd: dict, prefix: str) -> dict:
    out = OrderedDict((k[len(prefix):], v) for k, v in sd.items())
    meta = getattr(sd, "_metadata", None)
    if meta is not None:  # keep the modules' versions (MNASNet checks its own)
        root = prefix.rstrip(".")
        out._metadata = OrderedDict(
            ("" if k == root else k[len(prefix):] if k.startswith(prefix) else k, v) for k, v in meta.items())
    return out


_ADVICE = ("weights_only", "add_safe_globals", "safe_globals", "arbitrary code", "trust")
_SAFE_HINT = ("Save the weights alone with torch.save(model.state_dict(), path), or as a .safetensors file.")


def _first_clean_line(text: str, *paths: str) -> str:
    """The first line of an error message that does not repeat PyTorch's advice, without paths."""
    for line in str(text).splitlines():
        line = line.strip()
        if line.lower().startswith(("weightsunpickler error:", "unpickler error:")):
            line = line.split(":", 1)[1].strip()
        if line and not any(a in line for a in _ADVICE) and not line.startswith(("Check the documentation", "Please")):
            for p in paths:
                line = line.replace(p, "")
            return line[:200]
    return ""


def _unreadable_detail(p: Path, error: BaseException) -> str:
    """Why ``p`` is not a readable torch checkpoint, from its own bytes (never PyTorch's advice)."""
    import zipfile

    size = p.stat().st_size
    if size == 0:
        return "the file is empty"
    with open(p, "rb") as f:
        head = f.read(4)
    if head in (b"PK\x03\x04", b"PK\x05\x06"):
        if not zipfile.is_zipfile(p):
            return "a truncated or damaged zip archive (torch.save's format)"
        try:
            with zipfile.ZipFile(p) as zf:
                if not any(n.endswith("data.pkl") for n in zf.namelist()):
                    return "a zip archive, but not one written by torch.save (it has no data.pkl)"
        except (zipfile.BadZipFile, OSError):
            return "a truncated or damaged zip archive (torch.save's format)"
        note = _protocol_note(p)
        if note:
            return note
        detail = _first_clean_line(str(error), str(p))
        return "a damaged torch.save archive" + (f" ({detail})" if detail else "")
    note = _protocol_note(p)
    if note:
        return note
    return "it is not a PyTorch weights file (neither a torch.save archive nor a pickle of tensors)"


_PICKLE_READ = 64 * 1024 ** 2
# what a plain torch.save(state_dict) imports (the rest is refused as "objects other than tensors")
_TENSOR_GLOBALS = (r"^(collections\.OrderedDict|torch\._utils\._rebuild_(tensor|tensor_v2|parameter)|torch\.\w*Storage"
                   r"|torch\.(Size|device|bfloat16|half|float\d*|u?int\d+|bool|complex\d+))$")


def _pickle_globals(data: bytes):
    """The classes/functions a pickle imports (``["builtins.exec"]``), or None when ``data`` is
    not a well-formed pickle (checked by ``pickletools.dis``: opcodes, stack, memo)."""
    import io
    import pickletools

    try:
        pickletools.dis(data, out=io.StringIO())
    except Exception:
        return None
    names, pushed, memo = [], [], {}
    try:
        for op, arg, _ in pickletools.genops(data):
            n = op.name
            if n in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
                pushed.append(None)
            elif n == "STACK_GLOBAL":  # module and name: the two values pushed just before
                mod, name = (pushed[-2:] if len(pushed) >= 2 else [None, None])
                names.append(f"{mod}.{name}" if isinstance(mod, str) and isinstance(name, str) else "?")
                pushed.append(None)
            elif n == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif n in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif n in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
            elif "UNICODE" in n or "STRING" in n:
                pushed.append(str(arg))
            elif n not in ("PROTO", "FRAME", "STOP"):
                pushed.append(None)
            if n == "STOP":
                break
    except Exception:
        return None
    return names


def _pickle_bytes(p: Path):
    """The pickle of a weights file (``data.pkl`` of a torch.save archive, else the file's start),
    or None for a damaged archive."""
    import zipfile

    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
                if pkl and zf.getinfo(pkl[0]).file_size <= _PICKLE_READ:
                    return zf.read(pkl[0])
                return None
        with open(p, "rb") as f:
            return f.read(_PICKLE_READ)
    except Exception:  # a damaged zip: not a question of safety
        return None


def _unsafe_globals(p: Path, error: BaseException):
    """What a weights_only load refused: the names of the non-tensor classes/functions the file
    imports, or None when the file is damaged or not a pickle (garbage fails differently)."""
    m = re.search(r"Unsupported global: GLOBAL ([A-Za-z_][\w.]*) was not an allowed global", str(error))
    if m:
        return [m.group(1)]
    data = _pickle_bytes(p)
    names = _pickle_globals(data) if data else None
    if not names:
        return None
    bad = [n for n in dict.fromkeys(names) if not re.match(_TENSOR_GLOBALS, n)]
    return bad or None


def _protocol_note(p: Path):
    """For a well-formed pickle of tensors that PyTorch's weights-only loader still refused: its
    pickle protocol (newer ones are not supported there), else None."""
    import pickletools

    data = _pickle_bytes(p)
    if not data or _pickle_globals(data) is None:
        return None
    op, arg, _ = next(pickletools.genops(data))
    if op.name == "PROTO" and arg > 2:
        return (f"it was saved with pickle protocol {arg}, which PyTorch's weights-only loader cannot read; "
                "save it again with torch.save(model.state_dict(), path) and the default protocol")
    return None


def load_state_dict(path: str | os.PathLike, *, display_name: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state_dict safely: ``torch.load(..., map_location="cpu", weights_only=True)``, or
    ``safetensors`` for ``.safetensors`` files. Accepts a bare state_dict or a checkpoint dict
    holding one under ``state_dict``/``model_state_dict``/``model``/``state_dict_ema``; strips
    ``module.`` prefixes (DataParallel). Raises :class:`WeightsNotFound`, :class:`UnsafeWeights`
    (the file holds objects other than tensors: loading them could run code) or
    :class:`ModelLoadError` (not a readable checkpoint). Messages name the file ``display_name``
    (e.g. an upload's original name; default: the file's name), never repeat PyTorch's advice to
    load with ``weights_only=False``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsNotFound(f"weights file not found: {display_name or p}")
    shown = display_name or p.name
    if p.suffix.lower() == ".safetensors" or (display_name or "").lower().endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - safetensors comes with timm / huggingface_hub
            raise ModelLoadError(f"{shown}: reading .safetensors files needs the 'safetensors' package") from None
        try:
            obj = load_file(str(p), device="cpu")
        except Exception as e:
            detail = _first_clean_line(f"{type(e).__name__}: {e}", str(p))
            raise ModelLoadError(f"{shown} is not a readable safetensors file ({detail})") from None
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # refused objects, or corrupt / truncated / not a torch file
            refused = _unsafe_globals(p, e) if isinstance(e, pickle.UnpicklingError) else None
            if refused:
                what = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
                raise UnsafeWeights(
                    f"refused {shown}: it holds objects other than tensors ({what}), and loading those "
                    "could run code stored in the file; for safety clrp loads only tensors (a state_dict). "
                    + _SAFE_HINT) from None
            detail = _unreadable_detail(p, e)
            hint = "" if "pickle protocol" in detail else " " + _SAFE_HINT
            raise ModelLoadError(f"{shown} is not a readable PyTorch checkpoint: {detail}.{hint}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "state_dict_ema"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{shown} does not hold a state_dict (a dict of parameter name -> tensor)")
    if all(k.startswith("module.") for k in obj):
        obj = _strip_prefix(obj, "module.")
    return obj


_LIST = 20  # keys listed per kind of mismatch; the rest are counted


def _keys(keys, limit: int = _LIST) -> str:
    keys = list(keys)
    text = ", ".join(keys[:limit])
    return text + (f", and {len(keys) - limit} more" if len(keys) > limit else "")


def _shape(t) -> str:
    return str(tuple(t.shape))


def apply_state_dict(model: nn.Module, sd: dict, source, *, ignore: tuple[str, ...] = (),
                     display_name: str | None = None) -> None:
    """``model.load_state_dict(sd)``, strict, with a readable :class:`ModelLoadError` listing
    every tensor of another shape (``model expects (...), file has (...)``), every missing and
    every unexpected key (the first 20 of each, then how many more). Keys starting with a prefix
    in ``ignore`` are dropped from ``sd`` first. The file is named ``display_name``, else
    ``source`` (a path is shown by its file name)."""
    shown = display_name or (Path(source).name if isinstance(source, (os.PathLike, Path)) else source)
    if ignore:
        meta = getattr(sd, "_metadata", None)
        sd = OrderedDict((k, v) for k, v in sd.items() if not k.startswith(ignore))
        if meta is not None:
            sd._metadata = meta
    own = model.state_dict()
    wrong = [(k, own[k], v) for k, v in sd.items()
             if k in own and isinstance(v, torch.Tensor) and own[k].shape != v.shape]
    if wrong:  # nothing is loaded: the key sets are compared here
        missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in sd if k not in own]
    else:
        try:
            missing, unexpected = model.load_state_dict(sd, strict=False)
        except (RuntimeError, ValueError) as e:  # e.g. MNASNet's version check
            raise ModelLoadError(f"weights {shown} do not fit the architecture: {e}") from None
    if wrong or missing or unexpected:
        lines = [f"weights {shown} do not fit the architecture:"]
        if wrong:
            n = len(wrong)
            lines.append(f"  {n} tensor{'s have' if n != 1 else ' has'} another shape:")
            lines += [f"    {k}: model expects {_shape(m)}, file has {_shape(f)}" for k, m, f in wrong[:_LIST]]
            if n > _LIST:
                lines.append(f"    ... and {n - _LIST} more")
        if missing:
            lines.append(f"  {len(missing)} missing (in the model, not in the file): {_keys(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected (in the file, not in the model): {_keys(unexpected)}")
        raise ModelLoadError("\n".join(lines))
