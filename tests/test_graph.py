"""The graph engine: closed forms on tiny graphs (residual add, concatenation, gate, pad, channel
shuffle, BatchNorm folding), the user's names, the weight cache and the input checks."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import clrp
from clrp import engine
from clrp.engine import ClrpWarning
from clrp.errors import ClrpError, InvalidInput
from clrp.rules import AbsSum, Composite, Epsilon, ZPlus, ZSum

from .conftest import relative_error


TINY = 1e-12  # stabiliser: keeps 0/0 at 0 without changing the closed forms


def rules(conv=None, add=None):
    conv = conv or ZPlus(TINY, bias=False)
    return Composite("test", conv=conv, linear=ZPlus(TINY, bias=False), add=add or ZSum(TINY))


class Residual(nn.Module):
    """y = x + conv(x) with a 1x1 conv of weight w, then a dense layer of ones."""

    def __init__(self, w):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        self.fc = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(w)
            self.fc.weight.fill_(1.0)

    def forward(self, x):
        return self.fc(torch.flatten(x + self.conv(x), 1))


def test_residual_add_splits_by_contribution():
    x = torch.tensor([[[[1.0, 3.0]]]])
    model = Residual(-0.5).eval()  # y = x - 0.5 x = 0.5 x; logit = 0.5 * 4 = 2
    R_y = 0.5 * x.flatten(1)  # the dense layer (positive weights, positive inputs) passes y's shares
    # z rule on the sum: the skip gets x / 0.5x = 2 R_y, the conv branch -0.5x / 0.5x = -R_y
    at_conv = clrp.layer_relevance(model, x, 0, "conv", rules=rules(), spatial=True)
    assert torch.allclose(at_conv.flatten(1), -R_y)
    # z+ on the conv (negative weight, positive input) passes nothing: the input keeps 2 R_y
    r = clrp.explain(model, x, 0, "lrp", rules=rules())
    assert torch.allclose(r.flatten(1), 2 * R_y)
    # the epsilon rule (no stabiliser) passes the branch's -R_y on: the sum conserves
    r = clrp.explain(model, x, 0, "lrp", rules=rules(conv=Epsilon(0.0)))
    assert torch.allclose(r.flatten(1), R_y)
    # the absolute-value split: |x| / 1.5|x| = 2/3 to the skip, 1/3 to the branch
    at_conv = clrp.layer_relevance(model, x, 0, "conv", rules=rules(add=AbsSum(TINY)), spatial=True)
    assert torch.allclose(at_conv.flatten(1), R_y / 3)
    # a preset's add rule can be overridden by node name
    named = clrp.layer_relevance(model, x, 0, "conv", rules={"preset": rules(), "add": AbsSum(TINY)}, spatial=True)
    assert torch.allclose(named.flatten(1), R_y / 3)


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1, bias=False)
        self.b = nn.Conv2d(2, 1, 1, bias=False)
        self.fc = nn.Linear(4 * 4, 2, bias=False)

    def forward(self, x):
        return self.fc(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1).flatten(1))


def test_concatenation_routes_relevance_by_slice():
    torch.manual_seed(0)
    model, x = Branches().eval(), torch.rand(1, 2, 2, 2)
    at_cat = clrp.layer_relevance(model, x, 1, "cat", spatial=True, rules=rules())
    at_a = clrp.layer_relevance(model, x, 1, "relu", spatial=True, rules=rules())
    at_b = clrp.layer_relevance(model, x, 1, "relu_1", spatial=True, rules=rules())
    assert torch.equal(at_a, at_cat[:, :3]) and torch.equal(at_b, at_cat[:, 3:])
    with torch.no_grad():
        logit = model(x)[0, 1]
    assert torch.allclose(at_cat.sum(), logit)


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.fc = nn.Conv2d(2, 2, 1)
        self.head = nn.Linear(2 * 2 * 2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.uniform_(0.1, 1.0)
            self.head.weight.uniform_(0.1, 1.0)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.fc(h.mean((2, 3), keepdim=True)))
        return self.head((h * gate).flatten(1))


def test_gate_is_a_constant_and_the_signal_takes_all():
    torch.manual_seed(0)
    model, x = SqueezeExcite().eval(), torch.rand(1, 2, 2, 2)
    at_product = clrp.layer_relevance(model, x, 0, "mul", spatial=True, rules=rules())
    at_signal = clrp.layer_relevance(model, x, 0, "relu", spatial=True, rules=rules())
    at_gate = clrp.layer_relevance(model, x, 0, "fc", spatial=True, rules=rules())
    assert torch.equal(at_signal, at_product)  # relu passes; the gate branch took nothing
    assert torch.count_nonzero(at_gate) == 0
    with torch.no_grad():
        assert torch.allclose(at_product.sum(), model(x)[0, 0])


class Padded(nn.Module):
    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((1, 2, 0, 1))
        self.conv = nn.Conv2d(1, 1, 2, bias=False)
        self.fc = nn.Linear(3 * 4, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.uniform_(0.5, 1.5)
            self.fc.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(self.pad(x))).flatten(1))


def test_padding_is_cropped_back():
    torch.manual_seed(0)
    model, x = Padded().eval(), torch.rand(1, 1, 3, 2)
    at_pad = clrp.layer_relevance(model, x, 0, "pad", spatial=True, rules=rules())
    r = clrp.explain(model, x, 0, "lrp", rules=rules())
    assert torch.equal(r, at_pad[:, :, 0:3, 1:3])
    # the padded zeros contribute nothing under z+, so the crop keeps all the relevance
    assert torch.allclose(r.sum(), at_pad.sum()) and r.sum() > 0


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1, bias=False)
        self.fc = nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 10.0, 100.0, 1000.0]]))

    def forward(self, x):
        h = torch.relu(self.conv(x))
        n, c, hh, ww = h.shape
        h = h.view(n, 2, c // 2, hh, ww).transpose(1, 2).contiguous().view(n, c, hh, ww)  # channel shuffle
        return self.fc(h.flatten(1))


def test_channel_shuffle_moves_relevance_with_the_index():
    model, x = Shuffle().eval(), torch.ones(1, 1, 1, 1)
    # shuffle order: channels [0, 2, 1, 3]; relevance at the shuffled output is fc weight * value
    before = clrp.layer_relevance(model, x, 0, "relu", rules=rules())
    expected = torch.tensor([[1.0 * 1, 100.0 * 2, 10.0 * 3, 1000.0 * 4]])
    assert torch.allclose(before, expected)
    assert torch.allclose(clrp.explain(model, x, 0, "lrp", rules=rules()).sum(), expected.sum())


# -- BatchNorm ----------------------------------------------------------------------------------

def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def test_batchnorm_before_a_dense_layer_is_folded_into_it():
    torch.manual_seed(0)
    model = _randomize_bn(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12), nn.Dropout(), nn.Linear(12, 3)).eval())
    bn, lin = model[1], model[3]
    folded = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        folded[1].weight.copy_(lin.weight * scale)
        folded[1].bias.copy_(lin.bias + lin.weight @ shift)
    x = torch.randn(2, 3, 2, 2)
    plan = engine.plan_for(model, x)
    assert [n.name for n in plan.graph.nodes[1:]] == ["0", "3"]  # BN folded, dropout gone
    for rule in ("epsilon_plus", "zplus"):
        a = clrp.explain(model, x, [0, 2], "lrp", rules=rule)
        b = clrp.explain(folded, x, [0, 2], "lrp", rules=rule)
        assert relative_error(a, b) < 1e-5


def test_an_unfoldable_batchnorm_is_an_affine_layer_with_the_norm_rule():
    torch.manual_seed(0)
    model = _randomize_bn(nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                        nn.Flatten(), nn.Linear(4 * 16, 2)).eval())
    x = torch.randn(1, 3, 4, 4)
    plan = engine.plan_for(model, x)
    assert type(plan.graph.nodes[plan.layer_index("0")].op).__name__ == "BatchNorm"
    with torch.no_grad():
        assert relative_error(engine.forward(model, x), model(x)) < 1e-6
    # paper preset: epsilon without bias on the affine layer = relevance passes unchanged where x != 0
    below = clrp.layer_relevance(model, x, 0, "1", rules="paper", spatial=True, box=(-4.0, 4.0))
    at_input = clrp.explain(model, x, 0, "lrp", rules="paper", box=(-4.0, 4.0))
    assert torch.allclose(at_input, below, atol=1e-6)
    custom = clrp.explain(model, x, 0, "lrp", rules={"preset": "paper", nn.BatchNorm2d: Epsilon(0.5)},
                          box=(-4.0, 4.0))
    assert relative_error(custom, at_input) > 1e-3


# -- names ---------------------------------------------------------------------------------------

def test_names_are_the_users_module_paths():
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    names = engine.layer_names(model, x)
    assert names[:8] == ["conv1", "relu", "maxpool", "layer1.0.conv1", "layer1.0.relu", "layer1.0.conv2",
                         "layer1.0.add", "layer1.0.relu_1"]
    plan = engine.plan_for(model, x)
    assert plan.layer_index("layer1.0.bn1") == plan.layer_index("layer1.0.conv1")  # folded BN: an alias
    assert plan.layer_index("layer1.0") == plan.layer_index("layer1.0.relu_1")  # a block: its output
    assert plan.layer_index("layer4") == plan.layer_index("layer4.1.relu_1")
    assert engine.last_feature_layer(model, x) == "layer4"
    assert "layer3" in engine.feature_layers(model, x)
    with pytest.raises(clrp.errors.InvalidTarget, match="did you mean 'layer4.1.conv2'"):
        plan.layer_index("layer4.1.conv3")
    r = clrp.explain_neuron(model, x, "layer4.1.conv2", 3)
    assert r.shape == x.shape and torch.isfinite(r).all()


# -- the weight cache never serves stale weights ---------------------------------------------------

def _bn_net():
    torch.manual_seed(0)
    return _randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                       nn.Linear(4 * 4 * 4, 3)).eval())


def test_batchnorm_statistics_updated_in_train_mode_are_seen():
    model, x = _bn_net(), torch.randn(2, 3, 6, 6)
    before = clrp.explain(model, x, [0, 1], "lrp", rules="epsilon_plus")
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 6, 6) * 3 + 1)  # updates running statistics in place (no version bump)
    model.eval()
    after = clrp.explain(model, x, [0, 1], "lrp", rules="epsilon_plus")
    fresh = clrp.explain(copy.deepcopy(model), x, [0, 1], "lrp", rules="epsilon_plus")
    assert relative_error(after, before) > 1e-3
    assert torch.equal(after, fresh)


def test_parametrised_weights_are_seen():
    from torch.nn.utils import parametrizations
    model, x = _bn_net(), torch.randn(2, 3, 6, 6)
    parametrizations.weight_norm(model[0])
    before = clrp.explain(model, x, [0, 1], "lrp", rules="epsilon_plus")
    with torch.no_grad():
        model[0].parametrizations.weight.original1.mul_(-1)  # the direction of the conv weight flips
    after = clrp.explain(model, x, [0, 1], "lrp", rules="epsilon_plus")
    fresh = clrp.explain(copy.deepcopy(model), x, [0, 1], "lrp", rules="epsilon_plus")
    assert relative_error(after, before) > 1e-3
    assert torch.equal(after, fresh)


def test_replaced_parameters_and_modules_are_seen():
    model, x = _bn_net(), torch.randn(1, 3, 6, 6)
    clrp.explain(model, x, 0, "lrp", rules="epsilon_plus")
    model[4].weight = nn.Parameter(torch.randn_like(model[4].weight))
    assert torch.equal(clrp.explain(model, x, 0, "lrp", rules="epsilon_plus"),
                       clrp.explain(copy.deepcopy(model), x, 0, "lrp", rules="epsilon_plus"))
    model[4] = nn.Linear(64, 3)
    assert torch.equal(clrp.explain(model, x, 0, "lrp", rules="epsilon_plus"),
                       clrp.explain(copy.deepcopy(model), x, 0, "lrp", rules="epsilon_plus"))
    model[1].eps = 0.5  # a setting the trace bakes in
    assert torch.equal(clrp.explain(model, x, 0, "lrp", rules="epsilon_plus"),
                       clrp.explain(copy.deepcopy(model), x, 0, "lrp", rules="epsilon_plus"))


# -- what users do wrong -------------------------------------------------------------------------

def test_a_model_in_train_mode_is_explained_in_eval_mode_with_a_warning():
    model, x = _bn_net(), torch.randn(1, 3, 6, 6)
    expected = clrp.explain(model, x, 0, "lrp")
    trained = copy.deepcopy(model).train()
    with pytest.warns(ClrpWarning, match="training mode"):
        got = clrp.explain(trained, x, 0, "lrp")
    assert torch.equal(got, expected)
    assert trained.training  # the user's mode is left alone


def test_forward_hooks_are_not_called_by_explanations_and_said_once():
    model, x = _bn_net(), torch.randn(1, 3, 6, 6)
    calls = []
    model[2].register_forward_hook(lambda m, a, o: calls.append(1))
    with pytest.warns(ClrpWarning, match=r"forward hooks on 2"):
        clrp.explain(model, x, 0, "lrp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clrp.explain(model, x, 0, "clrp2")
    assert calls == [1]  # once, on a copy, when the model is traced: to check the hook changes nothing


def test_bad_values_and_options_are_clear_errors():
    model, x = _bn_net(), torch.randn(1, 3, 6, 6)
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        clrp.explain(model, x * float("nan"), 0, "lrp")
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        clrp.explain(model, x * float("inf"), 0, "gradient")
    with pytest.raises(ClrpError, match="steps must be an integer >= 1"):
        clrp.explain(model, x, 0, "integrated_gradients", steps=0)
    with pytest.raises(ClrpError, match="samples must be an integer >= 1"):
        clrp.explain(model, x, 0, "smoothgrad", samples=0)
    with pytest.raises(ClrpError, match="3 values"):
        clrp.explain(model, x, 0, "lrp", box=([0.0, 0.0], [1.0, 1.0]))


def test_zb_box_follows_the_input_channels_and_the_first_layer():
    gray = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2)).eval()
    x = torch.rand(1, 1, 6, 6)
    with pytest.raises(ClrpError, match="takes 1 channel"):
        clrp.explain(gray, x, 0, "lrp")
    assert torch.isfinite(clrp.explain(gray, x, 0, "lrp", box=(0.0, 1.0))).all()
    # a dense first layer on a flattened RGB image: the per-channel box follows the flatten
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 8, bias=False), nn.ReLU(),
                        nn.Linear(8, 2, bias=False)).eval()
    x = torch.rand(1, 3, 4, 4)
    with torch.no_grad():
        t = int(mlp(x).argmax())
        y = mlp(x)[0, t]
    r = clrp.explain(mlp, x, t, "lrp")
    assert torch.allclose(r.sum(), y, rtol=1e-5)


# -- conv layers as third-party code writes them --------------------------------------------------

class SamePadded(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, k, padding="same", bias=False)  # an even kernel pads one more at the end
        self.fc = nn.Linear(4 * 8 * 8, 2, bias=False)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("k", [3, 4])
def test_padding_same_with_odd_and_even_kernels(k):
    torch.manual_seed(0)
    model, x = SamePadded(k).eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        y = model(x)
    t = y.argmax(1)
    r = clrp.explain(model, x, t, "lrp", rules="zplus", box=(-4.0, 4.0))
    assert torch.allclose(r.flatten(1).sum(1), y.gather(1, t[:, None]).squeeze(1), rtol=1e-5)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).gather(1, t[:, None]).sum(), xg)
    assert torch.allclose(clrp.explain(model, x, t, "gradient"), g)


class StandardizedConv(nn.Conv2d):
    """A Conv2d subclass with its own forward (weight standardisation, as in BiT/NFNet code)."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_conv_subclasses_are_propagated_as_they_compute():
    torch.manual_seed(0)
    model = nn.Sequential(StandardizedConv(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2)).eval()
    plain = copy.deepcopy(model)
    plain[0] = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        w = model[0].weight
        plain[0].weight.copy_((w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5))
        plain[0].bias.copy_(model[0].bias)
    x = torch.randn(2, 3, 4, 4)
    for method in ("lrp", "clrp2", "gradient"):
        assert relative_error(clrp.explain(model, x, [0, 1], method, rules="zplus", box=(-4.0, 4.0)),
                              clrp.explain(plain, x, [0, 1], method, rules="zplus", box=(-4.0, 4.0))) < 1e-5, method
    with torch.no_grad():  # the standardised weight is recomputed from the parameter: never stale
        model[0].weight.mul_(-1)
        plain[0].weight.mul_(-1)
        plain[0].bias.copy_(model[0].bias)
    assert relative_error(clrp.explain(model, x, [0, 1], "lrp", rules="epsilon_alpha2_beta1"),
                          clrp.explain(plain, x, [0, 1], "lrp", rules="epsilon_alpha2_beta1")) < 1e-5


