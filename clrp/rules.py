"""LRP rule presets, rule names and per-node rule assignment (the ``rules=`` argument).

A :class:`Composite` says which rule each node gets; :data:`RULES` holds the named presets and
:func:`resolve_composite` turns what a caller passes as ``rules=`` into one. The rules themselves
(one class per rule, with their weight modifiers and stabilisers) are in :mod:`clrp.rule_classes`
and are re-exported here, where they have always been importable from.
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .errors import ClrpError
from .rule_classes import (  # noqa: F401  (the rules, importable from here as before)
    ABSOLUTE, NEGATIVE, ONES, POSITIVE, SQUARE, ZBOX_FORWARD, ZBOX_TRANSPOSE, AbsSum, AlphaBeta, Epsilon, Flat,
    Gamma, GateConstant, Gradient, ProductRule, Relative, Rule, SumRule, Uniform, WeightModifier, WSquare, ZBox,
    ZPlus, ZSum, relative, stabilize, stabilizer_for)

__all__ = [
    "Rule", "ZPlus", "ZBox", "Epsilon", "Gamma", "AlphaBeta", "Flat", "WSquare", "Gradient",
    "SumRule", "ZSum", "AbsSum", "WeightModifier", "ProductRule", "Uniform", "GateConstant",
    "Composite", "RULES", "RULE_NAMES", "make_rule", "resolve_composite",
    "box_from_normalization", "IMAGENET_MEAN", "IMAGENET_STD", "REFERENCE_BOX", "Relative", "relative",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The reference CLRP code uses one scalar box for all channels: the extremes of ImageNet normalisation.
REFERENCE_BOX = (-2.1179, 2.64)


def box_from_normalization(mean, std):
    """zB bounds (low, high) per channel for inputs normalised as (x - mean) / std, x in [0, 1]."""
    mean = torch.as_tensor(mean, dtype=torch.float32)
    std = torch.as_tensor(std, dtype=torch.float32)
    return (0 - mean) / std, (1 - mean) / std


# ----------------------------------------------------------------------------------------------
# Rule names, presets and per-layer assignment

RULE_NAMES: dict[str, Any] = {
    "zplus": ZPlus,
    "z+": ZPlus,
    "zb": ZBox,
    "zbox": ZBox,
    "epsilon": Epsilon,
    "lrp0": lambda: Epsilon(0.0),
    "gamma": Gamma,
    "alpha2beta1": lambda: AlphaBeta(2.0, 1.0),
    "alpha1beta0": lambda: AlphaBeta(1.0, 0.0),
    "flat": Flat,
    "wsquare": WSquare,
    "gradient": Gradient,
    "z_sum": ZSum,
    "abs_sum": AbsSum,
    "uniform": Uniform,
    "gate_constant": GateConstant,
    "cp": GateConstant,
}


def make_rule(spec) -> Rule:
    """A Rule from a Rule instance or a rule name (see RULE_NAMES)."""
    if isinstance(spec, Rule):
        return spec
    if isinstance(spec, str) and spec.lower() in RULE_NAMES:
        return RULE_NAMES[spec.lower()]()
    raise ClrpError(f"unknown LRP rule {spec!r}; known rules: {', '.join(sorted(RULE_NAMES))}")


@dataclass
class Composite:
    """Which rule each node gets.

    ``first`` applies to the first conv/dense layers (those fed by the input without another
    conv/dense layer in between; None: same as the others), ``conv`` and ``linear`` to the rest,
    ``add`` to residual adds of two input-dependent values, ``norm`` to BatchNorms that cannot be
    folded into a neighbouring layer. ``overrides`` maps a node name (fnmatch pattern on any of
    its names, e.g. ``"classifier.*"`` or ``"layer*.add"``) or a module type to a rule and wins
    over everything else, first match first; an override applies only to nodes of a kind its
    rule can handle (a sum rule to adds, a layer rule to conv/dense/norm nodes).
    """

    description: str
    conv: Rule
    linear: Rule
    first: Rule | None = None
    overrides: dict = field(default_factory=dict)
    add: SumRule = field(default_factory=lambda: ZSum(1e-6))
    norm: Rule = field(default_factory=lambda: Epsilon(1e-6, bias=False))
    pool: float = 1e-6  # the stabiliser of average pools' z rule
    # Transformer nodes (None: the CNN conventions, which leave CNN numbers unchanged):
    # ``product``: a product of two input-dependent values (matmul, attention, an element-wise
    # product that is not a gate); ``layer_norm``: LayerNorm/RMSNorm as the linear map it is with
    # the standard deviation held constant (None: relevance passes unchanged); ``bias_add``: a
    # constant tensor added to a value (a position embedding) takes its share (None: it takes none).
    product: "ProductRule" = field(default_factory=lambda: Uniform())
    layer_norm: Rule | None = None
    bias_add: SumRule | None = None
    # the output layer (CLRP's dual is formed there); None: the conv/linear rule
    output: Rule | None = None

    def rules(self) -> list:
        return [r for r in (self.conv, self.linear, self.first, self.add, self.norm, self.output, self.layer_norm,
                            *self.overrides.values()) if r is not None]

    @property
    def conserving(self) -> bool:
        """Every rule passes on all the relevance it gets, up to its stabiliser: no bias takes a
        share and no rule is a plain gradient (the paper and zplus presets)."""
        return self.bias_add is None and all(getattr(r, "bias", False) is False and not isinstance(r, Gradient)
                                             for r in self.rules())

    def with_relative_stabilizers(self) -> "Composite":
        """The same rules with every stabiliser relative to its layer's output scale (:class:`Relative`)."""
        def rel(rule):
            if rule is None:
                return None
            new = copy.copy(rule)
            for key in ("stabilizer", "epsilon"):
                if isinstance(getattr(new, key, None), (int, float)):
                    setattr(new, key, Relative(getattr(new, key)))
            return new
        return dataclasses.replace(
            self, description=self.description + " (relative stabilisers)", conv=rel(self.conv),
            linear=rel(self.linear), first=rel(self.first), overrides={k: rel(v) for k, v in self.overrides.items()},
            add=rel(self.add), norm=rel(self.norm), pool=Relative(self.pool), output=rel(self.output),
            layer_norm=rel(self.layer_norm))

    def rule_for(self, names, module_type, kind: str, is_first: bool, is_output: bool = False) -> Rule:
        names = [names] if isinstance(names, str) else list(names)
        for key, rule in self.overrides.items():
            if kind not in rule.applies_to:
                continue
            if isinstance(key, str):
                if any(fnmatch.fnmatchcase(n, key) for n in names):
                    return rule
            elif isinstance(key, type) and module_type is not None and issubclass(module_type, key):
                return rule
        if kind == "add":
            return self.add
        if kind == "norm":
            return self.norm
        if kind in ("product", "layer_norm", "bias_add"):
            return getattr(self, kind)
        if is_output and self.output is not None:
            return self.output
        if is_first and self.first is not None:
            return self.first
        return self.conv if kind == "conv" else self.linear


