"""LRP on transformers: AttnLRP's rules as engine ops (clrp/engine/attention.py).

Closed forms on tiny graphs (the split computed by hand with the math module), conservation on a
bias-free random vision transformer, every LRP-family method on a small torchvision
VisionTransformer, and (slow) the oracle: lxt's AttnLRP / CP-LRP on the same model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

import clrp
from clrp import engine
from clrp.rules import RULES, Epsilon, GateConstant, Uniform, ZSum

ATTNLRP = dataclasses.replace(RULES["attnlrp"], product=Uniform(1e-12), layer_norm=Epsilon(1e-12),
                              bias_add=ZSum(1e-12))
CP = dataclasses.replace(ATTNLRP, product=GateConstant(1e-12))


def _explain(model, x, target, rules):
    return clrp.explain(model, x, target, "lrp", rules=rules)


# ---------------------------------------------------------------------------------------------
# Closed forms


class OneHead(nn.Module):
    """One attention head over two tokens of width 1: the input rows are q, k and v [N, 3, 2, 1];
    the logits are the two tokens' outputs."""

    def __init__(self, fused: bool):
        super().__init__()
        self.fused = fused

    def forward(self, x):
        q, k, v = x[:, 0], x[:, 1], x[:, 2]
        if self.fused:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1) @ v
        return o.flatten(1)


def _one_head_by_hand(q, k, v, uniform: bool):
    """Relevance of q, k, v for token 0's output, computed from the rules' definitions."""
    x = [q[0] * kj for kj in k]  # logits of token 0 (scale 1/sqrt(1))
    e = [math.exp(t) for t in x]
    a = [t / sum(e) for t in e]
    o = sum(aj * vj for aj, vj in zip(a, v))
    R = o  # LRP's seed: the logit
    if not uniform:  # CP-LRP: attention weights constant, all to v
        return [0.0, 0.0], [0.0, 0.0], [R * aj * vj / o for aj, vj in zip(a, v)]
    r_v = [0.5 * R * aj * vj / o for aj, vj in zip(a, v)]  # attention · v: half to v ...
    r_a = [0.5 * R * aj * vj / o for aj, vj in zip(a, v)]  # ... half to the attention weights
    r_x = [xj * (raj - aj * sum(r_a)) for xj, raj, aj in zip(x, r_a, a)]  # softmax rule
    return [0.5 * sum(r_x), 0.0], [0.5 * t for t in r_x], r_v  # q · kᵀ: half to q, half to k


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "matmul-softmax-matmul"])
@pytest.mark.parametrize("uniform", [True, False], ids=["attnlrp", "cp"])
def test_one_attention_head_with_two_tokens_matches_the_split_by_hand(fused, uniform):
    q, k, v = [0.7, -1.2], [1.5, -0.4], [0.9, 2.0]
    x = torch.tensor([[q, k, v]], dtype=torch.float64).unsqueeze(-1)
    model = OneHead(fused).double().eval()
    r = _explain(model, x, 0, ATTNLRP if uniform else CP)
    rq, rk, rv = _one_head_by_hand(q, k, v, uniform)
    expected = torch.tensor([[rq, rk, rv]], dtype=torch.float64).unsqueeze(-1)
    assert torch.allclose(r, expected, rtol=1e-9, atol=1e-12), (r.flatten(), expected.flatten())
    if uniform:  # the softmax rule does not conserve; the split around it does
        assert not math.isclose(float(r.sum()), float(model(x)[0, 0]), rel_tol=1e-3)


class Softmax(nn.Module):
    def forward(self, x):
        return x.softmax(1)


