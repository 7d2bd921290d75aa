"""Tracing never explains another function than the model's (issue #17, items 4, 5, 7): batch-size
guards, the explained output, forward hooks, wrappers, meta tensors, and what a refusal says."""
import collections
import copy
import functools
import warnings

import pytest
import torch
from torch import nn

import clrp
from clrp import engine
from clrp.engine import ClrpWarning
from clrp.errors import ClrpError, InvalidInput, UnsupportedModel


def _autograd(model, x, targets):
    xg = x.detach().clone().requires_grad_(True)
    out = model(xg)
    (g,) = torch.autograd.grad(out.gather(1, torch.as_tensor(targets).view(-1, 1)).sum(), xg)
    return g


def _mlp(seed=0, outputs=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, outputs)).eval()


# -- item 4: a graph traced at one batch size is reused at another --------------------------------

class HalvesSingles(nn.Module):
    """Scales its logits by 0.5 for a batch of one: the function depends on the batch size."""

    def __init__(self):
        super().__init__()
        self.net = _mlp()

    def forward(self, x):
        y = self.net(x)
        if x.shape[0] == 1:
            y = y * 0.5
        return y


class SmallBatchesOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _mlp()

    def forward(self, x):
        y = self.net(x)
        return y * 3 if x.shape[0] > 4 else y


@pytest.mark.parametrize("cls", [HalvesSingles, SmallBatchesOnly])
def test_a_model_that_branches_on_its_batch_size_is_explained_at_every_size(cls):
    model = cls().eval()
    for n in (1, 3, 6, 1, 2):  # every size after the others: no plan is reused where its guards fail
        x = torch.randn(n, 4)
        t = list(range(n)) if n <= 3 else [0] * n
        assert torch.allclose(clrp.explain(model, x, t, "gradient"), _autograd(model, x, t), atol=1e-6), n
        assert torch.allclose(engine.forward(model, x), model(x), atol=1e-6), n


def test_several_targets_of_one_image_are_explained_at_the_batch_size_given():
    # one image, three targets: the model must see a batch of one for each (not one batch of three)
    model, x = HalvesSingles().eval(), torch.randn(1, 4)
    got = clrp.explain(model, x, [0, 1, 2], "gradient")
    expected = torch.cat([_autograd(model, x, [t]) for t in range(3)])
    assert torch.allclose(got, expected, atol=1e-6)
    lrp = clrp.explain(model, x, [0, 1, 2], "lrp", rules="epsilon_plus")
    one_by_one = torch.cat([clrp.explain(model, x, t, "lrp", rules="epsilon_plus") for t in range(3)])
    assert torch.allclose(lrp, one_by_one)
    # and that is the batch-1 function: relevance of the halved logits (epsilon: conserved up to biases)
    halved = clrp.explain(HalvesSingles().eval(), x.expand(2, 4), [0, 0], "lrp", rules="epsilon_plus")
    assert torch.allclose(lrp[0], 0.5 * halved[0], atol=1e-6)


def test_integrated_gradients_points_run_at_the_batch_size_given():
    model, x = HalvesSingles().eval(), torch.randn(1, 4)
    steps = 6
    got = clrp.explain(model, x, 0, "integrated_gradients", steps=steps, integration="riemann_trapezoid",
                       batch_size=5)
    # the same integral with one point at a time (batch 1, as given: the halved logits), by autograd
    alphas = torch.linspace(0, 1, steps)
    grads = torch.stack([_autograd(model, a * x, [0]) for a in alphas])
    w = torch.full((steps,), 1.0 / steps)  # captum's trapezoid weights
    w[0] = w[-1] = 0.5 / steps
    expected = (grads * w.view(-1, 1, 1)).sum(0) * x
    assert torch.allclose(got, expected, atol=1e-5)


def test_an_ordinary_model_gets_one_trace_for_every_batch_size():
    model = _mlp()
    plans = {id(engine.plan_for(model, torch.randn(n, 4))) for n in (1, 2, 7)}
    assert len(plans) == 1
    assert not engine.plan_for(model, torch.randn(1, 4)).graph.batch_guards.constrained


