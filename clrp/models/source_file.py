"""Models from files: an architecture (or a ``factory`` entry point) with its classifier sized
to a class list, plus a user ``state_dict`` -- ``load("finetuned", architecture="resnet50",
weights=path, class_names=path)`` or :func:`load_finetuned`. The lab TOML's entries
(:mod:`.source_lab`) load through :func:`load_finetuned` too."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from . import architectures
from . import torchvision_zoo as tvz
from ._errors import ModelLoadError
from .architectures import (ARCHITECTURES, build_from_factory, describe_supported, find_classifier,
                            pretrained_preprocessing)
from .loaded import LoadedModel
from .preprocessing import Preprocessing
from .source_base import ModelSource
from .weights import apply_state_dict, load_state_dict

__all__ = ["FileSource", "load_finetuned", "read_class_names"]


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



def _make_preprocessing(architecture: str, preprocessing: Preprocessing | dict | None = None, **kw) -> Preprocessing:
    if isinstance(preprocessing, Preprocessing):
        base = preprocessing.to_dict()
    elif isinstance(preprocessing, dict):
        base = dict(preprocessing)
    else:
        base = pretrained_preprocessing(architecture)
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
        if arch in tvz.names():
            sd, ignore = tvz.fix_state_dict(arch, sd)
        model = architectures.build_architecture(arch, n, arch_config, initialize=False)
    _check_head(model, sd, n, path)
    apply_state_dict(model, sd, path, ignore=ignore)
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




class FileSource(ModelSource):
    """Selected by ``architecture=`` or ``factory=``, whatever the name; lists nothing (the
    files are named per call)."""

    kind = "file"
    title = "models from files"
    description = "an architecture or factory with a user state_dict and class names"
    order = 9
    options = ("architecture", "factory")
    reserved = ("finetuned",)

    def list(self, config=None, names=()) -> list[str]:
        return []

    def hint(self, config=None) -> str:
        return "or pass architecture=, weights=, class_names= for a fine-tuned model"

    def load(self, name, *, weights=None, config=None, download=None, progress=True, **options) -> LoadedModel:
        if weights is None or "class_names" not in options:
            raise ModelLoadError("a fine-tuned model needs architecture= (or factory=), weights= and class_names=")
        arch = options.pop("architecture", None)
        names = options.pop("class_names")
        return load_finetuned(arch, weights, names, name=name, **options)
