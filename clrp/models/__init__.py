"""Model zoo: ``load(name) -> LoadedModel`` (model in eval mode + class names + preprocessing).

Entries
- ``bundled`` (default): a small VGG-style CNN trained multi-label on clrp's procedural shape
  scenes (:mod:`clrp.scenes.easy`); weights ship inside the package (``clrp/models/assets/``).
- ``bundled-hard``: a deeper VGG-pattern CNN (8 convs) trained the same way on the hard scene
  preset (:mod:`clrp.scenes.hard`, 224 px scenes seen at 128 px); also ships with the package.
- every torchvision classification model (``torchvision.models.list_models(module=
  torchvision.models)``: ``resnet50``, ``densenet121``, ``efficientnet_b0``, ``vgg16``, ``vit_b_16``,
  ...) with its default ImageNet weights, or other weights by tag (``resnet50.IMAGENET1K_V1``).
  Class names and preprocessing (resize, crop, interpolation, mean, std) come from torchvision's
  weights metadata (``meta["categories"]``, ``transforms()``). Weights follow torchvision's
  convention: the torch hub cache file (``torch.hub.get_dir()/checkpoints/<file name of the URL>``),
  downloaded there on first use when the network allows it (progress bar, hash prefix checked,
  atomic rename; ``$CLRP_WEIGHTS_MIRROR``, ``$CLRP_DOWNLOAD_TIMEOUT``, ``$CLRP_OFFLINE``: see
  :mod:`clrp.models.download`), or ``weights=<path>``. Offline, :class:`WeightsNotFound` says which
  file to put where, within seconds.
- ``timm:<name>`` (when timm is installed): timm's pretrained weights from the Hugging Face cache
  or hub, or ``weights=<path>``; see :mod:`clrp.models.timm_zoo`.
- fine-tuned models: ``load("finetuned", architecture="resnet50", weights=path, class_names=path)``
  (or :func:`load_finetuned`): any of the above architectures (:data:`ARCHITECTURES`) with the
  classifier sized to the class list, plus a user ``state_dict``.
- lab models listed in a TOML config file (``config=`` argument or the ``CLRP_MODELS_CONFIG``
  environment variable): an ``architecture`` or a ``factory = "package.module:function"`` entry
  point, plus weights and class names; see :func:`read_config` for the format.

Every weights file is read with ``torch.load(path, map_location="cpu", weights_only=True)`` (or
``safetensors``): pickles that need anything but tensors and plain containers (e.g. a
``__reduce__`` payload) are refused with :class:`UnsafeWeights` and never executed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ClrpError, InvalidTarget, ModelLoadError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None
from . import download
from . import timm_zoo
from . import torchvision_zoo as _tvz
from ._errors import CorruptWeights, UnsafeWeights, WeightsNotFound
from .architectures import (ARCHITECTURES, build_architecture, build_from_factory, classifier_outputs,
                            describe_supported, find_classifier, parse_factory, replace_classifier)
from .preprocessing import Preprocessing
from .weights import apply_state_dict as _apply_state_dict
from .weights import load_state_dict

__all__ = [
    "LoadedModel",
    "ModelInfo",
    "Preprocessing",
    "WeightsNotFound",
    "UnsafeWeights",
    "CorruptWeights",
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
    "find_classifier",
    "replace_classifier",
    "torchvision_models",
]

CONFIG_ENV = "CLRP_MODELS_CONFIG"


def __getattr__(name: str):
    if name == "IMAGENET_MODELS":  # every torchvision classification model (lazy: torchvision imports slowly)
        return _tvz.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def torchvision_models() -> tuple[str, ...]:
    """Every torchvision classification model name, as ``load`` accepts them."""
    return _tvz.names()


# --------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model ready to explain: ``model`` (eval mode; loaded on the CPU, ``clrp.devices.place``
    moves it), its ``class_names`` and the ``preprocessing`` its inputs need."""

    model: nn.Module
    class_names: list[str]
    preprocessing: Preprocessing
    name: str
    description: str = ""
    architecture: str = ""
    multilabel: bool = False
    weights_path: Path | None = None
    meta: dict = field(default_factory=dict)
    #: What the model was trained on, in words: inputs far from it get confident, meaningless scores.
    domain: str = ""
    #: The device this model asks for (the lab TOML's ``device``; None: the policy's default), see
    #: ``clrp.devices``. Where it is now: ``clrp.devices.device_of(loaded)``.
    device: str | None = None

    def on_model_device(self, inputs, dtype: bool = True):
        """Inputs on the model's device (the dashboard prepares them on the CPU) and, with ``dtype``,
        in its dtype (explanations take float32 inputs for a half-precision model: clrp.precision)."""
        if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
            p = next(iter((*self.model.parameters(), *self.model.buffers())), None)
            if p is not None and (inputs.device != p.device or (dtype and inputs.dtype != p.dtype)):
                return inputs.to(p.device, p.dtype if dtype else inputs.dtype)
        return inputs

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_index(self, cls) -> int:
        """A class given by index or by name (case and punctuation ignored; any of an ImageNet
        name's comma-separated synonyms) -> its index; ``InvalidTarget`` otherwise."""
        from ..datasets.classmap import normalize_name

        names = list(self.class_names)
        if isinstance(cls, str):
            try:
                cls = int(cls)
            except ValueError:
                pass
        if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
            if 0 <= int(cls) < len(names):
                return int(cls)
            raise InvalidTarget(f"class {cls} is not in model {self.name!r}: it has classes 0..{len(names) - 1}")
        key = normalize_name(str(cls))
        for match in (lambda n: normalize_name(n) == key,
                      lambda n: key in [normalize_name(part) for part in n.split(",")]):
            hits = [i for i, n in enumerate(names) if match(n)]
            if hits:
                return hits[0]
        raise InvalidTarget(f"no class named {cls!r} in model {self.name!r} (e.g. {', '.join(names[:5])}, ...)")

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

    def explain(self, inputs: torch.Tensor, targets, method: str = "lrp", rules: str = "paper",
                **options) -> torch.Tensor:
        """:func:`clrp.explain` on this model, with the zB box of its preprocessing by default."""
        from ..devices import explain_batched
        from ..methods import explain

        opts = self.preprocessing.method_options(options)
        # batched to the device's memory; out of memory: half the batch, then a ClrpError
        return explain_batched(lambda x, t: explain(self.model, x, t, method, rules=rules, **opts),
                               self.on_model_device(inputs, False), targets)

    def explain_neuron(self, inputs: torch.Tensor, layer: str, channel: int, contrast=None,
                       rules: str = "paper", **options) -> torch.Tensor:
        """:func:`clrp.explain_neuron` on this model, with its zB box by default."""
        from ..devices import without_oom_crash
        from ..methods import explain_neuron

        x = self.on_model_device(inputs, False)
        return without_oom_crash(lambda: explain_neuron(self.model, x, layer, channel, contrast=contrast, rules=rules,
                                                        **self.preprocessing.method_options(options)),
                                 getattr(x, "device", "cpu"))

    def layer_relevance(self, inputs: torch.Tensor, targets, layer: str, method: str = "lrp",
                        rules: str = "paper", **options) -> torch.Tensor:
        """:func:`clrp.layer_relevance` on this model (channel relevances of ``layer``)."""
        from ..devices import without_oom_crash
        from ..methods import layer_relevance

        x = self.on_model_device(inputs, False)
        return without_oom_crash(lambda: layer_relevance(self.model, x, targets, layer, method, rules=rules,
                                                         **self.preprocessing.method_options(options)),
                                 getattr(x, "device", "cpu"))

    def feature_layers(self) -> list[str]:
        """Hidden layers whose channels can be explained, in forward order (graph names)."""
        from ..engine import feature_layers

        return feature_layers(self.model, self.on_model_device(self.preprocessing.example_input()))

    def default_feature_layer(self) -> str:
        """The last feature map every path goes through (Grad-CAM's, feature ablation's and the
        neuron page's default layer)."""
        from ..engine import last_feature_layer

        return last_feature_layer(self.model, self.on_model_device(self.preprocessing.example_input()))

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, C]``."""
        return self.model(self.on_model_device(inputs))

    @torch.no_grad()
    def top_classes(self, inputs: torch.Tensor, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` highest-scoring classes of the first sample: ``(index, name, score)``, score =
        sigmoid probability for multi-label models, softmax otherwise."""
        logits = self.model(self.on_model_device(inputs[:1]))[0].float()
        p = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, 0)
        v, i = p.topk(min(k, p.numel()))
        return [(int(j), self.class_names[int(j)], float(s)) for s, j in zip(v, i)]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str  # "bundled" | "lab" | "torchvision" | "timm"
    description: str
    available: bool  # ready to load now (weights on disk)
    reason: str | None = None  # why not available (and whether it can be downloaded)
    weights_path: str | None = None
    downloadable: bool = False  # not on disk, but load() will download it (network permitting)
    source: str | None = None  # where a download would come from


