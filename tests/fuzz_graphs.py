"""Random small networks for the differential fuzzer (tests/test_fuzz_engine.py,
benchmarks/fuzz_engine.py): a model built from the supported node kinds with random weights and
BatchNorm statistics, its description for the float64 reference (tests/lrp_reference.py), and the
check of one network against it.

The description folds BatchNorm as the engine's documented convention says (into the conv/dense
layer right before it; else into the one right after it when that layer does not pad and is not
folded already; else a BatchNorm keeps the ``norm`` rule), written here from the formulas."""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from clrp import engine
from clrp.rules import IMAGENET_MEAN, IMAGENET_STD, box_from_normalization

from . import lrp_reference as ref

#: The presets checked and their rules in the reference's terms (clrp.rules.RULES).
PRESETS = {
    "zplus": {"conv": ("zplus", 1e-9, False), "linear": ("zplus", 1e-9, False), "first": None, "add": 1e-9,
              "norm": 1e-9, "pool": 1e-6},
    "epsilon_plus": {"conv": ("zplus", 1e-6, True), "linear": ("epsilon", 1e-6, True), "first": None, "add": 1e-6,
                     "norm": 1e-6, "pool": 1e-6},
    "paper": {"conv": ("zplus", 1e-9, False), "linear": ("zplus", 1e-9, False), "first": ("zbox", 1e-9, False),
              "add": 1e-9, "norm": 1e-9, "pool": 1e-6},
}
BLOCKS = ["residual", "cat", "gate", "mul", "act", "pool", "bn", "groupnorm", "conv", "shift", "pad", "channels_last"]
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "leaky": lambda: nn.LeakyReLU(0.1)}


class Seq(nn.Sequential):
    pass


