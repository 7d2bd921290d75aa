"""Model zoo: ``load(name) -> LoadedModel`` (model in eval mode + class names + preprocessing).

Entries
- ``bundled`` (default): a small VGG-style CNN trained multi-label on clrp's procedural shape
  scenes (:mod:`clrp.scenes`); weights ship inside the package (``clrp/models/assets/``).
- ``vgg16``, ``vgg16_bn``, ``vgg19``, ``alexnet``: torchvision architectures with ImageNet
  weights read from the local torch hub cache
  (``torch.hub.get_dir()/checkpoints/<torchvision file name>``) or from ``weights=<path>``.
  Nothing is ever downloaded; a missing file raises :class:`WeightsNotFound` naming the file
  and the folder it must go to. Class names and transforms come from torchvision's weight
  metadata.
- fine-tuned models: ``load("finetuned", architecture="vgg16", weights=path, class_names=path)``
  (or :func:`load_finetuned`): a torchvision architecture with the last layer sized to the
  class list, plus a user ``state_dict``.
- lab models listed in a TOML config file (``config=`` argument or the ``CLRP_MODELS_CONFIG``
  environment variable); see :func:`read_config` for the format.

Every weights file is read with ``torch.load(path, map_location="cpu", weights_only=True)``:
pickles that need anything but tensors and plain containers (e.g. a ``__reduce__`` payload)
are refused with :class:`UnsafeWeights` and never executed.
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ClrpError, ModelLoadError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None
from .preprocessing import Preprocessing

__all__ = [
    "LoadedModel",
    "ModelInfo",
    "Preprocessing",
    "WeightsNotFound",
    "UnsafeWeights",
    "ModelLoadError",
    "ARCHITECTURES",
    "IMAGENET_MODELS",
    "CONFIG_ENV",
    "load",
    "load_finetuned",
    "available_models",
    "read_config",
    "read_class_names",
    "load_state_dict",
    "imagenet_weights_path",
    "build_architecture",
]

CONFIG_ENV = "CLRP_MODELS_CONFIG"


class WeightsNotFound(ModelLoadError):
    """The weights of a model are not available offline. The message says which file to put where."""


class UnsafeWeights(ModelLoadError):
    """A weights file was refused because unpickling it would run code or build arbitrary objects."""


# --------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model ready to explain: ``model`` (eval mode, CPU), its ``class_names`` and the
    ``preprocessing`` its inputs need."""

    model: nn.Module
    class_names: list[str]
    preprocessing: Preprocessing
    name: str
    description: str = ""
    architecture: str = ""
    multilabel: bool = False
    weights_path: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def box(self) -> tuple[list[float], list[float]]:
        """Per-channel input bounds ``(low, high)`` for the zB rule."""
        return self.preprocessing.box

    def to_tensor(self, image: Any, **kw) -> torch.Tensor:
        """Any user image (path, bytes, file-like, PIL image, uint8 array) -> ``[1, 3, H, W]``."""
        from ..imageio import load_image

        return load_image(image, self.preprocessing, **kw).tensor

    def load_image(self, image: Any, **kw):
        """:func:`clrp.imageio.load_image` with this model's preprocessing (tensor + display array)."""
        from ..imageio import load_image

        return load_image(image, self.preprocessing, **kw)

    def display_array(self, tensor: torch.Tensor) -> np.ndarray:
        """Input tensor -> RGB uint8 array at the same geometry."""
        return self.preprocessing.denormalize(tensor)

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, C]``."""
        return self.model(inputs)

    @torch.no_grad()
    def top_classes(self, inputs: torch.Tensor, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` highest-scoring classes of the first sample: ``(index, name, score)``, score =
        sigmoid probability for multi-label models, softmax otherwise."""
        logits = self.model(inputs[:1])[0]
        p = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, 0)
        v, i = p.topk(min(k, p.numel()))
        return [(int(j), self.class_names[int(j)], float(s)) for s, j in zip(v, i)]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str  # "bundled" | "torchvision" | "lab"
    description: str
    available: bool
    reason: str | None = None  # why not available
    weights_path: str | None = None


# --------------------------------------------------------------------------------------------
# Architectures


def _tv():
    import torchvision

    return torchvision


def _tv_arch(fn_name: str, weights_enum: str | None) -> dict:
    return {"builder": fn_name, "weights_enum": weights_enum}


