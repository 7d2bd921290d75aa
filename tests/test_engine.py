"""Closed forms, conservation, linearity and the CLRP definitions, on small nets and torchvision CNNs."""
import copy
import threading

import pytest
import torch
import torchvision
from torch import nn

import clrp
from clrp import engine
from clrp.errors import ClrpError, InvalidInput, InvalidTarget, UnsupportedModel
from clrp.rules import Composite, Epsilon, ZBox, ZPlus

from .conftest import on_device, relative_error


def lrp_with_seed(model, x, seed, rules="paper", box=(-3.0, 3.0), at=None):
    """The engine's LRP walk from ``seed`` given at the logits (or at node ``at``) to the input."""
    plan = engine.plan_for(model, x)
    fwd = engine.run_forward(plan, x)
    composite = clrp.rules.resolve_composite(rules)
    start = plan.graph.output if at is None else plan.layer_index(at)
    return engine.propagate(plan, fwd, {start: seed}, rules=plan.rules_for(composite), box=box)


def only(rule):
    return Composite("one rule everywhere (test)", conv=rule, linear=rule)


def small_vgg(num_classes=5, bn=False, seed=0):
    torch.manual_seed(seed)
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), *([nn.BatchNorm2d(o)] if bn else []), nn.ReLU(inplace=True)]
    model = nn.Sequential(
        *block(3, 8), nn.MaxPool2d(2), *block(8, 16), nn.MaxPool2d(2), *block(16, 16),
        nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(32, num_classes)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


def images(n=3, size=16, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def positive_targets(model, x):
    """For each sample, a class with a positive logit (so z+ maps must be non-negative)."""
    with torch.no_grad():
        return model(x).argmax(1)


# -- closed forms on tiny layers ---------------------------------------------------------------

def test_zplus_closed_form_dense(device):
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 3.0]]))
        model[2].weight.copy_(torch.tensor([[1.0, 2.0]]))
    model, x, seed = on_device(device, model, torch.tensor([[1.0, 2.0]]), torch.tensor([[16.0]]))
    # h = relu([1-2, 2+6]) = [0, 8]; y = 16. Output layer z+: R_h = [0, 16].
    # Layer 1, unit 2 (R=16): z+ = 1*2 + 2*3 = 8 -> R_x = [2/8*16, 6/8*16] = [4, 12].
    r = lrp_with_seed(model, x, seed, only(ZPlus(0.0, bias=False)))
    assert torch.allclose(r.cpu(), torch.tensor([[4.0, 12.0]]))


def test_zbox_closed_form(device):
    model = nn.Sequential(nn.Linear(2, 1, bias=False)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0]]))
    model, x, seed = on_device(device, model, torch.tensor([[0.5, 0.25]]), torch.tensor([[1.0]]))
    low, high = -1.0, 1.0
    # z_i = x_i w_i - l w+_i - h w-_i: [0.5 + 1, -0.5 + 2] = [1.5, 1.5]; y = 0.5 - 0.5 = 0 -> seed 1.
    r = lrp_with_seed(model, x, seed, only(ZBox(low, high, 0.0)))
    assert torch.allclose(r.cpu(), torch.tensor([[0.5, 0.5]]))


def test_epsilon_closed_form(device):
    model = nn.Sequential(nn.Linear(2, 1)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 3.0]]))
        model[0].bias.fill_(1.0)
    model, x, seed = on_device(device, model, torch.tensor([[2.0, 1.0]]), torch.tensor([[6.0]]))
    # z = 2 + 3 + 1 = 6; R = [2, 3] / (6 + eps) * 6
    eps = 0.5
    r = lrp_with_seed(model, x, seed, only(clrp.rules.Epsilon(eps)))
    assert torch.allclose(r.cpu(), torch.tensor([[2.0, 3.0]]) * 6 / 6.5)


# -- properties on small CNNs and torchvision architectures -------------------------------------