# --------------------------------------------------------------------------------------------
# torchvision


def imagenet_weights_path(name: str) -> Path:
    """Where the torch hub cache keeps torchvision's ImageNet weights of ``name`` (torchvision's
    own cache file: ``torch.hub.get_dir()/checkpoints/<file name of the weights URL>``)."""
    return download.cached_file(_weights_url(_tvz.weights_for(name)))


def _weights_url(w) -> str:
    """The URL of a torchvision weights enum member (one place, so tests can point it elsewhere)."""
    return w.url


def _imagenet_preprocessing(name: str) -> Preprocessing:
    return _tvz.preprocessing(name)


# --------------------------------------------------------------------------------------------
# Class names


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

IMAGENET_DOMAIN = ("ImageNet-1k: photographs of 1000 object classes (animals, objects, scenes), one main object "
                   "per photo")


def _shipped_files(name: str) -> tuple[Path, Path, str]:
    """(weights, metadata, training script) of a model that ships with clrp."""
    if name == "bundled-hard":
        from . import bundled_hard

        return bundled_hard.WEIGHTS_FILE, bundled_hard.META_FILE, "scripts/train_hard_model.py"
    from . import bundled

    return bundled.WEIGHTS_FILE, bundled.META_FILE, "scripts/train_bundled_model.py"


