"""Architectures for fine-tuned and lab models: every torchvision classification model,
``timm:<name>`` (when timm is installed), clrp's ``scene_vgg``, and entry points
(``package.module:function``); plus finding and replacing a model's classifier layer."""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from . import timm_zoo
from . import torchvision_zoo as tvz
from ._errors import ModelLoadError

__all__ = ["ARCHITECTURES", "build_architecture", "find_classifier", "replace_classifier", "classifier_outputs",
           "build_from_factory", "parse_factory", "describe_supported", "pretrained_preprocessing"]


class _Architectures(Mapping):
    """``name -> {"builder", "weights_enum", "library"}`` for every torchvision classification model
    and ``scene_vgg`` (filled on first use: importing torchvision takes a second). ``in`` also
    accepts ``timm:<name>`` for any model timm knows (timm names are not iterated: thousands)."""

    @functools.cached_property
    def _data(self) -> dict[str, dict]:
        d = {n: {"builder": n, "weights_enum": tvz.enum_name(n), "library": "torchvision"} for n in tvz.names()}
        d["scene_vgg"] = {"builder": None, "weights_enum": None, "library": "clrp"}
        return d

    def __getitem__(self, key: str) -> dict:
        if isinstance(key, str) and key.startswith(timm_zoo.PREFIX) and timm_zoo.is_model(key):
            return {"builder": timm_zoo.strip(key), "weights_enum": None, "library": "timm"}
        return self._data[key]

    def __contains__(self, key) -> bool:
        if not isinstance(key, str):
            return False
        if key.startswith(timm_zoo.PREFIX):
            return timm_zoo.is_model(key)
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"ARCHITECTURES({', '.join(self)}, timm:<name>)"


#: Architectures a fine-tuned / lab model may use.
ARCHITECTURES = _Architectures()


def describe_supported() -> str:
    timm = "timm:<name> (any timm model)" if timm_zoo.installed() else "timm:<name> (needs timm: pip install timm)"
    return (f"any torchvision classification model ({', '.join(list(tvz.names())[:6])}, ... : "
            f"`python -m clrp models` lists them), {timm}, scene_vgg")


# ---------------------------------------------------------------------------------------------
# Construction

def _has_unsaved_buffers(model: nn.Module) -> bool:
    saved = set(model.state_dict().keys())
    return any(k not in saved for k, _ in model.named_buffers())


def _construct(fn, initialize: bool) -> nn.Module:
    """``fn()``; with ``initialize=False`` built on the meta device and materialised uninitialised
    (seconds saved on big models; the caller overwrites every tensor with a strict state_dict).
    Models that cannot be built on meta (torchvision's RegNets compute widths with tensors) or
    that hold buffers no state_dict restores are built normally."""
    if initialize:
        return fn()
    try:
        with torch.device("meta"):
            m = fn()
    except (NotImplementedError, RuntimeError, TypeError, ValueError, AssertionError):
        return fn()
    if _has_unsaved_buffers(m):
        return fn()
    return m.to_empty(device="cpu")


def build_architecture(architecture: str, num_classes: int, config: dict | None = None, *,
                       initialize: bool = True, weights=None) -> nn.Module:
    """An untrained model of ``architecture`` whose last layer has ``num_classes`` outputs.

    ``architecture``: a torchvision classification model name (``resnet50``, ``densenet121``, ...),
    ``timm:<name>``, or ``scene_vgg``. ``config``: extra keyword arguments for the builder
    (torchvision's ``get_model``, ``timm.create_model``; ``scene_vgg``: the bundled model's
    config), e.g. ``{"image_size": 384}`` for a ViT fine-tuned at 384 px or
    ``{"transform_input": False}`` for a GoogLeNet trained from scratch.
    ``initialize=False`` skips the (slow, for VGG16: seconds) random initialisation: the
    parameters are left uninitialised, to be overwritten by a strict ``load_state_dict``.
    ``weights``: torchvision weights enum member the model is built for (input size of ViTs)."""
    arch = str(architecture).strip()
    low = arch.lower()
    n = int(num_classes)
    if low == "scene_vgg":
        from .bundled import build_model

        cfg = dict(config or {})
        cfg["num_classes"] = n
        return _construct(lambda: build_model(cfg), initialize)
    if low.startswith(timm_zoo.PREFIX):
        if not timm_zoo.installed():
            raise ModelLoadError(f"architecture {arch!r} needs the 'timm' package (pip install timm)")
        if not timm_zoo.is_model(low):
            raise ModelLoadError(f"unknown architecture {arch!r}: timm has no model {timm_zoo.strip(arch)!r}")
        import timm

        kw = dict(config or {})

        def make():
            return timm.create_model(timm_zoo.strip(low), pretrained=False, num_classes=n, **kw)
        try:
            return _construct(make, initialize)
        except TypeError as e:
            raise ModelLoadError(f"architecture {arch!r}: options {kw} not accepted: {e}") from None
    if low in tvz.names():
        import torchvision

        kw = tvz.builder_kwargs(low, weights, config, initialize=initialize)

        def make():
            return torchvision.models.get_model(low, weights=None, num_classes=n, **kw)
        try:
            return _construct(make, initialize)
        except TypeError as e:
            raise ModelLoadError(f"architecture {arch!r}: options {config} not accepted by torchvision: {e}") from None
    raise ModelLoadError(f"unknown architecture {architecture!r}; supported: {describe_supported()}")


