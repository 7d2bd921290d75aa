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
from clrp.scenes.shapes import CLASS_NAMES

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

    from clrp.scenes.easy import generate_scene

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


# ------------------------------------------------------------------------------ every torchvision model

import re  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import OrderedDict  # noqa: E402

import torchvision  # noqa: E402

from clrp.models import download as dl  # noqa: E402

TV_NAMES = torchvision.models.list_models(module=torchvision.models)


@pytest.fixture(autouse=True)
def _fresh_download_memory():
    dl.forget_failures()
    yield
    dl.forget_failures()


def _tv_weights(name):
    """``"vit_b_16.IMAGENET1K_SWAG_LINEAR_V1"`` -> ``("vit_b_16", the weights)``; no tag: DEFAULT."""
    arch, _, tag = name.partition(".")
    enum = torchvision.models.get_model_weights(arch)
    return arch, enum[tag] if tag else enum.DEFAULT


def _checkpoint_spec(name):
    """``(shapes, metadata)`` of the state_dict torchvision's own builder loads for the default
    weights of ``name`` -- the checkpoint's form: GoogLeNet/Inception with their auxiliary heads --
    captured without any download: torchvision's loader is replaced and ``load_state_dict`` records
    what the model expects."""
    from torchvision.models import _api

    seen = {}

    def capture(self, sd, strict=True, assign=False):
        full = self.state_dict()
        seen["spec"] = OrderedDict((k, (tuple(v.shape), v.dtype)) for k, v in full.items())
        seen["meta"] = getattr(full, "_metadata", None)

    arch, tag = _tv_weights(name)
    mp = pytest.MonkeyPatch()
    mp.setattr(_api, "load_state_dict_from_url", lambda *a, **k: {})
    mp.setattr(nn.Module, "load_state_dict", capture)
    try:
        try:
            with torch.device("meta"):
                torchvision.models.get_model(arch, weights=tag)
        except NotImplementedError:  # RegNets compute their widths with tensors: not on meta
            torchvision.models.get_model(arch, weights=tag)
    finally:
        mp.undo()
    return seen["spec"], seen["meta"]


def _channel_state_dict(spec, meta, seed):
    """Random tensors of the given shapes, stored small: a weight ``w[a, b, c, ...]`` is
    ``base[a + b + c + ...]`` for a random vector ``base`` scaled by 1/sqrt(fan-in) (a strided view,
    so a ViT-H checkpoint is a few kB on disk, yet no two channels or inputs act alike). Vectors
    (biases, norms) are fully random."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for k, (shape, dtype) in spec.items():
        if not dtype.is_floating_point:
            sd[k] = torch.zeros(shape, dtype=dtype)
            continue
        if len(shape) <= 1:
            t = 0.1 * torch.randn(shape, generator=g)
            if k.endswith("running_var"):
                t = 1 + t.abs()
            elif k.endswith("weight"):
                t = 1 + t
        else:
            fan_in = max(1, int(np.prod(shape[1:])))
            base = torch.randn(sum(shape) - len(shape) + 1, generator=g) / fan_in ** 0.5
            t = base.as_strided(shape, (1,) * len(shape))
        sd[k] = t.to(dtype)
    if meta is not None:
        sd._metadata = meta
    return sd


_OLD_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))([12])\.(weight|bias|running_mean|running_var)$")


def _as_torchvision_file(name, sd):
    """What torchvision's checkpoint files hold: DenseNets use the old key names (norm.1, ...)."""
    if not name.startswith("densenet"):
        return sd
    out = OrderedDict((_OLD_DENSENET.sub(r"\1.\2.\3", k), v) for k, v in sd.items())
    out._metadata = getattr(sd, "_metadata", None)
    return out