# -- item 5: which output is explained ------------------------------------------------------------

class TwoHeads(nn.Module):
    def __init__(self, kind="dict"):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        self.aux = nn.Linear(6, 3)
        self.out = nn.Linear(6, 3)
        self.kind = kind

    def forward(self, x):
        h = self.body(x)
        if self.kind == "dict":
            return {"aux": self.aux(h), "out": self.out(h)}
        if self.kind == "named":
            return collections.namedtuple("Outputs", "aux logits")(self.aux(h), self.out(h))
        return self.aux(h), self.out(h)


class OnlyOut(nn.Module):
    def __init__(self, heads):
        super().__init__()
        self.heads = heads

    def forward(self, x):
        return self.heads.out(self.heads.body(x))


def test_a_model_returning_several_tensors_is_refused_with_its_outputs():
    torch.manual_seed(0)
    x = torch.randn(2, 4)
    with pytest.raises(UnsupportedModel, match=r"returns a dict with keys 'aux', 'out'.*output="):
        clrp.explain(TwoHeads().eval(), x, 0, "lrp", rules="epsilon_plus")
    with pytest.raises(UnsupportedModel, match=r"returns a tuple of 2 .*output="):
        clrp.explain(TwoHeads("tuple").eval(), x, 0, "gradient")
    with pytest.raises(UnsupportedModel, match=r"Outputs with fields aux, logits"):
        engine.forward(TwoHeads("named").eval(), x)


@pytest.mark.parametrize("kind, output", [("dict", "out"), ("tuple", 1), ("tuple", -1), ("named", "logits"),
                                          ("dict", lambda out: out["out"])])
def test_output_selects_the_explained_tensor(kind, output):
    torch.manual_seed(0)
    model = TwoHeads(kind).eval()
    reference = OnlyOut(model).eval()
    x = torch.randn(2, 4)
    for method in ("lrp", "clrp2", "gradient"):
        got = clrp.explain(model, x, [0, 2], method, rules="zplus", output=output)
        assert torch.equal(got, clrp.explain(reference, x, [0, 2], method, rules="zplus")), method
    assert torch.equal(engine.forward(model, x, output=output), reference(x))
    got = clrp.layer_relevance(model, x, [0, 2], "body.0", rules="epsilon_plus", output=output)
    assert torch.equal(got, clrp.layer_relevance(reference, x, [0, 2], "heads.body.0", rules="epsilon_plus"))


def test_a_selection_function_written_inline_reuses_the_trace():
    model, x = TwoHeads().eval(), torch.randn(1, 4)
    plans = [engine.plan_for(model, x, output=lambda out: out[key]) for key in ("out", "out", "aux")]
    assert plans[0] is plans[1]  # the same code and closure: the same selection
    assert plans[2] is not plans[0]
    assert torch.equal(engine.forward(model, x, output=lambda out: out["aux"]), model(x)["aux"])


def test_wrong_output_selections_are_clear_errors():
    model, x = TwoHeads().eval(), torch.randn(1, 4)
    with pytest.raises(ClrpError, match=r"output='logits': TwoHeads returns a dict with keys 'aux', 'out'"):
        clrp.explain(model, x, 0, "lrp", output="logits")
    with pytest.raises(ClrpError, match="returns a single tensor"):
        clrp.explain(_mlp(), x, 0, "lrp", output=0)  # would explain row 0 of the logits
    with pytest.raises(InvalidInput, match="output must be"):
        clrp.explain(model, x, 0, "lrp", output=1.5)


# -- item 7: hooks, wrappers, meta tensors, what a failed trace says -----------------------------------