class Residual(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class Cat(nn.Module):
    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


class Gate(nn.Module):
    """x * sigmoid(f(x)) (squeeze-excitation-like)."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x * torch.sigmoid(self.body(x))


class Scale(nn.Module):
    """x * t: t a buffer (either sign) or a Python number."""

    def __init__(self, t):
        super().__init__()
        if isinstance(t, torch.Tensor):
            self.register_buffer("t", t)
        else:
            self.t = t

    def forward(self, x):
        return x * self.t


class Shift(nn.Module):
    """x + t: t a buffer of either sign (a constant summand)."""

    def __init__(self, t):
        super().__init__()
        self.register_buffer("t", t)

    def forward(self, x):
        return x + self.t


class Pad(nn.Module):
    def __init__(self, p, value):
        super().__init__()
        self.p, self.value = p, value

    def forward(self, x):
        return F.pad(x, (self.p,) * 4, value=self.value)


class ChannelsLast(nn.Module):
    """A dense layer on the channels: permute to [N, H, W, C], Linear, permute back (ConvNeXt)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.fc = nn.Linear(cin, cout)

    def forward(self, x):
        return self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _bn(c, dim=2):
    return (nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d)(c)


def random_model(seed: int, channels: int = 3, size: int = 8, classes: int = 5):
    """A random network [N, channels, size, size] -> [N, classes] (float64, eval, random statistics)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    layers = []
    c, s = 4 + 2 * rng.randrange(3), size
    stem_pad = 1
    if rng.random() < 0.3:
        layers.append(_bn(channels))  # folded into the stem conv (no padding there)
        stem_pad = 0
    layers.append(nn.Conv2d(channels, c, 3, padding=stem_pad))
    s = s - 2 + 2 * stem_pad
    if rng.random() < 0.5:
        layers.append(_bn(c))
    layers.append(nn.ReLU())
    for block in range(rng.randrange(2, 6)):
        # the first block cycles through the kinds: any len(BLOCKS) consecutive seeds cover them all
        kind = BLOCKS[seed % len(BLOCKS)] if block == 0 else rng.choice(BLOCKS)
        if kind == "residual":
            body = [nn.Conv2d(c, c, 3, padding=1, bias=rng.random() < 0.5)]
            if rng.random() < 0.5:
                body.append(_bn(c))
            if rng.random() < 0.5:
                body.append(nn.ReLU())
            layers.append(Residual(Seq(*body)))
        elif kind == "cat":
            a, b = 1 + rng.randrange(4), 1 + rng.randrange(4)
            layers.append(Cat(Seq(nn.Conv2d(c, a, 1), nn.ReLU()), Seq(nn.Conv2d(c, b, 3, padding=1))))
            c = a + b
        elif kind == "gate":
            layers.append(Gate(Seq(nn.Conv2d(c, c, 1))))
        elif kind == "mul":
            t = torch.randn(1, c, 1, 1) if rng.random() < 0.7 else rng.choice([2.0, -0.5])
            layers.append(Scale(t))
        elif kind == "act":
            layers.append(ACTIVATIONS[rng.choice(list(ACTIVATIONS))]())
        elif kind == "pool" and s >= 4 and s % 2 == 0:
            layers.append(rng.choice([nn.AvgPool2d, nn.MaxPool2d])(2))
            s //= 2
        elif kind == "bn":
            layers.append(_bn(c))
        elif kind == "groupnorm" and c % 2 == 0:
            layers.append(nn.GroupNorm(2, c))
        elif kind == "shift":
            layers.append(Shift(torch.randn(1, c, 1, 1)))
        elif kind == "pad" and s <= 8:
            layers.append(Pad(1, rng.choice([0.0, -1.0, 0.5])))
            s += 2
        elif kind == "channels_last":
            cout = 3 + rng.randrange(5)
            layers += [ChannelsLast(c, cout), nn.ReLU()]
            c = cout
        elif kind == "conv":
            pad = rng.choice([0, 1]) if s > 3 else 1
            cout = 3 + rng.randrange(5)
            layers.append(nn.Conv2d(c, cout, 3, padding=pad))
            s, c = s - 2 + 2 * pad, cout
            if rng.random() < 0.4:
                layers.append(_bn(c))
            layers.append(nn.ReLU())
    if rng.random() < 0.3:
        layers.append(nn.AdaptiveAvgPool2d(1))
        s = 1
    layers.append(nn.Flatten())
    f = c * s * s
    if rng.random() < 0.3:
        layers.append(_bn(f, 1))  # before a dense layer: folded into it
    hidden = 6 + rng.randrange(6)
    layers += [nn.Linear(f, hidden)]
    if rng.random() < 0.4:
        layers.append(_bn(hidden, 1))
    layers += [nn.ReLU(), nn.Linear(hidden, classes)]
    model = Seq(*layers)
    _randomize(model)
    return model.eval().double()


def random_sequence_model(seed: int, length: int = 4, features: int = 4, classes: int = 3):
    """A random network on sequences [N, L, F]: dense layers act on F, BatchNorm1d normalises L (not
    foldable into them), some with L == F (a wrong fold raises nothing)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    hidden = rng.choice([features, 3 + rng.randrange(4)])
    layers = [nn.Linear(features, hidden)]
    if rng.random() < 0.7:
        layers.append(_bn(length, 1))
    layers.append(ACTIVATIONS[rng.choice(["relu", "silu"])]())
    if rng.random() < 0.5:
        layers += [nn.Linear(hidden, hidden), _bn(length, 1), nn.ReLU()]
    layers += [nn.Flatten(), nn.Linear(length * hidden, classes)]
    model = Seq(*layers)
    _randomize(model)
    return model.eval().double()


def _randomize(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.uniform_(-1.5, 1.5)  # either sign
                m.bias.uniform_(-0.5, 0.5)
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 2.0)


# -- the reference description ------------------------------------------------------------------

def _affine(bn):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale.detach(), (bn.bias - bn.running_mean * scale).detach()


def describe(seq, sequences: bool = False) -> list:
    """The reference layers of a Seq, BatchNorm folded as the engine's convention says (``sequences``:
    the dense layers act on [N, L, F] and BatchNorm1d on L: nothing folds)."""
    mods, out, k = list(seq), [], 0
    while k < len(mods):
        m = mods[k]
        nxt = mods[k + 1] if k + 1 < len(mods) else None
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w, b = m.weight.detach(), None if m.bias is None else m.bias.detach()
            if isinstance(nxt, (nn.BatchNorm1d, nn.BatchNorm2d)) and not sequences:  # right after: folded
                scale, shift = _affine(nxt)
                w = w * scale.view(-1, *([1] * (w.ndim - 1)))
                b = shift if b is None else b * scale + shift
                k += 1
            out.append(_layer(m, w, b))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale, shift = _affine(m)
            pad = getattr(nxt, "padding", (0,))
            if isinstance(nxt, (nn.Conv2d, nn.Linear)) and all(p == 0 for p in pad) and not sequences:
                # BatchNorm right before a layer without padding: folded into it
                w = nxt.weight.detach()
                b = torch.zeros(w.shape[0], dtype=w.dtype) if nxt.bias is None else nxt.bias.detach()
                view = (1, -1) + (1,) * (w.ndim - 2)
                b = b + (w * shift.view(view)).flatten(1).sum(1)
                w = w * scale.view(view)
                out.append(_layer(nxt, w, b))
                k += 1
                # a BatchNorm after this layer is not folded as well: the next one stays its own layer
                if k + 1 < len(mods) and isinstance(mods[k + 1], (nn.BatchNorm1d, nn.BatchNorm2d)):
                    s2, sh2 = _affine(mods[k + 1])
                    out.append(("bn", s2, sh2))
                    k += 1
            else:
                out.append(("bn", scale, shift))
        elif isinstance(m, nn.ReLU):
            out.append(("relu",))
        elif isinstance(m, (nn.SiLU, nn.Tanh, nn.LeakyReLU)):
            out.append(("act", m))
        elif isinstance(m, nn.GroupNorm):
            out.append(("groupnorm", m.num_groups, m.weight.detach(), m.bias.detach(), m.eps))
        elif isinstance(m, Scale):
            out.append(("mul", m.t))
        elif isinstance(m, nn.AvgPool2d):
            out.append(("avgpool", m.kernel_size))
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            out.append(("global_avgpool",))
        elif isinstance(m, Shift):
            out.append(("addconst", m.t))
        elif isinstance(m, Pad):
            out.append(("pad", m.p, m.value))
        elif isinstance(m, ChannelsLast):
            out.append(("pwlinear", m.fc.weight.detach(), m.fc.bias.detach()))
        elif isinstance(m, nn.MaxPool2d):
            out.append(("maxpool", m.kernel_size))
        elif isinstance(m, nn.Flatten):
            out.append(("flatten",))
        elif isinstance(m, Residual):
            out.append(("residual", describe(m.body)))
        elif isinstance(m, Cat):
            out.append(("cat", describe(m.a), describe(m.b)))
        elif isinstance(m, Gate):
            out.append(("gate", describe(m.body)))
        else:
            raise TypeError(type(m))
        k += 1
    return out


def _layer(m, w, b):
    if isinstance(m, nn.Conv2d):
        return ("conv", w, b, m.stride, m.padding)
    return ("linear", w, b)


# -- the check -------------------------------------------------------------------------------------

def check(seed: int, batch: int = 2, sequences: bool = False) -> dict:
    """Every comparison for network ``seed``: {name: relative error} (engine vs reference/autograd).
    ``sequences``: a random_sequence_model (no zB box for its inputs: the paper preset is skipped)."""
    import clrp

    model = random_sequence_model(seed) if sequences else random_model(seed)
    shape = (batch, 4, 4) if sequences else (batch, 3, 8, 8)
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    layers = describe(model, sequences)
    errors = {}
    with torch.no_grad():
        y = model(x)
        errors["forward (reference description)"] = _rel(ref.forward(layers, x), y)
    plan = engine.plan_for(model, x)
    errors["forward (engine)"] = _rel(engine.run_forward(plan, x).logits, y)
    targets = [int(t) for t in torch.arange(batch) % y.shape[1]]
    seed_r = torch.zeros_like(y)
    seed_r[torch.arange(batch), targets] = y[torch.arange(batch), targets]
    box = tuple(b.double() for b in box_from_normalization(IMAGENET_MEAN, IMAGENET_STD))
    for preset, rules in PRESETS.items():
        if sequences and preset == "paper":
            continue
        got = clrp.explain(model, x, targets, "lrp", rules=preset)
        with torch.no_grad():
            want = ref.lrp(layers, x, seed_r, rules, box=box)
        errors[f"lrp {preset}"] = _rel(got, want)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg)[torch.arange(batch), targets].sum(), xg)
    errors["gradient"] = _rel(clrp.explain(model, x, targets, "gradient"), g)
    errors["gradient_x_input"] = _rel(clrp.explain(model, x, targets, "gradient_x_input"), g * x)
    return errors


def _rel(ours, theirs):
    scale = theirs.abs().max().clamp(min=1e-300)
    return float((ours - theirs).abs().max() / scale)