#: Architectures a fine-tuned / lab model may use (all supported by the LRP engine).
ARCHITECTURES: dict[str, dict] = {
    "vgg11": _tv_arch("vgg11", "VGG11_Weights"),
    "vgg11_bn": _tv_arch("vgg11_bn", "VGG11_BN_Weights"),
    "vgg13": _tv_arch("vgg13", "VGG13_Weights"),
    "vgg13_bn": _tv_arch("vgg13_bn", "VGG13_BN_Weights"),
    "vgg16": _tv_arch("vgg16", "VGG16_Weights"),
    "vgg16_bn": _tv_arch("vgg16_bn", "VGG16_BN_Weights"),
    "vgg19": _tv_arch("vgg19", "VGG19_Weights"),
    "vgg19_bn": _tv_arch("vgg19_bn", "VGG19_BN_Weights"),
    "alexnet": _tv_arch("alexnet", "AlexNet_Weights"),
    "scene_vgg": {"builder": None, "weights_enum": None},  # clrp's bundled architecture
}

#: Zoo entries with torchvision ImageNet weights.
IMAGENET_MODELS: tuple[str, ...] = ("vgg16", "vgg16_bn", "vgg19", "alexnet")


def build_architecture(architecture: str, num_classes: int, config: dict | None = None, *,
                       initialize: bool = True) -> nn.Module:
    """An untrained model of ``architecture`` whose last layer has ``num_classes`` outputs.

    ``initialize=False`` skips the (slow, for VGG16: seconds) random initialisation: the
    parameters are left uninitialised, to be overwritten by a strict ``load_state_dict``."""
    if not initialize:
        with torch.device("meta"):
            model = build_architecture(architecture, num_classes, config)
        return model.to_empty(device="cpu")
    arch = architecture.lower()
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"unknown architecture {architecture!r}; supported: {', '.join(ARCHITECTURES)}")
    if arch == "scene_vgg":
        from .bundled import build_model

        cfg = dict(config or {})
        cfg["num_classes"] = int(num_classes)
        return build_model(cfg)
    builder = getattr(_tv().models, ARCHITECTURES[arch]["builder"])
    return builder(weights=None, num_classes=int(num_classes))


def _weights_enum(arch: str):
    return getattr(_tv().models, ARCHITECTURES[arch]["weights_enum"]).IMAGENET1K_V1


