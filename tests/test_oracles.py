"""Agreement with independent implementations: zennit (LRP composites) and captum (baselines).

Tolerance: max abs difference / max abs value <= 1e-4 on torchvision VGG16 with random weights.
Every test runs on each available device (the ``device`` fixture: the CUDA variants are skipped,
with the reason, where there is no GPU; on a GPU, TF32 is off so that 1e-4 still means something).
"""
import copy

import pytest
import torch

import clrp
from clrp.rules import IMAGENET_MEAN, IMAGENET_STD, box_from_normalization

from .conftest import on_device, relative_error

zennit = pytest.importorskip("zennit")
captum = pytest.importorskip("captum")

TARGETS = [3, 417]
TOL = 1e-4


def _unfused(model):
    """A copy without in-place ReLUs: hook-based oracles need them out of place."""
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, torch.nn.ReLU):
            mod.inplace = False
    return m


def _zennit_attr(model, x, targets, composite):
    from zennit.attribution import Gradient
    x = x.clone().requires_grad_(True)
    with torch.no_grad():
        logits = model(x)
    # Seed the target logit itself (zennit's output relevance is the gradient it is handed).
    seed = torch.eye(1000, device=logits.device)[targets] * logits
    with Gradient(model=model, composite=composite) as attributor:
        out, rel = attributor(x, seed)
    return rel


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1"])
def test_lrp_presets_match_zennit(vgg16, image224, preset, device):
    from zennit import composites as zc
    vgg16, image224 = on_device(device, vgg16, image224)
    low, high = box_from_normalization(IMAGENET_MEAN, IMAGENET_STD)
    low, high = (b.view(1, 3, 1, 1).expand(1, 3, 224, 224).to(device) for b in (low, high))
    composite = {
        "epsilon_plus": lambda: zc.EpsilonPlus(),
        "epsilon_gamma_box": lambda: zc.EpsilonGammaBox(low=low, high=high),
        "epsilon_alpha2_beta1": lambda: zc.EpsilonAlpha2Beta1(),
    }[preset]()
    model = _unfused(vgg16)
    theirs = _zennit_attr(model, image224, TARGETS, composite)
    ours = clrp.explain(vgg16, image224, TARGETS, "lrp", rules=preset)
    assert relative_error(ours, theirs) < TOL


@pytest.mark.slow
def test_paper_rules_match_zennit_composite(vgg16, image224, device):
    """The paper preset (zB first conv, z+ elsewhere, no biases) built as a zennit composite."""
    from zennit.composites import SpecialFirstLayerMapComposite
    from zennit.rules import Pass, ZBox, ZPlus
    from zennit.types import Activation, Convolution
    vgg16, image224 = on_device(device, vgg16, image224)
    low, high = box_from_normalization(IMAGENET_MEAN, IMAGENET_STD)
    low, high = (b.view(1, 3, 1, 1).expand(1, 3, 224, 224).to(device) for b in (low, high))
    composite = SpecialFirstLayerMapComposite(
        layer_map=[(Activation, Pass()), (Convolution, ZPlus(1e-9, zero_params="bias")),
                   (torch.nn.Linear, ZPlus(1e-9, zero_params="bias"))],
        first_map=[(Convolution, ZBox(low, high, 1e-9))])
    theirs = _zennit_attr(_unfused(vgg16), image224, TARGETS, composite)
    ours = clrp.explain(vgg16, image224, TARGETS, "lrp", rules="paper")
    assert relative_error(ours, theirs) < TOL


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradient", "guided_backprop", "deconvnet"])
def test_gradient_family_matches_captum(vgg16, image224, method, device):
    from captum.attr import Deconvolution, GuidedBackprop, Saliency
    vgg16, image224 = on_device(device, vgg16, image224)
    model = _unfused(vgg16)
    x = image224.clone().requires_grad_(True)
    t = torch.tensor(TARGETS, device=device)
    if method == "gradient":
        theirs = Saliency(model).attribute(x, target=t, abs=False)
    elif method == "guided_backprop":
        theirs = GuidedBackprop(model).attribute(x, target=t)
    else:
        theirs = Deconvolution(model).attribute(x, target=t)
    ours = clrp.explain(vgg16, image224, TARGETS, method)
    assert relative_error(ours, theirs.detach()) < TOL


