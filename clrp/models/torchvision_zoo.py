"""Every torchvision classification model: names, weights metadata (URL, categories, transforms)
and construction exactly as ``torchvision.models.get_model(name, weights=...)`` does it, without
torchvision's downloader (clrp's :mod:`.download` keeps the same cache file).

What torchvision's builders do differently when they are given weights, and clrp repeats:

- ``googlenet``, ``inception_v3``: ``transform_input=True`` (the checkpoints expect
  ImageNet-normalised inputs turned into [-1, 1] inputs inside the model); the checkpoints hold the
  auxiliary heads, which are dropped (``aux_logits=False``), as torchvision does by default.
- ``densenet*``: the checkpoints' old key names (``norm.1`` ...) are renamed.
- ``vit_*``, ``maxvit_t``: the input size of the weights (``meta["min_size"]``, e.g. 518 for
  ``vit_h_14``'s SWAG weights) is passed to the builder.
- ``mnasnet*``: a state_dict without torch's version metadata is read as the current version.
"""
from __future__ import annotations

import functools
import re
from collections import OrderedDict
from typing import Any

from ._errors import ModelLoadError
from .preprocessing import Preprocessing

__all__ = ["names", "is_name", "split_name", "weights_for", "weights_url", "tags", "builder_kwargs",
           "fix_state_dict", "preprocessing", "categories", "enum_name", "file_size_mb", "is_transformer"]

_AUX = ("aux1.", "aux2.", "AuxLogits.")
_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
#: Families whose attention layers have no LRP rule (the gradient methods still work).
TRANSFORMERS = ("vit_", "swin_", "maxvit_")


def _tv():
    import torchvision

    return torchvision


@functools.lru_cache(maxsize=1)
def names() -> tuple[str, ...]:
    """``torchvision.models.list_models(module=torchvision.models)``: the classification models."""
    tv = _tv()
    return tuple(tv.models.list_models(module=tv.models))


def is_name(name: str) -> bool:
    return split_name(name)[0] in names()


def split_name(name: str) -> tuple[str, str | None]:
    """``"resnet50.IMAGENET1K_V1"`` -> ``("resnet50", "IMAGENET1K_V1")``; ``"resnet50"`` -> ``("resnet50", None)``."""
    arch, _, tag = str(name).partition(".")
    return arch, (tag or None)


def enum_name(arch: str) -> str:
    """The weights enum's class name in ``torchvision.models`` (``"ResNet50_Weights"``)."""
    return _tv().models.get_model_weights(arch).__name__


def tags(arch: str) -> list[str]:
    """The weights tags of ``arch`` (``["IMAGENET1K_V1", "IMAGENET1K_V2"]``), classifiers only."""
    return [w.name for w in _tv().models.get_model_weights(arch) if w.meta.get("categories")]


def weights_for(name: str):
    """The weights enum member for ``"resnet50"`` (torchvision's DEFAULT) or ``"resnet50.IMAGENET1K_V1"``."""
    arch, tag = split_name(name)
    enum = _tv().models.get_model_weights(arch)
    if tag is None:
        return enum.DEFAULT
    try:
        w = enum[tag]
    except KeyError:
        raise ModelLoadError(f"torchvision {arch} has no weights {tag!r}; its weights: "
                             f"{', '.join(m.name for m in enum)}") from None
    if not w.meta.get("categories"):
        raise ModelLoadError(f"torchvision {arch}.{tag} weights are a feature extractor without classes; "
                             f"choose one of {', '.join(tags(arch))}")
    return w


def weights_url(name: str) -> str:
    return weights_for(name).url


def categories(name: str) -> list[str]:
    return list(weights_for(name).meta["categories"])


def file_size_mb(name: str) -> float | None:
    s = weights_for(name).meta.get("_file_size")
    return float(s) if s else None


def builder_kwargs(arch: str, weights=None, config: dict | None = None, *, initialize: bool = True) -> dict:
    """Keyword arguments for ``torchvision.models.get_model(arch, weights=None, **kw)`` giving the
    model torchvision builds for ``weights`` (or, with ``weights=None``, a fine-tuned model that
    started from them: same input handling)."""
    kw: dict[str, Any] = {}
    if arch in ("googlenet", "inception_v3"):
        kw.update(transform_input=True, aux_logits=False, init_weights=bool(initialize))
    if weights is not None and arch.startswith("vit_"):
        kw["image_size"] = weights.meta["min_size"][0]
    if weights is not None and arch.startswith("maxvit_"):
        kw["input_size"] = tuple(weights.meta["min_size"])
    kw.update(config or {})
    return kw


def fix_state_dict(arch: str, sd: dict) -> tuple[dict, tuple[str, ...]]:
    """A torchvision checkpoint (or a user state_dict of ``arch``) in the form the model built by
    :func:`builder_kwargs` loads, and the key prefixes to ignore (auxiliary heads)."""
    ignore: tuple[str, ...] = ()
    if arch in ("googlenet", "inception_v3"):
        ignore = _AUX
    if arch.startswith("densenet") and any(_DENSENET_KEY.match(k) for k in sd):
        meta = getattr(sd, "_metadata", None)
        new = OrderedDict()
        for k, v in sd.items():
            m = _DENSENET_KEY.match(k)
            new[m.group(1) + m.group(2) if m else k] = v
        if meta is not None:
            new._metadata = meta
        sd = new
    if arch.startswith("mnasnet") and getattr(sd, "_metadata", None) is None:
        sd = OrderedDict(sd)
        sd._metadata = OrderedDict([("", {"version": 2})])
    return sd, ignore


def _interp(t) -> str:
    interp = str(getattr(t.interpolation, "value", t.interpolation)).lower()
    return interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear"


def preprocessing(name: str) -> Preprocessing:
    """The weights' ``transforms()`` (resize, centre crop, interpolation, mean, std) as a
    :class:`Preprocessing`."""
    t = weights_for(name).transforms()
    crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else t.crop_size
    resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else t.resize_size
    return Preprocessing(mean=tuple(t.mean), std=tuple(t.std), input_size=(crop, crop), resize=resize,
                         interpolation=_interp(t))


def is_transformer(arch: str) -> bool:
    return arch.startswith(TRANSFORMERS)
