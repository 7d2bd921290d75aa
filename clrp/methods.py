"""explain(), the method registry, hidden-neuron explanations and layer relevances.

Every method is a seed plus a walk over the engine's one propagation mechanism: LRP-family
methods differ only in their output-layer seed (and CLRP's dual), gradient-family methods only
in how ReLU-like ops pass the signal back. The LRP family needs every node between the input and
the output to have a relevance rule; the gradient family works on any model autograd can
differentiate (on the traced graph, or on the model itself when it cannot be traced).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import engine, precision
from .engine import DECONVNET, GRADIENT, GUIDED, gradients, layer_step, plan_for, propagate, run_forward
from .engine.trace import select_output
from .errors import ClrpError, InvalidInput, InvalidTarget, UnsupportedModel
from .rules import (Epsilon, Gamma, Gradient, IMAGENET_MEAN, IMAGENET_STD, REFERENCE_BOX, ZBox, box_from_normalization,
                    resolve_composite)

__all__ = ["explain", "explain_neuron", "layer_relevance", "METHODS", "Method", "REGISTRY", "MAP_KINDS", "METHOD_LABELS",
           "map_kind", "ExplanationInfo", "VANISHING"]


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    family: str  # "relevance" (LRP family) | "gradient" | "cam"
    options: dict  # option name -> default
    run: Callable


REGISTRY: dict[str, Method] = {}

# Methods that need nothing but autograd: they run on the model itself when it cannot be traced.
_AUTOGRAD_ONLY = {"gradient", "gradient_x_input", "integrated_gradients", "smoothgrad"}


def _register(name, description, family, options, run):
    REGISTRY[name] = Method(name, description, family, dict(options), run)


@dataclass
class _Ctx:
    plan: engine.Plan | None  # None: the model could not be traced (autograd-only methods)
    model: torch.nn.Module
    x: torch.Tensor
    targets: torch.Tensor
    rules: object
    box: object
    opts: dict
    info: dict = field(default_factory=dict)  # what the run measured (ExplanationInfo's fields)
    output: object = None  # which model output is explained (see explain)


#: LRP with a conserving preset passes on the seed: |sum of the input relevance| / |seed| below this
#: means the stabilisers absorbed it (a network with tiny activations): a warning, and the ratio in
#: the ExplanationInfo. Non-ReLU activations (identity rule) and pools move it a little, not 10x.
VANISHING = 0.1


@dataclass(frozen=True)
class ExplanationInfo:
    """What ``explain(..., return_info=True)`` reports besides the map."""

    method: str
    rules: str | None  # the preset's description (LRP family)
    #: per sample |sum of the input relevance| / |seed| (``lrp`` only; NaN where the seed is 0);
    #: 1 for a conserving preset on a ReLU network
    conservation: torch.Tensor | None
    all_zero: torch.Tensor  # per sample: the map is zero everywhere
    warnings: tuple = ()

    @property
    def vanished(self) -> bool:
        """Some sample's relevance vanished (all zero, or below VANISHING with a conserving preset)."""
        return bool(self.warnings)


# ----------------------------------------------------------------------------------------------
# Public entry points

def explain(model, inputs, targets, method: str = "clrp2", *, rules="paper", output=None, return_info: bool = False,
            **options):
    """Relevance of every input element for each sample's target class.

    Returns a float tensor shaped like ``inputs`` [N, C, H, W] on the inputs' device (float32 for a
    float16/bfloat16 model, which is explained in float32: see ``clrp.precision``). ``targets`` is
    an int, a sequence or a tensor with one class per sample; a single image with K targets is
    explained K times (one forward pass). See ``METHODS`` for the methods and their options.
    ``return_info=True`` returns ``(map, ExplanationInfo)``: the conservation ratio of ``lrp`` and
    which maps vanished (also said by a ``ClrpWarning``, once per model).
    ``output`` says which output of a model returning a tuple or dict holds the logits: a key
    (``"out"``), an index (``0``) or a function of the output (``lambda out: out.logits``); a model
    returning several tensors without it is refused, naming them.
    """
    if method not in REGISTRY:
        raise ClrpError(f"unknown method {method!r}; known methods: {', '.join(REGISTRY)}")
    spec = REGISTRY[method]
    opts = _options(spec, options)
    box = opts.pop("box", None)
    model, inputs = precision.for_explanation(model, inputs)  # float16/bfloat16: computed in float32
    try:
        plan = plan_for(model, inputs, output=output)
    except UnsupportedModel:
        if method not in _AUTOGRAD_ONLY:
            raise
        plan = None
    if plan is None:
        if model.training:
            raise ClrpError(f"{type(model).__name__} could not be traced and is in training mode: call model.eval() "
                            "before explaining it (its own forward would update BatchNorm statistics)")
        x = _untraced_inputs(model, inputs)
    else:
        x = engine.check_inputs(plan, inputs)
    rows = x.shape[0]
    x, t = _batch(x, targets)
    composite = resolve_composite(rules)
    ctx = _Ctx(plan, model, x, t, composite, None, opts, output=output)
    if spec.family == "relevance":
        plan.require_lrp()
        ctx.box = _resolve_box(box, plan, x, composite)
    R = _at_batch_size(ctx, rows, spec.run)
    info = _check_result(ctx, method, spec, composite, R)
    return (R, info) if return_info else R