def test_softmax_rule_by_hand():
    xs = [0.3, -1.1, 2.0]
    s = [math.exp(t) / sum(math.exp(u) for u in xs) for t in xs]
    c = 1
    expected = torch.tensor([[xi * ((i == c) * s[c] - si * s[c]) for i, (xi, si) in enumerate(zip(xs, s))]],
                            dtype=torch.float64)
    r = _explain(Softmax().eval(), torch.tensor([xs], dtype=torch.float64), c, ATTNLRP)
    assert torch.allclose(r, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_layer_norm_is_a_linear_map_with_the_deviation_constant(kind):
    xs, w, b, c = [0.5, -1.0, 2.5], [1.5, -0.5, 2.0], [0.2, 0.1, -0.3], 2
    d = len(xs)
    if kind == "layer_norm":
        model = nn.LayerNorm(d, eps=1e-5)
        mean = sum(xs) / d
        sigma = math.sqrt(sum((t - mean) ** 2 for t in xs) / d + 1e-5)
        # y_c = w_c (x_c - mean x) / sigma + b_c: the shift b_c absorbs its share, the centring spreads the rest
        expected = [xj * ((j == c) - 1 / d) * w[c] / sigma for j, xj in enumerate(xs)]
    else:
        model = nn.RMSNorm(d, eps=1e-5)
        b = None
        sigma = math.sqrt(sum(t * t for t in xs) / d + 1e-5)
        expected = [xj * (j == c) * w[c] / sigma for j, xj in enumerate(xs)]
    with torch.no_grad():
        model.weight.copy_(torch.tensor(w))
        if b is not None:
            model.bias.copy_(torch.tensor(b))
    model = model.double().eval()
    x = torch.tensor([xs], dtype=torch.float64)
    r = _explain(model, x, c, ATTNLRP)
    assert torch.allclose(r, torch.tensor([expected], dtype=torch.float64), rtol=1e-9, atol=1e-12)
    # the CNN presets keep the identity rule: relevance passes unchanged
    y_c = float(model(x)[0, c].detach())
    r = _explain(model, x, c, "paper")
    assert torch.allclose(r, torch.tensor([[y_c * (j == c) for j in range(d)]], dtype=torch.float64))


class Bilinear(nn.Module):
    def forward(self, x):
        return x[:, 0] * x[:, 1]


class Gated(nn.Module):
    def forward(self, x):
        return x[:, 0] * torch.sigmoid(x[:, 1])


@pytest.mark.parametrize("rules", ["paper", "attnlrp", "cp_lrp"])
def test_a_product_of_two_activations_splits_uniformly_and_a_gate_stays_constant(rules):
    x = torch.tensor([[[0.5, -2.0, 1.5], [3.0, 0.25, -1.0]]], dtype=torch.float64)
    y = x[:, 0] * x[:, 1]
    r = _explain(Bilinear().eval(), x, 2, rules)
    expected = torch.zeros_like(x)
    expected[0, :, 2] = 0.5 * y[0, 2]
    assert torch.allclose(r, expected)
    r = _explain(Gated().eval(), x, 1, rules)  # signal-take-all, as before
    expected = torch.zeros_like(x)
    expected[0, 0, 1] = x[0, 0, 1] * torch.sigmoid(x[0, 1, 1])
    assert torch.allclose(r, expected)


class PositionEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))

    def forward(self, x):
        return x + self.pos


def test_a_position_embedding_takes_its_share_under_the_transformer_presets_only():
    x = torch.tensor([[1.5, 0.5, 2.0]], dtype=torch.float64)
    model = PositionEmbedding().eval()
    y = float(model(x)[0, 0].detach())
    r = _explain(model, x, 0, ATTNLRP)
    assert math.isclose(float(r[0, 0]), 1.5 / (1.5 + 0.5) * y, rel_tol=1e-9) and float(r[0, 1:].abs().sum()) == 0
    r = _explain(model, x, 0, "paper")  # CNN presets: a constant summand takes nothing
    assert math.isclose(float(r[0, 0]), y, rel_tol=1e-12)


class TinyMHA(nn.Module):
    def __init__(self, need_weights: bool):
        super().__init__()
        self.need_weights = need_weights
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8 * 3, 4)

    def forward(self, x):
        return self.head(self.mha(x, x, x, need_weights=self.need_weights)[0].flatten(1))