ARCHS = {
    "small": lambda: (small_vgg(), 16),
    "small_bn": lambda: (small_vgg(bn=True), 16),
    "vgg11": lambda: (torchvision.models.vgg11(num_classes=10).eval(), 64),
    "alexnet": lambda: (torchvision.models.alexnet(num_classes=10).eval(), 96),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_forward_matches_model_and_paper_lrp_conserves(arch, device):
    torch.manual_seed(0)
    model, size = ARCHS[arch]()
    model, x = on_device(device, model, images(2, size))
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(engine.forward(model, x), ref, atol=1e-5, rtol=1e-4)
    t = positive_targets(model, x)
    r = clrp.explain(model, x, t, "lrp", rules="paper", box=(-3.5, 3.5))
    y_t = ref.gather(1, t[:, None]).squeeze(1)
    # z+/zB without biases conserve: the input sum is the seed (up to relevance lost to
    # units that only a positive bias switched on, which these nets do not have).
    assert torch.allclose(r.flatten(1).sum(1), y_t, rtol=1e-5, atol=1e-6), (r.flatten(1).sum(1), y_t)
    assert (r >= 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn"])
def test_torchvision_vgg16_variants(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    if name == "vgg16_bn":
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 2)
    x = images(1, 224)
    with torch.no_grad():
        ref = model(x)
    assert relative_error(engine.forward(model, x), ref) < 1e-4
    t = int(ref.argmax())
    r = clrp.explain(model, x, t, "lrp", rules="paper")
    assert abs(float(r.sum()) - float(ref[0, t])) <= 1e-5 * abs(float(ref[0, t])) + 1e-7
    assert (r >= 0).all()


def test_batchnorm_is_folded_like_a_hand_folded_model():
    model = small_vgg(bn=True)
    folded = small_vgg(bn=False)
    # Hand-fold every BN into the preceding conv of a copy without BN layers.
    convs_bn = [(m, model[i + 1]) for i, m in enumerate(model) if isinstance(m, nn.Conv2d)]
    convs = [m for m in folded if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for (conv, bn), target in zip(convs_bn, convs):
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            target.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            target.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
        lin_bn = [m for m in model if isinstance(m, nn.Linear)]
        for src, dst in zip(lin_bn, [m for m in folded if isinstance(m, nn.Linear)]):
            dst.load_state_dict(src.state_dict())
    x = images(2)
    for method, rules in (("lrp", "epsilon_plus"), ("clrp2", "paper"), ("gradient", "paper")):
        a = clrp.explain(model, x, [1, 2], method, rules=rules, box=(-3.0, 3.0))
        b = clrp.explain(folded, x, [1, 2], method, rules=rules, box=(-3.0, 3.0))
        assert relative_error(a, b) < 1e-5, method
    # The user's BN layers are untouched.
    assert not torch.equal(model[1].running_var, torch.ones(8))


def test_linearity_in_the_seed():
    model = small_vgg()
    x = images(1)
    s1, s2 = torch.randn(1, 5), torch.randn(1, 5)

    def lrp(seed):
        return lrp_with_seed(model, x, seed, "epsilon_gamma_box")

    assert torch.allclose(lrp(2 * s1 - 3 * s2), 2 * lrp(s1) - 3 * lrp(s2), atol=1e-5, rtol=1e-4)


class _Pool(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        return torch.nn.functional.max_pool2d(x, self.kernel, self.stride).flatten(1)


@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 2), (3, 1)])
def test_maxpool_routes_like_its_gradient(kernel, stride):
    x = torch.randn(2, 3, 13, 13, requires_grad=True)
    y = _Pool(kernel, stride)(x)
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, g)
    ours = lrp_with_seed(_Pool(kernel, stride).eval(), x.detach(), g)
    assert torch.allclose(ours, expected)


# -- CLRP definitions: one pass equals the two-pass closed forms ---------------------------------

def _lrp_with_seed(model, x, seed, box=(-3.0, 3.0)):
    return lrp_with_seed(model, x, seed, "paper", box)


def _negated_row_copy(model, t):
    dual = copy.deepcopy(model)
    with torch.no_grad():
        dual[-1].weight[t] *= -1
        dual[-1].bias[t] *= -1
    return dual