def test_forward_hooks_that_change_the_output_are_refused():
    x = torch.randn(2, 4)
    for register in (lambda m: m[2].register_forward_hook(lambda mod, a, out: out * 2),
                     lambda m: m[2].register_forward_hook(lambda mod, a, out: out.mul_(0.5)),
                     lambda m: m[0].register_forward_pre_hook(lambda mod, a: (a[0] + 1,))):
        model = _mlp()
        register(model)
        with pytest.raises(UnsupportedModel, match=r"forward hooks on [012] that change what the module computes"):
            clrp.explain(model, x, 0, "lrp", rules="epsilon_plus")
        # the autograd-only methods run on the hooked model itself: its true gradient
        assert torch.allclose(clrp.explain(model, x, [0, 1], "gradient"), _autograd(model, x, [0, 1]), atol=1e-6)


def test_observing_hooks_are_not_part_of_the_explanation():
    model, x = _mlp(), torch.randn(2, 4)
    expected = clrp.explain(_mlp(), x, [0, 1], "lrp", rules="epsilon_plus")
    seen = []
    model[1].register_forward_hook(lambda mod, a, out: seen.append(out.shape))
    with pytest.warns(ClrpWarning, match="forward hooks on 1"):
        got = clrp.explain(model, x, [0, 1], "lrp", rules="epsilon_plus")
    assert torch.equal(got, expected)
    assert len(seen) == 1  # called once on a copy, when traced, to check it changes nothing
    clrp.explain(model, x, [0, 1], "gradient")
    assert len(seen) == 1


def test_hooks_that_return_what_they_were_given_change_nothing():
    model, x = _mlp(), torch.randn(2, 4)
    expected = clrp.explain(_mlp(), x, [0, 1], "lrp", rules="epsilon_plus")
    model[0].register_forward_pre_hook(lambda mod, args: args)
    model[1].register_forward_hook(lambda mod, args, out: out)
    model[2].register_forward_pre_hook(lambda mod, args, kwargs: (args, kwargs), with_kwargs=True)
    with pytest.warns(ClrpWarning, match="forward hooks on 0, 2, 1|forward hooks on 0, 1, 2"):
        assert torch.equal(clrp.explain(model, x, [0, 1], "lrp", rules="epsilon_plus"), expected)


def test_data_parallel_is_explained_through_its_module():
    model, x = _mlp(), torch.randn(2, 4)
    wrapped = nn.DataParallel(model)
    for method in ("lrp", "gradient"):
        assert torch.equal(clrp.explain(wrapped, x, [0, 1], method, rules="epsilon_plus"),
                           clrp.explain(model, x, [0, 1], method, rules="epsilon_plus"))
    assert engine.layer_names(wrapped, x) == engine.layer_names(model, x)


def test_a_wrapper_whose_forward_takes_any_arguments_is_traced():
    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs, **kwargs):
            return self.inner(inputs[0])

    model, x = _mlp(), torch.randn(2, 4)
    assert torch.equal(clrp.explain(Wrapper(model).eval(), x, [0, 1], "lrp", rules="epsilon_plus"),
                       clrp.explain(model, x, [0, 1], "lrp", rules="epsilon_plus"))


def test_meta_tensors_are_clear_errors():
    x = torch.randn(1, 4)
    with pytest.raises(InvalidInput, match="meta tensors"):
        clrp.explain(_mlp().to("meta"), x.to("meta"), 0, "lrp")
    with pytest.raises(InvalidInput, match=r"meta tensors \('0.weight'"):
        clrp.explain(_mlp().to("meta"), x, 0, "gradient")


class ValueBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            x = x * 2
        return self.fc(x)


class ToNumpy(nn.Module):
    def forward(self, x):
        return torch.as_tensor(x.numpy() * 2)


def test_a_refused_trace_prints_nothing_and_keeps_the_details(capfd):
    with pytest.raises(UnsupportedModel, match="branches on tensor values") as info:
        clrp.explain(ValueBranch().eval(), torch.randn(1, 4), 0, "lrp")
    out, err = capfd.readouterr()
    assert "def forward" not in out + err and out + err == ""
    assert "def forward" in info.value.details  # torch.export's generated code, for whoever asks


def test_a_failed_trace_says_what_failed_and_where():
    model = nn.Sequential(nn.Linear(4, 4), ToNumpy(), nn.Linear(4, 2)).eval()
    with pytest.raises(UnsupportedModel) as info:
        clrp.explain(model, torch.randn(1, 4), 0, "lrp")
    message = str(info.value)
    assert "in 1 (ToNumpy)" in message and "numpy" in message
    assert "tensor values" not in message