def _check_result(ctx, method, spec, composite, R) -> ExplanationInfo:
    """Say when relevance vanished: an all-zero map (any method), or for a conserving preset's LRP
    a conservation ratio below VANISHING (an absolute stabiliser absorbing tiny activations)."""
    all_zero = R.detach().flatten(1).abs().amax(1) == 0
    ratio = ctx.info.get("conservation")
    relevance = spec.family == "relevance"
    notes = []
    fix = (" If the network's activations are tiny, the stabilisers absorbed it: rules={'preset': ..., "
           "'stabilizer': 'relative'} scales them with each layer's output." if relevance else "")
    if bool(all_zero.any()):
        rows = all_zero.nonzero().flatten().tolist()
        notes.append(f"the {method} map of sample(s) {rows[:10]} is zero everywhere.{fix}")
    if relevance and ratio is not None and composite.conserving:
        low = (ratio < VANISHING) & ~all_zero
        if bool(low.any()):
            rows = low.nonzero().flatten().tolist()
            notes.append(f"only {float(ratio[low].min()):.3g} of the seed's relevance reaches the input (sample(s) "
                         f"{rows[:10]}; a conserving preset passes on ~1).{fix}")
    if notes and ctx.opts.get("condition") is None:  # a conditioned map is a part: zero where nothing flows
        engine.warn_once(ctx.model, f"vanishing:{method}", f"{type(ctx.model).__name__}: " + " ".join(notes))
    return ExplanationInfo(method, composite.description if relevance else None, ratio, all_zero.cpu(), tuple(notes))


def _at_batch_size(ctx: _Ctx, rows: int, run):
    """``run(ctx)``, with the model seeing batches of the size it was given (``rows``) when its
    forward depends on the batch size: several targets of one image are then explained one by one."""
    if ctx.plan is None or ctx.x.shape[0] == rows or not ctx.plan.graph.batch_guards.constrained:
        return run(ctx)
    parts, ratios = [], []
    for i in range(0, ctx.x.shape[0], rows):
        part = replace(ctx, x=ctx.x[i:i + rows], targets=ctx.targets[i:i + rows], info={})
        parts.append(run(part))
        ratios.append(part.info.get("conservation"))
    if all(r is not None for r in ratios):
        ctx.info["conservation"] = torch.cat(ratios)
    return torch.cat(parts)


def layer_relevance(model, inputs, targets, layer: str, method: str = "lrp", *, rules="paper",
                    spatial: bool = False, output=None, **options) -> torch.Tensor:
    """Relevance of each channel (unit) of ``layer`` for the target: [N, K] (or the full map with
    ``spatial=True``). Contrastive methods give the signed difference target - dual. In a graph
    with skip connections this is the relevance that reaches ``layer`` (what bypasses it is not
    counted); at a block output it is all of it."""
    spec = REGISTRY.get(method)
    if spec is None or spec.family != "relevance":
        raise ClrpError(f"layer relevance needs an LRP-family method ({', '.join(_family('relevance'))})")
    model, inputs = precision.for_explanation(model, inputs)
    plan = plan_for(model, inputs, output=output)
    x = engine.check_inputs(plan, inputs)
    rows = x.shape[0]
    x, t = _batch(x, targets)
    opts = _options(spec, options)
    composite = resolve_composite(rules)
    ctx = _Ctx(plan, model, x, t, composite, None, opts, output=output)
    box = opts.pop("box", None)
    plan.require_lrp()
    ctx.box = _resolve_box(box, plan, x, composite)
    idx = plan.layer_index(layer)
    R = _at_batch_size(ctx, rows, lambda c: _relevance(c, method, stop_at=idx))
    if spatial or R.ndim == 2:
        return R
    return R.sum(dim=tuple(range(2, R.ndim)))


