"""The models that ship with clrp: ``bundled`` (:mod:`.bundled`) and ``bundled-hard``
(:mod:`.bundled_hard`), weights in ``clrp/models/assets/``; no download."""
from __future__ import annotations

import json
from pathlib import Path

from . import architectures
from ._errors import ModelLoadError, WeightsNotFound
from .loaded import LoadedModel, ModelInfo
from .preprocessing import Preprocessing
from .source_base import ModelSource
from .weights import apply_state_dict, load_state_dict

__all__ = ["BundledSource", "NAMES", "shipped_files"]

#: name -> (description, objects per scene in words, training script)
_SHIPPED = {
    "bundled": ("VGG-style CNN trained on clrp's procedural shape scenes (ships with clrp; no download)",
                "1-3 flat shapes", "scripts/assets/train_bundled_model.py"),
    "bundled-hard": ("deeper VGG-pattern CNN (8 convs) trained on clrp's hard scene preset "
                     "(ships with clrp; no download)", "2-5 overlapping flat shapes", "scripts/assets/train_hard_model.py"),
}
NAMES = tuple(_SHIPPED)


def shipped_files(name: str) -> tuple[Path, Path, str]:
    """(weights, metadata, training script) of a model that ships with clrp."""
    if name == "bundled-hard":
        from . import bundled_hard as module
    else:
        from . import bundled as module
    return module.WEIGHTS_FILE, module.META_FILE, _SHIPPED[name][2]


class BundledSource(ModelSource):
    kind = "bundled"
    title = "bundled and lab models"
    description = "models that ship with clrp"
    order = 0

    def claims(self, name, config=None) -> bool:
        return name in _SHIPPED

    def list(self, config=None, names=()) -> list[str]:
        return list(NAMES)

    def available(self, config=None, names=()) -> list[ModelInfo]:
        out = []
        for n in NAMES:
            weights, meta, script = shipped_files(n)
            ok = weights.is_file() and meta.is_file()
            out.append(ModelInfo(n, self.kind, _SHIPPED[n][0], ok,
                                 None if ok else f"missing {weights} (retrain with {script})", str(weights)))
        return out

    def hint(self, config=None) -> str:
        return ", ".join(NAMES)

    def load(self, name, *, weights=None, config=None, download=None, progress=True, **options) -> LoadedModel:
        if weights is not None:
            raise ModelLoadError(f"the {name} model takes no weights=; use load('finetuned', architecture='scene_vgg', ...)")
        weights_file, meta_file, script = shipped_files(name)
        if not weights_file.is_file() or not meta_file.is_file():
            raise WeightsNotFound(
                f"the {name} model's files are missing: expected {weights_file} and {meta_file} "
                f"(reinstall clrp, or retrain them with `python {script}`)"
            )
        meta = json.loads(meta_file.read_text())
        model = architectures.build_architecture("scene_vgg", len(meta["class_names"]), meta["architecture"],
                                                 initialize=False)
        apply_state_dict(model, load_state_dict(weights_file), weights_file)
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
                f"clrp's procedural scenes: {_SHIPPED[name][1]} ({', '.join(meta['class_names'])}) on textured "
                f"backgrounds, {meta.get('scene_size', 128)} px. Photographs and drawings are outside what it knows: "
                "its scores on them are confident and meaningless."),
        )
