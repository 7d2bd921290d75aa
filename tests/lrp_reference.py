"""An independent float64 LRP reference for sequential networks with blocks (residual, concat,
gate), written layer by layer from the rules' formulas (method.md §7): no graph, no trace, no
weight cache. Used by the exactness tests and the differential fuzzer.

A network is a list of layers; a layer is a tuple whose first entry names it:
``("conv", w, b, stride, padding)``, ``("linear", w, b)``, ``("bn", scale, shift)`` (an eval
BatchNorm as its per-channel affine map), ``("relu",)``, ``("mul", t)`` (a constant factor),
``("avgpool", k)``, ``("maxpool", k)``, ``("flatten",)``, ``("act", fn)`` and
``("groupnorm", groups, weight, bias, eps)`` (identity rule), ``("pwlinear", w, b)`` (a dense layer
on the channels, channels-last), ``("addconst", t)`` (a constant summand takes nothing), ``("pad", p,
value)``, ``("residual", layers)`` (x + f(x)),
``("cat", layers_a, layers_b)`` (cat of both branches on dim 1), ``("gate", layers)``
(x * sigmoid(f(x)): the gate is a constant). Rules: ``{"conv": (name, eps, bias), "linear": ...,
"first": ... or None, "add": eps, "norm": eps, "pool": eps}`` with name in zplus / epsilon / zbox.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def forward(layers, x):
    for layer in layers:
        x = step(layer, x)
    return x


def step(layer, x):
    kind = layer[0]
    if kind == "conv":
        return F.conv2d(x, layer[1], layer[2], layer[3], layer[4])
    if kind == "linear":
        return F.linear(x, layer[1], layer[2])
    if kind == "pwlinear":  # a dense layer on the channels of [N, C, H, W] (channels-last, as ConvNeXt)
        return F.linear(x.permute(0, 2, 3, 1), layer[1], layer[2]).permute(0, 3, 1, 2)
    if kind == "addconst":
        return x + layer[1]
    if kind == "pad":
        return F.pad(x, (layer[1],) * 4, value=layer[2])
    if kind == "bn":
        return x * _chan(layer[1], x) + _chan(layer[2], x)
    if kind == "relu":
        return x.clamp(min=0)
    if kind == "act":  # any element-wise activation (identity rule)
        return layer[1](x)
    if kind == "groupnorm":  # identity rule
        return F.group_norm(x, layer[1], layer[2], layer[3], layer[4])
    if kind == "mul":
        return x * layer[1]
    if kind == "avgpool":
        return F.avg_pool2d(x, layer[1])
    if kind == "maxpool":
        return F.max_pool2d(x, layer[1])
    if kind == "global_avgpool":
        return F.adaptive_avg_pool2d(x, 1)
    if kind == "flatten":
        return x.flatten(1)
    if kind == "residual":
        return x + forward(layer[1], x)
    if kind == "cat":
        return torch.cat([forward(layer[1], x), forward(layer[2], x)], 1)
    if kind == "gate":
        return x * torch.sigmoid(forward(layer[1], x))
    raise ValueError(kind)


def _chan(v, x):
    return v.view(1, -1, *([1] * (x.ndim - 2)))


def _stab(z, eps):
    return z + torch.where(z >= 0, eps, -eps)


def _linear_op(layer):
    if layer[0] == "conv":
        w, stride, pad = layer[1], layer[3], layer[4]
        return (lambda t, ww: F.conv2d(t, ww, None, stride, pad)), w
    if layer[0] == "linear":
        return (lambda t, ww: F.linear(t, ww)), layer[1]
    if layer[0] == "pwlinear":
        return (lambda t, ww: F.linear(t.permute(0, 2, 3, 1), ww).permute(0, 3, 1, 2)), layer[1]
    raise ValueError(layer[0])


def _vjp(fn, x, s):
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(fn(x), x, s)
    return g


def layer_rule(rule, layer, a, R, box=None):
    """Relevance at the input of a conv/dense layer (bias ``layer[2]``) under ``rule``."""
    name, eps, use_bias = rule
    fn, w = _linear_op(layer)
    b = layer[2] if use_bias else None
    bview = (lambda v: _chan(v, R)) if layer[0] in ("conv", "pwlinear") else (lambda v: v.view(1, -1))
    if name == "epsilon":
        z = fn(a, w) + (bview(b) if b is not None else 0)
        return a * _vjp(lambda t: fn(t, w), a, R / _stab(z, eps))
    if name == "zplus":
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        ap, an = a.clamp(min=0), a.clamp(max=0)
        z = fn(ap, wp) + fn(an, wn) + (bview(b.clamp(min=0)) if b is not None else 0) + eps
        s = R / z
        return ap * _vjp(lambda t: fn(t, wp), a, s) + an * _vjp(lambda t: fn(t, wn), a, s)
    if name == "zbox":
        lo, hi = (torch.as_tensor(v, dtype=a.dtype).view(1, -1, 1, 1).expand_as(a) for v in box)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        z = fn(a, w) - fn(lo, wp) - fn(hi, wn)
        s = R / _stab(z, eps)
        return a * _vjp(lambda t: fn(t, w), a, s) - lo * _vjp(lambda t: fn(t, wp), a, s) \
            - hi * _vjp(lambda t: fn(t, wn), a, s)
    raise ValueError(name)


def lrp(layers, x, R, rules, box=None, first=True):
    """Relevance at ``x`` given ``R`` at the output of ``layers`` (``first``: the input is the model input, so
    the first conv/dense layer takes rules['first'])."""
    acts = [x]
    for layer in layers:
        acts.append(step(layer, acts[-1]))
    firsts = []
    seen = not first
    for layer in layers:
        firsts.append(not seen and layer[0] in ("conv", "linear", "pwlinear"))
        seen = seen or layer[0] in ("conv", "linear", "pwlinear", "residual", "cat", "gate")
    for k in range(len(layers) - 1, -1, -1):
        layer, a, out = layers[k], acts[k], acts[k + 1]
        kind = layer[0]
        if kind in ("conv", "linear", "pwlinear"):
            rule = rules["first"] if firsts[k] and rules.get("first") else rules["conv" if kind == "conv" else "linear"]
            R = layer_rule(rule, layer, a, R, box)
        elif kind == "bn":
            s = R / _stab(a * _chan(layer[1], a), rules["norm"])  # epsilon without bias
            R = a * _chan(layer[1], a) * s
        elif kind in ("relu", "mul", "act", "groupnorm", "addconst"):
            pass  # identity; a constant summand takes nothing
        elif kind == "pad":
            p = layer[1]
            R = R[..., p:R.shape[-2] - p, p:R.shape[-1] - p]
        elif kind == "flatten":
            R = R.view(a.shape)
        elif kind == "avgpool":
            R = a * _vjp(lambda t: F.avg_pool2d(t, layer[1]), a, R / _stab(out, rules["pool"]))
        elif kind == "global_avgpool":
            R = a * _vjp(lambda t: F.adaptive_avg_pool2d(t, 1), a, R / _stab(out, rules["pool"]))
        elif kind == "maxpool":
            R = _vjp(lambda t: F.max_pool2d(t, layer[1]), a, R)
        elif kind == "residual":
            f = out - a
            s = R / _stab(out, rules["add"])
            R = a * s + lrp(layer[1], a, f * s, rules, box, first=False)
        elif kind == "cat":
            fa = forward(layer[1], a)
            c = fa.shape[1]
            R = lrp(layer[1], a, R[:, :c], rules, box, first=False) + lrp(layer[2], a, R[:, c:], rules, box, first=False)
        elif kind == "gate":
            pass  # signal-take-all: the gate is a constant
        else:
            raise ValueError(kind)
    return R