@pytest.mark.slow
def test_gradcam_matches_captum(vgg16, image224, device):
    from captum.attr import LayerAttribution, LayerGradCam
    vgg16, image224 = on_device(device, vgg16, image224)
    model = _unfused(vgg16)
    cam = LayerGradCam(model, model.features[29]).attribute(image224, target=torch.tensor(TARGETS, device=device),
                                                           relu_attributions=True)
    theirs = LayerAttribution.interpolate(cam, (224, 224), interpolate_mode="bilinear")
    ours = clrp.explain(vgg16, image224, TARGETS, "gradcam", layer="features.29")
    assert relative_error(ours.sum(1, keepdim=True), theirs.detach()) < TOL


@pytest.mark.slow
@pytest.mark.parametrize("integration", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_matches_captum(vgg16, image224, integration, device):
    from captum.attr import IntegratedGradients
    vgg16, image224 = on_device(device, vgg16, image224)
    model = _unfused(vgg16)
    x = image224[:1]
    theirs = IntegratedGradients(model).attribute(x, target=TARGETS[0], n_steps=8, method=integration)
    ours = clrp.explain(vgg16, x, TARGETS[0], "integrated_gradients", steps=8, integration=integration)
    assert relative_error(ours, theirs.detach()) < TOL


# -- graphs: residual networks and a vision transformer ---------------------------------------------

def _resnet(name, size=64):
    """A torchvision ResNet with random BatchNorm statistics and affine parameters (non-zero folded
    biases) whose activations keep their scale (running variance = second moment of the input).
    BatchNorm eps is 0 because zennit's merge leaves each BatchNorm computing x / sqrt(1 + eps),
    a 5e-6 change per layer that would otherwise be the only difference."""
    import torchvision
    from .test_architectures import calibrate
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=20).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eps = 0.0
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
        model.fc.bias.normal_(0, 0.01)
    return calibrate(model, x), x


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("preset", ["epsilon_plus", "epsilon_alpha2_beta1"])
def test_resnets_match_zennit_with_its_resnet_canonizer(name, preset, device):
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonAlpha2Beta1, EpsilonPlus
    from zennit.torchvision import ResNetCanonizer
    model, x = on_device(device, *_resnet(name))
    hooked = _unfused(model)
    composite = {"epsilon_plus": EpsilonPlus, "epsilon_alpha2_beta1": EpsilonAlpha2Beta1}[preset](
        canonizers=[ResNetCanonizer()])
    t = torch.tensor([3, 11], device=device)
    with torch.no_grad():
        seed = torch.eye(20, device=device)[t] * hooked(x)
    with Gradient(model=hooked, composite=composite) as attributor:
        _, theirs = attributor(x.clone().requires_grad_(True), seed)
    ours = clrp.explain(model, x, t, "lrp", rules=preset)
    assert relative_error(ours, theirs) < TOL


def _captum_gradient_family(model, x, t, cam_layer, cam_name):
    from captum.attr import (Deconvolution, GuidedBackprop, IntegratedGradients, LayerAttribution, LayerGradCam,
                             Saliency)
    hooked = _unfused(model)
    xg = x.clone().requires_grad_(True)
    theirs = {
        "gradient": Saliency(hooked).attribute(xg, target=t, abs=False),
        "guided_backprop": GuidedBackprop(hooked).attribute(xg, target=t),
        "deconvnet": Deconvolution(hooked).attribute(xg, target=t),
        "integrated_gradients": IntegratedGradients(hooked).attribute(x, target=t, n_steps=4),
    }
    cam = LayerGradCam(hooked, cam_layer(hooked)).attribute(x, target=t, relu_attributions=True)
    theirs["gradcam"] = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")
    for method, expected in theirs.items():
        opts = {"steps": 4} if method == "integrated_gradients" else {"layer": cam_name} if method == "gradcam" else {}
        ours = clrp.explain(model, x, t, method, **opts)
        if method == "gradcam":
            ours = ours.sum(1, keepdim=True)
        assert relative_error(ours, expected.detach()) < TOL, method


@pytest.mark.slow
def test_gradient_family_on_resnet50_matches_captum(device):
    model, x = on_device(device, *_resnet("resnet50", 96))
    _captum_gradient_family(model, x, torch.tensor([1, 7], device=device), lambda m: m.layer4, "layer4")
    # the default Grad-CAM layer of a ResNet is its last stage
    assert torch.equal(clrp.explain(model, x, [1, 7], "gradcam"), clrp.explain(model, x, [1, 7], "gradcam",
                                                                                 layer="layer4"))


@pytest.mark.slow
def test_gradient_family_on_vit_b_16_matches_captum(device):
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(num_classes=10).eval()
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.02)  # torchvision starts the head at zero: no gradient at all
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    model, x = on_device(device, model, x)
    _captum_gradient_family(model, x, torch.tensor([4], device=device), lambda m: m.conv_proj, "conv_proj")
