import json
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import clrp.models as zoo
from clrp.errors import ClrpError
from clrp.models import (LoadedModel, ModelLoadError, UnsafeWeights, WeightsNotFound, available_models, load,
                         load_finetuned, load_state_dict)
from clrp.models import bundled
from clrp.scenes import CLASS_NAMES

SUPPORTED = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Flatten, nn.Linear,
             nn.Dropout, nn.Sequential)


def _tiny_state_dict(model: nn.Module, seed: int, real: tuple[str, ...] = ()):
    """A state_dict of ``model`` whose tensors are stride-0 expansions of one random scalar each
    (tiny on disk, exact shapes), except the names in ``real`` (random values). Also writes the
    values into ``model`` so the two can be compared."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if k in real or not v.is_floating_point():
            t = torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
        else:
            t = torch.randn(1, generator=g).expand(v.shape)
        sd[k] = t
    model.load_state_dict(sd)
    return sd


def _tv_model(name, **kw):
    """An uninitialised torchvision model (skipping the slow random init; the test overwrites
    every tensor with _tiny_state_dict)."""
    import torchvision

    with torch.device("meta"):
        m = getattr(torchvision.models, name)(weights=None, **kw)
    return m.to_empty(device="cpu")


def _same_params(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ------------------------------------------------------------------------------ bundled


def test_bundled_loads_by_default():
    lm = load()
    assert isinstance(lm, LoadedModel) and lm.name == "bundled"
    assert lm.class_names == list(CLASS_NAMES) and lm.multilabel
    assert not lm.model.training
    assert lm.preprocessing.input_size == (bundled.INPUT_SIZE, bundled.INPUT_SIZE)
    for m in lm.model.modules():
        assert isinstance(m, SUPPORTED) or m is lm.model, type(m)
        assert not isinstance(m, nn.modules.batchnorm._BatchNorm)
    names = [n for n, _ in lm.model.named_modules()]
    assert "features.0" in names and "classifier.1" in names and "avgpool" in names
    x = torch.zeros(2, 3, *lm.preprocessing.input_size)
    assert lm.model(x).shape == (2, len(CLASS_NAMES))


def test_bundled_assets_small_and_described():
    assert bundled.WEIGHTS_FILE.stat().st_size <= 10 * 1024 * 1024
    meta = json.loads(bundled.META_FILE.read_text())
    for key in ("class_names", "preprocessing", "architecture", "training", "heldout_metrics"):
        assert key in meta
    assert meta["training"]["seed"] == 0
    assert set(meta["heldout_metrics"]["per_class_AP"]) == set(CLASS_NAMES)
    assert meta["preprocessing"]["mean"] and meta["preprocessing"]["std"]


def test_bundled_model_held_out_map():
    from clrp.models.bundled_metrics import evaluate_model

    lm = load("bundled")
    m = evaluate_model(lm.model, n=300, seed=bundled.METRICS_SEED_BASE + 500_000)
    assert m["mAP"] >= 0.85, m
    assert min(m["per_class_AP"].values()) >= 0.6, m


def test_average_precision_reference_values():
    from clrp.models.bundled_metrics import average_precision

    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == pytest.approx(1.0)
    # sklearn: average_precision_score([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) = (1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    assert average_precision(np.array([0.1, 0.9]), np.array([1, 0])) == pytest.approx(0.5)


def test_bundled_missing_assets_raise(monkeypatch, tmp_path):
    monkeypatch.setattr(bundled, "WEIGHTS_FILE", tmp_path / "nope.pt")
    with pytest.raises(WeightsNotFound, match="train_bundled_model"):
        load("bundled")
    info = {i.name: i for i in available_models()}
    assert not info["bundled"].available


# ------------------------------------------------------------------------------ torchvision ImageNet


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    d = tmp_path / "torch" / "hub"
    assert os.path.realpath(torch.hub.get_dir()) == os.path.realpath(d)
    return d / "checkpoints"


@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn", "vgg19", "alexnet"])
def test_imagenet_entries_from_hub_cache(hub, name):
    import torchvision

    # without the file: a clear error naming the file and where to put it
    with pytest.raises(WeightsNotFound) as ei:
        load(name)
    fname = zoo.imagenet_weights_path(name).name
    assert fname.endswith(".pth") and fname.split("-")[0] == name
    assert fname in str(ei.value) and str(hub) in str(ei.value)
    assert isinstance(ei.value, ClrpError)
    assert {i.name: i for i in available_models()}[name].available is False

    ref = _tv_model(name)
    hub.mkdir(parents=True, exist_ok=True)
    torch.save(_tiny_state_dict(ref, seed=3), hub / fname)
    assert {i.name: i for i in available_models()}[name].available is True
    lm = load(name)
    _same_params(lm.model, ref)
    assert not lm.model.training
    w = getattr(torchvision.models, zoo.ARCHITECTURES[name]["weights_enum"]).IMAGENET1K_V1
    assert lm.class_names == list(w.meta["categories"]) and len(lm.class_names) == 1000
    assert lm.preprocessing.input_size == (224, 224) and lm.preprocessing.resize == 256
    assert lm.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))
    # explicit weights= path works too, and a wrong explicit path fails clearly
    lm2 = load(name, weights=hub / fname)
    _same_params(lm2.model, ref)
    with pytest.raises(WeightsNotFound, match="does not exist"):
        load(name, weights=hub / "missing.pth")


def test_wrong_weights_for_architecture(hub):
    import torchvision

    hub.mkdir(parents=True)
    torch.save(_tiny_state_dict(_tv_model("alexnet"), 1), hub / zoo.imagenet_weights_path("vgg16").name)
    with pytest.raises(ModelLoadError, match="do not fit"):
        load("vgg16")


# ------------------------------------------------------------------------------ safety


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("how", ["torch.save", "raw pickle", "nested"])
def test_malicious_pickle_refused(tmp_path, how):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save({"features.0.weight": _Payload(marker)}, path)
    elif how == "raw pickle":
        with open(path, "wb") as f:
            pickle.dump(_Payload(marker), f)
    else:
        torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, path)
    # sanity: the payload really runs under a plain unpickler
    if how == "raw pickle":
        with open(path, "rb") as f:
            pickle.load(f)
        assert marker.exists()
        marker.unlink()
    with pytest.raises(UnsafeWeights, match="refused"):
        load_state_dict(path)
    with pytest.raises(UnsafeWeights):
        load("vgg16", weights=path)
    with pytest.raises(UnsafeWeights):
        load_finetuned("vgg11", path, ["a", "b"])
    assert not marker.exists()


def test_corrupt_weights_file(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ModelLoadError):
        load_state_dict(p)
    q = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), q)
    with pytest.raises(ModelLoadError, match="state_dict"):
        load_state_dict(q)


# ------------------------------------------------------------------------------ fine-tuned and lab


@pytest.fixture(scope="module")
def vgg16_5(tmp_path_factory):
    import torchvision

    d = tmp_path_factory.mktemp("ft")
    ref = _tv_model("vgg16", num_classes=5)
    sd = _tiny_state_dict(ref, seed=11, real=("classifier.6.weight", "classifier.6.bias"))
    # a DataParallel-style checkpoint wrapped in a dict
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, d / "vgg16_5.pt")
    (d / "classes.txt").write_text("cat\ndog\n\nbird\nfish\nhorse\n")
    (d / "classes.json").write_text(json.dumps(["cat", "dog", "bird", "fish", "horse"]))
    return d, ref


def test_finetuned_five_classes(vgg16_5):
    d, ref = vgg16_5
    for names in (d / "classes.txt", d / "classes.json"):
        lm = load("finetuned", architecture="vgg16", weights=d / "vgg16_5.pt", class_names=names)
        assert lm.class_names == ["cat", "dog", "bird", "fish", "horse"]
        assert lm.model.classifier[6].out_features == 5
        _same_params(lm.model, ref)
        assert not lm.model.training
    lm = load_finetuned("vgg16", d / "vgg16_5.pt", d / "classes.txt", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2),
                        input_size=160, resize=None, multilabel=True)
    assert lm.preprocessing.input_size == (160, 160) and lm.preprocessing.resize is None
    assert lm.preprocessing.std == (0.2, 0.2, 0.2) and lm.multilabel


def test_finetuned_class_count_mismatch(vgg16_5, tmp_path):
    d, _ = vgg16_5
    (tmp_path / "four.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(ModelLoadError, match="5 outputs.*4 class names"):
        load_finetuned("vgg16", d / "vgg16_5.pt", tmp_path / "four.txt")
    with pytest.raises(ModelLoadError, match="unknown architecture"):
        load_finetuned("resnet9000", d / "vgg16_5.pt", d / "classes.txt")
    with pytest.raises(WeightsNotFound):
        load_finetuned("vgg16", tmp_path / "missing.pt", d / "classes.txt")


def _lab_setup(tmp_path):
    m = bundled.build_model({"num_classes": 3})
    torch.save(m.state_dict(), tmp_path / "lab.pt")
    (tmp_path / "lab_classes.json").write_text('["red", "green", "blue"]')
    cfg = tmp_path / "models.toml"
    cfg.write_text(
        '[[models]]\nname = "lab-shapes"\narchitecture = "scene_vgg"\nweights = "lab.pt"\n'
        'class_names = "lab_classes.json"\nmean = [0.4, 0.4, 0.4]\nstd = [0.3, 0.3, 0.3]\ninput_size = 96\n'
        'resize = false\ndescription = "a lab model"\nmultilabel = true\n\n'
        '[[models]]\nname = "lab-missing"\narchitecture = "vgg16"\nweights = "/nonexistent/w.pt"\n'
        'class_names = "lab_classes.json"\n'
    )
    return m, cfg


def test_lab_config_toml(tmp_path, monkeypatch):
    m, cfg = _lab_setup(tmp_path)
    lm = load("lab-shapes", config=cfg)
    _same_params(lm.model, m)
    assert lm.class_names == ["red", "green", "blue"] and lm.multilabel and lm.description == "a lab model"
    assert lm.preprocessing.mean == (0.4, 0.4, 0.4) and lm.preprocessing.input_size == (96, 96)
    assert lm.preprocessing.resize is None
    # via the environment variable
    monkeypatch.setenv(zoo.CONFIG_ENV, str(cfg))
    assert load("lab-shapes").class_names == ["red", "green", "blue"]
    info = {i.name: i for i in available_models()}
    assert info["lab-shapes"].available and info["lab-shapes"].kind == "lab"
    assert not info["lab-missing"].available and "/nonexistent/w.pt" in info["lab-missing"].reason
    with pytest.raises(WeightsNotFound):
        load("lab-missing")
    monkeypatch.delenv(zoo.CONFIG_ENV)
    with pytest.raises(ModelLoadError, match="unknown model"):
        load("lab-shapes")


@pytest.mark.parametrize("text,match", [
    ("[[models]\nname=", "not valid TOML"),
    ('[[models]]\nname = "x"\narchitecture = "vgg16"\nweights = "w.pt"\n', "lacks 'class_names'"),
    ('[[models]]\nname = "vgg16"\narchitecture = "vgg16"\nweights = "w.pt"\nclass_names = "c.txt"\n', "reserved"),
    ('[[models]]\nname = "x"\narchitecture = "resnet50x"\nweights = "w.pt"\nclass_names = "c.txt"\n', "unknown architecture"),
    ('[[models]]\nname = "x"\narchitecture = "vgg16"\nweights = "w.pt"\nclass_names = "c.txt"\nwieghts = 1\n', "unknown keys"),
])
def test_bad_config(tmp_path, text, match):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ModelLoadError, match=match):
        zoo.read_config(cfg)
    info = {i.name: i for i in available_models(cfg)}
    assert info["<config>"].available is False


def test_unknown_model_and_options():
    with pytest.raises(ModelLoadError, match="unknown model 'nope'"):
        load("nope")
    with pytest.raises(ModelLoadError):
        load("bundled", colour="red")


def test_loaded_model_image_helpers():
    from PIL import Image

    from clrp.scenes import generate_scene

    lm = load()
    sc = generate_scene(20_900_001)
    x = lm.to_tensor(Image.fromarray(sc.image))
    assert x.shape == (1, 3, 96, 96)
    back = lm.display_array(x)
    assert back.shape == (96, 96, 3) and back.dtype == np.uint8
    top = lm.top_classes(x, k=3)
    assert len(top) == 3 and top[0][1] in CLASS_NAMES


def test_fold_batch_norm_is_exact_and_bn_free():
    torch.manual_seed(0)
    m = bundled.build_model(batch_norm=True)
    x = torch.randn(6, 3, 96, 96)
    m.train()
    for _ in range(3):  # move the running statistics away from their defaults
        m(x * 2 + 0.5)
    with torch.no_grad():
        for bn in (l for l in m.features if isinstance(l, nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    m.eval()
    f = bundled.fold_batch_norm(m)
    assert not any(isinstance(l, nn.BatchNorm2d) for l in f.modules())
    with torch.no_grad():
        assert torch.allclose(f(x), m(x), atol=1e-5, rtol=1e-4)
