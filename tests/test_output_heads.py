"""CLRP on models whose logits are a sum of several output heads (DeiT's class and distillation
heads averaged): each head gets the contrastive seed, carrying its share of the target score.

CLRP is linear in the seed, so on logits c1 * head1(a) + c2 * head2(b) the signed CLRP map must equal
the sum of the signed maps of the two one-head models c1 * head1(a) and c2 * head2(b); the tiny
bias-free case is also computed by hand (z+ on each head)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import clrp
from clrp.errors import UnsupportedModel


class Heads(nn.Module):
    """Two tokens of 3 features [N, 2, 3]; a shared dense layer; head on token 0, head2 on token 1;
    logits (which = "both") = (head(a) + 3 * head2(b)) / 4, or one weighted head alone."""

    def __init__(self, which="both", combine="sum", trunk=True, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.which, self.combine, self.use_trunk = which, combine, trunk
        self.trunk = nn.Linear(3, 3, bias=False)
        self.head = nn.Linear(3, 5, bias=False)
        self.head2 = nn.Linear(3, 5, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) + 0.5)  # mostly positive: the trunk stays active
        self.double()

    def forward(self, x):
        if self.use_trunk:
            x = torch.relu(self.trunk(x))
        h1, h2 = self.head(x[:, 0]), self.head2(x[:, 1])
        if self.which == "head":
            return h1 / 4
        if self.which == "head2":
            return 3 * h2 / 4
        if self.combine == "sub":
            return (h1 - h2) / 4
        if self.combine == "product":
            return h1 * h2
        return (h1 + 3 * h2) / 4


def _x():
    return torch.rand(2, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1


@pytest.mark.parametrize("method", ["lrp", "clrp1", "clrp2"])
def test_several_heads_explain_as_the_sum_of_one_head_models(method):
    x, t = _x(), torch.tensor([2, 3])
    opts = {} if method == "lrp" else {"contrast": "signed"}
    maps = {w: clrp.explain(Heads(w).eval(), x, t, method, rules="zplus", **opts) for w in ("both", "head", "head2")}
    assert float(maps["head"].abs().sum()) > 0 and float(maps["head2"].abs().sum()) > 0
    torch.testing.assert_close(maps["both"], maps["head"] + maps["head2"], rtol=1e-7, atol=1e-10)
    if method != "lrp":
        clamped = clrp.explain(Heads().eval(), x, t, method, rules="zplus")
        torch.testing.assert_close(clamped, maps["both"].clamp(min=0))


def _zplus(a, w, seed):
    """z+ by hand: R_i = sum_j a_i w+_ji / sum_i' a_i' w+_ji' * seed_j (0 where no weight is positive)."""
    wp = w.clamp(min=0)
    z = a @ wp.T
    return a * (torch.where(z > 0, seed / torch.where(z > 0, z, 1), 0) @ wp)


@pytest.mark.parametrize("method, dual", [("clrp1", "uniform"), ("clrp1", "abs_logits"), ("clrp2", None)])
@pytest.mark.parametrize("contrast", ["signed", "reference"])
def test_several_heads_by_hand(method, dual, contrast):
    model = Heads(trunk=False).eval()
    x, t = _x(), torch.tensor([2, 3])
    opts = {"dual": dual} if dual else {}
    ours = clrp.explain(model, x, t, method, rules="zplus", contrast=contrast, **opts)
    onehot = torch.nn.functional.one_hot(t, 5).double()
    if dual == "abs_logits":  # the same dual at both heads: the other classes by the model's |logits|
        weights = model(x).detach().abs() * (1 - onehot)
        weights = weights / weights.sum(1, keepdim=True)
    else:
        weights = (1 - onehot) / 4
    target, dual_map = torch.zeros_like(x), torch.zeros_like(x)
    for k, (layer, c) in enumerate(((model.head, 0.25), (model.head2, 0.75))):
        a, w = x[:, k], layer.weight.detach()
        share = c * (a @ w.T).gather(1, t[:, None])  # the head's part of the target logit
        target[:, k] = _zplus(a, w, share * onehot)
        dual_map[:, k] = _zplus(a, w, share * weights) if method == "clrp1" else _zplus(a, -w, share * onehot)
    if contrast == "signed":
        ref = target - dual_map
    else:  # the reference code: each map over its total, then over the peak, clamped
        d = target / target.sum((1, 2), keepdim=True) - dual_map / dual_map.sum((1, 2), keepdim=True)
        ref = (d / d.amax((1, 2), keepdim=True)).clamp(min=0)
    assert float(ref.abs().sum()) > 0
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-9)  # z+'s stabiliser 1e-9: ~1e-7 relative


@pytest.mark.parametrize("combine", ["sub", "product"])
def test_other_combinations_of_heads_are_refused_naming_the_heads(combine):
    model = Heads(combine=combine).eval()
    x = _x()
    assert float(clrp.explain(model, x, 3, "lrp", rules="zplus").abs().sum()) > 0  # LRP needs no dual
    with pytest.raises(UnsupportedModel) as err:
        clrp.explain(model, x, 3, "clrp2", rules="zplus")
    msg = str(err.value)
    ends = msg.split("end in the layers ")[1].split(", and")[0]
    assert ends == "head, head2" and "trunk" not in msg, msg
    assert "lrp or sglrp" in msg and ("sub" in msg if combine == "sub" else "mul" in msg), msg


@pytest.mark.slow
def test_deit_with_distillation_token():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=10, img_size=32, patch_size=8,
                              depth=2).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for method in ("clrp1", "clrp2"):
        r = clrp.explain(model, x, 3, method, rules="attnlrp")
        assert r.shape == x.shape and (r >= 0).all() and float(r.sum()) > 0, method
    # the target part of CLRP is the model's LRP (the heads share the target score by the sum rule)
    lrp = clrp.explain(model, x, 3, "lrp", rules="attnlrp")
    signed = clrp.explain(model, x, 3, "clrp2", rules="attnlrp", contrast="signed")
    assert not torch.allclose(lrp, signed)
    tokens = clrp.layer_relevance(model, x, 3, "blocks.1", method="clrp2", rules="attnlrp")
    assert tokens.shape == (1, 18) and torch.isfinite(tokens).all() and float(tokens.abs().sum()) > 0
