"""Every method on the CNNs people use (torchvision and timm defaults, random weights, small inputs).

BatchNorm statistics of an untrained network are the defaults (mean 0, variance 1), so in eval
mode activations shrink layer after layer (EfficientNet's logits are ~1e-13 at 64 px) and any
stabiliser dominates. ``calibrate`` sets each BatchNorm's running variance to the second moment of
its input on the test batch, keeping running means and biases at zero: activations keep their
scale and every folded bias stays zero, so the "biases ignored" paper preset must conserve.
"""

import pytest
from .script_modules import load_script
import torch
import torchvision

import clrp
from clrp import engine

from .conftest import relative_error

timm = pytest.importorskip("timm")


# the architecture lists and builders are the script's (scripts/docs/architectures.py), so the tests
# and docs/MODEL_COVERAGE.md cover the same models
_MATRIX = load_script("architectures")

CNNS, RELU_NETS, build, calibrate, inputs = (_MATRIX.CNNS, _MATRIX.RELU_NETS, _MATRIX.build, _MATRIX.calibrate,
                                              _MATRIX.inputs)
OPTIONS = {"integrated_gradients": {"steps": 3}, "smoothgrad": {"samples": 2}}


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
        assert (ratio > 0).all() and (ratio < 1.5).all(), ratio  # measured in docs/MODEL_COVERAGE.md
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