def explain_neuron(model, inputs, layer: str, channel: int, *, position=None, contrast=None, rules="paper",
                   output: str = "clamp", box=None, model_output=None) -> torch.Tensor:
    """Explain the activation of ``channel`` (dimension 1) of ``layer`` (optionally at one spatial
    ``position``).

    ``contrast=None`` explains the neuron alone; ``"rest"`` subtracts the explanation of the layer's
    other channels and an int ``j`` that of channel j (the CLRP1 analogue: the dual carries the same
    total activation). ``output`` for contrasts: "clamp" (max(0, target - dual)) or "signed".
    ``model_output`` selects the output of a model returning a tuple or dict (``output=`` of explain).
    """
    if output not in ("clamp", "signed"):
        raise ClrpError("output must be 'clamp' or 'signed'")
    model, inputs = precision.for_explanation(model, inputs)
    plan = plan_for(model, inputs, output=model_output)
    x = engine.check_inputs(plan, inputs)
    idx = plan.layer_index(layer)
    plan.require_lrp(idx)
    fwd = run_forward(plan, x, stop=idx)
    A = fwd.value(idx)
    if A.ndim < 2:
        raise InvalidTarget(f"layer {layer!r} has no channels to explain")
    k = A.shape[1]
    _check_channel(channel, k, layer)
    sel = torch.zeros_like(A)
    pos = _position_index(position, A, layer)
    sel[(slice(None), channel, *pos)] = 1
    R = A * sel
    if contrast is not None:
        if isinstance(contrast, str) and contrast == "rest":
            other = torch.ones_like(A)
            other[:, channel] = 0
        elif isinstance(contrast, (int, np.integer)) and not isinstance(contrast, bool):
            _check_channel(int(contrast), k, layer)
            if int(contrast) == channel:
                raise InvalidTarget("contrast channel must differ from the explained channel")
            other = torch.zeros_like(A)
            other[:, int(contrast)] = 1
        else:
            raise ClrpError("contrast must be None, 'rest' or a channel index")
        if pos:
            keep = torch.zeros_like(A)
            keep[(slice(None), slice(None), *pos)] = 1
            other = other * keep
        dual = A * other
        R = R - dual * _ratio(_total(R), _total(dual)).view(-1, *([1] * (A.ndim - 1)))
    composite = resolve_composite(rules)
    out = propagate(plan, fwd, {idx: R}, rules=plan.rules_for(composite), box=_resolve_box(box, plan, x, composite))
    if contrast is not None and output == "clamp":
        out = out.clamp(min=0)
    return out


# ----------------------------------------------------------------------------------------------
# LRP family

