"""clrp: Layer-wise Relevance Propagation and Contrastive LRP for PyTorch CNNs."""
__version__ = "0.1.0"