@pytest.mark.parametrize("rules", ["attnlrp", "cp_lrp"])
def test_multihead_attention_decomposed_equals_its_fused_path(rules):
    """nn.MultiheadAttention computes with bmm/softmax/bmm when it returns the weights and with
    scaled_dot_product_attention when it does not: the two graphs give the same relevance."""
    torch.manual_seed(0)
    fused = TinyMHA(False).eval()
    explicit = TinyMHA(True).eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 8)
    ops = {n.op_name for n in engine.plan_for(explicit, x).graph.nodes}
    assert "bmm" in ops and "scaled_dot_product_attention" not in ops
    rules = dataclasses.replace(RULES[rules], first=None)  # no image box for token inputs
    a, b = (clrp.explain(m, x, [1, 2], "lrp", rules=rules) for m in (fused, explicit))
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(a.abs().max()))
    assert float(a.abs().sum()) > 0


# ---------------------------------------------------------------------------------------------
# Vision transformers


def small_vit(seed=0, bias_free=False, layers=2):
    torch.manual_seed(seed)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=layers, num_heads=2, hidden_dim=16,
                              mlp_dim=32, num_classes=5).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if bias_free and (name.endswith("bias") or name in ("class_token", "encoder.pos_embedding")):
                p.zero_()
            elif name != "class_token" or not bias_free:
                p.add_(torch.randn_like(p) * 0.1)  # torchvision's init leaves the head and biases at zero
    return model


@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
def test_every_lrp_method_on_a_small_vision_transformer(preset):
    model = small_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = model(x).argmax(1)
    maps = {}
    for method in ("lrp", "clrp1", "clrp2", "sglrp"):
        r = maps[method] = clrp.explain(model, x, t, method, rules=preset)
        assert r.shape == x.shape and torch.isfinite(r).all(), method
    assert (maps["clrp2"] >= 0).all() and (maps["clrp2"].flatten(1).abs().sum(1) > 0).all()
    assert (maps["clrp1"] >= 0).all() and not torch.allclose(maps["clrp2"], maps["lrp"].clamp(min=0))
    # per-token relevance of a block output and a token's explanation mapped to the image
    tokens = clrp.layer_relevance(model, x, t, "encoder.layers.encoder_layer_0", rules=preset)
    assert tokens.shape == (2, 17) and torch.isfinite(tokens).all()
    neuron = clrp.explain_neuron(model, x, "encoder.layers.encoder_layer_0", 5, rules=preset)
    assert neuron.shape == x.shape and float(neuron.abs().sum()) > 0


def test_conservation_on_a_bias_free_vision_transformer():
    """No biases, no class-token or position-embedding values: CP-LRP (the attention weights
    constant) conserves the logit through every layer; AttnLRP's softmax rule does not."""
    model = small_vit(bias_free=True)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 2, 4])
    logit = model(x).gather(1, t[:, None]).squeeze(1)
    r = clrp.explain(model, x, t, "lrp", rules="cp_lrp")
    assert torch.allclose(r.flatten(1).sum(1), logit, rtol=1e-4), (r.flatten(1).sum(1), logit)
    tokens = clrp.layer_relevance(model, x, t, "encoder.layers.encoder_layer_1", rules="cp_lrp")
    assert torch.allclose(tokens.sum(1), logit, rtol=1e-4)
    r = clrp.explain(model, x, t, "lrp", rules="attnlrp")
    assert not torch.allclose(r.flatten(1).sum(1), logit, rtol=1e-2)


BLOCK = "encoder.layers.encoder_layer_1"  # [N, tokens, dim]: dim 1 (the channel) is the token
HEADS = BLOCK + ".self_attention.scaled_dot_product_attention"  # [N, heads, tokens, head_dim]


def _activation(model, x, layer):
    from clrp.methods import plan_for, run_forward

    plan = plan_for(model, x)
    idx = plan.layer_index(layer)
    return run_forward(plan, x, stop=idx).value(idx)


@pytest.mark.parametrize("layer, channel, position", [(BLOCK, 3, (7,)), (BLOCK, 0, None), (HEADS, 1, None),
                                                      (HEADS, 0, (4, 2))],
                         ids=["token-feature", "class-token", "head", "head-token-feature"])
