"""The propagation engine: one mechanism behind every method.

A model is traced once (torch.fx) into a chain of supported layers (a ``Plan``). The forward
pass is re-run from the model's own parameters with functional ops, storing each layer's input;
the backward pass walks the chain from a seed at any layer down to the input, applying per layer
either an LRP rule or a (modified) gradient. Nothing is registered on the model and nothing of
it is changed, so a model shared by many threads or dashboard sessions stays untouched.

Rows of the input batch that are identical share one forward pass (several targets of one
image cost one forward), and rules evaluate their forward-dependent parts on the unique rows.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InvalidInput, InvalidTarget, UnsupportedModel
from .rules import Composite, Gradient, stabilize

__all__ = ["Plan", "Forward", "plan_for", "run_forward", "backward", "forward", "layer_names", "LinearOp"]

SUPPORTED = ("Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten / torch.flatten / "
             "view(N, -1), Dropout, Identity, BatchNorm2d/1d directly after a conv/dense layer")

# Backward modes for element-wise and linear layers.
LRP, GRADIENT, GUIDED, DECONVNET = "lrp", "gradient", "guided", "deconvnet"


@dataclass
class Layer:
    name: str
    kind: str  # conv | linear | relu | maxpool | avgpool | adaptive_avgpool | flatten | identity
    module: nn.Module | None = None
    bn: nn.Module | None = None  # BatchNorm folded into this conv/linear
    args: dict = field(default_factory=dict)
    aliases: tuple = ()

    @property
    def has_rule(self):
        return self.kind in ("conv", "linear")


class Plan:
    """The chain of layers of one model, with a cache of rule-modified weights."""

    def __init__(self, layers: list[Layer]):
        self.layers = layers
        self.index = {}
        for i, layer in enumerate(layers):
            for n in (layer.name, *layer.aliases):
                self.index[n] = i
        self.first_param_layer = next((i for i, l in enumerate(layers) if l.has_rule), None)
        # nonnegative[i]: layer i's input is >= 0 by construction (after a ReLU, through pools and
        # reshapes), so rules can skip their negative-input half without looking at the data.
        self.nonnegative = [False]
        for layer in layers[:-1]:
            keeps = layer.kind in ("maxpool", "avgpool", "adaptive_avgpool", "flatten", "identity")
            self.nonnegative.append(layer.kind == "relu" or (keeps and self.nonnegative[-1]))
        self._weights: dict = {}
        self._lock = threading.Lock()

    def layer_index(self, name: str) -> int:
        if name not in self.index:
            raise InvalidTarget(f"no layer named {name!r}; layers: {', '.join(l.name for l in self.layers)}")
        return self.index[name]

    # -- effective and modified weights, cached per parameter version (never stale, never mutating)
    def weight(self, i: int, key="base"):
        layer = self.layers[i]
        params = [p for m in (layer.module, layer.bn) if m is not None for p in m.parameters(recurse=False)]
        params += [b for m in (layer.bn,) if m is not None for b in (m.running_mean, m.running_var)]
        version = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in params)
        ck = (i, key)
        hit = self._weights.get(ck)
        if hit is not None and hit[0] == version:
            return hit[1]
        with torch.no_grad():
            if key == "base":
                value = _effective_params(layer)
            else:
                w, _ = self.weight(i, "base")
                value = _modify(w, key)
        with self._lock:
            self._weights[ck] = (version, value)
        return value

    def rules_for(self, composite: Composite) -> list:
        rules = []
        for i, layer in enumerate(self.layers):
            if layer.has_rule:
                rules.append(composite.rule_for(layer.name, layer.module, layer.kind, i == self.first_param_layer))
            else:
                rules.append(None)
        return rules


def _effective_params(layer: Layer):
    w = layer.module.weight.detach()
    b = layer.module.bias.detach() if layer.module.bias is not None else None
    if layer.bn is None:
        return w, b
    bn = layer.bn
    scale = bn.running_var.detach().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = -bn.running_mean.detach() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    w = w * scale.view(-1, *([1] * (w.ndim - 1)))
    b = shift if b is None else b * scale + shift
    return w, b


def _modify(w, key):
    if key == "pos":
        return w.clamp(min=0)
    if key == "neg":
        return w.clamp(max=0)
    if key == "ones":
        return torch.ones_like(w)
    if key == "square":
        return w * w
    if key == "zbox_forward":
        return torch.cat([w, -w.clamp(min=0), -w.clamp(max=0)], dim=1)
    if key == "zbox_transpose":
        return torch.cat([w, w.clamp(min=0), w.clamp(max=0)], dim=1)
    if isinstance(key, tuple) and key[0] == "gamma_pos":
        return w + key[1] * w.clamp(min=0)
    if isinstance(key, tuple) and key[0] == "gamma_neg":
        return w + key[1] * w.clamp(max=0)
    raise KeyError(key)


# ----------------------------------------------------------------------------------------------
# Tracing a model into a plan

_PLANS: "weakref.WeakKeyDictionary[nn.Module, Plan]" = weakref.WeakKeyDictionary()
_PLANS_LOCK = threading.Lock()

_IDENTITY_MODULES = (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.Identity)


def plan_for(model: nn.Module) -> Plan:
    """The (cached) plan of a model."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModel(f"expected a torch.nn.Module, got {type(model).__name__}")
    plan = _PLANS.get(model)
    if plan is None:
        with _PLANS_LOCK:
            plan = _PLANS.get(model)
            if plan is None:
                plan = Plan(_trace(model))
                _PLANS[model] = plan
    return plan


