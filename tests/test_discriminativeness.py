"""Class-discriminativeness: correlation and top-q overlap of maps of different classes."""
import math

import numpy as np
import pytest
import torch

from clrp.evaluation.discriminativeness import (
    discriminativeness_rows, discriminativeness_summary, max_abs_diff, pearson, top_iou, top_mask,
)


def test_pearson_known_values():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert pearson(a, a) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    assert pearson(a, 2 * a + 5) == pytest.approx(1.0)
    b = np.array([[1.0, 0.0], [0.0, 1.0]])
    # a - mean = [-1.5, -.5, .5, 1.5], b - mean = [.5, -.5, -.5, .5] -> cov 0.5+0.5... = (-.75+.25-.25+.75)=0
    assert pearson(a, b) == pytest.approx(0.0)
    c = np.array([[0.0, 0.0], [0.0, 1.0]])
    # c - mean = [-.25, -.25, -.25, .75]; dot = .375+.125-.125+1.125 = 1.5; |a|=sqrt(5), |c|=sqrt(.75)
    assert pearson(a, c) == pytest.approx(1.5 / math.sqrt(5 * 0.75))
    assert math.isnan(pearson(a, np.ones((2, 2))))
    # channels are summed
    t = torch.zeros(3, 2, 2)
    t[0] = torch.tensor(a)
    t[1] = torch.tensor(a)
    assert pearson(t, a) == pytest.approx(1.0)


def test_top_mask_and_iou():
    a = np.arange(10, dtype=float).reshape(2, 5)           # largest values at the end
    assert top_mask(a, 0.2).reshape(-1).tolist() == [False] * 8 + [True, True]
    ties = np.zeros((2, 5))
    assert top_mask(ties, 0.3).reshape(-1).tolist() == [True] * 3 + [False] * 7  # raster order
    b = a[:, ::-1].copy()                                   # largest at the start of each row
    # b = [[4,3,2,1,0],[9,8,7,6,5]]; flat indices of the top 20 %: a {8, 9}, b {5, 6} -> IoU 0
    assert top_iou(a, b, 0.2) == pytest.approx(0.0)
    # top 40 %: a {6,7,8,9}, b {5,6,7,8}: intersection 3, union 5
    assert top_iou(a, b, 0.4) == pytest.approx(3 / 5)
    assert top_iou(a, a, 0.1) == 1.0
    with pytest.raises(ValueError):
        top_mask(a, 0)


def test_max_abs_diff():
    a = np.array([[0.0, 2.0]])
    b = np.array([[1.0, 1.0]])
    assert max_abs_diff(a, b) == pytest.approx(1.0)   # [0, 1] vs [1, 1]
    assert max_abs_diff(a, 3 * a) == 0.0


def test_rows_and_summary_per_method():
    same = np.random.default_rng(0).random((8, 8))
    other = np.random.default_rng(1).random((8, 8))
    maps = {
        "lrp": {"zebra": same, "elephant": same * 2, "dog": same + 1},
        "clrp": {"zebra": same, "elephant": -same},
        "single": {"zebra": same},
    }
    rows = discriminativeness_rows("img", maps, q=0.25)
    assert [(r["method"], r["class_a"], r["class_b"]) for r in rows] == [
        ("lrp", "zebra", "elephant"), ("lrp", "zebra", "dog"), ("lrp", "elephant", "dog"),
        ("clrp", "zebra", "elephant")]
    assert all(r["pearson"] == pytest.approx(1.0) and r["iou_top"] == 1.0 for r in rows[:3])
    assert rows[3]["pearson"] == pytest.approx(-1.0) and rows[3]["iou_top"] == 0.0
    rows += discriminativeness_rows("img2", {"clrp": {"a": same, "b": np.zeros((8, 8))},
                                             "lrp": {"a": same, "b": other}})
    s = discriminativeness_summary(rows)
    assert s.loc["clrp", "n_pairs"] == 2 and s.loc["clrp", "n_undefined"] == 1
    assert s.loc["clrp", "pearson_mean"] == pytest.approx(-1.0)
    r_other = pearson(same, other)
    assert s.loc["lrp", "pearson_mean"] == pytest.approx((3 + r_other) / 4)
    assert s.loc["lrp", "n_pairs"] == 4


def test_different_sizes_are_resized():
    a = np.kron(np.array([[1.0, 0.0], [0.0, 0.0]]), np.ones((4, 4)))
    b = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert pearson(a, b) > 0.8