def test_every_torchvision_classifier_is_listed_with_its_library_metadata(hub):
    info = {i.name: i for i in available_models()}
    assert set(TV_NAMES) <= set(info) and len(TV_NAMES) >= 80
    assert set(TV_NAMES) <= set(zoo.IMAGENET_MODELS) and set(TV_NAMES) <= set(zoo.ARCHITECTURES)
    for name in TV_NAMES:
        w = torchvision.models.get_model_weights(name).DEFAULT
        fname = w.url.rsplit("/", 1)[-1]
        assert zoo.imagenet_weights_path(name) == hub / fname
        assert info[name].kind == "torchvision" and info[name].available is False
        assert fname in info[name].reason and info[name].source == w.url
        assert zoo.ARCHITECTURES[name]["weights_enum"] == type(w).__name__
        t, pre = w.transforms(), zoo.torchvision_zoo.preprocessing(name)
        assert pre.input_size == (t.crop_size[0],) * 2 and pre.resize == t.resize_size[0], name
        assert pre.mean == pytest.approx(tuple(t.mean)) and pre.std == pytest.approx(tuple(t.std))
        assert pre.interpolation == t.interpolation.value
    # other weights of a model appear once their file is in the cache
    v1 = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    hub.mkdir(parents=True, exist_ok=True)
    (hub / v1.url.rsplit("/", 1)[-1]).write_bytes(b"x")
    info = {i.name: i for i in available_models()}
    assert info["resnet50.IMAGENET1K_V1"].available and not info["resnet50"].available


@pytest.mark.slow
@pytest.mark.parametrize("name", TV_NAMES)
def test_every_torchvision_classifier_loads_from_the_hub_cache(hub, name):
    spec, meta = _checkpoint_spec(name)
    sd = _channel_state_dict(spec, meta, seed=len(name))
    w = torchvision.models.get_model_weights(name).DEFAULT
    hub.mkdir(parents=True, exist_ok=True)
    torch.save(_as_torchvision_file(name, sd), hub / w.url.rsplit("/", 1)[-1])
    lm = load(name)
    assert lm.class_names == list(w.meta["categories"]) and not lm.model.training
    assert lm.weights_path == hub / w.url.rsplit("/", 1)[-1] and lm.meta["weights_tag"] == w.name
    got = lm.model.state_dict()
    aux = ("aux1.", "aux2.", "AuxLogits.")
    assert set(got) == {k for k in sd if not k.startswith(aux)}, name
    for k, v in got.items():
        assert torch.equal(v, sd[k]), (name, k)
    assert zoo.classifier_outputs(lm.model) == 1000
    if name in ("googlenet", "inception_v3"):
        assert lm.model.transform_input and not lm.model.aux_logits
    del lm, got, sd


# torchvision's own construction from the same checkpoint gives the same function
EQUIVALENCE = {"resnet18": 64, "densenet121": 64, "googlenet": 64, "inception_v3": 80, "mnasnet0_75": 64,
               "squeezenet1_1": 64, "mobilenet_v3_small": 64, "efficientnet_b0": 64, "regnet_x_400mf": 64,
               "shufflenet_v2_x0_5": 64, "convnext_tiny": 64, "swin_t": 64, "vit_b_32": 224, "maxvit_t": 224,
               "vit_b_16.IMAGENET1K_SWAG_E2E_V1": 384}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EQUIVALENCE))
def test_torchvision_models_equal_torchvisions_own_construction(hub, name, monkeypatch):
    from torchvision.models import _api

    spec, meta = _checkpoint_spec(name)
    sd = _channel_state_dict(spec, meta, seed=1)
    arch, w = _tv_weights(name)
    ckpt = _as_torchvision_file(arch, sd)
    hub.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, hub / w.url.rsplit("/", 1)[-1])
    ours = load(name).model
    monkeypatch.setattr(_api, "load_state_dict_from_url",
                        lambda *a, **k: torch.load(hub / w.url.rsplit("/", 1)[-1], weights_only=True))
    theirs = torchvision.models.get_model(arch, weights=w).eval()
    x = torch.randn(2, 3, EQUIVALENCE[name], EQUIVALENCE[name], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.shape == (2, 1000)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max())), (name, float((a - b).abs().max()))