def imagenet_weights_path(name: str) -> Path:
    """Where the torch hub cache keeps torchvision's ImageNet weights of ``name``."""
    url = _weights_enum(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _imagenet_preprocessing(name: str) -> Preprocessing:
    t = _weights_enum(name).transforms()
    crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else t.crop_size
    resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else t.resize_size
    interp = str(getattr(t.interpolation, "value", t.interpolation)).lower()
    return Preprocessing(mean=tuple(t.mean), std=tuple(t.std), input_size=(crop, crop), resize=resize,
                         interpolation=interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear")


# --------------------------------------------------------------------------------------------
# Weights and class names


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict safely (``weights_only=True``). Accepts a bare state_dict or a checkpoint
    dict holding one under ``state_dict``/``model``/``model_state_dict``; strips ``module.``
    prefixes (DataParallel). Raises :class:`WeightsNotFound`, :class:`UnsafeWeights` or
    :class:`ModelLoadError`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsNotFound(f"weights file not found: {p}")
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
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{p} does not hold a state_dict (a dict of parameter name -> tensor)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _apply_state_dict(model: nn.Module, sd: dict, source: Path | str) -> None:
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ModelLoadError(f"weights {source} do not fit the architecture: {e}") from None
    if missing or unexpected:
        raise ModelLoadError(
            f"weights {source} do not fit the architecture: missing keys {list(missing)[:8]}, "
            f"unexpected keys {list(unexpected)[:8]}"
        )


def read_class_names(source: str | os.PathLike | Sequence[str]) -> list[str]:
    """Class names from a list, a ``.json`` file (a list, or a dict index -> name), or a text
    file with one name per line (blank lines ignored)."""
    if isinstance(source, (list, tuple)):
        names = [str(s) for s in source]
    else:
        p = Path(source).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"class names file not found: {p}")
        text = p.read_text(encoding="utf-8-sig")
        if p.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise ModelLoadError(f"class names file {p} is not valid JSON: {e}") from None
            if isinstance(data, dict):
                try:
                    data = [data[k] for k in sorted(data, key=lambda k: int(k))]
                except ValueError:
                    raise ModelLoadError(f"class names JSON {p}: a dict must map indices to names") from None
            if not isinstance(data, list):
                raise ModelLoadError(f"class names JSON {p} must be a list of names")
            names = [str(s) for s in data]
        else:
            names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not names:
        raise ModelLoadError("empty class names list")
    return names


# --------------------------------------------------------------------------------------------
# Loaders


def _load_bundled() -> LoadedModel:
    from . import bundled

    if not bundled.WEIGHTS_FILE.is_file() or not bundled.META_FILE.is_file():
        raise WeightsNotFound(
            f"the bundled model's files are missing: expected {bundled.WEIGHTS_FILE} and {bundled.META_FILE} "
            "(reinstall clrp, or retrain them with `python scripts/train_bundled_model.py`)"
        )
    meta = json.loads(bundled.META_FILE.read_text())
    model = build_architecture("scene_vgg", len(meta["class_names"]), meta["architecture"], initialize=False)
    _apply_state_dict(model, load_state_dict(bundled.WEIGHTS_FILE), bundled.WEIGHTS_FILE)
    return LoadedModel(
        model=model.eval(),
        class_names=list(meta["class_names"]),
        preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
        name="bundled",
        description=meta.get("description", ""),
        architecture="scene_vgg",
        multilabel=True,
        weights_path=bundled.WEIGHTS_FILE,
        meta=meta,
    )


def _load_imagenet(name: str, weights: str | os.PathLike | None = None) -> LoadedModel:
    w = _weights_enum(name)
    path = Path(weights).expanduser() if weights is not None else imagenet_weights_path(name)
    if not path.is_file():
        fname = w.url.rsplit("/", 1)[-1]
        if weights is not None:
            raise WeightsNotFound(f"ImageNet weights for {name}: the file {path} given as weights= does not exist")
        raise WeightsNotFound(
            f"ImageNet weights for {name} are not available offline (clrp never downloads). Put the file "
            f"{fname} (from {w.url}) at {path} — that is torch.hub.get_dir()/checkpoints/, which follows "
            f"$TORCH_HOME — or pass weights=<path to {fname}>."
        )
    model = build_architecture(name, len(w.meta["categories"]), initialize=False)
    _apply_state_dict(model, load_state_dict(path), path)
    return LoadedModel(
        model=model.eval(),
        class_names=list(w.meta["categories"]),
        preprocessing=_imagenet_preprocessing(name),
        name=name,
        description=f"torchvision {name}, ImageNet-1k weights ({w.url.rsplit('/', 1)[-1]})",
        architecture=name,
        multilabel=False,
        weights_path=path,
        meta={"weights_url": w.url},
    )


def _make_preprocessing(architecture: str, preprocessing: Preprocessing | dict | None = None, **kw) -> Preprocessing:
    if isinstance(preprocessing, Preprocessing):
        base = preprocessing.to_dict()
    elif isinstance(preprocessing, dict):
        base = dict(preprocessing)
    elif architecture == "scene_vgg":
        from .bundled import bundled_preprocessing

        base = bundled_preprocessing().to_dict()
    else:
        base = Preprocessing().to_dict()  # ImageNet defaults: resize 256, crop 224
    for k in ("mean", "std", "input_size", "resize", "interpolation"):
        if kw.get(k) is not None:
            base[k] = kw[k]
    try:
        return Preprocessing.from_dict(base)
    except (ValueError, TypeError) as e:
        raise ModelLoadError(f"invalid preprocessing {base}: {e}") from None


def load_finetuned(architecture: str, weights: str | os.PathLike, class_names: str | os.PathLike | Sequence[str], *,
                   name: str = "finetuned", description: str = "", multilabel: bool = False,
                   preprocessing: Preprocessing | dict | None = None, mean=None, std=None, input_size=None,
                   resize: int | None | str = "default", interpolation: str | None = None,
                   arch_config: dict | None = None) -> LoadedModel:
    """A torchvision (or ``scene_vgg``) architecture whose last layer is sized to ``class_names``,
    with the user's state_dict. ``resize=None`` resizes the whole image to ``input_size``
    (no crop); the default keeps the architecture's default (ImageNet: 256 then crop 224)."""
    arch = architecture.lower()
    names = read_class_names(class_names)
    path = Path(weights).expanduser()
    sd = load_state_dict(path)
    model = build_architecture(arch, len(names), arch_config, initialize=False)
    # a helpful message when the last layer does not match the class list
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    for k, v in model.state_dict().items():
        if v.ndim == 2 and v.shape == last.weight.shape and k in sd and sd[k].shape != v.shape and sd[k].shape[1] == v.shape[1]:
            raise ModelLoadError(
                f"weights {path} have {sd[k].shape[0]} outputs in {k} but {len(names)} class names were given"
            )
    _apply_state_dict(model, sd, path)
    kw: dict = {"mean": mean, "std": std, "input_size": input_size, "interpolation": interpolation}
    pre = _make_preprocessing(arch, preprocessing, **kw)
    if resize != "default":
        pre = Preprocessing(pre.mean, pre.std, pre.input_size, None if resize is None else int(resize), pre.interpolation)
    return LoadedModel(
        model=model.eval(),
        class_names=names,
        preprocessing=pre,
        name=name,
        description=description or f"{arch} fine-tuned on {len(names)} classes ({path.name})",
        architecture=arch,
        multilabel=multilabel,
        weights_path=path,
    )


# --------------------------------------------------------------------------------------------
# Lab config


_LAB_KEYS = {"name", "architecture", "weights", "class_names", "mean", "std", "input_size", "resize",
             "interpolation", "description", "multilabel", "arch_config"}


def _config_path(config: str | os.PathLike | None) -> Path | None:
    if config is not None:
        return Path(config).expanduser()
    env = os.environ.get(CONFIG_ENV)
    return Path(env).expanduser() if env else None


def read_config(config: str | os.PathLike | None = None) -> dict[str, dict]:
    """Lab models from a TOML file (``config`` or ``$CLRP_MODELS_CONFIG``; none -> ``{}``).

    Format (relative paths are relative to the config file)::

        [[models]]
        name = "voc-vgg16"
        architecture = "vgg16"            # see clrp.models.ARCHITECTURES
        weights = "voc_vgg16.pt"          # a state_dict (torch.save(model.state_dict()))
        class_names = "voc_classes.txt"   # one per line, or a JSON list
        mean = [0.485, 0.456, 0.406]      # optional; default ImageNet
        std = [0.229, 0.224, 0.225]
        input_size = 224                  # or [height, width]
        resize = 256                      # shorter side before the centre crop; false = resize whole image
        description = "VGG16 fine-tuned on VOC07, multi-label"
        multilabel = true
    """
    p = _config_path(config)
    if p is None:
        return {}
    if not p.is_file():
        raise ModelLoadError(f"models config file not found: {p}")
    if tomllib is None:  # pragma: no cover
        raise ModelLoadError("reading a models config needs Python >= 3.11 (tomllib) or the 'tomli' package")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"models config {p} is not valid TOML: {e}") from None
    entries = data.get("models", [])
    if isinstance(entries, dict):  # [models.<name>] tables
        entries = [{"name": k, **v} for k, v in entries.items()]
    if not isinstance(entries, list):
        raise ModelLoadError(f"models config {p}: 'models' must be an array of tables ([[models]])")
    out: dict[str, dict] = {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ModelLoadError(f"models config {p}: entry {i} is not a table")
        unknown = set(e) - _LAB_KEYS
        if unknown:
            raise ModelLoadError(f"models config {p}: entry {e.get('name', i)!r} has unknown keys {sorted(unknown)}")
        for req in ("name", "architecture", "weights", "class_names"):
            if req not in e:
                raise ModelLoadError(f"models config {p}: entry {e.get('name', i)!r} lacks {req!r}")
        name = str(e["name"])
        if name in _BUILTIN or name == "finetuned":
            raise ModelLoadError(f"models config {p}: name {name!r} is reserved for a built-in model")
        if name in out:
            raise ModelLoadError(f"models config {p}: duplicate model name {name!r}")
        if str(e["architecture"]).lower() not in ARCHITECTURES:
            raise ModelLoadError(f"models config {p}: {name!r} has unknown architecture {e['architecture']!r}; "
                                 f"supported: {', '.join(ARCHITECTURES)}")
        entry = dict(e)
        for key in ("weights", "class_names"):
            q = Path(str(entry[key])).expanduser()
            entry[key] = q if q.is_absolute() else (p.parent / q)
        if entry.get("resize") is False:
            entry["resize"] = None
        entry["_config"] = p
        out[name] = entry
    return out


def _load_lab(entry: dict) -> LoadedModel:
    return load_finetuned(
        entry["architecture"], entry["weights"], entry["class_names"], name=entry["name"],
        description=entry.get("description", ""), multilabel=bool(entry.get("multilabel", False)),
        mean=entry.get("mean"), std=entry.get("std"), input_size=entry.get("input_size"),
        resize=entry["resize"] if "resize" in entry else "default", interpolation=entry.get("interpolation"),
        arch_config=entry.get("arch_config"),
    )


# --------------------------------------------------------------------------------------------

_BUILTIN: dict[str, str] = {
    "bundled": "VGG-style CNN trained on clrp's procedural shape scenes (ships with clrp; no download)",
    **{n: f"torchvision {n} with ImageNet-1k weights (from the local torch hub cache)" for n in IMAGENET_MODELS},
}


def load(name: str = "bundled", *, weights: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
         **kw) -> LoadedModel:
    """Load a zoo entry (see the module docstring).

    - ``load()`` / ``load("bundled")``
    - ``load("vgg16")`` (hub cache) or ``load("vgg16", weights="/path/vgg16-397923af.pth")``
    - ``load("finetuned", architecture="vgg16", weights=..., class_names=..., **preprocessing)``
      (any name works when ``architecture=`` is given)
    - ``load("<lab model>", config="lab.toml")`` or with ``$CLRP_MODELS_CONFIG`` set.
    """
    if "architecture" in kw:
        if weights is None or "class_names" not in kw:
            raise ModelLoadError("a fine-tuned model needs architecture=, weights= and class_names=")
        arch = kw.pop("architecture")
        names = kw.pop("class_names")
        return load_finetuned(arch, weights, names, name=name, **kw)
    if kw:
        raise ModelLoadError(f"unexpected options for {name!r}: {sorted(kw)}")
    if name == "bundled":
        if weights is not None:
            raise ModelLoadError("the bundled model takes no weights=; use load('finetuned', architecture='scene_vgg', ...)")
        return _load_bundled()
    if name in IMAGENET_MODELS:
        return _load_imagenet(name, weights)
    lab = read_config(config)
    if name in lab:
        return _load_lab(lab[name])
    known = ["bundled", *IMAGENET_MODELS, *lab]
    raise ModelLoadError(f"unknown model {name!r}; available: {', '.join(known)} "
                         "(or pass architecture=, weights=, class_names= for a fine-tuned model)")


def available_models(config: str | os.PathLike | None = None) -> list[ModelInfo]:
    """Every zoo entry (built-ins, then lab models) with whether its files are present and why not.
    A broken config file is reported as one unavailable entry named ``<config>``."""
    from . import bundled

    out: list[ModelInfo] = []
    ok = bundled.WEIGHTS_FILE.is_file() and bundled.META_FILE.is_file()
    out.append(ModelInfo("bundled", "bundled", _BUILTIN["bundled"], ok,
                         None if ok else f"missing {bundled.WEIGHTS_FILE} (retrain with scripts/train_bundled_model.py)",
                         str(bundled.WEIGHTS_FILE)))
    for n in IMAGENET_MODELS:
        p = imagenet_weights_path(n)
        ok = p.is_file()
        out.append(ModelInfo(n, "torchvision", _BUILTIN[n], ok,
                             None if ok else f"weights file {p.name} not in {p.parent} (no download offline)", str(p)))
    try:
        lab = read_config(config)
    except ModelLoadError as e:
        out.append(ModelInfo("<config>", "lab", "models config file", False, str(e)))
        return out
    for n, e in lab.items():
        reasons = []
        if not Path(e["weights"]).is_file():
            reasons.append(f"weights file {e['weights']} not found")
        if not Path(e["class_names"]).is_file():
            reasons.append(f"class names file {e['class_names']} not found")
        out.append(ModelInfo(n, "lab", e.get("description") or f"{e['architecture']} (lab model)", not reasons,
                             "; ".join(reasons) or None, str(e["weights"])))
    return out
