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