def _relevance(ctx: _Ctx, kind: str, stop_at: int | None = None) -> torch.Tensor:
    plan, o = ctx.plan, ctx.opts
    g = plan.graph
    fwd = run_forward(plan, ctx.x)
    logits = fwd.logits
    if logits.ndim != 2:
        raise UnsupportedModel(f"the model's output has shape {tuple(logits.shape)}; expected logits [N, classes]")
    t = _check_targets(ctx.targets, logits.shape[1])
    rules = plan.rules_for(ctx.rules)
    out_layer = plan.output_layer
    if out_layer is not None and ctx.rules.output is not None:  # the preset's output-layer rule
        node = g.nodes[out_layer]
        rules = {**rules, out_layer: ctx.rules.rule_for(node.names, node.module_type, node.op.rule_kind(node),
                                                        out_layer in plan.first_layers, is_output=True)}
    if stop_at is not None and out_layer is not None and stop_at >= out_layer:
        raise InvalidTarget("choose a hidden layer (before the output layer) for layer relevance")
    condition = _condition(plan, fwd, o.get("condition"))
    walk = dict(rules=rules, box=ctx.box, condition=condition, until=stop_at)

    n_cls = logits.shape[1]
    onehot = F.one_hot(t, n_cls).to(logits.dtype)
    y_t = logits.gather(1, t[:, None])
    if o.get("seed", "logit") == "abs_logit":
        y_t = y_t.abs()
    elif o.get("seed", "logit") != "logit":
        raise ClrpError("seed must be 'logit' or 'abs_logit'")

    if kind == "lrp":
        R = propagate(plan, fwd, {g.output: onehot * y_t}, **walk)
        if stop_at is None and condition is None:
            seed = y_t.flatten().abs()
            total = R.flatten(1).sum(1).abs()
            ctx.info["conservation"] = torch.where(seed > 0, total / seed.clamp(min=torch.finfo(seed.dtype).tiny),
                                                   torch.full_like(seed, float("nan"))).cpu()
        return R
    if kind == "sglrp":
        p = logits.softmax(1)
        p_t = p.gather(1, t[:, None])
        return propagate(plan, fwd, {g.output: torch.where(onehot.bool(), p_t * (1 - p_t), -p_t * p)}, **walk)

    if out_layer is None:
        raise UnsupportedModel("CLRP needs logits computed by a conv or dense output layer that every path goes "
                               "through; this model has none")
    parallel = [n.name for n in g.nodes[out_layer + 1:] if n.op.rule_kind(n) in ("conv", "linear")
                and g.carries[n.index]]
    if parallel:  # e.g. DeiT's class and distillation heads: the last common layer is the patch embedding
        raise UnsupportedModel(f"CLRP needs one output layer that every path to the logits goes through; the logits "
                               f"are computed by several ({', '.join(parallel)}), so there is no single layer to form "
                               "the dual at")
    contrast = o.get("contrast", "clamp")
    if contrast not in ("clamp", "signed", "reference"):
        raise ClrpError("contrast must be 'clamp', 'signed' or 'reference'")
    node = g.nodes[out_layer]

    def below(seed, negate=False):
        top = seed if out_layer == g.output else propagate(plan, fwd, {g.output: seed}, rules=rules, box=ctx.box,
                                                             until=out_layer)
        return layer_step(plan, fwd, out_layer, top, rules=rules, box=ctx.box, negate=negate)

    low_t = below(onehot * y_t)
    if kind == "clrp1":
        if n_cls < 2:
            raise InvalidTarget("CLRP1 needs a model with at least two classes")
        others = 1 - onehot
        dual = o.get("dual", "uniform")
        if dual == "uniform":
            weights = others / (n_cls - 1)
        elif dual == "abs_logits":
            weights = logits.abs() * others
            weights = weights * _ratio(1.0, weights.sum(1)).view(-1, 1)
        else:
            raise ClrpError("dual must be 'uniform' or 'abs_logits'")
        low_d = below(weights * y_t)
    else:  # clrp2: the output layer with the target's weights negated, seeded with the target score
        if isinstance(rules[out_layer], (Epsilon, Gradient, Gamma)):
            names = node.name
            raise ClrpError(
                f"CLRP2 is identically zero when the output layer {names!r} uses the {rules[out_layer].name} rule: "
                f"negating the weights negates both numerator and denominator, so the dual equals the target. Use "
                f"z+ or alpha-beta there, e.g. rules={{'preset': ..., {names!r}: 'zplus'}}")
        # The relevance at the output layer is non-zero for the target only, so negating every row
        # of the layer equals negating the target's row.
        low_d = below(onehot * y_t, negate=True)
    if contrast == "reference":
        low = low_t * _ratio(1.0, _total(low_t)).view(-1, *[1] * (low_t.ndim - 1)) - \
            low_d * _ratio(1.0, _total(low_d)).view(-1, *[1] * (low_d.ndim - 1))
    else:
        low = low_t - low_d
    start = node.args[0].index
    R = propagate(plan, fwd, {start: low}, **walk)
    if stop_at is not None:
        return R
    if contrast == "clamp":
        R = R.clamp(min=0)
    elif contrast == "reference":
        peak = R.flatten(1).amax(1).view(-1, *[1] * (R.ndim - 1))
        R = torch.where(peak > 0, R / peak.clamp(min=torch.finfo(R.dtype).tiny), torch.zeros_like(R)).clamp(min=0)
    return R


def _total(R):
    return R.flatten(1).sum(1)


def _ratio(num, den):
    den = torch.as_tensor(den)
    safe = torch.where(den == 0, torch.ones_like(den), den)
    return torch.where(den == 0, torch.zeros_like(den), num / safe)