def test_clrp1_uniform_closed_form(device):
    model, x = on_device(device, small_vgg(), images(2))
    t = torch.tensor([1, 3], device=device)
    with torch.no_grad():
        y = model(x)
    y_t = y.gather(1, t[:, None])
    seed = torch.where(torch.nn.functional.one_hot(t, 5).bool(), y_t, -y_t / 4)
    expected = _lrp_with_seed(model, x, seed).clamp(min=0)
    ours = clrp.explain(model, x, t, "clrp1", dual="uniform", box=(-3.0, 3.0))
    assert relative_error(ours, expected) < 1e-5
    assert ours.abs().sum() > 0


def test_clrp1_abs_logits_reference_rendering_two_pass():
    model, x = small_vgg(), images(2)
    t = torch.tensor([0, 4])
    with torch.no_grad():
        y = model(x)
    onehot = torch.nn.functional.one_hot(t, 5).float()
    r_t = _lrp_with_seed(model, x, onehot * y.gather(1, t[:, None]))
    r_d = _lrp_with_seed(model, x, (1 - onehot) * y.abs())
    d = r_t / r_t.flatten(1).sum(1).view(-1, 1, 1, 1) - r_d / r_d.flatten(1).sum(1).view(-1, 1, 1, 1)
    expected = (d / d.flatten(1).amax(1).view(-1, 1, 1, 1)).clamp(min=0)
    ours = clrp.explain(model, x, t, "clrp1", dual="abs_logits", contrast="reference", box=(-3.0, 3.0))
    assert relative_error(ours, expected) < 1e-4


@pytest.mark.parametrize("contrast", ["clamp", "signed"])
def test_clrp2_equals_two_pass_with_negated_weights(contrast, device):
    model, x = on_device(device, small_vgg(), images(1))
    t = 2
    with torch.no_grad():
        y_t = model(x)[0, t]
    seed = torch.nn.functional.one_hot(torch.tensor([t], device=device), 5).float() * y_t
    r_t = _lrp_with_seed(model, x, seed)
    r_d = _lrp_with_seed(_negated_row_copy(model, t), x, seed)
    expected = r_t - r_d
    if contrast == "clamp":
        expected = expected.clamp(min=0)
    ours = clrp.explain(model, x, t, "clrp2", contrast=contrast, box=(-3.0, 3.0))
    assert relative_error(ours, expected) < 1e-5


def test_sglrp_is_lrp_seeded_with_the_softmax_gradient():
    model, x = small_vgg(), images(2)
    t = torch.tensor([1, 2])
    with torch.no_grad():
        p = model(x).softmax(1)
    jac = torch.stack([torch.autograd.functional.jacobian(lambda z: z.softmax(0), model(x)[i].detach())[t[i]]
                       for i in range(2)])
    expected = _lrp_with_seed(model, x, jac)
    assert relative_error(clrp.explain(model, x, t, "sglrp", box=(-3.0, 3.0)), expected) < 1e-5
    assert torch.allclose(jac.gather(1, t[:, None]).squeeze(1), p.gather(1, t[:, None]).squeeze(1) *
                          (1 - p.gather(1, t[:, None]).squeeze(1)))


def test_abs_logit_seed_flips_a_negative_logit():
    model, x = small_vgg(), images(1)
    with torch.no_grad():
        t = int(model(x).argmin())
    signed = clrp.explain(model, x, t, "lrp", box=(-3.0, 3.0))
    absolute = clrp.explain(model, x, t, "lrp", seed="abs_logit", box=(-3.0, 3.0))
    assert torch.allclose(signed, -absolute)


# -- batching targets, dedupe --------------------------------------------------------------------

