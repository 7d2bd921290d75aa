"""Lab models listed in a TOML config file (``config=`` or ``$CLRP_MODELS_CONFIG``): an
``architecture`` or a ``factory`` entry point, plus weights and class names; see
:func:`read_config` for the format. They load through :func:`.source_file.load_finetuned`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ._errors import ModelLoadError
from .architectures import ARCHITECTURES, describe_supported, parse_factory
from .loaded import LoadedModel, ModelInfo
from .source_base import ModelSource
from .source_file import load_finetuned

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

__all__ = ["LabSource", "CONFIG_ENV", "read_config"]

CONFIG_ENV = "CLRP_MODELS_CONFIG"

_LAB_KEYS = {"name", "architecture", "factory", "weights", "class_names", "mean", "std", "input_size", "resize",
             "interpolation", "description", "multilabel", "arch_config", "device"}


def _config_path(config: str | os.PathLike | None) -> Path | None:
    if config is not None:
        return Path(config).expanduser()
    env = os.environ.get(CONFIG_ENV)
    return Path(env).expanduser() if env else None


def read_config(config: str | os.PathLike | None = None, *,
                reserved: Callable[[str], bool] = lambda name: False) -> dict[str, dict]:
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
    and builds no model. ``reserved``: whether a name belongs to another source
    (``clrp.models.read_config`` passes the registry's).
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
        if reserved(name):
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


def _load_entry(entry: dict) -> LoadedModel:
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



class LabSource(ModelSource):
    """``reserved(name)``: whether another source owns ``name`` (the registry's answer)."""

    kind = "lab"
    title = "bundled and lab models"
    description = "lab models of the models config file"
    order = 1

    def __init__(self, reserved: Callable[[str], bool] = lambda name: False):
        self._reserved = reserved

    def entries(self, config=None) -> dict[str, dict]:
        return read_config(config, reserved=self._reserved)

    def claims(self, name, config=None) -> bool:
        return name in self.entries(config)

    def list(self, config=None, names=()) -> list[str]:
        return list(self.entries(config))

    def hint(self, config=None) -> str:
        return ", ".join(self.entries(config))

    def available(self, config=None, names=()) -> list[ModelInfo]:
        """A broken config file is one unavailable entry named ``<config>``."""
        try:
            lab = self.entries(config)
        except ModelLoadError as e:
            return [ModelInfo("<config>", self.kind, "models config file", False, str(e))]
        out = []
        for n, e in lab.items():
            reasons = []
            if not Path(e["weights"]).is_file():
                reasons.append(f"weights file {e['weights']} not found")
            if not Path(e["class_names"]).is_file():
                reasons.append(f"class names file {e['class_names']} not found")
            what = e.get("architecture") or f"factory {e.get('factory')}"
            out.append(ModelInfo(n, self.kind, e.get("description") or f"{what} (lab model)", not reasons,
                                 "; ".join(reasons) or None, str(e["weights"])))
        return out

    def load(self, name, *, weights=None, config=None, download=None, progress=True, **options) -> LoadedModel:
        return _load_entry(self.entries(config)[name])