RULES: dict[str, Composite] = {
    "paper": Composite(
        "Reference code of Gu et al.: zB on the first conv, z+ on every other conv and dense layer, "
        "biases ignored, stabiliser 1e-9 (residual adds: z rule; unfoldable BatchNorm: epsilon without bias)",
        conv=ZPlus(1e-9, bias=False), linear=ZPlus(1e-9, bias=False), first=ZBox(stabilizer=1e-9),
        add=ZSum(1e-9), norm=Epsilon(1e-9, bias=False)),
    "epsilon_plus": Composite(
        "zennit EpsilonPlus: z+ on convs, epsilon (1e-6) on dense layers",
        conv=ZPlus(), linear=Epsilon()),
    "epsilon_gamma_box": Composite(
        "zennit EpsilonGammaBox: zB first conv, gamma (0.25) on other convs, epsilon on dense layers",
        conv=Gamma(0.25), linear=Epsilon(), first=ZBox()),
    "epsilon_plus_flat": Composite(
        "zennit EpsilonPlusFlat: flat first layer, z+ on convs, epsilon on dense layers",
        conv=ZPlus(), linear=Epsilon(), first=Flat()),
    "epsilon_alpha2_beta1": Composite(
        "zennit EpsilonAlpha2Beta1: alpha2-beta1 on convs, epsilon on dense layers",
        conv=AlphaBeta(2.0, 1.0), linear=Epsilon()),
    "epsilon_alpha2_beta1_flat": Composite(
        "zennit EpsilonAlpha2Beta1Flat: flat first layer, alpha2-beta1 on convs, epsilon on dense layers",
        conv=AlphaBeta(2.0, 1.0), linear=Epsilon(), first=Flat()),
    "zplus": Composite(
        "z+ everywhere including the first layer (biases ignored)",
        conv=ZPlus(1e-9, bias=False), linear=ZPlus(1e-9, bias=False), add=ZSum(1e-9), norm=Epsilon(1e-9, bias=False)),
    # Transformers (on CNNs these equal their conv/dense rules; see docs/ENGINE.md)
    "attnlrp": Composite(
        "AttnLRP (Achtibat et al. 2024) for transformers: uniform split of q·kᵀ and attention·v, the softmax rule, "
        "LayerNorm as a linear map with its standard deviation constant (epsilon 1e-6), identity on GELU/SiLU, "
        "position embeddings take their share; zB on the patch embedding, gamma (0.25) on other convs and gamma "
        "(0.05) on dense layers against gradient shattering, z+ on the output layer (gamma is sign-symmetric: "
        "CLRP2's dual would equal the target)",
        conv=Gamma(0.25), linear=Gamma(0.05), first=ZBox(), product=Uniform(), layer_norm=Epsilon(1e-6),
        bias_add=ZSum(1e-6), output=ZPlus()),
    "cp_lrp": Composite(
        "lxt's configuration for vision transformers: AttnLRP outside attention, CP-LRP inside (the attention "
        "weights are constants, all relevance goes to the values; Ali et al. 2022), gamma (0.25) on convs "
        "including the patch embedding, gamma (0.05) on dense layers, z+ on the output layer",
        conv=Gamma(0.25), linear=Gamma(0.05), product=GateConstant(), layer_norm=Epsilon(1e-6),
        bias_add=ZSum(1e-6), output=ZPlus()),
}


