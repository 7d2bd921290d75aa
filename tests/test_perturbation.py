"""Region perturbation / AOPC: hand-computed curves, batched == naive, batching really batches."""
import math

import numpy as np
import pytest
import torch

from clrp.evaluation.perturbation import (
    aopc, aopc_summary, make_baseline, patch_order, patch_scores, perturbation_curves,
    perturbation_rows, region_perturbation, region_perturbation_naive,
)


class SumModel:
    """logit 0 = sum of all input values, logit 1 = 0; counts forward calls and batch sizes."""

    def __init__(self):
        self.calls = []

    def __call__(self, x):
        self.calls.append(x.shape[0])
        s = x.sum(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def _quadrants():
    # 1x4x4 image, 2x2 regions: TL = 1s (sum 4), TR = 2s (8), BL = 3s (12), BR = 0.5s (2); total 26
    x = torch.zeros(1, 4, 4, dtype=torch.float64)
    x[0, :2, :2] = 1
    x[0, :2, 2:] = 2
    x[0, 2:, :2] = 3
    x[0, 2:, 2:] = 0.5
    return x


def test_aopc_by_hand_morf_lerf():
    x = _quadrants()
    m = SumModel()
    c = region_perturbation(m, x, x, 0, order="morf", patch=2, steps=None, baseline="zeros")
    # MoRF: BL(12), TR(8), TL(4), BR(2) -> 26, 14, 6, 2, 0 ; drops 12, 20, 24, 26 -> 82 / 4
    assert c.scores.tolist() == [26, 14, 6, 2, 0]
    assert c.aopc == pytest.approx(20.5)
    assert aopc(c.scores, include_step0=True) == pytest.approx(82 / 5)
    assert c.fractions.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    c = region_perturbation(m, x, x, 0, order="lerf", patch=2, steps=None, baseline="zeros")
    # LeRF: BR, TL, TR, BL -> 26, 24, 20, 12, 0 ; drops 2, 6, 14, 26 -> 48 / 4
    assert c.scores.tolist() == [26, 24, 20, 12, 0] and c.aopc == pytest.approx(12.0)
    c = region_perturbation(m, x, x, 0, order="morf", patch=2, steps=2, baseline="zeros")
    assert c.scores.tolist() == [26, 14, 6] and c.aopc == pytest.approx(16.0)
    # two regions per step
    c = region_perturbation(m, x, x, 0, order="morf", patch=2, steps=None, patches_per_step=2,
                            baseline="zeros")
    assert c.scores.tolist() == [26, 6, 0] and c.aopc == pytest.approx((20 + 26) / 2)
    # mean baseline: every replaced pixel becomes 26/16
    c = region_perturbation(m, x, x, 0, order="morf", patch=2, steps=1, baseline="mean")
    assert c.scores[1] == pytest.approx(26 - 12 + 4 * 26 / 16)


def test_patch_scores_and_raster_ties():
    x = _quadrants()
    assert patch_scores(x, 4, 4, 2).tolist() == [[4, 8], [12, 2]]
    # 5x5 with patch 2: border regions are smaller
    assert patch_scores(torch.ones(5, 5), 5, 5, 2).tolist() == [[4, 4, 2], [4, 4, 2], [2, 2, 1]]
    flat = torch.ones(6, 6)
    assert patch_order(flat, 6, 6, 2, "morf", ties="raster").tolist() == list(range(9))
    assert patch_order(flat, 6, 6, 2, "lerf", ties="raster").tolist() == list(range(9))
    r1 = patch_order(flat, 6, 6, 2, "random", seed=3)
    assert r1.tolist() == patch_order(flat, 6, 6, 2, "random", seed=3).tolist()
    assert sorted(r1.tolist()) == list(range(9))
    assert r1.tolist() != patch_order(flat, 6, 6, 2, "random", seed=4).tolist()
    with pytest.raises(ValueError):
        patch_order(flat, 6, 6, 2, "sideways")


def test_ties_are_broken_in_a_seeded_random_order_by_default():
    # a clamped-CLRP-like map: one region relevant, the other eight tied at exactly 0
    rel = torch.zeros(6, 6)
    rel[2:4, 4:6] = 1.0  # region 5
    a = patch_order(rel, 6, 6, 2, "morf", seed=7)
    assert a[0] == 5  # the scores still decide where they differ
    assert a.tolist() == patch_order(rel, 6, 6, 2, "morf", seed=7).tolist()  # reproducible from the seed
    assert a.tolist() != patch_order(rel, 6, 6, 2, "morf", seed=8).tolist()
    assert a[1:].tolist() != [0, 1, 2, 3, 4, 6, 7, 8]  # not raster order
    assert patch_order(rel, 6, 6, 2, "morf", ties="raster")[1:].tolist() == [0, 1, 2, 3, 4, 6, 7, 8]
    lerf = patch_order(rel, 6, 6, 2, "lerf", seed=7)
    assert lerf[-1] == 5 and sorted(lerf[:-1].tolist()) == [0, 1, 2, 3, 4, 6, 7, 8]
    # raster ties make MoRF remove the top-left zeros first; random ties spread them
    m = SumModel()
    x = torch.arange(36, dtype=torch.float64).reshape(1, 6, 6)
    raster = region_perturbation(m, x, rel, 0, order="morf", patch=2, steps=None, baseline="zeros", ties="raster")
    spread = region_perturbation(m, x, rel, 0, order="morf", patch=2, steps=None, baseline="zeros", seed=7)
    assert raster.scores.tolist() != spread.scores.tolist()
    assert raster.as_row()["tie_share"] == spread.as_row()["tie_share"] == pytest.approx(8 / 9)
    assert spread.as_row()["ties"] == "random"
    with pytest.raises(ValueError):
        patch_order(rel, 6, 6, 2, "morf", ties="sideways")


def _cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()


@pytest.mark.parametrize("baseline", ["mean", "blur", "zeros", "noise"])
@pytest.mark.parametrize("order", ["morf", "lerf", "random"])
def test_batched_equals_naive(baseline, order):
    net = _cnn()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 13, 11, generator=g)
    rel = torch.randn(3, 13, 11, generator=g)
    kw = dict(order=order, patch=4, steps=None, patches_per_step=2, baseline=baseline, seed=5)
    a = region_perturbation(net, x, rel, 2, batch_size=3, **kw)
    b = region_perturbation_naive(net, x, rel, 2, **kw)
    assert len(a.scores) == len(b.scores) == 1 + math.ceil(4 * 3 / 2)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
    assert a.aopc == pytest.approx(b.aopc, abs=1e-5)
    np.testing.assert_array_equal(a.fractions, b.fractions)


