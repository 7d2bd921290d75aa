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

Each kind of entry is a model source (:mod:`clrp.models.sources`: one module per source,
``source_*.py``); a lab adds its own (``mylab:<name>``) with :func:`register_source` or an entry
point, and it is listed and loaded like the built-in ones.

Every weights file is read with ``torch.load(path, map_location="cpu", weights_only=True)`` (or
``safetensors``): pickles that need anything but tensors and plain containers (e.g. a
``__reduce__`` payload) are refused with :class:`UnsafeWeights` and never executed.
"""
from __future__ import annotations

from ..errors import ModelLoadError
from . import download  # noqa: F401  (clrp.models.download)
from . import timm_zoo  # noqa: F401
from . import torchvision_zoo as _tvz
from ._errors import CorruptWeights, UnsafeWeights, WeightsNotFound
from .architectures import (ARCHITECTURES, build_architecture, build_from_factory, classifier_outputs,  # noqa: F401
                            describe_supported, find_classifier, parse_factory, replace_classifier)
from .loaded import IMAGENET_DOMAIN, LoadedModel, ModelInfo  # noqa: F401
from .preprocessing import Preprocessing
from .source_base import ModelSource
from .source_file import load_finetuned, read_class_names
from .source_lab import CONFIG_ENV
from .source_torchvision import imagenet_weights_path
from .sources import available_models, load, read_config, register_source, unregister_source
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
    "ModelSource",
    "register_source",
    "unregister_source",
]


def __getattr__(name: str):
    if name == "IMAGENET_MODELS":  # every torchvision classification model (lazy: torchvision imports slowly)
        return _tvz.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def torchvision_models() -> tuple[str, ...]:
    """Every torchvision classification model name, as ``load`` accepts them."""
    return _tvz.names()
