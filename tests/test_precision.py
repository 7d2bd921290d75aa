"""float16/bfloat16 models are explained in float32 (clrp.precision): finite float32 maps equal to
those of the float32 model with the same weights.

Tolerance: max |half - float32| / max |float32| <= 1e-5. The half model's weights and inputs are
exact in float32, so the float32 computation is the same one; what the tolerance allows for is
only a different order of summation. Before the policy, torchvision's ResNet-18 gave all-NaN LRP
and CLRP2 maps in float16.
"""
import copy

import pytest
import torch
import torchvision

import clrp

from .conftest import relative_error

TOL = 1e-5


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["lrp", "clrp2", "gradient"])
def test_half_precision_model_gives_the_float32_maps(resnet18, dtype, method, device):
    half = copy.deepcopy(resnet18).to(device=device, dtype=dtype)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    ours = clrp.explain(half, x, [1, 2], method)
    reference = clrp.explain(copy.deepcopy(half).float(), x.float(), [1, 2], method)
    assert ours.dtype == torch.float32
    assert bool(torch.isfinite(ours).all())
    assert ours.abs().sum() > 0
    assert relative_error(ours.cpu(), reference.cpu()) <= TOL


def test_float32_inputs_are_accepted_and_the_model_is_left_alone(resnet18):
    half = copy.deepcopy(resnet18).half()
    before = {k: v.clone() for k, v in half.state_dict().items()}
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    r = clrp.explain(half, x, 3, "lrp")
    assert r.dtype == torch.float32 and bool(torch.isfinite(r).all())
    after = half.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert not half.training


def test_the_float32_copy_follows_changes_to_the_model(resnet18):
    half = copy.deepcopy(resnet18).half()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)).half()
    first = clrp.explain(half, x, 4, "lrp")
    with torch.no_grad():  # in place (version counter), a buffer, and a replaced parameter
        half.layer4[1].conv2.weight.mul_(-1)
        half.layer1[0].bn1.running_mean.add_(0.5)
        half.fc.weight = torch.nn.Parameter(half.fc.weight.flip(0))
    changed = clrp.explain(half, x, 4, "lrp")
    reference = clrp.explain(copy.deepcopy(half).float(), x.float(), 4, "lrp")
    assert relative_error(changed, reference) <= TOL
    assert relative_error(changed, first) > 1e-2


def test_hidden_layer_explanations_are_float32_too(resnet18):
    half = copy.deepcopy(resnet18).half()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4)).half()
    ref_model = copy.deepcopy(half).float()
    ours = clrp.explain_neuron(half, x, "layer3", 5)
    assert ours.dtype == torch.float32
    assert relative_error(ours, clrp.explain_neuron(ref_model, x.float(), "layer3", 5)) <= TOL
    lr = clrp.layer_relevance(half, x, 2, "layer3")
    assert lr.dtype == torch.float32
    assert relative_error(lr, clrp.layer_relevance(ref_model, x.float(), 2, "layer3")) <= TOL