def test_a_shared_resnet_is_never_mutated_and_threads_agree():
    import threading

    from .test_engine import _same, _snapshot
    torch.manual_seed(0)
    model = _randomize_bn(torchvision.models.resnet18(num_classes=5)).eval()
    model.fc.weight.requires_grad_(False)  # a user's mixed flags must survive
    x = torch.randn(2, 3, 48, 48)
    before = _snapshot(model)
    jobs = [(m, t) for m in ("lrp", "clrp2", "gradient", "guided_backprop", "gradcam") for t in ([0, 1], [2, 3])]
    serial = [clrp.explain(model, x, t, m) for m, t in jobs]
    clrp.explain_neuron(model, x, "layer3", 1, contrast="rest")
    clrp.layer_relevance(model, x, [0, 1], "layer2.1")
    assert _same(before, _snapshot(model))
    results = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def work(i):
        barrier.wait()
        results[i] = clrp.explain(model, x, jobs[i][1], jobs[i][0])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(torch.equal(a, b) for a, b in zip(serial, results))
    assert _same(before, _snapshot(model))


def test_input_preprocessing_inside_the_model_is_not_a_feature_layer():
    model = torchvision.models.googlenet(weights=None, aux_logits=False, transform_input=True,
                                         init_weights=False).eval()
    x = torch.randn(1, 3, 64, 64)
    layers = engine.feature_layers(model, x)
    assert layers[0] == "conv1.conv" and not {"slice", "unsqueeze", "mul", "add"} & set(layers)
    # zB gets the box carried through the transform: conservation with the paper preset holds
    from .test_architectures import calibrate
    calibrate(model, x)
    t = int(engine.forward(model, x).argmax())
    r = clrp.explain(model, x, t, "lrp")
    assert torch.allclose(r.sum(), engine.forward(model, x)[0, t], rtol=1e-4)
