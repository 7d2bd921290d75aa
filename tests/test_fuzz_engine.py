"""The differential fuzzer in CI: random small networks (tests/fuzz_graphs.py: conv, dense,
channels-last dense, BatchNorm before/after/alone, residual add, cat, gates, products and sums with
constants of either sign, pads, average/max/global pools, GroupNorm, ReLU/SiLU/Tanh/LeakyReLU) with
random weights and statistics, in float64. For each: the engine's forward equals the model's; lrp
under the zplus, epsilon_plus and paper presets equals the layer-by-layer reference of
tests/lrp_reference.py (no graph, no trace, no cache); gradient and gradient_x_input equal autograd
on the model. Sequence networks ([N, L, F], dense layers and BatchNorm1d) likewise. CI runs
FUZZ_GRAPHS + 4 networks; benchmarks/fuzz_engine.py runs hundreds."""
import warnings

import pytest

from . import fuzz_graphs

FUZZ_GRAPHS = len(fuzz_graphs.BLOCKS)  # 12: the first block of network k is BLOCKS[k]
TOLERANCE = 1e-8  # float64 throughout: what remains is summation order


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(FUZZ_GRAPHS))
def test_random_network_agrees_with_the_float64_reference_and_autograd(seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a map that vanished on a random network: said, and still checked
        errors = fuzz_graphs.check(seed)
    wrong = {k: v for k, v in errors.items() if not v <= TOLERANCE}
    assert not wrong, f"network {seed}: {wrong}\n{fuzz_graphs.random_model(seed)}"


@pytest.mark.parametrize("seed", range(4))
def test_random_sequence_network_agrees_with_the_float64_reference_and_autograd(seed):
    # dense layers on [N, L, F] with BatchNorm1d on L: nothing may fold
    errors = fuzz_graphs.check(seed, sequences=True)
    wrong = {k: v for k, v in errors.items() if not v <= TOLERANCE}
    assert not wrong, f"sequence network {seed}: {wrong}\n{fuzz_graphs.random_sequence_model(seed)}"


def test_the_fuzzer_covers_every_node_kind():
    kinds = set()
    for seed in range(FUZZ_GRAPHS):
        _collect(fuzz_graphs.describe(fuzz_graphs.random_model(seed)), kinds)
    assert {"conv", "linear", "bn", "relu", "act", "mul", "residual", "cat", "gate", "flatten", "groupnorm", "pwlinear",
            "addconst", "pad"} <= kinds
    assert kinds & {"avgpool", "maxpool"}


def _collect(layers, kinds):
    for layer in layers:
        kinds.add(layer[0])
        for part in layer[1:]:
            if isinstance(part, list):
                _collect(part, kinds)
