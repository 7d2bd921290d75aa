import os

import pytest
import torch

# Two cores here: keep torch from oversubscribing when pytest-xdist runs workers in parallel.
torch.set_num_threads(int(os.environ.get("CLRP_TEST_THREADS", "1")))

# Tests never download weights from the internet (also in subprocesses such as the dashboard
# server): the download tests switch this off and point the mirror at a local server.
os.environ["CLRP_OFFLINE"] = "1"
# Traced graphs cached on disk (clrp.engine.trace_cache) go to a folder of this test session, not ~/.cache.
os.environ.setdefault("CLRP_TRACE_CACHE", __import__("tempfile").mkdtemp(prefix="clrp-traces-"))


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs|: the agreement measure of the oracle tests."""
    scale = theirs.abs().max().clamp(min=1e-30)
    return float((ours - theirs).abs().max() / scale)


@pytest.fixture(scope="session")
def vgg16():
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.vgg16().eval()
    # torchvision initialises biases to zero; random biases exercise the bias conventions of the rules.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.bias.normal_(0, 0.01)
    return model


@pytest.fixture(scope="session")
def image224():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 224, 224, generator=g)


# Devices the device-parametrised tests run on: the CPU always, CUDA where there is one (the cuda
# variants show as skipped, with the reason, on machines without it, e.g. CI).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device on this machine"))]


@pytest.fixture(params=DEVICES)
def device(request):
    """Each available device in turn, as a torch.device. On CUDA, TF32 convolutions and matmuls
    (cuDNN's default on Ampere and later: 10-bit mantissas) are off for the test, so oracle
    tolerances of 1e-4 compare the methods rather than the rounding of the card."""
    if request.param != "cuda":
        yield torch.device(request.param)
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield torch.device(request.param)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def on_device(device, *objects):
    """Models and tensors on ``device``: a model that must move is deep-copied (shared fixtures stay
    on the CPU), tensors are moved. One object in, one out; several in, a tuple out."""
    import copy

    out = []
    for o in objects:
        if isinstance(o, torch.nn.Module):
            p = next(iter((*o.parameters(), *o.buffers())), None)
            o = o if p is None or p.device == device else copy.deepcopy(o).to(device)
        elif isinstance(o, torch.Tensor):
            o = o.to(device)
        out.append(o)
    return out[0] if len(out) == 1 else tuple(out)
