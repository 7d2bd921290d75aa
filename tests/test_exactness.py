"""No silent wrong answers (issue 17): each case an audit found where the engine explained a
different function than the model's, reproduced, against a fresh copy or the float64 layer-by-layer
reference of tests/lrp_reference.py."""
import copy
import warnings

import pytest
import torch
from torch import nn

import clrp
from clrp import engine
from clrp.methods import VANISHING

from . import lrp_reference as ref
from .conftest import relative_error

ZPLUS = {"conv": ("zplus", 1e-9, False), "linear": ("zplus", 1e-9, False), "first": None, "add": 1e-9,
         "norm": 1e-9, "pool": 1e-6}


def _zplus_reference(layers, x, targets):
    """The independent layer-by-layer z+ LRP of ``layers`` for one target per sample."""
    with torch.no_grad():
        y = ref.forward(layers, x)
        seed = torch.zeros_like(y)
        rows = torch.arange(len(targets))
        seed[rows, targets] = y[rows, targets]
        return ref.lrp(layers, x, seed, ZPLUS)


class Scale(nn.Module):
    """x * t with a fixed tensor t (a buffer: a layer scale, a mask)."""

    def __init__(self, t):
        super().__init__()
        self.register_buffer("t", t)

    def forward(self, x):
        return x * self.t


# -- 1. weights edited through .data -----------------------------------------------------------------

def _convnet(bn=True):
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6) if bn else nn.Identity(), nn.ReLU(), nn.Conv2d(6, 4, 3),
              nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)]
    model = nn.Sequential(*layers).eval()
    if bn:
        with torch.no_grad():
            model[1].running_mean.uniform_(-0.5, 0.5)
            model[1].running_var.uniform_(0.5, 2)
            model[1].weight.uniform_(0.5, 1.5)
            model[1].bias.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("edit", [
    lambda m: m[0].weight.data.copy_(torch.randn_like(m[0].weight)),  # folded into BN (cached)
    lambda m: m[3].weight.data.mul_(-1),  # w+ of a z+ conv (cached)
    lambda m: m[6].weight.data.copy_(m[6].weight.data.flip(1)),  # a permutation within each unit
    lambda m: m[1].weight.data.mul_(3),  # a BatchNorm parameter
    lambda m: m[0].weight.data.view(-1)[5].add_(0.25),  # one element
], ids=["conv-folded", "conv-wplus", "linear-permuted", "bn-weight", "one-element"])
@pytest.mark.parametrize("rules", ["epsilon_plus", "paper"])
def test_weights_edited_through_data_are_seen(edit, rules):
    model, x = _convnet(), torch.randn(2, 3, 6, 6)
    before = clrp.explain(model, x, [0, 1], "lrp", rules=rules)
    clrp.explain(model, x, [0, 1], "clrp1", rules=rules)
    edit(model)
    after = clrp.explain(model, x, [0, 1], "lrp", rules=rules)
    fresh = clrp.explain(copy.deepcopy(model), x, [0, 1], "lrp", rules=rules)
    assert relative_error(after, before) > 1e-4
    assert torch.equal(after, fresh)


# -- 2. sign analysis ------------------------------------------------------------------------------

def test_a_product_with_a_tensor_of_either_sign_is_not_taken_as_nonnegative():
    torch.manual_seed(1)
    t = torch.tensor([1.0, -2.0, 0.5, -1.0]).view(1, 4, 1, 1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Scale(t), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16, 3)).eval().double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    got = clrp.explain(model, x, [0, 2], "lrp", rules="zplus")
    layers = [("conv", model[0].weight, model[0].bias, 1, 0), ("relu",), ("mul", t.double()),
              ("conv", model[3].weight, model[3].bias, 1, 0), ("relu",), ("flatten",),
              ("linear", model[6].weight, model[6].bias)]
    assert relative_error(got, _zplus_reference(layers, x, [0, 2])) < 1e-9


def test_a_product_with_a_nonnegative_python_number_stays_nonnegative():
    g = _sign_graph(lambda x: torch.relu(x) * 2.0)
    assert g


def _sign_graph(fn):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(fn(self.conv(x)).flatten(1))
    model = M().eval()
    plan = engine.plan_for(model, torch.randn(1, 2, 2, 2))
    return plan.nonnegative_input(plan.graph.nodes[plan.layer_index("fc")])


