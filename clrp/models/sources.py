"""The registry of model sources (like timm's model registry): every name ``clrp.models.load``
takes, every entry of ``available_models`` (``python -m clrp models``, the dashboard's picker)
comes from one registered :class:`~clrp.models.source_base.ModelSource`.

Built in: ``bundled`` (ships with clrp), ``lab`` (the models TOML), ``torchvision``, ``timm``
(``timm:<name>``) and ``file`` (``architecture=``/``factory=`` with a weights file). A lab adds
its own with :func:`register_source`, or for every program at once (the CLI, the dashboard and its
workers) with an entry point in the group ``clrp.model_sources`` naming a source class or object::

    [project.entry-points."clrp.model_sources"]
    mylab = "mylab.zoo:MyLabSource"     # a ModelSource with prefix "mylab:"

A name goes to the first source whose prefix it has, else to the first source that claims it
(in registration order: bundled, torchvision, lab, then plug-ins -- the lab TOML, which is a
file read, after the cheap checks).
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Sequence

from ._errors import ModelLoadError
from .loaded import LoadedModel, ModelInfo
from .source_base import ModelSource
from .source_bundled import BundledSource
from .source_file import FileSource
from .source_lab import LabSource
from .source_lab import read_config as _read_lab_config
from .source_timm import TimmSource
from .source_torchvision import TorchvisionSource

__all__ = ["ModelSource", "ENTRY_POINT_GROUP", "register_source", "unregister_source", "registered", "get_source",
           "source_for", "load", "available_models", "grouped", "read_config"]

ENTRY_POINT_GROUP = "clrp.model_sources"

_SOURCES: dict[str, ModelSource] = {}
_plugins: dict = {"seen_on": None, "errors": {}}  # sys.path when the entry points were last read; why some failed
_lock = threading.RLock()  # the dashboard lists and loads from several threads


def register_source(source: ModelSource, *, replace: bool = False) -> ModelSource:
    """Add ``source`` (an instance or a ``ModelSource`` subclass) to the registry; returns it.
    A kind or prefix already taken is refused unless ``replace`` (then the old source of that kind
    goes)."""
    if isinstance(source, type):
        source = source()
    if not isinstance(source, ModelSource) or not source.kind:
        raise ModelLoadError(f"a model source must be a clrp.models.ModelSource with a kind, not {source!r}")
    with _lock:
        old = _SOURCES.get(source.kind)
        if old is not None and not replace:
            raise ModelLoadError(f"a model source of kind {source.kind!r} is already registered ({type(old).__name__})")
        for other in _SOURCES.values():
            if other.kind != source.kind and source.prefix and other.prefix == source.prefix:
                raise ModelLoadError(f"the prefix {source.prefix!r} is already the model source {other.kind!r}'s")
        _SOURCES[source.kind] = source
    return source


def unregister_source(kind: str) -> None:
    """Remove the source of ``kind`` (a plug-in's; tests)."""
    with _lock:
        _SOURCES.pop(kind, None)


def _load_plugins() -> None:
    """Register the sources of the ``clrp.model_sources`` entry points (again when ``sys.path``
    changed: a folder added at run time may bring new ones). A broken one is listed, not raised."""
    with _lock:
        if _plugins["seen_on"] == tuple(sys.path):
            return
        _plugins["seen_on"] = tuple(sys.path)
        from importlib.metadata import entry_points

        errors = _plugins["errors"] = {}  # those still broken are found again below
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            key = f"{ep.name} = {ep.value}"
            if any(getattr(s, "_entry_point", None) == key for s in _SOURCES.values()):
                continue
            try:
                source = ep.load()
                source = source() if isinstance(source, type) else source
                source._entry_point = key
                register_source(source)
            except Exception as e:  # a lab's code: its failure must not take the listing down
                errors[key] = f"{type(e).__name__}: {e}"


def registered() -> list[ModelSource]:
    """The registered sources in listing order (``order``, then registration)."""
    _load_plugins()
    with _lock:
        return sorted(_SOURCES.values(), key=lambda s: s.order)  # stable: registration order within an order


def get_source(kind: str) -> ModelSource:
    _load_plugins()
    try:
        return _SOURCES[kind]
    except KeyError:
        raise ModelLoadError(f"no model source {kind!r}; sources: {', '.join(_SOURCES)}") from None


def source_for(name: str, config: str | os.PathLike | None = None) -> ModelSource | None:
    """The source of ``name``: the first with its prefix, else the first that claims it."""
    _load_plugins()
    with _lock:
        in_order = list(_SOURCES.values())
    for s in in_order:
        if s.prefix and str(name).startswith(s.prefix):
            return s
    for s in in_order:
        if not s.prefix and s.claims(name, config):
            return s
    return None


def _reserved(name: str) -> bool:
    """Whether ``name`` is another source's than the lab TOML's."""
    return any(name in s.reserved or s.claims(name) for s in registered() if s.kind != "lab")


def read_config(config: str | os.PathLike | None = None) -> dict[str, dict]:
    """Lab models from a TOML file (``config`` or ``$CLRP_MODELS_CONFIG``; none -> ``{}``); the
    format: :func:`clrp.models.source_lab.read_config`. Names of other sources are reserved."""
    return _read_lab_config(config, reserved=_reserved)


def load(name: str = "bundled", *, weights: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
         download: bool | None = None, progress: bool = True, **kw) -> LoadedModel:
    """Load a model by name from its source (see :mod:`clrp.models`).

    - ``load()`` / ``load("bundled")``
    - ``load("resnet50")``: torchvision's default ImageNet weights, from the hub cache or downloaded
      there (``download=False`` forbids the download for this call; ``$CLRP_OFFLINE=1`` always);
      ``load("resnet50.IMAGENET1K_V1")`` other weights; ``load("resnet50", weights="resnet50-11ad3fa6.pth")``
    - ``load("timm:convnext_tiny.in12k_ft_in1k")`` (timm installed), ``weights=`` accepted too
    - ``load("finetuned", architecture="resnet50", weights=..., class_names=..., **preprocessing)``
      (any name works when ``architecture=`` or ``factory=`` is given)
    - ``load("<lab model>", config="lab.toml")`` or with ``$CLRP_MODELS_CONFIG`` set
    - ``load("<prefix>:<name>")`` of a registered plug-in source.
    """
    by_option = [s for s in registered() if any(k in kw for k in s.options)]
    if by_option:
        source = by_option[0]
    else:
        if kw:
            raise ModelLoadError(f"unexpected options for {name!r}: {sorted(kw)}")
        source = source_for(name, config)
        if source is None:
            hints = [h for h in (s.hint(config) for s in registered()) if h]
            raise ModelLoadError(f"unknown model {name!r}; available: {', '.join(hints)}")
    return source.load(name, weights=weights, config=config, download=download, progress=progress, **kw)


def available_models(config: str | os.PathLike | None = None, *, timm: Sequence[str] | None = None,
                     **names: Sequence[str]) -> list[ModelInfo]:
    """Every entry of every source with whether its weights are on disk, whether it can be
    downloaded, and why not: the bundled models, the lab models, plug-ins, every torchvision
    classification model (plus other weights tags already in the hub cache), then timm models
    (``timm`` names, ``$CLRP_TIMM_MODELS`` and those in the Hugging Face cache). ``names``: more
    names to list, per source kind. Fast: no network, no model is built. A broken config file is
    one unavailable entry named ``<config>``; a broken plug-in one named ``<kind>``."""
    names = {"timm": timm or (), **names}
    out: list[ModelInfo] = []
    for s in registered():
        try:
            out.extend(s.available(config, names.get(s.kind, ())))
        except ModelLoadError as e:
            out.append(ModelInfo(f"<{s.kind}>", s.kind, s.heading(), False, str(e)))
    for key, why in _plugins["errors"].items():
        out.append(ModelInfo(f"<{key.split(' = ')[0]}>", "plug-in", f"model source {key}", False,
                             f"could not be loaded: {why}"))
    return out


def grouped(infos: Sequence[ModelInfo]) -> list[tuple[str, list[tuple[ModelInfo, str | None]]]]:
    """``infos`` under their sources' headings (in order of first appearance), each with the reason
    to print under it when it cannot be loaded now (None: available, or the heading says it)."""
    groups: dict[str, list] = {}
    headings: dict[str, str] = {}
    for i in infos:
        s = _SOURCES.get(i.kind)
        if i.kind not in headings:
            headings[i.kind] = s.heading() if s is not None else f"{i.kind} models"
        note = None if i.available else (s.row_reason(i) if s is not None else i.reason)
        groups.setdefault(headings[i.kind], []).append((i, note))
    return list(groups.items())


# The built-in sources, in lookup order (a name's source: see the module docstring).
register_source(BundledSource())
register_source(TorchvisionSource())
register_source(TimmSource())
register_source(LabSource(reserved=_reserved))
register_source(FileSource())
