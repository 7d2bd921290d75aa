"""The propagation engine: one mechanism behind every method, on any traced CNN graph.

- :mod:`.trace` turns a model into a graph with ``torch.export`` (once per model and input size);
- :mod:`.graph` holds the nodes in forward order with the user's module names and the analyses
  (cut nodes, the last feature map) every method shares;
- :mod:`.ops` has one registered class per node kind with its forward and relevance backward;
  :mod:`.attention` adds the transformer's (products of activations, softmax, attention,
  LayerNorm as a linear map, position embeddings);
- :mod:`.plan` binds a graph to the model's current tensors and caches folded and
  rule-modified weights (never stale);
- :mod:`.propagate` runs the forward, the LRP walk and gradients.

Nothing is registered on the model and nothing of it is changed, so a model shared by many
threads or dashboard sessions stays untouched.
"""
from __future__ import annotations

import torch

from . import attention  # noqa: F401  (registers the transformer ops)
from .graph import Graph, Leaf, Node, Ref
from .ops import DECONVNET, GRADIENT, GUIDED, LayerView, Op, register
from .plan import ClrpWarning, Plan, forget, plan_for, warn_once
from .ops import first_ref
from .propagate import LRP, Forward, box_at as propagate_box, check_inputs, gradients, layer_step, propagate, run_forward

__all__ = ["Plan", "Graph", "Node", "Ref", "Leaf", "Op", "register", "Forward", "plan_for", "forget",
           "run_forward", "propagate", "layer_step", "gradients", "forward", "layer_names", "feature_layers",
           "last_feature_layer", "check_inputs", "LayerView", "ClrpWarning", "warn_once",
           "LRP", "GRADIENT", "GUIDED", "DECONVNET"]


def forward(model, inputs: torch.Tensor, *, ablate: dict | None = None, output=None) -> torch.Tensor:
    """Logits of the model (eval semantics), optionally multiplying named layers' values by masks.
    ``output`` selects the logits of a model returning a tuple or dict (as in ``clrp.explain``)."""
    plan = plan_for(model, inputs, output=output)
    return run_forward(plan, inputs, ablate=ablate, dedupe=False).logits


def layer_names(model, inputs: torch.Tensor | None = None, *, output=None) -> list[str]:
    """Every layer relevance can flow through, in forward order (the user's module names)."""
    return plan_for(model, inputs, output=output).graph.layer_names()


def feature_layers(model, inputs: torch.Tensor | None = None, *, output=None) -> list[str]:
    """Layers whose value is a feature map [C, h, w], a token sequence [tokens, dim] (the channel is
    the token) or a feature vector before the output layer, in forward order: the layers whose
    channels can be explained, ablated or conditioned on."""
    plan = plan_for(model, inputs, output=output)
    g = plan.graph
    end = plan.output_layer if plan.output_layer is not None else g.output
    return [g.preferred_name(n.index) for n in g.nodes[:end] if g.carries[n.index] and n.index not in plan.prefix and n.batch_first
            and n.shape is not None and len(n.shape) in (1, 2, 3)]


def last_feature_layer(model, inputs: torch.Tensor | None = None, *, output=None) -> str:
    """The last feature map every path goes through (Grad-CAM's and feature ablation's default)."""
    from ..errors import ClrpError

    plan = plan_for(model, inputs, output=output)
    i = plan.last_feature_map()
    if i is None:
        raise ClrpError(f"{type(model).__name__} has no spatial feature map that every path goes through; "
                        "name a layer")
    return plan.graph.preferred_name(i)
