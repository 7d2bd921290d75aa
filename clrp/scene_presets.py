"""Kept for one release: the scene presets, specs and VOC cache are :mod:`clrp.scenes.presets`."""
from .scenes.presets import (DEFAULT_SEED, PRESET_MODEL, SceneSpec, dataset_dir, is_spec, parse_spec,  # noqa: F401
                             preset_module, render_arrays)
from .scenes.presets import PRESETS as _PRESETS
from .scenes.presets import scene_from_id as generate_scene  # noqa: F401

#: preset name -> (generator name, description), the former form (:data:`clrp.scenes.presets.PRESETS`
#: holds :class:`~clrp.scenes.presets.ScenePreset` records)
PRESETS: dict[str, tuple[str, str]] = {name: (p.generator, p.description) for name, p in _PRESETS.items()}