# -- 3. BatchNorm1d after a Linear on [N, L, F] ------------------------------------------------------

def test_batchnorm1d_after_a_linear_on_sequences_is_not_folded_along_features():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.2, 3)
        model[1].weight.uniform_(0.5, 2)
    x = torch.randn(3, 4, 4)  # [N, L, F] with L == F: nothing raises on a wrong fold
    plan = engine.plan_for(model, x)
    fwd = engine.run_forward(plan, x)
    assert relative_error(fwd.logits, model(x).detach()) < 1e-6
    r = clrp.explain(model, x, [0, 1, 2], "lrp", rules="epsilon_plus")
    assert torch.isfinite(r).all() and r.abs().sum() > 0


# -- 6. vanishing relevance ----------------------------------------------------------------------------

def _tiny_net(scale):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():  # layer k's weights times scale, its bias times scale ** k: the output times scale ** 3
        for k, m in enumerate(layers, 1):
            m.weight.mul_(scale)
            m.bias.mul_(scale ** k)
    return model


def test_conserving_lrp_on_a_healthy_network_reports_conservation_without_a_warning():
    model, x = _tiny_net(1.0), torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", engine.ClrpWarning)
        r, info = clrp.explain(model, x, [0, 1], "lrp", rules="zplus", return_info=True)
    assert info.conservation.shape == (2,)
    assert torch.allclose(info.conservation, torch.ones(2, dtype=info.conservation.dtype), atol=1e-3)
    assert not info.vanished and not info.all_zero.any()


def test_vanishing_relevance_is_said_and_a_relative_stabiliser_keeps_it():
    x = torch.randn(2, 3, 8, 8)
    healthy = clrp.explain(_tiny_net(1.0), x, [0, 1], "lrp", rules="paper")
    model = _tiny_net(1e-4)  # logits ~1e-12: the paper's absolute stabiliser 1e-9 absorbs nearly everything
    with pytest.warns(engine.ClrpWarning, match="reaches the input"):
        r, info = clrp.explain(model, x, [0, 1], "lrp", rules="paper", return_info=True)
    assert float(info.conservation.max()) < 0.05 and info.vanished
    rel, info_rel = clrp.explain(model, x, [0, 1], "lrp", rules={"preset": "paper", "stabilizer": "relative"},
                                 return_info=True)
    assert not info_rel.vanished
    assert torch.allclose(info_rel.conservation, torch.ones(2, dtype=rel.dtype), atol=1e-3)
    # z+ / zB without biases are homogeneous: the tiny network's map is the healthy one, scaled
    factor = (healthy.flatten(1).sum(1) / rel.flatten(1).sum(1)).view(-1, 1, 1, 1)
    assert relative_error(rel * factor, healthy) < 1e-3


def test_an_all_zero_map_is_said():
    model = _tiny_net(1e-12)  # logits ~1e-36 (about float32's smallest normal): maps exactly zero
    x = torch.randn(1, 3, 8, 8)
    with pytest.warns(engine.ClrpWarning, match="zero everywhere"):
        r, info = clrp.explain(model, x, 0, "clrp2", return_info=True)
    assert bool(info.all_zero.all()) == bool((r == 0).all())
    assert info.all_zero.all()


# -- found by the differential fuzzer (tests/test_fuzz_engine.py) -----------------------------------------

def test_a_gate_on_a_sigmoid_like_signal_is_the_factor_computed_from_the_other():
    # tanh(h) * sigmoid(conv(tanh(h))): both factors look like gates; the gate is the one computed from the other
    from .fuzz_graphs import Gate, Seq
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), Gate(Seq(nn.Conv2d(4, 4, 1))), nn.ReLU(),
                          nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval().double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    got = clrp.explain(model, x, [0, 2], "lrp", rules="zplus")
    layers = [("conv", model[0].weight, model[0].bias, 1, 1), ("act", torch.tanh),
              ("gate", [("conv", model[2].body[0].weight, model[2].body[0].bias, 1, 0)]), ("relu",),
              ("conv", model[4].weight, model[4].bias, 1, 0), ("relu",), ("flatten",),
              ("linear", model[7].weight, model[7].bias)]
    assert relative_error(got, _zplus_reference(layers, x, [0, 2])) < 1e-9