def test_other_weights_by_tag_and_unknown_tags(hub):
    with pytest.raises(WeightsNotFound, match=r"resnet50-0676ba61\.pth"):
        load("resnet50.IMAGENET1K_V1")
    with pytest.raises(ModelLoadError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        load("resnet50.IMAGENET9K")
    with pytest.raises(ModelLoadError, match="feature extractor"):
        load("vgg16.IMAGENET1K_FEATURES")
    pre = zoo.torchvision_zoo.preprocessing("resnet50.IMAGENET1K_V1")
    assert pre.resize == 256 and zoo.torchvision_zoo.preprocessing("resnet50").resize == 232


# ------------------------------------------------------------------------------ downloads (local server)

import hashlib  # noqa: E402
import io  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402


class WeightsServer:
    """A local HTTP server (127.0.0.1) for weights files: ``files`` maps paths to bytes; ``hits``
    counts GET requests."""

    def __init__(self, files):
        self.files, self.hits = dict(files), 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def squeezenet_checkpoint():
    """Random squeezenet1_1 weights and the torchvision-style file name carrying their SHA-256 prefix."""
    torch.manual_seed(0)
    m = torchvision.models.squeezenet1_1().eval()
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    data = buf.getvalue()
    return m, data, f"squeezenet1_1-{hashlib.sha256(data).hexdigest()[:10]}.pth"


@pytest.fixture
def online(hub, monkeypatch, squeezenet_checkpoint):
    """Downloads on (the suite runs with CLRP_OFFLINE=1), a 2 s timeout, and squeezenet1_1's weights
    URL pointing at a file whose hash prefix matches our random weights. Yields the server factory."""
    monkeypatch.delenv(dl.OFFLINE_ENV, raising=False)
    monkeypatch.setenv(dl.TIMEOUT_ENV, "2")
    m, data, fname = squeezenet_checkpoint
    real = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.url
    url = dl.TORCHVISION_BASE + fname
    monkeypatch.setattr(zoo.source_torchvision, "_weights_url", lambda w: url if w.url == real else w.url)
    servers = []

    def serve(files):
        s = WeightsServer(files)
        servers.append(s)
        monkeypatch.setenv(dl.MIRROR_ENV, s.url)
        return s

    yield serve
    for s in servers:
        s.close()


def _hub_files(hub):
    return sorted(p.name for p in hub.iterdir()) if hub.is_dir() else []


def test_download_into_the_hub_cache_then_load_offline_from_it(online, hub, squeezenet_checkpoint, capsys):
    m, data, fname = squeezenet_checkpoint
    server = online({"/" + fname: data})
    info = {i.name: i for i in available_models()}["squeezenet1_1"]
    assert not info.available and info.downloadable and "downloadable" in info.reason and server.url in info.reason
    old_umask = os.umask(0o022)
    try:
        lm = load("squeezenet1_1")
    finally:
        os.umask(old_umask)
    assert server.hits == 1 and lm.meta["weights_origin"] == "downloaded"
    assert _hub_files(hub) == [fname] and (hub / fname).read_bytes() == data  # no partial file left
    assert (hub / fname).stat().st_mode & 0o777 == 0o644  # a shared cache stays readable (not a temp file's 0600)
    _same_params(lm.model, m)
    assert lm.class_names == list(torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.meta["categories"])
    assert f"downloading {fname}" in capsys.readouterr().err  # the progress bar
    server.close()
    lm2 = load("squeezenet1_1")  # from the cache: the server is gone
    assert lm2.meta["weights_origin"] == "torch hub cache" and server.hits == 1
    _same_params(lm2.model, m)
    assert {i.name: i for i in available_models()}["squeezenet1_1"].available


def test_corrupt_download_is_refused_and_leaves_nothing(online, hub, squeezenet_checkpoint):
    m, data, fname = squeezenet_checkpoint
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    server = online({"/" + fname: bytes(bad)})
    with pytest.raises(zoo.CorruptWeights, match=rf"{re.escape(fname)}.*corrupt.*Nothing was saved"):
        load("squeezenet1_1")
    assert _hub_files(hub) == []
    # not retried at once (the dashboard asks on every page run), and listed as failed
    with pytest.raises(WeightsNotFound, match="not retried"):
        load("squeezenet1_1")
    assert server.hits == 1
    info = {i.name: i for i in available_models()}["squeezenet1_1"]
    assert not info.available and not info.downloadable and "corrupt" in info.reason
    dl.forget_failures()
    server.files["/" + fname] = data
    _same_params(load("squeezenet1_1").model, m)


def test_refused_connection_silent_server_and_404_fail_fast(online, hub, squeezenet_checkpoint, monkeypatch):
    m, data, fname = squeezenet_checkpoint
    url = dl.TORCHVISION_BASE + fname
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv(dl.MIRROR_ENV, f"http://127.0.0.1:{closed}/")
    t = time.monotonic()
    with pytest.raises(WeightsNotFound) as ei:
        load("squeezenet1_1")
    assert time.monotonic() - t < 5
    msg = str(ei.value)
    for part in (fname, url, str(hub / fname), "refused", "CLRP_WEIGHTS_MIRROR", "weights="):
        assert part in msg, (part, msg)

    silent = socket.socket()  # accepts connections (kernel backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        monkeypatch.setenv(dl.MIRROR_ENV, f"http://127.0.0.1:{silent.getsockname()[1]}/")
        monkeypatch.setenv(dl.TIMEOUT_ENV, "0.5")
        t = time.monotonic()
        with pytest.raises(WeightsNotFound, match=r"no answer within 0\.5 s"):
            load("squeezenet1_1")
        assert time.monotonic() - t < 5
    finally:
        silent.close()

    server = online({})
    with pytest.raises(WeightsNotFound, match="HTTP 404"):
        load("squeezenet1_1")
    assert server.hits == 1 and _hub_files(hub) == []


def test_downloads_off_never_touch_the_network(online, hub, squeezenet_checkpoint, monkeypatch, tmp_path):
    m, data, fname = squeezenet_checkpoint
    server = online({"/" + fname: data})
    with pytest.raises(WeightsNotFound, match=r"downloads are off \(download=False\)"):
        load("squeezenet1_1", download=False)
    monkeypatch.setenv(dl.OFFLINE_ENV, "1")
    with pytest.raises(WeightsNotFound, match=r"downloads are off \(\$CLRP_OFFLINE=1\)"):
        load("squeezenet1_1")
    info = {i.name: i for i in available_models()}["squeezenet1_1"]
    assert not info.downloadable and "downloads are off" in info.reason
    assert server.hits == 0 and _hub_files(hub) == []
    # a folder as the mirror (a lab share)
    monkeypatch.delenv(dl.OFFLINE_ENV)
    share = tmp_path / "share"
    share.mkdir()
    (share / fname).write_bytes(data)
    monkeypatch.setenv(dl.MIRROR_ENV, str(share))
    _same_params(load("squeezenet1_1").model, m)
    assert _hub_files(hub) == [fname]


def test_listing_is_fast_and_offline(monkeypatch, tmp_path):
    """No network, no model construction: the picker lists ~80 models on every page run."""
    import torchvision.models as tvm

    available_models()  # imports torchvision once

    def forbidden(*a, **k):
        raise AssertionError("the listing must not build models or use the network")

    monkeypatch.setattr(tvm, "get_model", forbidden)
    monkeypatch.setattr(zoo.architectures, "build_architecture", forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.delenv(dl.OFFLINE_ENV)
    t = time.monotonic()
    infos = available_models()
    assert time.monotonic() - t < 1.0
    kinds = [i.kind for i in infos]
    assert kinds[0] == "bundled" and kinds.count("torchvision") >= 80
    assert kinds == sorted(kinds, key=["bundled", "lab", "torchvision", "timm"].index)


# ------------------------------------------------------------------------------ timm (optional)

from clrp.models import timm_zoo  # noqa: E402

needs_timm = pytest.mark.skipif(not timm_zoo.installed(), reason="timm is not installed (optional)")
TIMM_TINY = "test_resnet"  # a 0.5 M-parameter ResNet timm ships for its own tests (1000 classes, 160 px)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    d = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(d))
    monkeypatch.delenv(timm_zoo.LIST_ENV, raising=False)
    return d


def _timm_state_dict(name, seed=0):
    import timm

    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False).eval()
    return m, m.state_dict()


@needs_timm
def test_timm_model_with_a_weights_file(tmp_path, hf_cache):
    import timm

    m, sd = _timm_state_dict(TIMM_TINY)
    torch.save(sd, tmp_path / "tr.pth")
    lm = load(f"timm:{TIMM_TINY}", weights=tmp_path / "tr.pth")
    _same_params(lm.model, m)
    assert lm.class_names == list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    cfg = timm.data.resolve_data_config({}, model=m)  # the library's own numbers
    p = lm.preprocessing
    assert p.input_size == cfg["input_size"][1:] and p.interpolation == cfg["interpolation"]
    assert p.resize == int(cfg["input_size"][1] / cfg["crop_pct"]) and p.mean == pytest.approx(cfg["mean"])
    assert lm.architecture == f"timm:{TIMM_TINY}" and zoo.find_classifier(lm.model) == "fc"
    x = torch.randn(1, 3, *p.input_size)
    with torch.no_grad():
        assert torch.allclose(lm.model(x), m(x))
    # unsafe pickles are refused here too
    with pytest.raises(UnsafeWeights):
        torch.save({"fc.weight": _Payload(tmp_path / "m")}, tmp_path / "evil.pth")
        load(f"timm:{TIMM_TINY}", weights=tmp_path / "evil.pth")


@needs_timm
def test_timm_weights_from_the_hugging_face_cache(hf_cache):
    from safetensors.torch import save_file

    m, sd = _timm_state_dict(TIMM_TINY, seed=1)
    repo = hf_cache / f"models--timm--{TIMM_TINY}.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(repo / "snapshots" / "0123abcd" / "model.safetensors"))
    lm = load(f"timm:{TIMM_TINY}")  # offline (the suite sets CLRP_OFFLINE=1): from the cache
    _same_params(lm.model, m)
    assert lm.meta["weights_origin"] == "cache"
    info = {i.name: i for i in available_models()}  # weights in the HF cache are listed
    assert info[f"timm:{TIMM_TINY}.r160_in1k"].available and info[f"timm:{TIMM_TINY}.r160_in1k"].kind == "timm"


@needs_timm
def test_timm_without_weights_offline_is_a_clear_fast_message(hf_cache, monkeypatch):
    with pytest.raises(WeightsNotFound, match=rf"timm/{TIMM_TINY}\.r160_in1k.*downloads are off.*weights="):
        load(f"timm:{TIMM_TINY}")
    monkeypatch.delenv(dl.OFFLINE_ENV)
    monkeypatch.setenv(dl.TIMEOUT_ENV, "1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
    t = time.monotonic()
    with pytest.raises(WeightsNotFound, match=rf"downloading them from timm/{TIMM_TINY}\.r160_in1k failed"):
        load(f"timm:{TIMM_TINY}")
    assert time.monotonic() - t < 8  # huggingface_hub alone would retry for ~25 s
    monkeypatch.setenv(timm_zoo.LIST_ENV, f"{TIMM_TINY}, no_such_model_xyz")
    info = {i.name: i for i in available_models()}
    assert "last download failed" in info[f"timm:{TIMM_TINY}"].reason
    assert "no model" in info["timm:no_such_model_xyz"].reason
    with pytest.raises(ModelLoadError, match="timm has no model"):
        load("timm:no_such_model_xyz")


def test_everything_works_without_timm(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    monkeypatch.setenv(timm_zoo.LIST_ENV, "resnet18")
    assert not timm_zoo.installed()
    with pytest.raises(ModelLoadError, match="pip install timm"):
        load("timm:resnet18", weights=tmp_path / "x.pth")
    with pytest.raises(ModelLoadError, match="pip install timm"):
        zoo.build_architecture("timm:resnet18", 3)
    assert "timm:resnet18" not in zoo.ARCHITECTURES and "resnet18" in zoo.ARCHITECTURES
    info = {i.name: i for i in available_models()}
    assert not info["timm:resnet18"].available and "not installed" in info["timm:resnet18"].reason
    assert info["bundled"].available


# ------------------------------------------------------------------------------ classifiers, fine-tuned, lab


def _meta_model(name, **kw):
    if name.startswith("timm:"):
        import timm

        with torch.device("meta"):
            return timm.create_model(name[5:], **kw)
    with torch.device("meta"):
        return torchvision.models.get_model(name, **kw)


@pytest.mark.parametrize("name,head", [
    ("resnet50", "fc"), ("densenet121", "classifier"), ("efficientnet_b0", "classifier.1"), ("vgg16", "classifier.6"),
    ("squeezenet1_1", "classifier.1"), ("mobilenet_v3_small", "classifier.3"), ("convnext_tiny", "classifier.2"),
    ("vit_b_16", "heads.head"), ("swin_t", "head"), ("googlenet", "fc"), ("maxvit_t", "classifier.5"),
    pytest.param("timm:resnet18", "fc", marks=needs_timm), pytest.param("timm:efficientnet_b0", "classifier", marks=needs_timm),
    pytest.param("timm:convnext_atto", "head.fc", marks=needs_timm),
    pytest.param("timm:vit_tiny_patch16_224", "head", marks=needs_timm),
])
def test_find_and_replace_the_classifier(name, head):
    m = _meta_model(name).eval()
    assert zoo.find_classifier(m) == head
    assert zoo.classifier_outputs(m) == 1000
    zoo.replace_classifier(m, 7)
    assert zoo.classifier_outputs(m) == 7
    assert m(torch.empty(1, 3, 224, 224, device="meta")).shape == (1, 7)


FINETUNED = ["resnet50", "densenet121", "efficientnet_b0", "vgg11", "squeezenet1_1", pytest.param("timm:resnet18", marks=needs_timm)]


def _finetuned_files(d, arch, classes=("cat", "dog", "bird", "fish", "horse")):
    ref = zoo.build_architecture(arch, len(classes), initialize=False)
    spec = OrderedDict((k, (tuple(v.shape), v.dtype)) for k, v in ref.state_dict().items())
    sd = _channel_state_dict(spec, getattr(ref.state_dict(), "_metadata", None), seed=5)
    ref.load_state_dict(sd)
    safe = arch.replace(":", "_")
    torch.save(sd, d / f"{safe}.pt")
    (d / "classes.txt").write_text("\n".join(classes) + "\n")
    return ref, d / f"{safe}.pt"


@pytest.mark.parametrize("arch", FINETUNED)
def test_finetuned_any_architecture_in_the_lab_config(tmp_path, arch):
    ref, weights = _finetuned_files(tmp_path, arch)
    cfg = tmp_path / "lab.toml"
    cfg.write_text(f'[[models]]\nname = "ft"\narchitecture = "{arch}"\nweights = "{weights.name}"\n'
                   'class_names = "classes.txt"\nmultilabel = true\n')
    lm = load("ft", config=cfg)
    _same_params(lm.model, ref)
    head = zoo.find_classifier(lm.model)
    assert lm.class_names == ["cat", "dog", "bird", "fish", "horse"] and zoo.classifier_outputs(lm.model) == 5
    assert lm.multilabel and lm.architecture == arch
    # preprocessing defaults to what the architecture's pretrained weights use
    if arch in zoo.torchvision_models():
        t = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
        assert (lm.preprocessing.resize, lm.preprocessing.interpolation) == (t.resize_size[0], t.interpolation.value)
    else:
        assert lm.preprocessing.interpolation == "bicubic" and lm.preprocessing.resize == 235  # timm: 224 / 0.95
    (tmp_path / "four.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(ModelLoadError, match=rf"5 outputs in {re.escape(head)}\.weight but 4 class names"):
        load_finetuned(arch, weights, tmp_path / "four.txt")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(lm.model(x), ref.eval()(x))


def test_arch_config_reaches_the_builder(tmp_path):
    # a GoogLeNet trained from scratch has no input transform; a ViT fine-tuned at 64 px
    ref = zoo.build_architecture("googlenet", 3, {"transform_input": False}, initialize=False)
    assert ref.transform_input is False
    assert zoo.build_architecture("googlenet", 3, initialize=False).transform_input is True  # ImageNet-started default
    vit = zoo.build_architecture("vit_b_16", 3, {"image_size": 64}, initialize=False)
    assert vit.image_size == 64
    with pytest.raises(ModelLoadError, match="not accepted"):
        zoo.build_architecture("resnet18", 3, {"colour": "red"})


LABNETS = '''
import torch
from torch import nn


def small_cnn(num_classes=10, width=8):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))


def fixed():
    """No num_classes argument: 1000 outputs, replaced to fit the class names."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1000))


def broken():
    raise RuntimeError("no GPU here")


def not_a_model():
    return 42
'''


def test_lab_config_factory_entry_points(tmp_path, monkeypatch):
    mod = f"labnets_{tmp_path.name.replace('-', '_')}"  # a unique module per test run
    (tmp_path / f"{mod}.py").write_text(LABNETS)  # next to the TOML: imported from there
    (tmp_path / "classes.txt").write_text("red\ngreen\nblue\n")
    torch.manual_seed(0)
    ns = {}
    exec(LABNETS, ns)
    small = ns["small_cnn"](num_classes=3, width=6)
    torch.save(small.state_dict(), tmp_path / "small.pt")
    fixed = ns["fixed"]()
    fixed[4] = nn.Linear(4, 3)
    torch.save(fixed.state_dict(), tmp_path / "fixed.pt")
    cfg = tmp_path / "lab.toml"
    entries = [("small", "small_cnn", "small.pt", "arch_config = { width = 6 }\n"), ("fixed", "fixed", "fixed.pt", ""),
               ("broken", "broken", "small.pt", ""), ("notmodel", "not_a_model", "small.pt", ""),
               ("nomodule", "", "small.pt", "")]
    text = ""
    for name, fn, w, extra in entries:
        spec = f"{mod}:{fn}" if fn else "no_such_package_xyz.nets:net"
        text += f'[[models]]\nname = "{name}"\nfactory = "{spec}"\nweights = "{w}"\nclass_names = "classes.txt"\n{extra}\n'
    cfg.write_text(text)
    lm = load("small", config=cfg)
    _same_params(lm.model, small)
    assert lm.class_names == ["red", "green", "blue"] and lm.architecture == f"factory:{mod}:small_cnn"
    lm = load("fixed", config=cfg)
    _same_params(lm.model, fixed)
    assert zoo.classifier_outputs(lm.model) == 3
    with pytest.raises(ModelLoadError, match="failed: RuntimeError: no GPU here"):
        load("broken", config=cfg)
    with pytest.raises(ModelLoadError, match="not a torch.nn.Module"):
        load("notmodel", config=cfg)
    with pytest.raises(ModelLoadError, match="cannot be imported"):
        load("nomodule", config=cfg)
    info = {i.name: i for i in available_models(cfg)}
    assert info["small"].available and "factory" in info["small"].description


@pytest.mark.parametrize("text,match", [
    ('[[models]]\nname = "x"\nfactory = "not a spec"\nweights = "w.pt"\nclass_names = "c.txt"\n', "package.module:function"),
    ('[[models]]\nname = "x"\nfactory = "a:b"\narchitecture = "vgg16"\nweights = "w.pt"\nclass_names = "c.txt"\n',
     "exactly one of"),
    ('[[models]]\nname = "x"\nweights = "w.pt"\nclass_names = "c.txt"\n', "exactly one of"),
    ('[[models]]\nname = "resnet50"\narchitecture = "resnet50"\nweights = "w.pt"\nclass_names = "c.txt"\n', "reserved"),
    ('[[models]]\nname = "timm:x"\narchitecture = "resnet50"\nweights = "w.pt"\nclass_names = "c.txt"\n', "reserved"),
    ('[[models]]\nname = "x"\narchitecture = "resnet50"\narch_config = 3\nweights = "w.pt"\nclass_names = "c.txt"\n',
     "arch_config must be a table"),
])
def test_bad_factory_config(tmp_path, text, match):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ModelLoadError, match=match):
        zoo.read_config(cfg)
