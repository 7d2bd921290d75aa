"""Reading weights files safely and putting them into a model."""
from __future__ import annotations

import os
import pickle
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


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict safely: ``torch.load(..., map_location="cpu", weights_only=True)``, or
    ``safetensors`` for ``.safetensors`` files. Accepts a bare state_dict or a checkpoint dict
    holding one under ``state_dict``/``model_state_dict``/``model``/``state_dict_ema``; strips
    ``module.`` prefixes (DataParallel). Raises :class:`WeightsNotFound`, :class:`UnsafeWeights` or
    :class:`ModelLoadError`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsNotFound(f"weights file not found: {p}")
    if p.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - safetensors comes with timm / huggingface_hub
            raise ModelLoadError(f"{p}: reading .safetensors files needs the 'safetensors' package") from None
        try:
            obj = load_file(str(p), device="cpu")
        except Exception as e:
            raise ModelLoadError(f"cannot read weights file {p}: {type(e).__name__}: {e}") from None
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeWeights(
                f"refused to load {p}: it is not a plain tensor state_dict, and unpickling it would need "
                f"arbitrary code or objects (torch.load weights_only=True refused it: {str(e).splitlines()[0]}). "
                "Save the weights with torch.save(model.state_dict(), path)."
            ) from None
        except Exception as e:  # corrupt / truncated / not a torch file
            raise ModelLoadError(f"cannot read weights file {p}: {type(e).__name__}: {e}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "state_dict_ema"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{p} does not hold a state_dict (a dict of parameter name -> tensor)")
    if all(k.startswith("module.") for k in obj):
        obj = _strip_prefix(obj, "module.")
    return obj


def apply_state_dict(model: nn.Module, sd: dict, source, *, ignore: tuple[str, ...] = ()) -> None:
    """``model.load_state_dict(sd)``, strict, with a readable :class:`ModelLoadError`. Keys
    starting with a prefix in ``ignore`` are dropped from ``sd`` first."""
    if ignore:
        meta = getattr(sd, "_metadata", None)
        sd = OrderedDict((k, v) for k, v in sd.items() if not k.startswith(ignore))
        if meta is not None:
            sd._metadata = meta
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except (RuntimeError, ValueError) as e:  # shape mismatches; MNASNet's version check
        raise ModelLoadError(f"weights {source} do not fit the architecture: {e}") from None
    if missing or unexpected:
        raise ModelLoadError(
            f"weights {source} do not fit the architecture: missing keys {list(missing)[:8]}, "
            f"unexpected keys {list(unexpected)[:8]}"
        )
