"""What a model source is: :class:`ModelSource`, the base every source of ``clrp.models.load``
names derives from (the built-in ones and a lab's plug-in, see :mod:`clrp.models.sources`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ._errors import WeightsNotFound
from .loaded import LoadedModel, ModelInfo

__all__ = ["ModelSource", "explicit_weights", "size_text"]


class ModelSource:
    """A source of models: the names it offers (``list``), whether each can be loaded now
    (``available``) and the loading itself (``load``).

    A plug-in sets ``kind`` and ``prefix`` (``"mylab:"``: every name starting with it is its own)
    and implements :meth:`list` and :meth:`load`; :meth:`available` then reports every listed name
    as available. Sources without a prefix say which names are theirs in :meth:`claims`.
    """

    #: Key of the source and ``ModelInfo.kind`` of its entries.
    kind: str = ""
    #: Heading of its entries in ``python -m clrp models`` (sources with one heading share it).
    title: str = ""
    #: One line on what it offers (the entries' description unless they have their own).
    description: str = ""
    #: Names starting with it are this source's ("timm:"); "" = :meth:`claims` decides.
    prefix: str = ""
    #: Whether ``load`` may download weights (the dashboard lists those not on disk yet last).
    downloads: bool = False
    #: Place in listings: bundled 0, lab 1, plug-ins 2 (default), torchvision 3, timm 4.
    order: float = 2
    #: Keyword options of ``clrp.models.load`` that select this source whatever the name
    #: (``architecture=`` for a model from files).
    options: tuple[str, ...] = ()
    #: Names that are this source's although :meth:`claims` does not take them (lab TOML
    #: entries may not use them).
    reserved: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind!r}" + (f" prefix={self.prefix!r}>" if self.prefix else ">")

    def claims(self, name: str, config: str | os.PathLike | None = None) -> bool:
        """Whether ``name`` is this source's (cheap: called for every load and lab TOML entry)."""
        return bool(self.prefix) and str(name).startswith(self.prefix)

    def list(self, config: str | os.PathLike | None = None, names: Sequence[str] = ()) -> list[str]:
        """The names it offers now, without network or building a model. ``names``: names a user
        asked to list too (a source with too many models to list them all lists those)."""
        raise NotImplementedError

    def available(self, config: str | os.PathLike | None = None, names: Sequence[str] = ()) -> list[ModelInfo]:
        """Every listed name with whether it can be loaded now (and why not)."""
        return [ModelInfo(n, self.kind, self.description, True) for n in self.list(config, names)]

    def load(self, name: str, *, weights: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
             download: bool | None = None, progress: bool = True, **options) -> LoadedModel:
        """The model ``name`` (on the CPU, eval mode). Errors: ``ModelLoadError`` subclasses."""
        raise NotImplementedError

    def hint(self, config: str | os.PathLike | None = None) -> str:
        """What it offers, for the message about an unknown name ("" = nothing to say)."""
        return f"{self.prefix}<name>" if self.prefix else ""

    def heading(self) -> str:
        """The heading of its entries in ``python -m clrp models``."""
        return self.title or f"{self.kind} models"

    def row_reason(self, info: ModelInfo) -> str | None:
        """The reason printed under an entry that cannot be loaded now (None: the heading says it)."""
        return info.reason


def explicit_weights(weights, what: str) -> Path:
    """A ``weights=`` file that must exist."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFound(f"{what}: the file {path} given as weights= does not exist")
    return path


def size_text(mb: float | None) -> str:
    if not mb:
        return ""
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"