def test_several_targets_for_one_image_share_one_forward(monkeypatch):
    import clrp.methods
    model, x = small_vgg(), images(1)
    rows = []
    original = clrp.methods.run_forward

    def counting(plan, x, **kw):
        fwd = original(plan, x, **kw)
        rows.append(fwd.rows)
        return fwd

    monkeypatch.setattr(clrp.methods, "run_forward", counting)
    r = clrp.explain(model, x, [0, 1, 2, 3], "clrp2", box=(-3.0, 3.0))
    assert r.shape == (4, 3, 16, 16)
    assert rows == [1]  # one forward pass, on one row
    monkeypatch.undo()
    for k in range(4):
        single = clrp.explain(model, x, k, "clrp2", box=(-3.0, 3.0))
        assert relative_error(r[k:k + 1], single) < 1e-5


def test_repeated_rows_inside_a_batch_are_deduplicated():
    model = small_vgg()
    a, b = images(2)
    x = torch.stack([a, b, a, b])
    plan = engine.plan_for(model, x)
    fwd = engine.run_forward(plan, x)
    assert fwd.rows == 2
    r = clrp.explain(model, x, [0, 1, 2, 3], "lrp", box=(-3.0, 3.0))
    for i in range(4):
        assert relative_error(r[i:i + 1], clrp.explain(model, x[i:i + 1], i, "lrp", box=(-3.0, 3.0))) < 1e-5


# -- hidden neurons -------------------------------------------------------------------------------

def test_neuron_explanation_conserves_its_activation():
    model, x = small_vgg(), images(1)
    layer = "7"  # ReLU after the 3rd conv
    plan = engine.plan_for(model, x)
    act = engine.run_forward(plan, x, stop=plan.layer_index(layer)).values[plan.layer_index(layer)]
    r = clrp.explain_neuron(model, x, layer, 5, box=(-3.0, 3.0))
    assert torch.allclose(r.sum(), act[0, 5].sum(), rtol=1e-5)
    r_pos = clrp.explain_neuron(model, x, layer, 5, position=(1, 2), box=(-3.0, 3.0))
    assert torch.allclose(r_pos.sum(), act[0, 5, 1, 2], rtol=1e-5, atol=1e-7)


def test_neuron_contrast_against_another_channel_closed_form():
    model, x = small_vgg(), images(1)
    a = clrp.explain_neuron(model, x, "7", 3, box=(-3.0, 3.0))
    b = clrp.explain_neuron(model, x, "7", 4, box=(-3.0, 3.0))
    expected = (a - b * a.sum() / b.sum()).clamp(min=0)
    ours = clrp.explain_neuron(model, x, "7", 3, contrast=4, box=(-3.0, 3.0))
    assert relative_error(ours, expected) < 1e-5
    rest = clrp.explain_neuron(model, x, "7", 3, contrast="rest", output="signed", box=(-3.0, 3.0))
    assert abs(float(rest.sum())) < 1e-4 * float(a.sum())  # equal totals cancel


def test_layer_relevance_and_conditioning_decompose_the_class_explanation():
    model, x = small_vgg(), images(1)
    t = int(positive_targets(model, x))
    full = clrp.explain(model, x, t, "lrp", box=(-3.0, 3.0))
    per_channel = clrp.layer_relevance(model, x, t, "7", box=(-3.0, 3.0))
    assert per_channel.shape == (1, 16)
    assert torch.allclose(per_channel.sum(), full.sum(), rtol=1e-5)
    parts = sum(clrp.explain(model, x, t, "lrp", condition=("7", [k]), box=(-3.0, 3.0)) for k in range(16))
    assert relative_error(parts, full) < 1e-5
    one = clrp.explain(model, x, t, "lrp", condition=("7", 3), box=(-3.0, 3.0))
    assert torch.allclose(one.sum(), per_channel[0, 3], rtol=1e-4, atol=1e-7)


# -- errors ---------------------------------------------------------------------------------------

class _Attention(nn.Module):
    """A block LRP has no rule for (a cumulative sum; a product of two activations now takes the
    preset's product rule)."""

    def __init__(self):
        super().__init__()
        self.q = nn.Conv2d(3, 3, 1)
        self.k = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return (self.q(x) * self.k(x)).cumsum(1)