def test_batching_makes_few_forward_calls():
    x = torch.rand(3, 16, 16, dtype=torch.float64)
    m = SumModel()
    c = region_perturbation(m, x, x, 0, patch=2, steps=20, batch_size=8)
    assert len(c.scores) == 21 and m.calls == [8, 8, 5]
    n = SumModel()
    d = region_perturbation_naive(n, x, x, 0, patch=2, steps=20)
    assert n.calls == [1] * 21
    np.testing.assert_allclose(c.scores, d.scores)


def test_baselines():
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    mb = make_baseline(x, "mean")
    assert torch.allclose(mb[:, 3, 4], x.mean(dim=(1, 2)))
    const = torch.full((2, 9, 9), 0.3)
    assert torch.allclose(make_baseline(const, "blur", patch=4), const)
    n1, n2 = make_baseline(x, "noise", seed=1), make_baseline(x, "noise", seed=1)
    assert torch.equal(n1, n2) and not torch.equal(n1, make_baseline(x, "noise", seed=2))
    assert torch.equal(make_baseline(x, torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1))[2], torch.full((8, 8), 3.0))
    with pytest.raises(ValueError):
        make_baseline(x, "purple")


def test_relevance_shapes_and_rows_and_summary():
    x = _quadrants()
    m = SumModel()
    # relevance given at half resolution and with a batch dim: resized, same order as the image
    small = torch.tensor([[[[1.0, 2.0], [3.0, 0.5]]]])
    c = region_perturbation(m, x, small, 0, patch=2, steps=None, baseline="zeros")
    assert c.scores.tolist() == [26, 14, 6, 2, 0]
    curves = perturbation_curves(m, x[None], x, 0, patch=2, steps=None, baseline="zeros")
    assert set(curves) == {"morf", "lerf", "random"}
    rows = perturbation_rows("img1", "lrp", 0, curves)
    rows += perturbation_rows("img2", "lrp", 0, perturbation_curves(m, x, x, 0, patch=2, steps=None,
                                                                    baseline="zeros"))
    table, mean_curves = aopc_summary(rows)
    assert table.loc["lrp", "aopc_morf"] == pytest.approx(20.5)
    assert table.loc["lrp", "aopc_lerf"] == pytest.approx(12.0)
    assert table.loc["lrp", "n"] == 2
    np.testing.assert_allclose(mean_curves[("lrp", "morf")], [26, 14, 6, 2, 0])
    assert rows[0]["baseline"] == "zeros" and rows[0]["patch"] == 2


def test_default_batch_size_is_small_on_the_cpu():
    from clrp.evaluation.perturbation import default_batch_size

    assert default_batch_size(torch.zeros(3, 96, 96)) == 7
    assert default_batch_size(torch.zeros(3, 224, 224)) == 1
    assert default_batch_size(torch.zeros(3, 16, 16)) == 8
