"""clrp: Layer-wise Relevance Propagation and Contrastive LRP for PyTorch CNNs."""
import importlib

from .errors import ClrpError
from .methods import MAP_KINDS, METHOD_LABELS, METHODS, explain, explain_neuron, layer_relevance, map_kind
from .rules import RULES, Composite, box_from_normalization

__version__ = "0.2.0"
__all__ = ["explain", "explain_neuron", "layer_relevance", "METHODS", "METHOD_LABELS", "MAP_KINDS", "map_kind",
           "RULES", "Composite", "box_from_normalization", "ClrpError"]

_SUBMODULES = {"cli", "datasets", "engine", "errors", "evaluation", "imageio", "methods", "models", "rules",
               "scenes", "viz"}


def __getattr__(name):
    # `import clrp; clrp.models.load()` works without importing every submodule up front
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'clrp' has no attribute {name!r}")