class _UsesAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = _Attention()
        self.fc = nn.Linear(3 * 16 * 16, 2)

    def forward(self, x):
        return self.fc(self.block(x).flatten(1))


def test_unsupported_nodes_are_named_by_module_path_and_type():
    model = _UsesAttention().eval()
    with pytest.raises(UnsupportedModel, match=r"block \(_Attention\): cumsum: no LRP rule"):
        clrp.explain(model, images(1), 0, "lrp")
    # the gradient family still works, and so does LRP below the unsupported node
    assert torch.isfinite(clrp.explain(model, images(1), 0, "gradient")).all()
    assert torch.isfinite(clrp.explain_neuron(model, images(1), "block.q", 1)).all()


def test_untraceable_models_get_the_autograd_methods():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 2)

        def forward(self, x):
            x = x.flatten(1)
            if x.sum() > 0:  # control flow on values: torch.export cannot follow it
                x = x * 2
            return self.fc(x)

    model, x = DataDependent().eval(), torch.randn(1, 3, 2, 2)
    with pytest.raises(UnsupportedModel, match="could not trace DataDependent"):
        clrp.explain(model, x, 0, "lrp")
    g = clrp.explain(model, x, 1, "gradient")
    xg = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(xg)[0, 1], xg)
    assert torch.allclose(g, expected)
    assert torch.isfinite(clrp.explain(model, x, 1, "integrated_gradients", steps=4)).all()


def test_bad_arguments_get_clear_errors():
    model = small_vgg()
    with pytest.raises(InvalidTarget, match="out of range"):
        clrp.explain(model, images(1), 7, "lrp")
    with pytest.raises(InvalidTarget, match="2 targets for 3 inputs"):
        clrp.explain(model, images(3), [0, 1], "lrp")
    with pytest.raises(InvalidInput, match=r"shape \[N, 1, 16, 16\]: 0 \(Conv2d\).*3 channels"):
        clrp.explain(model, torch.randn(1, 1, 16, 16), 0, "lrp")
    with pytest.raises(InvalidInput, match="shape"):
        clrp.explain(model, torch.randn(3, 16, 16), 0, "lrp")
    with pytest.raises(ClrpError, match="unknown method"):
        clrp.explain(model, images(1), 0, "nope")
    with pytest.raises(ClrpError, match="no option"):
        clrp.explain(model, images(1), 0, "lrp", steps=3)
    with pytest.raises(ClrpError, match="unknown rule preset"):
        clrp.explain(model, images(1), 0, "lrp", rules="nope")
    with pytest.raises(InvalidTarget, match="no layer named 'conv99'"):
        clrp.layer_relevance(model, images(1), 0, "conv99")
    with pytest.raises(InvalidTarget, match="channel 99"):
        clrp.explain_neuron(model, images(1), "7", 99)


def test_clrp2_refuses_a_sign_symmetric_output_rule():
    with pytest.raises(ClrpError, match="identically zero"):
        clrp.explain(small_vgg(), images(1), 0, "clrp2", rules="epsilon_plus")
    r = clrp.explain(small_vgg(), images(1), 0, "clrp2", rules={"preset": "epsilon_plus", "13": "zplus"})
    assert r.abs().sum() > 0


def test_per_layer_rule_overrides():
    model, x = small_vgg(), images(1)
    base = clrp.explain(model, x, 1, "lrp", rules="epsilon_plus")
    same = clrp.explain(model, x, 1, "lrp", rules={"preset": "epsilon_plus"})
    by_name = clrp.explain(model, x, 1, "lrp", rules={"preset": "epsilon_plus", "[36]": "gamma"})
    by_type = clrp.explain(model, x, 1, "lrp", rules={"preset": "epsilon_plus", nn.Linear: "zplus"})
    assert torch.equal(base, same)
    assert relative_error(by_name, base) > 1e-3
    assert relative_error(by_type, base) > 1e-3
    # Spelling the preset out layer by layer gives the preset.
    explicit = {"preset": "paper", nn.Conv2d: clrp.rules.ZPlus(), nn.Linear: clrp.rules.Epsilon()}
    assert torch.equal(clrp.explain(model, x, 1, "lrp", rules=explicit), base)