def layer_names(model: nn.Module) -> list[str]:
    return [l.name for l in plan_for(model).layers]


def _trace(model: nn.Module) -> list[Layer]:
    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception as exc:  # fx raises many types for dynamic control flow
        raise UnsupportedModel(
            f"could not trace {type(model).__name__} into a chain of layers ({type(exc).__name__}: {exc}). "
            f"Supported: {SUPPORTED}") from None
    layers: list[Layer] = []
    prev = None  # the fx node whose tensor the next layer must consume
    for node in graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                raise UnsupportedModel(f"{type(model).__name__} takes more than one input; one image batch is supported")
            prev = node
            continue
        if node.op == "get_attr":
            raise UnsupportedModel(f"{type(model).__name__} uses a parameter directly in forward ({node.target}); "
                                   f"only layers are supported: {SUPPORTED}")
        if node.op == "output":
            out = node.args[0]
            if out is not prev:
                raise UnsupportedModel("the model's output is not the last layer of a chain (several outputs?)")
            break
        if node.op == "call_method" and node.target == "size":
            continue  # shape query feeding a view(N, -1)
        tensor_args = [a for a in _flat_args(node) if isinstance(a, torch.fx.Node)
                       and not (a.op == "call_method" and a.target == "size")]
        label = node.target if node.op == "call_module" else node.name
        if len(tensor_args) != 1 or tensor_args[0] is not prev:
            raise UnsupportedModel(
                f"layer {label!r} does not simply consume the previous layer's output "
                "(residual or branching connections are not supported yet)")
        layer = _layer_from_node(model, node, layers)
        if layer is not None:
            layers.append(layer)
        prev = node
    if not layers or layers[-1].kind not in ("linear", "conv"):
        raise UnsupportedModel("the model must end with a Linear (or Conv2d) layer producing the logits; "
                               "put softmax/sigmoid outside the model")
    return layers


def _flat_args(node):
    out = []
    for a in list(node.args) + list(node.kwargs.values()):
        if isinstance(a, (list, tuple)):
            out.extend(a)
        else:
            out.append(a)
    return out


