"""clrp: Layer-wise Relevance Propagation and Contrastive LRP for PyTorch CNNs."""
from .errors import ClrpError
from .methods import METHODS, explain, explain_neuron, layer_relevance
from .rules import RULES, Composite, box_from_normalization

__version__ = "0.1.0"
__all__ = ["explain", "explain_neuron", "layer_relevance", "METHODS", "RULES", "Composite",
           "box_from_normalization", "ClrpError"]