def test_a_token_feature_or_a_head_explained_conserves_its_activation(layer, channel, position):
    """Bias-free ViT under CP-LRP: the input relevance of a neuron (one feature of one token, a
    whole token, one attention head's output, one feature of a head at one token) sums to its
    activation; "rest" and another channel as contrast give other, non-negative maps."""
    model = small_vit(bias_free=True).double()  # float64: a token's sum cancels to ~0.1 of its parts
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    A = _activation(model, x, layer)[:, channel]
    value = A[(slice(None), *position)] if position else A.flatten(1).sum(1)
    r = clrp.explain_neuron(model, x, layer, channel, position=position, rules="cp_lrp")
    assert r.shape == x.shape and torch.isfinite(r).all() and (r.flatten(1).abs().sum(1) > 0).all()
    assert torch.allclose(r.flatten(1).sum(1), value, rtol=1e-4, atol=0), (r.flatten(1).sum(1), value)
    for contrast in ("rest", 1 - channel if channel < 2 else 0):
        c = clrp.explain_neuron(model, x, layer, channel, position=position, contrast=contrast, rules="cp_lrp")
        assert c.shape == x.shape and torch.isfinite(c).all() and (c >= 0).all()
        assert float(c.abs().sum()) > 0 and not torch.allclose(c, r.clamp(min=0)), contrast


def test_layer_relevance_per_token_and_per_head():
    model = small_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = model(x).argmax(1)
    tokens = clrp.layer_relevance(model, x, t, BLOCK, rules="attnlrp", spatial=True)
    assert tokens.shape == (2, 17, 16) and torch.isfinite(tokens).all()
    heads = clrp.layer_relevance(model, x, t, HEADS, rules="attnlrp")
    assert heads.shape == (2, 2) and torch.isfinite(heads).all() and float(heads.abs().sum()) > 0
    signed = clrp.layer_relevance(model, x, t, HEADS, "clrp2", rules="attnlrp")
    assert signed.shape == (2, 2) and not torch.allclose(signed, heads)


@pytest.mark.parametrize("node", ["linear", "reshape", "linear_1"])
def test_a_node_whose_first_dimension_is_not_the_batch_is_refused_and_not_listed(node):
    """Inside nn.MultiheadAttention (sequence first) dimension 0 is the token: its "channels" would
    mix the samples of a batch, so naming the node is refused and layer lists leave it out."""
    model = small_vit()
    x = torch.randn(3, 3, 32, 32)
    layer = f"encoder.layers.encoder_layer_0.self_attention.{node}"
    with pytest.raises(clrp.errors.InvalidTarget, match="batch"):
        clrp.layer_relevance(model, x, torch.tensor([0, 1, 2]), layer)
    with pytest.raises(clrp.errors.InvalidTarget, match="batch"):
        clrp.explain_neuron(model, x, layer, 0)
    with pytest.raises(clrp.errors.InvalidTarget, match="batch"):
        clrp.explain(model, x, 0, "lrp", condition=(layer, 0))
    with pytest.raises(clrp.errors.InvalidTarget, match="batch"):
        clrp.explain(model, x, 0, "gradcam", layer=layer)
    layers = engine.feature_layers(model, x)
    assert layer not in layers and HEADS in layers and BLOCK.replace("_1", "_0") in layers


def test_a_position_that_does_not_fit_the_layer_is_refused():
    model = small_vit()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(clrp.errors.InvalidTarget, match="takes 1 indices"):
        clrp.explain_neuron(model, x, BLOCK, 0, position=(1, 2))
    with pytest.raises(clrp.errors.InvalidTarget, match="outside"):
        clrp.explain_neuron(model, x, BLOCK, 0, position=(16,))


# ---------------------------------------------------------------------------------------------
# Oracle: lxt (LRP-eXplains-Transformers)