def _layer_from_node(model, node, layers) -> Layer | None:
    if node.op == "call_module":
        name = node.target
        m = model.get_submodule(name)
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                raise UnsupportedModel(f"layer {name!r}: Conv2d padding_mode={m.padding_mode!r} is not supported")
            padding = m.padding
            if isinstance(padding, str):
                if padding == "valid":
                    padding = (0, 0)
                elif all(d * (k - 1) % 2 == 0 for d, k in zip(m.dilation, m.kernel_size)):
                    padding = tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
                else:
                    raise UnsupportedModel(f"layer {name!r}: padding='same' with an even kernel is not supported")
            return Layer(name, "conv", m, args=dict(stride=m.stride, padding=padding, dilation=m.dilation,
                                                    groups=m.groups))
        if isinstance(m, nn.Linear):
            return Layer(name, "linear", m)
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            if not layers or layers[-1].kind not in ("conv", "linear") or layers[-1].bn is not None:
                raise UnsupportedModel(f"layer {name!r}: BatchNorm is supported only directly after a conv/dense layer")
            if not m.track_running_stats or m.running_mean is None:
                raise UnsupportedModel(f"layer {name!r}: BatchNorm without running statistics cannot be folded")
            layers[-1].bn = m
            layers[-1].aliases += (name,)
            return None
        if isinstance(m, nn.ReLU):
            return Layer(name, "relu", m)
        if isinstance(m, nn.MaxPool2d):
            return Layer(name, "maxpool", m, args=dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                                       dilation=m.dilation, ceil_mode=m.ceil_mode))
        if isinstance(m, nn.AvgPool2d):
            return Layer(name, "avgpool", m, args=dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                                       ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad,
                                                       divisor_override=m.divisor_override))
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return Layer(name, "adaptive_avgpool", m, args=dict(output_size=m.output_size))
        if isinstance(m, nn.Flatten):
            return Layer(name, "flatten", m, args=dict(start_dim=m.start_dim, end_dim=m.end_dim))
        if isinstance(m, _IDENTITY_MODULES):
            return Layer(name, "identity", m)
        raise UnsupportedModel(f"layer {name!r} ({type(m).__name__}) is not supported by the LRP engine. "
                               f"Supported: {SUPPORTED}")
    name = node.name
    target = node.target
    if node.op == "call_function":
        if target is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return Layer(name, "flatten", args=dict(start_dim=start, end_dim=end))
        if target in (torch.relu, F.relu):
            return Layer(name, "relu")
        if target in (F.dropout,):
            return Layer(name, "identity")
        raise UnsupportedModel(f"operation {name!r} ({getattr(target, '__name__', target)}) is not supported by the "
                               f"LRP engine. Supported: {SUPPORTED}")
    if node.op == "call_method":
        if target == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            return Layer(name, "flatten", args=dict(start_dim=start, end_dim=-1))
        if target in ("view", "reshape"):
            shape = node.args[1:]
            if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                shape = tuple(shape[0])
            if len(shape) == 2 and shape[1] == -1:
                return Layer(name, "flatten", args=dict(start_dim=1, end_dim=-1))
            raise UnsupportedModel(f"operation {name!r}: only view/reshape to (batch, -1) is supported")
        if target == "relu":
            return Layer(name, "relu")
        if target == "contiguous":
            return Layer(name, "identity")
    raise UnsupportedModel(f"operation {name!r} ({target}) is not supported by the LRP engine. Supported: {SUPPORTED}")


# ----------------------------------------------------------------------------------------------
# Forward

@dataclass
class Forward:
    """Stored forward pass on the unique input rows.

    ``acts[i]`` is the input of layer i, ``acts[-1]`` the logits; ``inv`` maps each batch row to its
    unique row (None when all rows are distinct).
    """

    x: torch.Tensor
    acts: list
    saved: dict
    inv: torch.Tensor | None
    n: int
    masked: bool = False  # ablation masks applied: inputs may lose their static sign

    def expand(self, t):
        if self.inv is None or t.shape[0] != self.acts[0].shape[0]:
            return t
        return t.index_select(0, self.inv)

    @property
    def logits(self):
        return self.expand(self.acts[-1])

    def output_of(self, i):
        return self.acts[i + 1]


