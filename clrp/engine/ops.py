"""Graph operations: one registered class per kind of node, holding its forward and its backward.

``forward`` computes the node's value (by default: calls the traced function). ``backward`` maps
the relevance at the node's output to its inputs and returns ``[(input node, relevance), ...]``.
The conventions (method.md §7): conv/dense layers take the rule the preset assigns (BatchNorm
folded in); a residual add splits relevance by the summands' contributions (the preset's sum rule);
a multiplicative gate is a constant, all relevance goes to the signal; element-wise activations,
LayerNorm and GroupNorm pass relevance unchanged; average pools and means use the z rule, max
pools the winner-takes-all route of their gradient; reshapes, concatenations, slices, pads and
shuffles move relevance with the index. Adding a layer type is one registered class.

This module gathers the kinds (importing it registers them all); they live by meaning in
``ops_core`` (registry, base class, shared helpers), ``ops_activations``, ``ops_structure``
(index moves, sums, gates), ``ops_pools`` and ``ops_layers`` (conv/dense, normalisations).
"""
from __future__ import annotations

from .ops_core import (DECONVNET, GENERIC, GRADIENT, GUIDED, REGISTRY, Generic, Op, bind, first_ref, op_for,
                       provably_nonnegative, reduce_to, register, vjp)
from .ops_activations import Activation, _FilteredGrad
from .ops_structure import (_GATES, _THROUGH, Add, Cat, GetItem, Identity, Mul, Permute, Reindex, Reshape, Stack,
                            Transpose, is_gate, _numel)
from .ops_pools import AvgPool, MaxPool2d, MaxPoolByGradient
from .ops_layers import AffineView, BatchNorm, LayerView, Linear, Norm, _batch_norm

__all__ = ["REGISTRY", "GENERIC", "GRADIENT", "GUIDED", "DECONVNET", "register", "op_for", "bind", "reduce_to", "vjp",
           "first_ref", "provably_nonnegative", "Op", "Generic", "Activation", "Identity", "Reshape", "Permute",
           "Transpose", "Cat", "Stack", "Reindex", "GetItem", "Add", "Mul", "MaxPool2d", "MaxPoolByGradient",
           "AvgPool", "Norm", "BatchNorm", "Linear", "LayerView", "AffineView"]