def _condition(plan, fwd, condition):
    if condition is None:
        return None
    try:
        layer, channels = condition
    except (TypeError, ValueError):
        raise ClrpError("condition must be (layer_name, channels)") from None
    idx = plan.layer_index(layer)
    if plan.output_layer is not None and idx >= plan.output_layer:
        raise InvalidTarget("condition on a hidden layer, not the output layer")
    out = fwd.values[idx]
    channels = [channels] if isinstance(channels, (int, np.integer)) else list(channels)
    for c in channels:
        _check_channel(c, out.shape[1], layer)
    mask = torch.zeros((1, out.shape[1], *[1] * (out.ndim - 2)), dtype=out.dtype, device=out.device)
    mask[0, channels] = 1
    return {idx: mask}


# ----------------------------------------------------------------------------------------------
# Gradient family

def _gradient(ctx: _Ctx, mode: str, x=None, targets=None) -> torch.Tensor:
    x = ctx.x if x is None else x
    targets = ctx.targets if targets is None else targets

    def seed(logits):
        t = _check_targets(targets, logits.shape[1])
        return F.one_hot(t, logits.shape[1]).to(logits.dtype)

    if ctx.plan is None:  # untraceable model: autograd on the model itself
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = select_output(ctx.model(xg), ctx.output, type(ctx.model).__name__)
            (grad,) = torch.autograd.grad(logits, xg, seed(logits.detach()))
        return grad
    return gradients(_plan_for_rows(ctx.plan, ctx.model, x, ctx.output), x, seed, mode=mode)[0]


def _plan_for_rows(plan, model, x, output):
    """The plan valid for ``x``'s batch size (a model whose forward checks its batch size may need
    another trace than the one made for the inputs as given)."""
    if plan is None or plan.graph.batch_guards.rejects(x.shape[0]) is None:
        return plan
    return plan_for(model, x, output=output)


def _batched_gradients(ctx, points: torch.Tensor, weights, batch_size):
    """Sum_k weights[k] * grad(points[k]) for points [S, N, ...]; gradients taken in chunks."""
    s, n = points.shape[:2]
    flat = points.reshape(s * n, *points.shape[2:])
    targets = ctx.targets.repeat(s)
    w = torch.as_tensor(weights, dtype=points.dtype, device=points.device).repeat_interleave(n)
    total = torch.zeros((n, *points.shape[2:]), dtype=points.dtype, device=points.device)
    step = max(1, int(batch_size or 16 * n))
    if ctx.plan is not None and ctx.plan.graph.batch_guards.constrained:
        step = n  # the model's forward depends on the batch size: each point at the size given
    for i in range(0, s * n, step):
        g = _gradient(ctx, GRADIENT, flat[i:i + step], targets[i:i + step])
        g = g * w[i:i + step].view(-1, *[1] * (g.ndim - 1))
        idx = torch.arange(i, min(i + step, s * n), device=points.device) % n
        total.index_add_(0, idx, g)
    return total


def _integrated_gradients(ctx: _Ctx) -> torch.Tensor:
    o = ctx.opts
    x = ctx.x
    baseline = o["baseline"]
    baseline = torch.zeros_like(x) if baseline is None else torch.as_tensor(baseline, dtype=x.dtype,
                                                                           device=x.device).expand_as(x)
    steps = o["steps"]
    alphas, weights = _path_coefficients(o["integration"], steps)
    a = torch.as_tensor(alphas, dtype=x.dtype, device=x.device).view(-1, *[1] * x.ndim)
    points = baseline.unsqueeze(0) + a * (x - baseline).unsqueeze(0)
    return (x - baseline) * _batched_gradients(ctx, points, weights, o["batch_size"])


def _path_coefficients(method, n):
    """Alphas and step weights of the path integral (the same quadratures as captum)."""
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        return (0.5 * (1 + nodes)).tolist(), (0.5 * w).tolist()
    if n < 2:
        raise ClrpError("integrated gradients needs at least 2 steps with a Riemann rule")
    if method == "riemann_trapezoid":
        w = [1 / n] * n
        w[0] /= 2
        w[-1] /= 2
        return torch.linspace(0, 1, n).tolist(), w
    alphas = {"riemann_left": torch.linspace(0, 1 - 1 / n, n), "riemann_right": torch.linspace(1 / n, 1, n),
              "riemann_middle": torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)}.get(method)
    if alphas is None:
        raise ClrpError("integration must be gausslegendre, riemann_left, riemann_right, riemann_middle "
                        "or riemann_trapezoid")
    return alphas.tolist(), [1 / n] * n