def _dedupe(x: torch.Tensor):
    n = x.shape[0]
    if n == 1:
        return x, None
    if x.stride(0) == 0:  # x.expand(...): one image repeated
        return x[:1].contiguous(), torch.zeros(n, dtype=torch.long, device=x.device)
    flat = x.reshape(n, -1)
    # Cheap pre-check on a few columns before the exact comparison.
    probe = flat[:, :: max(1, flat.shape[1] // 257)]
    if torch.unique(probe, dim=0).shape[0] == n:
        return x, None
    uniq, inv = torch.unique(flat, dim=0, return_inverse=True)
    if uniq.shape[0] == n:
        return x, None
    return uniq.reshape(-1, *x.shape[1:]), inv


def check_inputs(plan: Plan, inputs) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise InvalidInput(f"inputs must be a torch.Tensor of shape [N, C, H, W], got {type(inputs).__name__}")
    first = plan.layers[0]
    if first.kind == "conv":
        expected_c = first.module.in_channels
        if inputs.ndim != 4:
            raise InvalidInput(f"inputs must have shape [N, C, H, W]; got shape {tuple(inputs.shape)}")
        if inputs.shape[1] != expected_c:
            raise InvalidInput(f"the model expects {expected_c} input channels; got {inputs.shape[1]}")
    if not inputs.is_floating_point():
        raise InvalidInput(f"inputs must be a floating point tensor, got {inputs.dtype}")
    if inputs.shape[0] == 0:
        raise InvalidInput("inputs is an empty batch")
    p = next((l.module.weight for l in plan.layers if l.has_rule), None)
    if p is not None and p.device != inputs.device:
        raise InvalidInput(f"inputs are on {inputs.device} but the model is on {p.device}; move one of them")
    if p is not None and p.dtype != inputs.dtype:
        raise InvalidInput(f"inputs are {inputs.dtype} but the model is {p.dtype}")
    return inputs.detach()


def run_forward(plan: Plan, x: torch.Tensor, *, ablate: dict | None = None, stop: int | None = None,
                dedupe: bool = True) -> Forward:
    """Forward pass storing every layer input. ``stop``: last layer index to run (inclusive)."""
    x = check_inputs(plan, x)
    xu, inv = _dedupe(x) if dedupe else (x, None)
    masks = {}
    for name, mask in (ablate or {}).items():
        m = torch.as_tensor(mask, dtype=x.dtype, device=x.device)
        if inv is not None and m.ndim > 0 and m.shape[0] == x.shape[0] and m.shape[0] != xu.shape[0]:
            xu, inv = x, None  # per-row masks: rows are no longer identical
        masks[plan.layer_index(name)] = m
    acts = [xu]
    saved = {}
    last = len(plan.layers) - 1 if stop is None else stop
    h = xu
    with torch.no_grad():
        for i, layer in enumerate(plan.layers[: last + 1]):
            h = _forward_layer(plan, i, layer, h, saved)
            if i in masks:
                h = h * masks[i]
            acts.append(h)
    return Forward(x, acts, saved, inv, x.shape[0], masked=bool(masks))


def _forward_layer(plan, i, layer, h, saved):
    k = layer.kind
    if k == "conv":
        w, b = plan.weight(i)
        try:
            return F.conv2d(h, w, b, **layer.args)
        except RuntimeError as exc:
            raise InvalidInput(f"layer {layer.name!r} cannot take an input of shape {tuple(h.shape)}: {exc}") from None
    if k == "linear":
        w, b = plan.weight(i)
        if h.shape[-1] != w.shape[1]:
            raise InvalidInput(f"layer {layer.name!r} expects {w.shape[1]} features but gets {h.shape[-1]} "
                               f"(is the input image the size the model was built for?)")
        return F.linear(h, w, b)
    if k == "relu":
        return F.relu(h)
    if k == "maxpool":
        y, idx = F.max_pool2d(h, return_indices=True, **layer.args)
        saved[i] = idx
        return y
    if k == "avgpool":
        return F.avg_pool2d(h, **layer.args)
    if k == "adaptive_avgpool":
        return F.adaptive_avg_pool2d(h, layer.args["output_size"])
    if k == "flatten":
        return torch.flatten(h, layer.args["start_dim"], layer.args["end_dim"])
    return h  # identity


def forward(model: nn.Module, inputs: torch.Tensor, *, ablate: dict | None = None) -> torch.Tensor:
    """Logits of the model (eval semantics), optionally multiplying named layers' outputs by masks."""
    plan = plan_for(model)
    return run_forward(plan, inputs, ablate=ablate, dedupe=False).logits


# ----------------------------------------------------------------------------------------------
# Backward

class LinearOp:
    """Operator interface the rules are written against (see clrp.rules)."""

    def __init__(self, plan: Plan, i: int, fwd: Forward, box=None):
        self.plan, self.i, self.fwd = plan, i, fwd
        self.layer = plan.layers[i]
        self.weight, self.bias = plan.weight(i)
        self.box = box
        self.in_shape = fwd.acts[i].shape[1:]
        self.nonnegative_input = plan.nonnegative[i] and not fwd.masked
        # Inputs may be stacked on the channel axis (zB) unless channels are split into groups.
        self.stackable = self.layer.kind == "linear" or self.layer.args.get("groups", 1) == 1

    def expand(self, t):
        return self.fwd.expand(t)

    def modified(self, key):
        return self.plan.weight(self.i, key)

    def forward(self, x, w, b):
        if self.layer.kind == "conv":
            return F.conv2d(x, w, b, **self.layer.args)
        return F.linear(x, w, b)

    def transpose(self, s, w, channels=None):
        if self.layer.kind == "conv":
            a = self.layer.args
            shape = (s.shape[0], channels or self.in_shape[0], *self.in_shape[1:])
            return torch.nn.grad.conv2d_input(shape, w, s, a["stride"], a["padding"], a["dilation"], a["groups"])
        return s @ w


class RowOp:
    """A dense output layer restricted to one (possibly modified) weight row per sample: for CLRP2."""

    def __init__(self, weight_rows: torch.Tensor, bias: torch.Tensor | None, box=None):
        self.weight = weight_rows  # [N, D]
        self.bias = bias  # [N] or None
        self.box = box

    def expand(self, t):
        return t

    def modified(self, key):
        return _modify(self.weight, key)

    def forward(self, x, w, b):
        z = (x * w).sum(-1, keepdim=True)
        return z if b is None else z + b.view(-1, 1)

    def transpose(self, s, w):
        return s * w


def backward(plan: Plan, fwd: Forward, R: torch.Tensor, *, start: int, stop: int = 0, mode: str = LRP,
             rules: Sequence | None = None, box=None, condition: dict | None = None,
             record: dict | None = None) -> torch.Tensor:
    """Propagate ``R`` (given at the output of layer ``start``) down to the input of layer ``stop``.

    ``condition``: {layer index: mask} multiplies the relevance at that layer's output.
    ``record``: {layer index: None} is filled with the relevance at that layer's output.
    """
    with torch.no_grad():
        for i in range(start, stop - 1, -1):
            if condition and i in condition:
                R = R * condition[i]
            if record is not None and i in record:
                record[i] = R
            R = _backward_layer(plan, fwd, i, R, mode, rules[i] if rules is not None else None, box)
    return R


def _backward_layer(plan, fwd, i, R, mode, rule, box):
    layer = plan.layers[i]
    k = layer.kind
    a = fwd.acts[i]
    if k in ("conv", "linear"):
        op = LinearOp(plan, i, fwd, box)
        if mode != LRP or rule is None or isinstance(rule, Gradient):
            return op.transpose(R, op.weight)
        return rule.relevance(op, a, R, fwd.acts[i + 1])
    if k == "relu":
        if mode == LRP:
            return R
        if mode == DECONVNET:
            return R.clamp(min=0)
        if mode == GUIDED:
            R = R.clamp(min=0)
        # ReLU's own backward kernel: one pass, no boolean mask and no type promotion.
        return torch.ops.aten.threshold_backward(R, fwd.expand(a), 0.0)
    if k == "maxpool":
        idx = fwd.expand(fwd.saved[i])
        n, c = R.shape[:2]
        out = R.new_zeros((n, c, a.shape[2] * a.shape[3]))
        out.scatter_add_(2, idx.reshape(n, c, -1), R.reshape(n, c, -1))
        return out.view(n, c, a.shape[2], a.shape[3])
    if k in ("avgpool", "adaptive_avgpool"):
        if k == "adaptive_avgpool" and tuple(fwd.acts[i + 1].shape[2:]) == tuple(a.shape[2:]):
            return R
        pool = (lambda t: F.avg_pool2d(t, **layer.args)) if k == "avgpool" else \
            (lambda t: F.adaptive_avg_pool2d(t, layer.args["output_size"]))
        if mode != LRP:
            return _vjp(pool, a, R)
        # z rule: proportional to the inputs (as zennit's Norm rule).
        z = fwd.expand(fwd.acts[i + 1])
        return fwd.expand(a) * _vjp(pool, a, R / stabilize(z, 1e-6))
    if k == "flatten":
        return R.reshape(R.shape[0], *a.shape[1:])
    return R


def _vjp(fn: Callable, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Transpose of a linear op at the batch size of ``g`` (rows of ``a`` only fix the shape)."""
    with torch.enable_grad():
        probe = torch.zeros((g.shape[0], *a.shape[1:]), dtype=a.dtype, device=a.device, requires_grad=True)
        (grad,) = torch.autograd.grad(fn(probe), probe, g)
    return grad
