"""Errors of the model zoo (re-exported by :mod:`clrp.models`)."""
from ..errors import ModelLoadError

__all__ = ["ModelLoadError", "WeightsNotFound", "UnsafeWeights", "CorruptWeights"]


class WeightsNotFound(ModelLoadError):
    """The weights of a model are not available (not cached, no download possible). The message
    says which file to put where."""


class UnsafeWeights(ModelLoadError):
    """A weights file was refused because unpickling it would run code or build arbitrary objects."""


class CorruptWeights(ModelLoadError):
    """A downloaded weights file does not match the hash prefix in its name (nothing was kept)."""