def test_which_presets_conserve_and_the_stabilizer_option_is_checked():
    from clrp.rules import RULES, Relative, resolve_composite
    assert RULES["paper"].conserving and RULES["zplus"].conserving
    assert not RULES["epsilon_plus"].conserving  # biases take a share
    rel = resolve_composite({"preset": "paper", "stabilizer": "relative"})
    assert rel.conserving and isinstance(rel.conv.stabilizer, Relative) and isinstance(rel.pool, Relative)
    assert not isinstance(RULES["paper"].conv.stabilizer, Relative)  # the preset itself is untouched
    with pytest.raises(clrp.ClrpError, match="stabilizer must be"):
        resolve_composite({"preset": "paper", "stabilizer": "tiny"})


def test_a_conditioned_map_that_is_zero_is_not_warned_about():
    model, x = _tiny_net(1.0), torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", engine.ClrpWarning)
        r, info = clrp.explain(model, x, 0, "lrp", rules="zplus", condition=("3", []), return_info=True)
    assert (r == 0).all() and info.all_zero.all()


@pytest.mark.slow
def test_default_init_efficientnet_vanishes_with_a_warning_and_not_with_relative_stabilisers():
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b0().eval()  # default init: logits ~1e-14
    x = torch.randn(1, 3, 64, 64)
    with pytest.warns(engine.ClrpWarning, match="reaches the input|zero everywhere"):
        _, info = clrp.explain(model, x, 3, "lrp", return_info=True)
    assert float(info.conservation[0]) < 0.1
    r, info = clrp.explain(model, x, 3, "lrp", rules={"preset": "paper", "stabilizer": "relative"}, return_info=True)
    assert 0.5 < float(info.conservation[0]) < 1.5 and not info.vanished and (r != 0).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_the_weight_checksum_sees_every_single_change_and_reordered_units(dtype):
    from clrp.engine.plan import fingerprint
    torch.manual_seed(5)
    w = torch.randn(6, 3, 3, 3).to(dtype)
    base = fingerprint(w)
    for i in range(0, w.numel(), 7):  # one ulp of one element
        v = w.clone()
        flat = v.view(-1)
        flat[i] = torch.nextafter(flat[i], torch.tensor(float("inf"), dtype=dtype))
        assert not torch.equal(fingerprint(v), base)
    assert not torch.equal(fingerprint(w[[1, 0, 2, 3, 4, 5]]), base)  # two units swapped
    b = torch.randn(5).to(dtype)
    assert not torch.equal(fingerprint(b.flip(0)), fingerprint(b))  # vectors: bit for bit
    assert torch.equal(fingerprint(w.clone()), base)


class UniformAttention(nn.Module):
    """Four layers of self-attention over 4 tokens whose scores are tiny (near-uniform weights), no
    residuals, then a dense head: AttnLRP's softmax rule passes almost nothing, so each layer keeps
    about the half of the relevance that goes to the values."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4 * 3, 5)

    def forward(self, x):  # x [N, 4, 3]
        for _ in range(4):
            x = (x @ x.transpose(1, 2) * 1e-3).softmax(-1) @ x
        return self.head(x.flatten(1))


def test_relevance_vanishing_under_a_non_conserving_preset_is_said_too():
    torch.manual_seed(0)
    model, x = UniformAttention().eval(), torch.rand(1, 4, 3) + 0.5
    with pytest.warns(engine.ClrpWarning, match="reaches the input.*cp_lrp"):
        r, info = clrp.explain(model, x, 2, "lrp", rules="attnlrp", box=(0, 2), return_info=True)
    assert float(info.conservation[0]) < VANISHING and info.vanished and (r != 0).any()
    _, info = clrp.explain(model, x, 2, "lrp", rules="cp_lrp", box=(0, 2), return_info=True)  # attention weights constant
    assert float(info.conservation[0]) > 0.5 and not info.vanished


@pytest.mark.slow
def test_default_init_maxvit_vanishes_with_a_warning_under_attnlrp_and_not_under_cp_lrp():
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.maxvit_t().eval()  # near-uniform attention: the softmax rule passes ~nothing
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with pytest.warns(engine.ClrpWarning, match="reaches the input"):
        _, info = clrp.explain(model, x, 3, "lrp", rules="attnlrp", return_info=True)
    assert float(info.conservation[0]) < VANISHING
    _, info = clrp.explain(model, x, 3, "lrp", rules="cp_lrp", return_info=True)
    assert 0.5 < float(info.conservation[0]) < 1.5 and not info.vanished