def _load_bundled(name: str = "bundled") -> LoadedModel:
    weights_file, meta_file, script = _shipped_files(name)
    if not weights_file.is_file() or not meta_file.is_file():
        raise WeightsNotFound(
            f"the {name} model's files are missing: expected {weights_file} and {meta_file} "
            f"(reinstall clrp, or retrain them with `python {script}`)"
        )
    meta = json.loads(meta_file.read_text())
    model = build_architecture("scene_vgg", len(meta["class_names"]), meta["architecture"], initialize=False)
    _apply_state_dict(model, load_state_dict(weights_file), weights_file)
    objects = "2-5 overlapping flat shapes" if name == "bundled-hard" else "1-3 flat shapes"
    return LoadedModel(
        model=model.eval(),
        class_names=list(meta["class_names"]),
        preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
        name=name,
        description=meta.get("description", ""),
        architecture="scene_vgg",
        multilabel=True,
        weights_path=weights_file,
        meta=meta,
        domain=meta.get("domain") or (
            f"clrp's procedural scenes: {objects} ({', '.join(meta['class_names'])}) on textured "
            f"backgrounds, {meta.get('scene_size', 128)} px. Photographs and drawings are outside what it knows: "
            "its scores on them are confident and meaningless."),
    )


def _explicit_weights(weights, what: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFound(f"{what}: the file {path} given as weights= does not exist")
    return path


def _load_torchvision(name: str, weights=None, *, download_ok: bool | None = None,
                      progress: bool = True) -> LoadedModel:
    arch, _ = _tvz.split_name(name)
    w = _tvz.weights_for(name)
    url = _weights_url(w)
    fname = download.file_name(url)
    if weights is not None:
        path, origin = _explicit_weights(weights, f"ImageNet weights for {name}"), "weights= file"
    else:
        path = download.cached_file(url)
        origin = "torch hub cache"
        if not path.is_file():
            path = download.fetch(url, progress=progress, what=f"ImageNet weights for {name}",
                                  help_text=f", pass weights=<path to {fname}>", allow=download_ok)
            origin = "downloaded"
    sd, ignore = _tvz.fix_state_dict(arch, load_state_dict(path))
    model = build_architecture(arch, len(w.meta["categories"]), initialize=False, weights=w)
    _apply_state_dict(model, sd, path, ignore=ignore)
    note = " (attention layers: the gradient methods only, LRP refuses them)" if _tvz.is_transformer(arch) else ""
    return LoadedModel(
        model=model.eval(),
        class_names=list(w.meta["categories"]),
        preprocessing=_tvz.preprocessing(name),
        name=name,
        description=f"torchvision {arch}, ImageNet-1k weights {w.name} ({fname}){note}",
        architecture=arch,
        multilabel=False,
        weights_path=path,
        meta={"weights_url": url, "weights_tag": w.name, "weights_origin": origin},
        domain=IMAGENET_DOMAIN,
    )


def _load_timm(name: str, weights=None, *, download_ok: bool | None = None, progress: bool = True) -> LoadedModel:
    if not timm_zoo.installed():
        raise ModelLoadError(f"{name}: timm models need the 'timm' package (pip install timm)")
    import timm

    n = timm_zoo.strip(name)
    if not timm_zoo.is_model(n):
        raise ModelLoadError(f"unknown model {name!r}: timm has no model (or pretrained tag) {n!r}")
    cfg = timm_zoo.pretrained_cfg(n)
    if weights is not None:
        path, origin = _explicit_weights(weights, name), "weights= file"
    else:
        if cfg is None:
            raise WeightsNotFound(f"{name}: timm has no pretrained weights for it; pass weights=<a state_dict file>")
        cached = timm_zoo.cached_weights(cfg)
        path = cached or timm_zoo.fetch_weights(cfg, progress=progress, allow=download_ok)
        origin = "cache" if cached else "downloaded"
    sd = load_state_dict(path)
    try:
        if cfg is not None:
            model = timm.create_model(n, pretrained=True, pretrained_cfg_overlay={"state_dict": sd})
            for attr in ("pretrained_cfg", "default_cfg"):
                c = getattr(model, attr, None)
                if isinstance(c, dict):
                    c.pop("state_dict", None)
        else:
            model = timm.create_model(n, pretrained=False)
            _apply_state_dict(model, sd, path)
    except ModelLoadError:
        raise
    except (RuntimeError, KeyError, ValueError) as e:
        raise ModelLoadError(f"weights {path} do not fit timm {n}: {str(e).splitlines()[0][:500]}") from None
    num = classifier_outputs(model)
    return LoadedModel(
        model=model.eval(),
        class_names=timm_zoo.class_names(cfg, num),
        preprocessing=timm_zoo.preprocessing(cfg, model=model),
        name=name,
        description=f"timm {n}" + (f" ({cfg.get('hf_hub_id') or cfg.get('url')})" if cfg else ""),
        architecture=f"timm:{n}",
        multilabel=False,
        weights_path=Path(path),
        meta={"weights_origin": origin, "hf_hub_id": (cfg or {}).get("hf_hub_id")},
        domain=IMAGENET_DOMAIN if num == 1000 else "",
    )


def _library_preprocessing(arch: str) -> dict:
    """The preprocessing an architecture's pretrained weights use (a fine-tuned model usually
    keeps it): torchvision's default weights' transforms, timm's data config, ImageNet defaults."""
    low = arch.lower()
    if low == "scene_vgg":
        from .bundled import bundled_preprocessing

        return bundled_preprocessing().to_dict()
    try:
        if low in _tvz.names():
            return _tvz.preprocessing(low).to_dict()
        if low.startswith(timm_zoo.PREFIX) and timm_zoo.installed():
            cfg = timm_zoo.pretrained_cfg(low)
            if cfg is not None:
                return timm_zoo.preprocessing(cfg).to_dict()
    except ClrpError:
        pass
    return Preprocessing().to_dict()  # ImageNet defaults: resize 256, crop 224


def _make_preprocessing(architecture: str, preprocessing: Preprocessing | dict | None = None, **kw) -> Preprocessing:
    if isinstance(preprocessing, Preprocessing):
        base = preprocessing.to_dict()
    elif isinstance(preprocessing, dict):
        base = dict(preprocessing)
    else:
        base = _library_preprocessing(architecture)
    for k in ("mean", "std", "input_size", "resize", "interpolation"):
        if kw.get(k) is not None:
            base[k] = kw[k]
    try:
        return Preprocessing.from_dict(base)
    except (ValueError, TypeError) as e:
        raise ModelLoadError(f"invalid preprocessing {base}: {e}") from None


def _check_head(model: nn.Module, sd: dict, n: int, path) -> None:
    """A readable message when the weights' classifier has another number of outputs than names."""
    try:
        head = find_classifier(model)
    except ModelLoadError:
        return
    w = sd.get(f"{head}.weight")
    if isinstance(w, torch.Tensor) and w.ndim >= 2 and w.shape[0] != n:
        raise ModelLoadError(f"weights {path} have {w.shape[0]} outputs in {head}.weight but {n} class names "
                             "were given")


def load_finetuned(architecture: str | None, weights: str | os.PathLike, class_names: str | os.PathLike | Sequence[str],
                   *, name: str = "finetuned", description: str = "", multilabel: bool = False,
                   preprocessing: Preprocessing | dict | None = None, mean=None, std=None, input_size=None,
                   resize: int | None | str = "default", interpolation: str | None = None,
                   arch_config: dict | None = None, factory: str | None = None,
                   factory_folder: str | os.PathLike | None = None) -> LoadedModel:
    """An architecture whose classifier is sized to ``class_names``, with the user's state_dict.

    ``architecture``: any torchvision classification model, ``timm:<name>`` or ``scene_vgg``
    (:data:`ARCHITECTURES`); or ``factory="package.module:function"`` instead (see
    :func:`clrp.models.architectures.build_from_factory`). ``arch_config``: keyword arguments for
    the builder. Preprocessing defaults to the architecture's pretrained weights' (torchvision's
    transforms, timm's data config; ImageNet 256/224 for a factory); ``resize=None`` resizes the
    whole image to ``input_size`` (no crop)."""
    if (architecture is None) == (factory is None):
        raise ModelLoadError("a fine-tuned model needs exactly one of architecture= and factory=")
    names = read_class_names(class_names)
    path = Path(weights).expanduser()
    sd = load_state_dict(path)
    n = len(names)
    if factory is not None:
        arch = f"factory:{factory}"
        model = build_from_factory(factory, n, arch_config, folder=factory_folder)
        ignore: tuple[str, ...] = ()
    else:
        arch = str(architecture).strip().lower()
        if arch not in ARCHITECTURES:
            raise ModelLoadError(f"unknown architecture {architecture!r}; supported: {describe_supported()}")
        ignore = ()
        if arch in _tvz.names():
            sd, ignore = _tvz.fix_state_dict(arch, sd)
        model = build_architecture(arch, n, arch_config, initialize=False)
    _check_head(model, sd, n, path)
    _apply_state_dict(model, sd, path, ignore=ignore)
    kw: dict = {"mean": mean, "std": std, "input_size": input_size, "interpolation": interpolation}
    pre = _make_preprocessing(arch if factory is None else "factory", preprocessing, **kw)
    if resize != "default":
        pre = Preprocessing(pre.mean, pre.std, pre.input_size, None if resize is None else int(resize), pre.interpolation)
    return LoadedModel(
        model=model.eval(),
        class_names=names,
        preprocessing=pre,
        name=name,
        description=description or f"{arch} fine-tuned on {n} classes ({path.name})",
        architecture=arch,
        multilabel=multilabel,
        weights_path=path,
    )


# --------------------------------------------------------------------------------------------
# Lab config


_LAB_KEYS = {"name", "architecture", "factory", "weights", "class_names", "mean", "std", "input_size", "resize",
             "interpolation", "description", "multilabel", "arch_config", "device"}


def _config_path(config: str | os.PathLike | None) -> Path | None:
    if config is not None:
        return Path(config).expanduser()
    env = os.environ.get(CONFIG_ENV)
    return Path(env).expanduser() if env else None


def _reserved(name: str) -> bool:
    return (name in ("bundled", "bundled-hard", "finetuned") or name.startswith(timm_zoo.PREFIX)
            or _tvz.split_name(name)[0] in _tvz.names())


def read_config(config: str | os.PathLike | None = None) -> dict[str, dict]:
    """Lab models from a TOML file (``config`` or ``$CLRP_MODELS_CONFIG``; none -> ``{}``).

    Format (relative paths are relative to the config file)::

        [[models]]
        name = "voc-resnet50"
        architecture = "resnet50"         # any torchvision classification model, timm:<name>, scene_vgg
        weights = "voc_resnet50.pt"       # a state_dict: torch.save(model.state_dict()), or .safetensors
        class_names = "voc_classes.txt"   # one per line, or a JSON list
        mean = [0.485, 0.456, 0.406]      # optional; default: the architecture's pretrained weights'
        std = [0.229, 0.224, 0.225]
        input_size = 224                  # or [height, width]
        resize = 256                      # shorter side before the centre crop; false = resize whole image
        interpolation = "bilinear"        # or "bicubic", "nearest"
        description = "ResNet-50 fine-tuned on VOC07, multi-label"
        multilabel = true
        arch_config = { image_size = 384 }  # optional keyword arguments for the builder

        [[models]]
        name = "our-net"
        factory = "labnets.models:our_net"  # instead of architecture: an entry point returning an nn.Module
        weights = "our_net.pt"
        class_names = "classes.txt"

    ``factory`` is imported (an installed package, a module on ``PYTHONPATH``, or a single
    ``<module>.py`` next to this file) and called with ``arch_config`` as keyword arguments, plus
    ``num_classes=len(class_names)`` when it accepts ``num_classes`` (otherwise a classifier of
    another size is replaced); then ``weights`` is loaded into it (strict). Names of built-in models
    (``bundled``, torchvision names, ``timm:...``) are reserved. Reading the file imports nothing
    and builds no model.
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
        for req in ("name", "weights", "class_names"):
            if req not in e:
                raise ModelLoadError(f"models config {p}: entry {e.get('name', i)!r} lacks {req!r}")
        name = str(e["name"])
        if ("architecture" in e) == ("factory" in e):
            raise ModelLoadError(f"models config {p}: entry {name!r} needs exactly one of 'architecture' "
                                 "and 'factory'")
        if _reserved(name):
            raise ModelLoadError(f"models config {p}: name {name!r} is reserved for a built-in model")
        if name in out:
            raise ModelLoadError(f"models config {p}: duplicate model name {name!r}")
        if "architecture" in e and str(e["architecture"]).strip().lower() not in ARCHITECTURES:
            raise ModelLoadError(f"models config {p}: {name!r} has unknown architecture {e['architecture']!r}; "
                                 f"supported: {describe_supported()}")
        if "factory" in e:
            try:
                parse_factory(e["factory"])
            except ModelLoadError as err:
                raise ModelLoadError(f"models config {p}: {name!r}: {err}") from None
        if "arch_config" in e and not isinstance(e["arch_config"], dict):
            raise ModelLoadError(f"models config {p}: {name!r}: arch_config must be a table")
        if "device" in e and not isinstance(e["device"], str):
            raise ModelLoadError(f"models config {p}: {name!r}: device must be a string (auto, cpu, cuda, cuda:N)")
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
    loaded = load_finetuned(
        entry.get("architecture"), entry["weights"], entry["class_names"], name=entry["name"],
        description=entry.get("description", ""), multilabel=bool(entry.get("multilabel", False)),
        mean=entry.get("mean"), std=entry.get("std"), input_size=entry.get("input_size"),
        resize=entry["resize"] if "resize" in entry else "default", interpolation=entry.get("interpolation"),
        arch_config=entry.get("arch_config"), factory=entry.get("factory"),
        factory_folder=entry["_config"].parent,
    )
    loaded.device = entry.get("device")  # where clrp.devices.place puts it (the model stays on the CPU here)
    return loaded


# --------------------------------------------------------------------------------------------

_BUNDLED_DESCRIPTION = "VGG-style CNN trained on clrp's procedural shape scenes (ships with clrp; no download)"
_BUNDLED_HARD_DESCRIPTION = ("deeper VGG-pattern CNN (8 convs) trained on clrp's hard scene preset "
                             "(ships with clrp; no download)")


def load(name: str = "bundled", *, weights: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
         download: bool | None = None, progress: bool = True, **kw) -> LoadedModel:
    """Load a zoo entry (see the module docstring).

    - ``load()`` / ``load("bundled")``
    - ``load("resnet50")``: torchvision's default ImageNet weights, from the hub cache or downloaded
      there (``download=False`` forbids the download for this call; ``$CLRP_OFFLINE=1`` always);
      ``load("resnet50.IMAGENET1K_V1")`` other weights; ``load("resnet50", weights="resnet50-11ad3fa6.pth")``
    - ``load("timm:convnext_tiny.in12k_ft_in1k")`` (timm installed), ``weights=`` accepted too
    - ``load("finetuned", architecture="resnet50", weights=..., class_names=..., **preprocessing)``
      (any name works when ``architecture=`` or ``factory=`` is given)
    - ``load("<lab model>", config="lab.toml")`` or with ``$CLRP_MODELS_CONFIG`` set.
    """
    if "architecture" in kw or "factory" in kw:
        if weights is None or "class_names" not in kw:
            raise ModelLoadError("a fine-tuned model needs architecture= (or factory=), weights= and class_names=")
        arch = kw.pop("architecture", None)
        names = kw.pop("class_names")
        return load_finetuned(arch, weights, names, name=name, **kw)
    if kw:
        raise ModelLoadError(f"unexpected options for {name!r}: {sorted(kw)}")
    if name in ("bundled", "bundled-hard"):
        if weights is not None:
            raise ModelLoadError(f"the {name} model takes no weights=; use load('finetuned', architecture='scene_vgg', ...)")
        return _load_bundled(name)
    if name.startswith(timm_zoo.PREFIX):
        return _load_timm(name, weights, download_ok=download, progress=progress)
    if _tvz.split_name(name)[0] in _tvz.names():
        return _load_torchvision(name, weights, download_ok=download, progress=progress)
    lab = read_config(config)
    if name in lab:
        return _load_lab(lab[name])
    known = ["bundled", "bundled-hard", *lab]
    raise ModelLoadError(f"unknown model {name!r}; available: {', '.join(known)}, any torchvision classification "
                         f"model (e.g. resnet50), timm:<name> (see `python -m clrp models`), or pass architecture=, "
                         "weights=, class_names= for a fine-tuned model")


def _size(mb: float | None) -> str:
    if not mb:
        return ""
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def _torchvision_info(name: str) -> ModelInfo:
    arch, _ = _tvz.split_name(name)
    w = _tvz.weights_for(name)
    url = _weights_url(w)
    p = download.cached_file(url)
    size = _size(_tvz.file_size_mb(name))
    note = "; attention layers: gradient methods only" if _tvz.is_transformer(arch) else ""
    desc = f"torchvision {arch}, ImageNet-1k weights {w.name}" + (f" ({size})" if size else "") + note
    if p.is_file():
        return ModelInfo(name, "torchvision", desc, True, None, str(p), False, url)
    missing = f"weights {p.name} not in the torch hub cache {p.parent}"
    if not download.downloads_enabled():
        return ModelInfo(name, "torchvision", desc, False,
                         f"{missing}; downloads are off (${download.OFFLINE_ENV}=1): put the file there", str(p),
                         False, url)
    failed = download.recent_failure(url)
    if failed:
        return ModelInfo(name, "torchvision", desc, False,
                         f"{missing}; the last download failed ({failed}): offline? put the file there", str(p),
                         False, url)
    src = download.source_url(url)
    return ModelInfo(name, "torchvision", desc, False,
                     f"{missing}; downloadable ({size or 'size unknown'}) from {src} on first use", str(p), True, url)


def _timm_info(name: str) -> ModelInfo:
    if not timm_zoo.installed():
        return ModelInfo(name, "timm", "timm model", False, "the 'timm' package is not installed (pip install timm)")
    if not timm_zoo.is_model(name):
        return ModelInfo(name, "timm", "timm model", False, f"timm has no model (or pretrained tag) {timm_zoo.strip(name)!r}")
    cfg = timm_zoo.pretrained_cfg(name)
    if cfg is None:
        return ModelInfo(name, "timm", f"timm {timm_zoo.strip(name)}", False,
                         "timm has no pretrained weights for it (load it with weights=)")
    desc = f"timm {cfg['name']} ({cfg.get('num_classes')} classes)"
    p = timm_zoo.cached_weights(cfg)
    if p is not None:
        return ModelInfo(name, "timm", desc, True, None, str(p), False, timm_zoo.weights_source(cfg))
    ok, reason = timm_zoo.download_state(cfg)
    return ModelInfo(name, "timm", desc, False, reason, None, ok, timm_zoo.weights_source(cfg))


def available_models(config: str | os.PathLike | None = None, *, timm: Sequence[str] | None = None) -> list[ModelInfo]:
    """Every zoo entry with whether its weights are on disk, whether it can be downloaded, and why
    not: the bundled model, the lab models, every torchvision classification model (plus other
    weights tags already in the hub cache), then timm models (``timm`` names, ``$CLRP_TIMM_MODELS``
    and those in the Hugging Face cache). Fast: no network, no model is built. A broken config
    file is reported as one unavailable entry named ``<config>``."""
    from . import bundled

    out: list[ModelInfo] = []
    ok = bundled.WEIGHTS_FILE.is_file() and bundled.META_FILE.is_file()
    out.append(ModelInfo("bundled", "bundled", _BUNDLED_DESCRIPTION, ok,
                         None if ok else f"missing {bundled.WEIGHTS_FILE} (retrain with scripts/train_bundled_model.py)",
                         str(bundled.WEIGHTS_FILE)))
    hw, hm, hs = _shipped_files("bundled-hard")
    ok = hw.is_file() and hm.is_file()
    out.append(ModelInfo("bundled-hard", "bundled", _BUNDLED_HARD_DESCRIPTION, ok,
                         None if ok else f"missing {hw} (retrain with {hs})", str(hw)))
    try:
        lab = read_config(config)
    except ModelLoadError as e:
        out.append(ModelInfo("<config>", "lab", "models config file", False, str(e)))
        lab = {}
    for n, e in lab.items():
        reasons = []
        if not Path(e["weights"]).is_file():
            reasons.append(f"weights file {e['weights']} not found")
        if not Path(e["class_names"]).is_file():
            reasons.append(f"class names file {e['class_names']} not found")
        what = e.get("architecture") or f"factory {e.get('factory')}"
        out.append(ModelInfo(n, "lab", e.get("description") or f"{what} (lab model)", not reasons,
                             "; ".join(reasons) or None, str(e["weights"])))
    for n in _tvz.names():
        out.append(_torchvision_info(n))
        default = _tvz.weights_for(n).name
        for tag in _tvz.tags(n):  # other weights of the same model, when already in the cache
            if tag != default and download.cached_file(_weights_url(_tvz.weights_for(f"{n}.{tag}"))).is_file():
                out.append(_torchvision_info(f"{n}.{tag}"))
    names = [timm_zoo.PREFIX + timm_zoo.strip(t) for t in (timm or [])] + timm_zoo.listed_names()
    seen = set()
    for n in names:
        if n not in seen:
            seen.add(n)
            out.append(_timm_info(n))
    return out