# -- item 8: traced graphs cached across processes ----------------------------------------------------

class Scaled(nn.Module):
    """A small CNN with a plain setting, a non-parameter tensor attribute and a residual add."""

    def __init__(self, scale=1.0, offset=0.0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        self.scale = scale
        self.offset = torch.full((4, 1, 1), offset)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = (y + y * self.scale + self.offset).mean((2, 3))
        return self.fc(y)


def _entries(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".json")


def _no_export(monkeypatch):
    from clrp.engine import trace

    def refuse(*a, **k):
        raise AssertionError("traced again although the cache holds the graph")
    monkeypatch.setattr(trace, "_export", refuse)


def test_a_traced_graph_is_read_back_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLRP_TRACE_CACHE", str(tmp_path / "traces"))
    x = torch.randn(2, 3, 8, 8)
    fresh = {m: clrp.explain(Scaled().eval(), x, [0, 2], m, rules="zplus") for m in ("lrp", "clrp2", "gradient")}
    names = engine.layer_names(Scaled().eval(), x)
    assert len(_entries(tmp_path / "traces")) == 1
    assert (tmp_path / "traces").stat().st_mode & 0o777 == 0o700
    _no_export(monkeypatch)
    for method, expected in fresh.items():  # another model object: the graph comes from disk
        assert torch.equal(clrp.explain(Scaled().eval(), x, [0, 2], method, rules="zplus"), expected)
    assert engine.layer_names(Scaled().eval(), x) == names


def test_a_cache_entry_never_describes_another_model(tmp_path, monkeypatch):
    monkeypatch.setenv("CLRP_TRACE_CACHE", str(tmp_path))
    x = torch.randn(1, 3, 8, 8)
    clrp.explain(Scaled().eval(), x, 0, "gradient")
    # another setting or another captured tensor is another key
    for other in (Scaled(scale=3.0), Scaled(offset=0.5)):
        model = other.eval()
        assert torch.allclose(clrp.explain(model, x, 0, "gradient"), _autograd(model, x, [0]), atol=1e-6)
    assert len(_entries(tmp_path)) == 3
    # an entry of the same key that holds another model's graph is caught by running it, and rebuilt
    a, b = sorted(tmp_path.glob("*.json"), key=lambda p: p.stat().st_mtime)[:2]
    record = __import__("json").loads(b.read_text())
    record["key"] = a.stem
    a.write_text(__import__("json").dumps(record))
    (tmp_path / f"{a.stem}.pt").write_bytes((tmp_path / f"{b.stem}.pt").read_bytes())
    model = Scaled().eval()
    assert torch.allclose(clrp.explain(model, x, 0, "gradient"), _autograd(model, x, [0]), atol=1e-6)
    assert __import__("json").loads(a.read_text())["nodes"] != record["nodes"]  # rewritten


class Configured(nn.Module):
    """Settings as timm and torchvision keep them: a config dict (timm's ``pretrained_cfg``) and a
    layer factory (torchvision's ``norm_layer=partial(nn.LayerNorm, eps=1e-6)``)."""

    def __init__(self, cfg=None, eps=1e-6):
        super().__init__()
        torch.manual_seed(0)
        self.pretrained_cfg = cfg or {"mean": (0.5, 0.5, 0.5), "classifier": "fc", "tags": ["a"]}
        self.norm_layer = functools.partial(nn.LayerNorm, eps=eps)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = self.norm_layer(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.norm(torch.relu(self.conv(x)).mean((2, 3))))


def test_timm_and_torchvision_settings_are_part_of_the_key_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CLRP_TRACE_CACHE", str(tmp_path))
    x = torch.randn(2, 3, 8, 8)
    expected = clrp.explain(Configured().eval(), x, [0, 2], "lrp", rules="epsilon_plus")
    assert len(_entries(tmp_path)) == 1  # written, although the model holds a dict and a partial
    for other in (Configured(cfg={"mean": (0.4, 0.5, 0.5), "classifier": "fc", "tags": ["a"]}),
                  Configured(eps=1e-5)):
        clrp.explain(other.eval(), x, 0, "gradient")
    assert len(_entries(tmp_path)) == 3  # another setting is another key
    _no_export(monkeypatch)
    assert torch.equal(clrp.explain(Configured().eval(), x, [0, 2], "lrp", rules="epsilon_plus"), expected)


_KEY_OF_A_SET_LITERAL = """
import sys, torch
from torch import nn
sys.path.insert(0, sys.argv[1])
from clrp.engine import trace_cache

class Picky(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.mode = "token"

    def forward(self, x):
        if self.mode in {"token", "avg", "max", "avgmax", "map"}:  # a frozenset constant, as in timm
            return self.fc(x)
        return x

print(trace_cache.key(Picky(), (4,), torch.float32, "cpu", None, 2))
"""


def test_the_key_is_the_same_in_every_process():
    """A set literal in a model's code (timm: ``if pool in {"token", "avg", ...}``) is a frozenset
    constant whose repr depends on the process's string hash seed: it must not change the key."""
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    keys = {subprocess.run([sys.executable, "-c", _KEY_OF_A_SET_LITERAL, root], capture_output=True, text=True,
                           check=True, env={**__import__("os").environ, "PYTHONHASHSEED": seed}).stdout.strip()
            for seed in ("1", "2", "3")}
    assert len(keys) == 1, keys


def test_corrupt_entries_are_ignored_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("CLRP_TRACE_CACHE", str(tmp_path))
    x = torch.randn(1, 3, 8, 8)
    expected = clrp.explain(Scaled().eval(), x, 0, "lrp", rules="epsilon_plus")
    (entry,) = tmp_path.glob("*.json")
    for damage in (b"{not json", entry.read_bytes()[:100], b""):
        entry.write_bytes(damage)
        assert torch.equal(clrp.explain(Scaled().eval(), x, 0, "lrp", rules="epsilon_plus"), expected)
        assert __import__("json").loads(entry.read_text())["key"] == entry.stem


def test_the_cache_is_off_on_request_and_in_a_folder_others_can_write(tmp_path, monkeypatch):
    x = torch.randn(1, 3, 8, 8)
    monkeypatch.setenv("CLRP_TRACE_CACHE", "off")
    clrp.explain(Scaled().eval(), x, 0, "gradient")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("CLRP_TRACE_CACHE", str(shared))
    clrp.explain(Scaled().eval(), x, 0, "gradient")
    assert list(shared.iterdir()) == []


# -- item 7: a normalisation inside the model ------------------------------------------------------------

class Normalize(nn.Module):
    """torchvision.transforms.Normalize as a module at the start of a model."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


def test_a_normalisation_inside_the_model_gets_the_zb_box_of_its_inputs():
    from clrp.rules import IMAGENET_MEAN, IMAGENET_STD

    inner = _cnn()
    model = nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), inner).eval()
    pixels = torch.rand(2, 3, 8, 8)
    normalised = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("lrp", "clrp2"):
            # relevance passes the affine normalisation unchanged: the same map as the bare network on
            # normalised inputs, whose zB box is ImageNet's normalised range
            got = clrp.explain(model, pixels, [0, 1], method, rules="paper")
            expected = clrp.explain(inner, normalised, [0, 1], method, rules="paper")
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6), method


def test_an_unrecognised_input_transform_is_said():
    model = nn.Sequential(Normalize((0.5, 0.5, 0.5), (0.1, 0.1, 0.1)), _cnn()).eval()
    with pytest.warns(ClrpWarning, match=r"transforms its inputs before its first layer .*pass box="):
        clrp.explain(model, torch.rand(1, 3, 8, 8), 0, "lrp", rules="paper")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit box: nothing to say
        clrp.explain(copy.deepcopy(model), torch.rand(1, 3, 8, 8), 0, "lrp", rules="paper", box=(0.0, 1.0))