@contextlib.contextmanager
def lxt_patched(attention: str):
    """lxt's patches on torchvision's GELU, LayerNorm and MultiheadAttention and on zennit, undone
    afterwards (lxt patches classes, which would change every other model in the process)."""
    patches = pytest.importorskip("lxt.efficient.patches")
    from lxt.efficient import zennit_patches
    from lxt.efficient.rules import divide_gradient
    from zennit.core import BasicHook

    saved = [(c, k, c.__dict__.get(k)) for c in (nn.GELU, nn.LayerNorm, nn.MultiheadAttention)
             for k in ("forward", "original_forward")]
    saved += [(BasicHook, k, BasicHook.__dict__[k]) for k in ("forward", "backward")]

    def attnlrp_attention(self, query, key, value, **kwargs):
        # lxt's AttnLRP attention wrapper (patches.wrap_attention_forward: q, k gradients / 4, v / 2)
        # around torchvision's packed projection; lxt ships only CP-LRP for torchvision's ViT
        n, length, e = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias).unflatten(-1, (3, self.num_heads, -1))
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, e)
        return F.linear(o, self.out_proj.weight, self.out_proj.bias), None

    try:
        patches.patch_method(patches.non_linear_forward, nn.GELU, keep_original=True)
        patches.patch_method(patches.layer_norm_forward, nn.LayerNorm)
        if attention == "cp":  # lxt.efficient.models.vit_torch.cp_LRP
            patches.patch_method(patches.cp_multi_head_attention_forward, nn.MultiheadAttention, keep_original=True)
        else:
            nn.MultiheadAttention.forward = attnlrp_attention
        zennit_patches.monkey_patch_zennit()
        yield
    finally:
        for cls, key, value in saved:
            if value is not None:
                setattr(cls, key, value)
            elif key in cls.__dict__:
                delattr(cls, key)


def lxt_lrp(model, x, t, attention, conv_gamma=0.25, lin_gamma=0.05):
    """lxt's documented recipe for torchvision's ViT: its patches, zennit's Gamma on Conv2d and
    Linear modules, gradient times input."""
    from zennit import rules as zrules
    from zennit.composites import LayerMapComposite

    with lxt_patched(attention):
        composite = LayerMapComposite([(nn.Conv2d, zrules.Gamma(conv_gamma)), (nn.Linear, zrules.Gamma(lin_gamma))])
        with composite.context(model):
            xg = x.clone().requires_grad_(True)
            model(xg).gather(1, t[:, None]).sum().backward()
    return (xg * xg.grad).detach()


def same_rules_as_lxt(preset):
    """The preset with lxt's choices where they differ: gamma on the patch embedding and on the
    head (zennit hooks every Conv2d/Linear module), LRP-0 on the attention's projections (torchvision
    calls them functionally, no hook sees them), stabilisers ~0 (lxt is gradient times input)."""
    return dataclasses.replace(RULES[preset], first=None, output=None, add=ZSum(1e-12), layer_norm=Epsilon(1e-12),
                               bias_add=ZSum(1e-12), product=type(RULES[preset].product)(1e-12),
                               overrides={nn.MultiheadAttention: Epsilon(1e-12)})


@pytest.mark.slow
@pytest.mark.parametrize("attention,preset", [("cp", "cp_lrp"), ("attnlrp", "attnlrp")])
@pytest.mark.parametrize("arch", ["small", "vit_b_16"])
def test_lrp_equals_lxt(arch, attention, preset):
    pytest.importorskip("lxt")
    if arch == "small":
        model, size = small_vit(seed=3), 32
    else:
        import torchvision

        torch.manual_seed(3)  # ViT-B/16's 12 layers, 12 heads and width 768 on 4 x 4 patches (fast in CI)
        model, size = torchvision.models.vit_b_16(num_classes=10, image_size=64).eval(), 64
        nn.init.normal_(model.heads.head.weight, std=0.02)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([1, 3])
    ref = lxt_lrp(model, x, t, attention)
    assert nn.GELU.forward.__module__.startswith("torch")  # lxt's patches undone
    ours = clrp.explain(model, x, t, "lrp", rules=same_rules_as_lxt(preset))
    scale = ref.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
    assert float(((ours - ref).abs() / scale).max()) < 1e-4
    assert torch.allclose(ours.flatten(1).sum(1), ref.flatten(1).sum(1), rtol=1e-4)


@pytest.mark.slow
def test_timm_vision_transformers():
    timm = pytest.importorskip("timm")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for name in ("vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"):
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=10, img_size=32, patch_size=8, depth=2).eval()
        for method in ("lrp", "sglrp"):
            r = clrp.explain(model, x, 3, method, rules="attnlrp")
            assert r.shape == x.shape and torch.isfinite(r).all() and float(r.abs().sum()) > 0, (name, method)
        r = clrp.explain(model, x, 3, "clrp2", rules="attnlrp")  # DeiT: the dual at both heads (test_output_heads)
        assert (r >= 0).all() and float(r.sum()) > 0


