"""The device policy (clrp.devices): which device, moving a model once, batch sizes from free memory
and out-of-memory retries. CUDA is faked where the policy only needs torch.cuda's answers."""
import json

import pytest
import torch

import clrp
from clrp import devices
from clrp.devices import DeviceOutOfMemory, batch_limit, explain_batched, place, resolve_device
from clrp.errors import ClrpError
from clrp.models import LoadedModel, Preprocessing, read_config


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda says two devices are there (nothing is ever put on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv(devices.DEVICE_ENV, raising=False)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(devices.DEVICE_ENV, raising=False)


def test_auto_is_cuda_when_available_else_cpu(fake_cuda, monkeypatch):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device(None) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_order_explicit_then_model_setting_then_environment(fake_cuda, monkeypatch):
    monkeypatch.setenv(devices.DEVICE_ENV, "cuda:1")
    assert resolve_device("auto") == torch.device("cuda:1")                       # the server's default
    assert resolve_device("auto", configured="cpu") == torch.device("cpu")        # the model's own setting
    assert resolve_device("cuda:0", configured="cpu") == torch.device("cuda:0")   # an explicit request
    monkeypatch.setenv(devices.DEVICE_ENV, "auto")
    assert resolve_device("auto", current=torch.device("cuda:1")) == torch.device("cuda:1")  # stays put


@pytest.mark.parametrize("value,words", [("gpu", "not a device"), ("cuda:2", "2 CUDA device(s)"),
                                         ("xla", "not supported")])
def test_bad_devices_get_a_message_naming_the_setting(fake_cuda, monkeypatch, value, words):
    with pytest.raises(ClrpError, match="device.*" + words.replace("(", r"\(").replace(")", r"\)")):
        resolve_device(value)
    monkeypatch.setenv(devices.DEVICE_ENV, value)
    with pytest.raises(ClrpError, match=r"\$CLRP_DEVICE"):
        resolve_device("auto")


def test_cuda_without_cuda_is_a_clear_error(no_cuda):
    with pytest.raises(ClrpError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ClrpError, match="model's device setting.*CUDA is not available"):
        resolve_device("auto", configured="cuda:0")


def _loaded(device=None):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    return LoadedModel(net, ["a", "b", "c"], Preprocessing(input_size=(8, 8), resize=None), name="t", device=device)


def test_place_leaves_a_model_that_is_already_there_untouched(no_cuda):
    lm = _loaded()
    before = [p for p in lm.model.parameters()]
    assert place(lm) == torch.device("cpu")
    assert all(a is b for a, b in zip(before, lm.model.parameters()))


def test_the_model_setting_wins_over_the_environment_when_placing(fake_cuda, monkeypatch):
    monkeypatch.setenv(devices.DEVICE_ENV, "cuda")
    assert place(_loaded(device="cpu")) == torch.device("cpu")


def test_a_failed_move_is_a_message_and_the_model_stays(fake_cuda, monkeypatch):
    lm = _loaded()
    real_to = torch.nn.Module.to

    def refuse(self, *a, **k):  # half-way moves are moved back to the CPU
        if torch.device(a[0]).type != "cpu":
            raise RuntimeError("CUDA error: out of memory\nmore lines")
        return real_to(self, *a, **k)
    monkeypatch.setattr(torch.nn.Module, "to", refuse)
    with pytest.raises(ClrpError, match="cannot move the model to cuda.*out of memory"):
        place(lm, "cuda:1")
    monkeypatch.undo()
    assert devices.device_of(lm) == torch.device("cpu")


def test_lab_config_takes_a_device_per_model(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"")
    (tmp_path / "names.txt").write_text("a\nb\n")
    base = 'name = "{n}"\narchitecture = "resnet18"\nweights = "w.pt"\nclass_names = "names.txt"\n'
    (tmp_path / "lab.toml").write_text("[[models]]\n" + base.format(n="big") + 'device = "cpu"\n'
                                       "[[models]]\n" + base.format(n="small"))
    cfg = read_config(tmp_path / "lab.toml")
    assert cfg["big"]["device"] == "cpu" and "device" not in cfg["small"]
    (tmp_path / "bad.toml").write_text("[[models]]\n" + base.format(n="x") + "device = 1\n")
    with pytest.raises(ClrpError, match="device must be a string"):
        read_config(tmp_path / "bad.toml")


# -- batch sizes and out-of-memory -------------------------------------------------------------

def test_batch_rule():
    gib = 2 ** 30
    assert batch_limit(10 * gib, gib, 64) == 7            # floor(0.7 * 10)
    assert batch_limit(100 * gib, gib, 64) == 64          # capped
    assert batch_limit(gib // 2, gib, 64) == 1            # never below one
    assert batch_limit(None, None, 16) == 16              # the CPU: the cap


def _rows(n=10):
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()


class _Recorder:
    """An explain function that runs out of memory above ``fits`` rows."""

    def __init__(self, fits):
        self.fits, self.sizes = fits, []

    def __call__(self, x, t):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x * 2 + t.view(-1, 1, 1, 1)


def test_out_of_memory_halves_the_batch_and_gives_the_same_result():
    x, t = _rows(10), torch.arange(10)
    fn = _Recorder(fits=3)
    out = explain_batched(fn, x, t, batch_size=10)
    assert torch.equal(out, x * 2 + t.view(-1, 1, 1, 1))
    assert fn.sizes[:3] == [10, 5, 2]                       # halved until it fits
    assert max(s for s in fn.sizes if s <= fn.fits) <= 3


def test_one_image_that_does_not_fit_is_a_clear_error():
    with pytest.raises(DeviceOutOfMemory, match="out of memory on cpu explaining a single image"):
        explain_batched(_Recorder(fits=0), _rows(4), torch.arange(4))


def test_other_errors_are_not_retried():
    calls = []

    def broken(x, t):
        calls.append(x.shape[0])
        raise ValueError("not memory")
    with pytest.raises(ValueError):
        explain_batched(broken, _rows(4), torch.arange(4))
    assert calls == [4]


def test_cuda_batches_are_sized_from_free_memory(monkeypatch):
    """Fake CUDA memory: one image peaks at 100 MiB above the baseline, 1 GiB free -> batches of
    floor(0.7 * 1024 / 100) = 7 after the first image."""
    mib = 2 ** 20
    state = {"allocated": 50 * mib, "peak": 0}
    monkeypatch.setattr(devices, "_memory_device", lambda x: torch.device("cuda:0"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: state.update(peak=state["allocated"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: state["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: state["peak"])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (1024 * mib, 2048 * mib))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    sizes = []

    def fn(x, t):
        sizes.append(x.shape[0])
        state["peak"] = max(state["peak"], state["allocated"] + 100 * mib * x.shape[0])
        return x.clone()
    x = _rows(20)
    assert torch.equal(explain_batched(fn, x, torch.arange(20)), x)
    assert sizes == [1, 7, 7, 5]


def test_runner_survives_out_of_memory_with_the_same_results(tmp_path, monkeypatch):
    from clrp.datasets import VocDataset
    from clrp.evaluation import runner as R

    from .test_runner import SETTINGS, _frames, _model, _voc
    _voc(str(tmp_path / "voc"))
    settings = dict(SETTINGS, protocols=("pointing",), explain_batch=4)
    R.run_evaluation(VocDataset(str(tmp_path / "voc")), _model(), str(tmp_path / "a"), **settings)
    real, sizes = clrp.explain, []

    def tight(model, x, *a, **k):  # out of memory above 1 row
        sizes.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(model, x, *a, **k)
    monkeypatch.setattr(clrp, "explain", tight)
    R.run_evaluation(VocDataset(str(tmp_path / "voc")), _model(), str(tmp_path / "b"), **settings)
    assert max(sizes) > 1 and 1 in sizes
    a, b = _frames(str(tmp_path / "a"))["pointing"], _frames(str(tmp_path / "b"))["pointing"]
    cols = [c for c in a.columns if c != "scores"]
    assert a[cols].equals(b[cols])
    s = json.load(open(tmp_path / "b" / "settings.json"))
    assert s["device"] == "cpu"


def test_the_dashboards_explanations_turn_out_of_memory_into_a_message(monkeypatch):
    """LoadedModel.explain/explain_neuron/layer_relevance (what the dashboard calls) never let a
    torch.OutOfMemoryError through: the page shows a ClrpError's message."""
    import clrp.methods as M

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    for name in ("explain", "explain_neuron", "layer_relevance"):
        monkeypatch.setattr(M, name, oom)
    lm, x = _loaded(), torch.zeros(1, 3, 8, 8)
    for call in (lambda: lm.explain(x, [1]), lambda: lm.explain_neuron(x, "0", 1),
                 lambda: lm.layer_relevance(x, [1], "0")):
        with pytest.raises(DeviceOutOfMemory, match="out of memory on cpu explaining a single image"):
            call()


def test_cli_device_defaults_to_auto():
    from clrp.cli import build_parser

    args = build_parser().parse_args(["explain", "x.png"])
    assert args.device == "auto"