def resolve_composite(rules) -> Composite:
    """Accepts a preset name, a Composite, or a dict of per-layer overrides.

    A dict may name its base preset under the key ``"preset"`` (default ``"paper"``); every other
    key is a layer-name pattern or a module type, every value a Rule or rule name; the key
    ``"stabilizer"`` is ``"absolute"`` (default) or ``"relative"`` (every stabiliser of the preset
    relative to its layer's output scale, see :class:`Relative`).
    """
    if isinstance(rules, Composite):
        return rules
    if isinstance(rules, str):
        if rules not in RULES:
            raise ClrpError(f"unknown rule preset {rules!r}; known presets: {', '.join(RULES)}")
        return RULES[rules]
    if isinstance(rules, Mapping):
        rules = dict(rules)
        base = resolve_composite(rules.pop("preset", "paper"))
        stabilizer = rules.pop("stabilizer", "absolute")
        if stabilizer not in ("absolute", "relative"):
            raise ClrpError(f"stabilizer must be 'absolute' or 'relative', not {stabilizer!r}")
        if rules:
            base = dataclasses.replace(base, description=base.description + " (with per-layer overrides)",
                                       overrides={**{k: make_rule(v) for k, v in rules.items()}, **base.overrides})
        return base.with_relative_stabilizers() if stabilizer == "relative" else base
    raise ClrpError(f"rules must be a preset name, a Composite or a dict of overrides, not {type(rules).__name__}")