# ---------------------------------------------------------------------------------------------
# The gamma rule's shared products against zennit's formulation (four products, four transposes)


class FourProductGamma(clrp.rules.Rule):
    """zennit's Gamma written out: a+ and a- against w + gamma w+ and w + gamma w-, each sign of the
    output with its own denominator (what clrp did before sharing the products)."""

    name = "gamma"

    def __init__(self, gamma):
        self.gamma, self.stabilizer = gamma, 1e-6

    def relevance(self, op, a, R, out):
        g = self.gamma
        w, b = op.weight, op.bias
        w_up, w_dn = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
        b_up = None if b is None else b + g * b.clamp(min=0)
        b_dn = None if b is None else b + g * b.clamp(max=0)
        a_pos, a_neg = a.clamp(min=0), a.clamp(max=0)
        out_e = op.expand(out)
        r = 0
        for mask, w_main, w_other, bias in ((out_e > 0, w_up, w_dn, b_up), (out_e < 0, w_dn, w_up, b_dn)):
            z = op.forward(a_pos, w_main, bias) + op.forward(a_neg, w_other, None)
            s = mask.to(R.dtype) * R / clrp.rules.stabilize(op.expand(z), self.stabilizer)
            r = r + op.expand(a_pos) * op.transpose(s, w_main) + op.expand(a_neg) * op.transpose(s, w_other)
        return r


class Dense:
    """The rules' layer interface on a plain dense layer (no engine)."""

    nonnegative_input = False

    def __init__(self, weight, bias, exact):
        self.weight, self.bias, self.exact_output = weight, bias, exact

    def expand(self, t):
        return t

    def modified(self, modifier):
        return modifier(self.weight)

    def forward(self, x, w, b):
        return F.linear(x, w, b)

    def transpose(self, s, w, channels=None):
        return s @ w

    def broadcast(self, b, ndim):
        return b


def _relative_error(ours, ref):
    return float((ours - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("exact", [True, False], ids=["output-reused", "output-recomputed"])
@pytest.mark.parametrize("bias", [True, False])
def test_gamma_with_shared_products_equals_the_four_product_form_on_a_dense_layer(exact, bias):
    gen = torch.Generator().manual_seed(7)
    w, b = torch.randn(6, 9, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)
    a = torch.randn(4, 9, generator=gen, dtype=torch.float64)  # inputs of both signs
    a[0] = a[0].abs()  # and a row of one sign
    layer = Dense(w, b if bias else None, exact)
    out = layer.forward(a, w, layer.bias)
    R = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    for gamma in (0.05, 0.25, 1.0):
        ref = FourProductGamma(gamma).relevance(layer, a, R, out)
        ours = clrp.rules.Gamma(gamma).relevance(layer, a, R, out)
        assert _relative_error(ours, ref) < 1e-12, gamma


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gamma_with_shared_products_equals_the_four_product_form_on_a_vit_and_a_cnn(dtype):
    vit = small_vit(seed=4).to(dtype)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(8), dtype=dtype)
    x[2] = x[0]  # a repeated row: one forward row for two relevance rows
    t = torch.tensor([1, 3, 4])
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for preset in ("attnlrp", "cp_lrp"):
        slow = dataclasses.replace(RULES[preset], linear=FourProductGamma(0.05), conv=FourProductGamma(0.25))
        for method in ("lrp", "clrp2"):
            ours, ref = (clrp.explain(vit, x, t, method, rules=r) for r in (preset, slow))
            assert _relative_error(ours, ref) < tol, (preset, method)
    torch.manual_seed(5)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
                        nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2), nn.Flatten(), nn.LazyLinear(5))
    cnn(x[:1].float())
    cnn = cnn.to(dtype).eval()
    with torch.no_grad():
        cnn[3].running_mean.normal_(), cnn[3].running_var.uniform_(0.5, 2)
    slow = dataclasses.replace(RULES["epsilon_gamma_box"], conv=FourProductGamma(0.25))
    ours, ref = (clrp.explain(cnn, x, t, "lrp", rules=r) for r in ("epsilon_gamma_box", slow))
    assert _relative_error(ours, ref) < tol