def _smoothgrad(ctx: _Ctx) -> torch.Tensor:
    o = ctx.opts
    x = ctx.x
    n = int(o["samples"])
    gen = torch.Generator(device="cpu").manual_seed(int(o["random_state"]))
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, *[1] * (x.ndim - 1))
    noise = torch.randn((n, *x.shape), generator=gen, dtype=x.dtype).to(x.device)
    points = x.unsqueeze(0) + noise * (float(o["noise"]) * span).unsqueeze(0)
    return _batched_gradients(ctx, points, [1 / n] * n, o["batch_size"])


def _gradcam(ctx: _Ctx) -> torch.Tensor:
    plan, o, x = ctx.plan, ctx.opts, ctx.x
    if o["layer"] is None:
        idx = plan.last_feature_map()
        if idx is None:
            raise ClrpError("Grad-CAM found no spatial feature map that every path goes through; pass layer=")
    else:
        idx = plan.layer_index(o["layer"])
    t = ctx.targets
    _, g, fwd = gradients(plan, x, lambda logits: F.one_hot(_check_targets(t, logits.shape[1]), logits.shape[1])
                          .to(logits.dtype), wrt=(idx,))
    A = fwd.values[idx].detach()
    if A.ndim != 4:
        raise ClrpError(f"Grad-CAM layer {plan.graph.nodes[idx].name!r} must output a feature map [N, K, h, w]; "
                        f"it has shape {tuple(A.shape)}")
    cam = (g.mean(dim=(2, 3), keepdim=True) * A).sum(1, keepdim=True)
    if o["relu"]:
        cam = cam.clamp(min=0)
    mode = o["interpolation"]
    cam = F.interpolate(cam, size=x.shape[2:], mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
    # Spread over channels so that the channel sum (how heatmaps are drawn) is the CAM itself.
    return (cam / x.shape[1]).expand(-1, x.shape[1], -1, -1).contiguous()


# ----------------------------------------------------------------------------------------------
# Registry

_LRP_OPTS = {"seed": "logit", "condition": None, "box": None}
_CLRP_OPTS = {**_LRP_OPTS, "contrast": "clamp"}
_BATCH = {"batch_size": None}

_register("lrp", "Layer-wise Relevance Propagation of the target logit (rule preset via `rules`)",
          "relevance", _LRP_OPTS, lambda c: _relevance(c, "lrp"))
_register("clrp1", "Contrastive LRP, dual = all other classes (dual='uniform' as the paper, 'abs_logits' as its code)",
          "relevance", {**_CLRP_OPTS, "dual": "uniform"}, lambda c: _relevance(c, "clrp1"))
_register("clrp2", "Contrastive LRP, dual = the target's output weights negated",
          "relevance", _CLRP_OPTS, lambda c: _relevance(c, "clrp2"))
_register("sglrp", "Softmax-gradient LRP (Iwana et al. 2019): seeded with the softmax gradient",
          "relevance", {"condition": None, "box": None}, lambda c: _relevance(c, "sglrp"))
_register("gradient", "Vanilla gradient of the target logit (Simonyan et al.)", "gradient", {},
          lambda c: _gradient(c, GRADIENT))
_register("gradient_x_input", "Gradient times input", "gradient", {}, lambda c: _gradient(c, GRADIENT) * c.x)
_register("deconvnet", "DeConvNet (Zeiler & Fergus): ReLUs pass the positive part of the upper signal",
          "gradient", {}, lambda c: _gradient(c, DECONVNET))
_register("guided_backprop", "Guided backpropagation (Springenberg et al.)", "gradient", {},
          lambda c: _gradient(c, GUIDED))
_register("gradcam", "Grad-CAM (Selvaraju et al.) at the last convolutional feature map, upsampled", "cam",
          {"layer": None, "relu": True, "interpolation": "bilinear"}, _gradcam)
_register("integrated_gradients", "Integrated Gradients (Sundararajan et al.), zero baseline by default",
          "gradient", {"steps": 50, "baseline": None, "integration": "gausslegendre", **_BATCH}, _integrated_gradients)
_register("smoothgrad", "SmoothGrad (Smilkov et al.): gradient averaged over noisy copies", "gradient",
          {"samples": 25, "noise": 0.15, "random_state": 0, **_BATCH}, _smoothgrad)

METHODS = MappingProxyType({name: m.description for name, m in REGISTRY.items()})


def _family(family):
    return [n for n, m in REGISTRY.items() if m.family == family]


#: What the values of a map measure. Maps compare on one colour scale only within a kind: an LRP
#: map (logit units, ~1e-3 per pixel) next to a gradient (per input unit, ~0.1-1) would be white.
MAP_KINDS = MappingProxyType({
    "relevance": "LRP-family relevance (logit units)",
    "normalised relevance": "CLRP reference output (maps normalised before subtracting)",
    "softmax relevance": "SGLRP relevance (softmax-gradient units)",
    "sensitivity": "gradient-type signal (per unit of input)",
    "attribution": "gradient × input attribution (logit units)",
    "cam": "Grad-CAM (feature-map units)",
    "neuron relevance": "relevance of a hidden unit (activation units)",
})
_KIND_OF = {"lrp": "relevance", "clrp1": "relevance", "clrp2": "relevance", "sglrp": "softmax relevance",
            "gradient": "sensitivity", "deconvnet": "sensitivity", "guided_backprop": "sensitivity",
            "smoothgrad": "sensitivity", "gradient_x_input": "attribution", "integrated_gradients": "attribution",
            "gradcam": "cam"}


#: How each method is named in tables, charts and the dashboard (one spelling everywhere).
METHOD_LABELS = MappingProxyType({
    "lrp": "LRP", "clrp1": "CLRP1", "clrp2": "CLRP2", "sglrp": "SGLRP", "gradient": "Gradient",
    "gradient_x_input": "Gradient×Input", "deconvnet": "DeConvNet", "guided_backprop": "Guided BP",
    "gradcam": "Grad-CAM", "integrated_gradients": "Integrated Gradients", "smoothgrad": "SmoothGrad",
    "center": "Centre baseline"})


def map_kind(method: str, options: dict | None = None) -> str:
    """The :data:`MAP_KINDS` key of ``method``'s maps under ``options`` (unknown methods: their own kind)."""
    if method in ("clrp1", "clrp2") and (options or {}).get("contrast") == "reference":
        return "normalised relevance"
    return _KIND_OF.get(method, method)


# ----------------------------------------------------------------------------------------------
# Argument checking

def _options(spec: Method, given: dict) -> dict:
    unknown = set(given) - set(spec.options) - {"box"}
    if unknown:
        allowed = ", ".join(sorted(spec.options)) or "none"
        raise ClrpError(f"method {spec.name!r} has no option {', '.join(sorted(unknown))}; its options: {allowed}")
    opts = {**spec.options, **given}
    for key, low in (("steps", 1), ("samples", 1), ("batch_size", 1)):
        if key in opts and opts[key] is not None:
            v = opts[key]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ClrpError(f"{key} must be an integer >= {low}, got {v!r}")
            opts[key] = int(v)
    if "noise" in opts and not (isinstance(opts["noise"], (int, float)) and opts["noise"] >= 0):
        raise ClrpError(f"noise must be a number >= 0, got {opts['noise']!r}")
    return opts


def _resolve_box(box, plan, x, composite):
    """zB bounds: ``(low, high)`` (scalars or one value per input channel) or "reference"; default
    ImageNet normalisation. Checked against the input only when a zB rule will use them."""
    if isinstance(box, str):
        if box != "reference":
            raise ClrpError("box must be (low, high) or 'reference'")
        return REFERENCE_BOX
    rules = plan.rules_for(composite)
    needs = any(isinstance(r, ZBox) and r.low is None for r in rules.values())
    channels = x.shape[1] if x.ndim >= 2 else 1
    if box is None:
        if needs and channels != 3:
            raise ClrpError(
                f"the zB rule of this preset needs the range of the model's inputs; the default is ImageNet's "
                f"3-channel normalisation but this model takes {channels} channel(s). Pass box=(low, high) (e.g. "
                f"clrp.box_from_normalization(mean, std)) or use a preset without zB (e.g. rules='zplus')")
        return _default_box(plan, x) if needs else box_from_normalization(IMAGENET_MEAN, IMAGENET_STD)
    try:
        low, high = box
    except (TypeError, ValueError):
        raise ClrpError("box must be (low, high) or 'reference'") from None
    for b in (low, high):
        try:
            t = torch.as_tensor(b, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ClrpError(f"box bounds must be numbers, got {b!r}") from None
        if t.ndim > 1 or (t.ndim == 1 and t.numel() not in (1, channels)):
            raise ClrpError(f"box bounds must be scalars or {channels} values (one per input channel); got shape "
                            f"{tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ClrpError("box bounds must be finite")
    return low, high


def _default_box(plan, x):
    """ImageNet images, in the model's input space: normalised by ImageNet's statistics, unless the
    model normalises them itself before its first layer (a torchvision-style ``Normalize`` module,
    ``(x - mean) / std`` in its forward): then it takes pixels in [0, 1], recognised by [0, 1] reaching
    the first layer as ImageNet's normalised range. A model that transforms its input otherwise
    (other than Inception's ``transform_input``, which maps normalised images to [-1, 1]) gets a
    warning: the box may not be its inputs' range."""
    normalised = box_from_normalization(IMAGENET_MEAN, IMAGENET_STD)
    g = plan.graph
    firsts = {engine.first_ref(g.nodes[i]) for i in plan.first_layers} - {g.input}
    firsts = [i for i in sorted(firsts) if g.nodes[i].shape == tuple(x.shape[1:])]
    if not firsts:
        return normalised
    want = tuple(engine.propagate_box(plan, g.input, normalised, x))
    pixels = [engine.propagate_box(plan, i, (0.0, 1.0), x) for i in firsts]
    if all(torch.allclose(p, w, atol=1e-4) for lo_hi in pixels for p, w in zip(lo_hi, want)):
        return 0.0, 1.0
    reached = [engine.propagate_box(plan, i, normalised, x) for i in firsts]
    unchanged = all(torch.allclose(r, w, atol=1e-4) for lo_hi in reached for r, w in zip(lo_hi, want))
    inception = all(torch.allclose(lo_hi[0], torch.full_like(lo_hi[0], -1.0), atol=1e-4)
                    and torch.allclose(lo_hi[1], torch.ones_like(lo_hi[1]), atol=1e-4) for lo_hi in reached)
    if not (unchanged or inception):
        model = plan.model()
        node = g.nodes[firsts[0]]
        engine.warn_once(model, "box", f"{type(model).__name__} transforms its inputs before its first layer "
                         f"({node.describe()}) in a way clrp does not recognise: the zB rule's default box assumes "
                         "ImageNet-normalised inputs and may not be their range; pass box=(low, high) with your "
                         "inputs' range")
    return normalised


def _untraced_inputs(model, inputs) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise InvalidInput(f"inputs must be a torch.Tensor of shape [N, C, H, W], got {type(inputs).__name__}")
    if not inputs.is_floating_point() or inputs.ndim < 2 or inputs.shape[0] == 0:
        raise InvalidInput(f"inputs must be a non-empty floating point batch [N, C, H, W]; got {inputs.dtype} "
                           f"{tuple(inputs.shape)}")
    if not bool(torch.isfinite(inputs).all()):
        raise InvalidInput("inputs contain NaN or infinite values")
    return inputs.detach()


def _batch(x, targets):
    n = x.shape[0]
    if isinstance(targets, (int, np.integer)) and not isinstance(targets, bool):
        t = torch.full((n,), int(targets), dtype=torch.long)
    else:
        try:
            t = torch.as_tensor(targets)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidTarget(f"targets must be an int, a sequence or a tensor of class indices, "
                                f"got {targets!r}") from None
        if t.is_floating_point() or t.dtype == torch.bool:
            raise InvalidTarget("targets must be integer class indices")
        t = t.reshape(-1).long()
        if t.numel() != n:
            if n == 1 and t.numel() > 0:
                x = x.expand(t.numel(), *x.shape[1:])  # one image, several targets: one forward
            else:
                raise InvalidTarget(f"got {t.numel()} targets for {n} inputs; give one target per sample")
    return x, t.to(x.device)


def _check_targets(t, n_cls):
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_cls):
        bad = t[(t < 0) | (t >= n_cls)][0].item()
        raise InvalidTarget(f"class index {bad} is out of range: the model has {n_cls} classes (0..{n_cls - 1})")
    return t


def _check_channel(c, k, layer):
    if not isinstance(c, (int, np.integer)) or isinstance(c, bool) or not 0 <= int(c) < k:
        raise InvalidTarget(f"channel {c!r} does not exist in layer {layer!r} (it has {k} channels)")


def _position_index(position, A, layer):
    if position is None:
        return ()
    if A.ndim != 4 or len(position) != 2:
        raise InvalidTarget(f"position (row, col) applies only to feature maps; layer {layer!r} has shape "
                            f"{tuple(A.shape[1:])}")
    r, c = (int(p) for p in position)
    if not (0 <= r < A.shape[2] and 0 <= c < A.shape[3]):
        raise InvalidTarget(f"position {position} is outside the {A.shape[2]}x{A.shape[3]} map of {layer!r}")
    return (r, c)