def pretrained_preprocessing(arch: str) -> dict:
    """The preprocessing an architecture's pretrained weights use (a fine-tuned model usually
    keeps it): torchvision's default weights' transforms, timm's data config, ImageNet defaults."""
    from ..errors import ClrpError
    from .preprocessing import Preprocessing

    low = arch.lower()
    if low == "scene_vgg":
        from .bundled import bundled_preprocessing

        return bundled_preprocessing().to_dict()
    try:
        if low in tvz.names():
            return tvz.preprocessing(low).to_dict()
        if low.startswith(timm_zoo.PREFIX) and timm_zoo.installed():
            cfg = timm_zoo.pretrained_cfg(low)
            if cfg is not None:
                return timm_zoo.preprocessing(cfg).to_dict()
    except ClrpError:
        pass
    return Preprocessing().to_dict()  # ImageNet defaults: resize 256, crop 224


# ---------------------------------------------------------------------------------------------
# The classifier layer

_HEADS = (nn.Linear, nn.Conv2d)
#: Where classifiers live, in order: torchvision (ResNet/RegNet/GoogLeNet/Inception/ShuffleNet ``fc``,
#: ViT ``heads.head``, Swin ``head``, the others' ``classifier`` or its last layer), timm heads, Cadene.
_CANDIDATES = ("fc", "heads.head", "head.fc", "head", "classifier", "last_linear")


def _last_head_in(module: nn.Module, prefix: str = "") -> str | None:
    last = None
    for name, m in module.named_modules():
        if isinstance(m, _HEADS):
            last = name
    if last is None:
        return None
    return f"{prefix}.{last}".strip(".") if last else prefix


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def find_classifier(model: nn.Module) -> str:
    """The module name of ``model``'s output layer (a ``Linear`` or a ``Conv2d`` as in SqueezeNet):
    timm's ``pretrained_cfg["classifier"]`` / ``get_classifier()``, else the usual attribute
    (``fc``, ``heads.head``, ``head``, ``classifier`` or its last layer, ...), else the last
    ``Linear``/``Conv2d`` the model registers."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("classifier"):
        c = cfg["classifier"]
        c = c[0] if isinstance(c, (tuple, list)) else c
        m = _submodule(model, c)
        if m is not None:
            found = c if isinstance(m, _HEADS) else _last_head_in(m, c)
            if found:
                return found
    if callable(getattr(model, "get_classifier", None)):
        try:
            head = model.get_classifier()
        except Exception:
            head = None
        if isinstance(head, nn.Module):
            for name, m in model.named_modules():
                if m is head:
                    found = name if isinstance(m, _HEADS) else _last_head_in(m, name)
                    if found:
                        return found
    for cand in _CANDIDATES:
        m = _submodule(model, cand)
        if m is None:
            continue
        found = cand if isinstance(m, _HEADS) else _last_head_in(m, cand)
        if found:
            return found
    found = _last_head_in(model)
    if not found:
        raise ModelLoadError(f"{type(model).__name__} has no Linear or Conv2d layer to use as its classifier")
    return found


def classifier_outputs(model: nn.Module, name: str | None = None) -> int:
    m = model.get_submodule(name or find_classifier(model))
    return int(m.out_features if isinstance(m, nn.Linear) else m.out_channels)


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Give ``model`` a new, untrained output layer with ``num_classes`` outputs (in place; returns
    the model): timm's ``reset_classifier``, otherwise the layer :func:`find_classifier` names is
    replaced by a fresh one of the same kind and input size."""
    n = int(num_classes)
    if callable(getattr(model, "reset_classifier", None)) and hasattr(model, "pretrained_cfg"):
        model.reset_classifier(n)
        return model
    name = find_classifier(model)
    old = model.get_submodule(name)
    dev = old.weight.device
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, n, bias=old.bias is not None, device=dev)
    else:
        new = nn.Conv2d(old.in_channels, n, old.kernel_size, old.stride, old.padding, old.dilation,
                        bias=old.bias is not None, device=dev)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


# ---------------------------------------------------------------------------------------------
# Entry points: "package.module:function"

_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def parse_factory(spec: str) -> tuple[str, str]:
    s = str(spec).strip()
    if not _FACTORY.match(s):
        raise ModelLoadError(f"factory {spec!r} must look like 'package.module:function'")
    mod, _, attr = s.partition(":")
    return mod, attr


def _import(mod: str, folder: Path | None):
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        top = mod.split(".")[0]
        local = folder / f"{mod}.py" if folder is not None and "." not in mod else None
        if e.name != top or local is None or not local.is_file():
            raise ModelLoadError(f"factory module {mod!r} cannot be imported: {e}") from None
    # a single-file module next to the models config
    name = mod
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, local)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise ModelLoadError(f"factory module {local} failed to import: {type(e).__name__}: {e}") from None
    return module


def _accepts(fn, param: str) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return param in sig.parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def build_from_factory(spec: str, num_classes: int, config: dict | None = None, *,
                       folder: str | Path | None = None) -> nn.Module:
    """Call the entry point ``spec`` (``"package.module:function"``; a module file in ``folder``,
    e.g. next to the models config, works too) with ``config`` as keyword arguments, plus
    ``num_classes=num_classes`` when it accepts that. When it does not and its classifier has
    another size, the classifier is replaced (:func:`replace_classifier`)."""
    mod, attr = parse_factory(spec)
    module = _import(mod, Path(folder) if folder is not None else None)
    fn = module
    for part in attr.split("."):
        try:
            fn = getattr(fn, part)
        except AttributeError:
            raise ModelLoadError(f"factory {spec!r}: {mod} has no attribute {attr!r}") from None
    if not callable(fn):
        raise ModelLoadError(f"factory {spec!r} is not callable")
    kw = dict(config or {})
    passed = _accepts(fn, "num_classes")
    if passed:
        kw["num_classes"] = int(num_classes)
    try:
        model = fn(**kw)
    except Exception as e:
        raise ModelLoadError(f"factory {spec!r} failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    if not passed and classifier_outputs(model) != int(num_classes):
        replace_classifier(model, num_classes)
    return model