# ---------------------------------------------------------------------------------------------
# Swin, MaxViT (einsum attention), timm Swin


class EinsumHead(nn.Module):
    """One attention head written with einsum (as MaxViT) or matmul."""

    def __init__(self, einsum: bool):
        super().__init__()
        torch.manual_seed(6)
        self.qkv, self.out, self.einsum = nn.Linear(4, 12), nn.Linear(4, 3), einsum

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.einsum:
            attn = torch.einsum("bid,bjd->bij", q, k).softmax(-1)
            o = torch.einsum("bij,bjd->bid", attn, v)
        else:
            o = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.out(o[:, 0])


@pytest.mark.parametrize("rules", ["attnlrp", "cp_lrp"])
def test_einsum_attention_equals_matmul_attention(rules):
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(9))
    ours, ref = (clrp.explain(EinsumHead(e), x, 1, "lrp", rules=rules, box=(-4, 4)) for e in (True, False))
    assert float(ref.abs().sum()) > 0 and torch.allclose(ours, ref, rtol=1e-5, atol=1e-7)


def _every_lrp_method_runs(model, size):
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(10))
    for method in ("lrp", "clrp1", "clrp2", "sglrp"):
        r = clrp.explain(model.eval(), x, 3, method, rules="attnlrp")
        assert r.shape == x.shape and torch.isfinite(r).all() and float(r.abs().sum()) > 0, method
        if method == "clrp2":
            assert (r >= 0).all()


@pytest.mark.slow
def test_swin_and_maxvit():
    import torchvision
    from torchvision.models.maxvit import MaxVit

    torch.manual_seed(0)
    _every_lrp_method_runs(torchvision.models.swin_t(num_classes=10), 64)
    _every_lrp_method_runs(MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16],
                                  block_layers=[1, 1], head_dim=4, stochastic_depth_prob=0.0, num_classes=10), 32)


@pytest.mark.slow
def test_timm_swin():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    _every_lrp_method_runs(timm.create_model("swin_tiny_patch4_window7_224", num_classes=10, img_size=56,
                                             depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1)), 56)


# ---------------------------------------------------------------------------------------------
# Evaluation protocols on a vision transformer


def test_pointing_game_run_on_a_vision_transformer(tmp_path):
    """The runner takes a ViT like a CNN: LRP and CLRP2 on 4 bundled scenes, Pointing Game rows
    for every (image, class) pair and method."""
    from clrp.datasets import VocDataset
    from clrp.evaluation import runner
    from clrp.models import LoadedModel
    from clrp.models.bundled import bundled_preprocessing
    from clrp.scenes.presets import voc_cache
    from clrp.scenes.shapes import CLASS_NAMES

    torch.manual_seed(0)
    net = VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                            num_classes=len(CLASS_NAMES)).eval()
    with torch.no_grad():
        nn.init.normal_(net.heads.head.weight, std=0.1)  # torchvision zeroes the head
    pre = dataclasses.replace(bundled_preprocessing(), input_size=(64, 64))
    lm = LoadedModel(net, list(CLASS_NAMES), pre, name="tiny-vit", architecture="vit", multilabel=True)
    data = VocDataset(voc_cache(4, 11, str(tmp_path / "scenes")))
    out = str(tmp_path / "run")
    result = runner.run_evaluation(data, lm, out, methods=("lrp", "clrp2"), protocols=("pointing",), device="cpu")
    assert result.images_new == 4 and not result.problems
    rows = runner.load_results(out)["pointing"]
    assert set(rows["method"]) >= {"lrp", "clrp2"} and len(rows) > 0
    per_method = rows.groupby("method").size()
    assert per_method["lrp"] == per_method["clrp2"] >= 4  # every scene has at least one object
    assert rows["hit"].isin([True, False]).all()
    assert 0 <= runner.summarize(out)["pointing"].loc["lrp", "all"] <= 1