# -- shared-model safety --------------------------------------------------------------------------

def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            [(n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
              len(getattr(m, "_backward_pre_hooks", {}))) for n, m in model.named_modules()],
            model.training)


def _same(a, b):
    return all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[1:] == b[1:]


def test_explaining_never_mutates_the_model():
    model = small_vgg(bn=True)
    model[0].weight.requires_grad_(False)  # a user's mixed flags must survive
    before = _snapshot(model)
    x = images(2)
    for method, opts in [("lrp", {}), ("clrp1", {}), ("clrp2", {}), ("sglrp", {}), ("gradient", {}),
                         ("guided_backprop", {}), ("deconvnet", {}), ("gradcam", {}),
                         ("integrated_gradients", {"steps": 3}), ("smoothgrad", {"samples": 2})]:
        clrp.explain(model, x, [0, 1], method, **opts)
    clrp.explain_neuron(model, x, "5", 1, contrast="rest")
    with pytest.raises(InvalidTarget):
        clrp.explain(model, x, [0, 99], "clrp2")
    assert _same(before, _snapshot(model))


def test_threads_give_the_serial_results():
    model = small_vgg()
    x = images(2, 32)
    jobs = [(m, t) for m in ("lrp", "clrp1", "clrp2", "guided_backprop") for t in ([0, 1], [2, 3])]
    serial = [clrp.explain(model, x, t, m) for m, t in jobs]
    results = [None] * len(jobs)
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        m, t = jobs[i]
        results[i] = clrp.explain(model, x, t, m)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(torch.equal(a, b) for a, b in zip(serial, results))


@pytest.mark.parametrize("rule", ["flat", "wsquare"])
def test_input_independent_first_layer_rules_match_zennit(rule):
    zennit = pytest.importorskip("zennit")
    from zennit.attribution import Gradient
    from zennit.composites import SpecialFirstLayerMapComposite
    from zennit.rules import Epsilon, Flat, Norm, Pass, WSquare, ZPlus
    from zennit.types import Activation, AvgPool, Convolution
    model = small_vgg()
    x = images(2)
    first = {"flat": Flat(), "wsquare": WSquare()}[rule]
    composite = SpecialFirstLayerMapComposite(
        layer_map=[(Activation, Pass()), (AvgPool, Norm()), (Convolution, ZPlus()), (nn.Linear, Epsilon())],
        first_map=[(Convolution, first)])
    hooked = copy.deepcopy(model)
    for m in hooked.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    t = torch.tensor([1, 3])
    with torch.no_grad():
        seed = torch.eye(5)[t] * hooked(x)
    with Gradient(model=hooked, composite=composite) as attributor:
        _, theirs = attributor(x.clone().requires_grad_(True), seed)
    ours = clrp.explain(model, x, t, "lrp", rules={"preset": "epsilon_plus", "0": rule})
    assert relative_error(ours, theirs) < 1e-4


def test_a_model_ending_in_a_sum_over_positions_is_explained():
    """``x.sum(dims)`` as the last op gave an expanded (stride-0) gradient that the pooling rule
    wrote into in place: a RuntimeError instead of a map. LRP-0 on a bias-free ReLU network with
    sum pooling equals gradient x input, a closed form to check against."""

    class SumHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3, bias=False)
            self.l = nn.Linear(4, 5, bias=False)

        def forward(self, x):
            return self.l(torch.relu(self.c(x)).permute(0, 2, 3, 1)).sum((1, 2))

    torch.manual_seed(0)
    model = SumHead().eval().double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([0, 3])
    lrp0 = Epsilon(1e-12)  # zero denominators (dead positions) carry zero relevance
    R = clrp.explain(model, x, t, "lrp", rules={"c": lrp0, "l": lrp0})
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).gather(1, t[:, None]).sum(), xg)
    torch.testing.assert_close(R, x * g, rtol=1e-5, atol=1e-8)  # the pool's own stabiliser: 1e-6
