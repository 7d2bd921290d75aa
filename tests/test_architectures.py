"""Every method on the CNNs people use (torchvision and timm defaults, random weights, small inputs).

BatchNorm statistics of an untrained network are the defaults (mean 0, variance 1), so in eval
mode activations shrink layer after layer (EfficientNet's logits are ~1e-13 at 64 px) and any
stabiliser dominates. ``calibrate`` sets each BatchNorm's running variance to the second moment of
its input on the test batch, keeping running means and biases at zero: activations keep their
scale and every folded bias stays zero, so the "biases ignored" paper preset must conserve.
"""
import pytest
import torch
import torchvision
from torch import nn

import clrp
from clrp import engine

from .conftest import relative_error

timm = pytest.importorskip("timm")

# Every conv/dense output reaches the next conv/dense only through a ReLU (possibly after a
# residual add): z+/zB without biases conserve exactly. The others have linear bottlenecks
# (a conv whose output is not rectified) or non-ReLU activations: z+ loses the relevance of
# units that receive relevance but have no positive contribution; docs/ARCHITECTURES.md reports it.
RELU_NETS = {"alexnet", "vgg16_bn", "resnet18", "resnet50", "resnext50_32x4d", "densenet121", "googlenet",
             "inception_v3", "squeezenet1_1", "timm:resnet18", "timm:vgg11"}
CNNS = ["alexnet", "vgg16_bn", "resnet18", "resnet50", "resnext50_32x4d", "densenet121", "mobilenet_v2",
        "mobilenet_v3_small", "efficientnet_b0", "googlenet", "inception_v3", "squeezenet1_1",
        "shufflenet_v2_x1_0", "regnet_y_400mf", "mnasnet0_5", "convnext_tiny",
        "timm:resnet18", "timm:efficientnet_b0", "timm:convnext_atto", "timm:vgg11"]
OPTIONS = {"integrated_gradients": {"steps": 3}, "smoothgrad": {"samples": 2}}


def build(name, classes=10):
    torch.manual_seed(0)
    if name.startswith("timm:"):
        return timm.create_model(name[5:], pretrained=False, num_classes=classes).eval()
    kw = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, num_classes=classes, **kw).eval()


def calibrate(model, x):
    handles = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            def pre(mod, args):
                a = args[0]
                mod.running_var.copy_(a.pow(2).mean([d for d in range(a.ndim) if d != 1]).clamp(min=1e-4))
            handles.append(m.register_forward_pre_hook(pre))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return model


def inputs(name):
    size = 75 if name == "inception_v3" else 64
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.slow
@pytest.mark.parametrize("name", CNNS)
def test_every_method_on_the_cnns_people_use(name):
    model, x = build(name), inputs(name)
    with torch.no_grad():
        assert relative_error(engine.forward(model, x), model(x)) < 1e-4  # the traced graph is the model
    calibrate(model, x)
    logits = engine.forward(model, x)
    t = logits.argmax(1)
    for method in clrp.METHODS:
        r = clrp.explain(model, x, t, method, **OPTIONS.get(method, {}))
        assert r.shape == x.shape and torch.isfinite(r).all(), method
        if method == "clrp2":
            assert (r >= 0).all() and r.abs().sum() > 0
    lrp = clrp.explain(model, x, t, "lrp", rules="paper")
    ratio = lrp.flatten(1).sum(1) / logits.gather(1, t[:, None]).squeeze(1)
    if name in RELU_NETS:
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-4), ratio
    else:
        assert (ratio > 0).all() and (ratio < 1.5).all(), ratio  # measured in docs/ARCHITECTURES.md
    # hidden layers by the user's module names, and the last feature map by default
    layer = engine.last_feature_layer(model, x)
    rel = clrp.layer_relevance(model, x, t, layer)
    assert rel.ndim == 2 and torch.isfinite(rel).all()
    neuron = clrp.explain_neuron(model, x, layer, int(rel[0].argmax()), contrast="rest")
    assert neuron.shape == x.shape and torch.isfinite(neuron).all()


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("vit_b_16", 224), ("swin_t", 64)])
def test_vision_transformers_get_every_method(name, size):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10).eval()
    head = model.heads.head if name == "vit_b_16" else model.head
    torch.nn.init.normal_(head.weight, std=0.05)  # torchvision initialises ViT's head to zero
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    for method in ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "gradcam",
                   "guided_backprop", "deconvnet"):
        r = clrp.explain(model, x, 3, method, **OPTIONS.get(method, {}))
        assert r.shape == x.shape and torch.isfinite(r).all(), method
    for preset in ("attnlrp", "cp_lrp"):
        for method in ("lrp", "clrp1", "clrp2", "sglrp"):
            r = clrp.explain(model, x, 3, method, rules=preset)
            assert r.shape == x.shape and torch.isfinite(r).all() and float(r.abs().sum()) > 0, (preset, method)
            if method == "clrp2":
                assert (r >= 0).all()
