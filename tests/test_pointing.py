"""Pointing Game: known answers computed by hand."""

import numpy as np
import pandas as pd
import pytest
import torch

from clrp.datasets import Obj, Sample
from clrp.evaluation.pointing import (
    CENTER, PointingTarget, argmax_point, at_tolerance, center_point, pointing_game, pointing_hit, pointing_row,
    pointing_rows, pointing_summary, pointing_targets, resize_map, scaled_tolerance, per_class_table,
)


def _mask(h, w, pixels):
    m = np.zeros((h, w), bool)
    for y, x in pixels:
        m[y, x] = True
    return m


def _target(mask, name="a", difficult=False, others=0):
    return PointingTarget(name, mask, float(mask.mean()), others, difficult)


def test_tolerance_edges_exact_and_just_beyond():
    # arg-max at (2, 3); ground-truth pixel at offset (3, 4): distance exactly 5
    gt = _mask(40, 40, [(5, 7)])
    assert pointing_hit((2, 3), gt, tolerance=5)
    assert not pointing_hit((2, 3), gt, tolerance=4.99)
    gt2 = _mask(40, 40, [(5, 8)])          # offset (3, 5): sqrt(34) = 5.83
    assert not pointing_hit((2, 3), gt2, tolerance=5)
    assert pointing_hit((2, 3), gt2, tolerance=5.84)
    assert pointing_hit((2, 3), _mask(40, 40, [(2, 18)]), tolerance=15)      # 15 exactly
    assert not pointing_hit((2, 3), _mask(40, 40, [(2, 19)]), tolerance=15)  # 16
    assert not pointing_hit((2, 3), _mask(40, 40, [(13, 14)]), tolerance=15)  # 11*sqrt2 = 15.56
    assert pointing_hit((2, 3), _mask(40, 40, [(12, 14)]), tolerance=15)      # sqrt(221) = 14.87
    # zero tolerance: only the pixel itself
    assert pointing_hit((2, 3), _mask(40, 40, [(2, 3)]), tolerance=0)
    assert not pointing_hit((2, 3), _mask(40, 40, [(2, 4)]), tolerance=0)


def test_row_uses_argmax_of_map():
    sal = np.zeros((30, 30))
    sal[10, 10] = 1.0
    gt = _mask(30, 30, [(10, 24)])
    r = pointing_row("img", _target(gt), "m", sal, tolerance=15)
    assert r["hit"] and (r["point_y"], r["point_x"]) == (10, 10) and r["distance"] == 14
    r = pointing_row("img", _target(gt), "m", sal, tolerance=13.9)
    assert not r["hit"]


def test_ties_first_in_raster_order_and_nan():
    a = np.zeros((5, 6))
    a[3, 0] = a[1, 5] = 7.0
    assert argmax_point(a) == (1, 5)
    a[0, 2] = np.nan
    assert argmax_point(a) == (1, 5)
    assert argmax_point(np.zeros((4, 4))) == (0, 0)
    flat = pointing_row("i", _target(_mask(4, 4, [(0, 0)])), "m", np.zeros((4, 4)), tolerance=0)
    assert flat["hit"] and flat["constant_map"]  # counted as it falls, but flagged
    assert not pointing_row("i", _target(_mask(4, 4, [(0, 0)])), "m", np.eye(4), tolerance=0)["constant_map"]
    assert pointing_summary([flat]).loc["m", "n_constant_maps"] == 1
    assert argmax_point(np.full((3, 3), np.nan)) is None
    gt = _mask(3, 3, [(0, 0)])
    r = pointing_row("i", _target(gt), "m", np.full((3, 3), np.nan))
    assert not r["hit"] and r["skipped"] is None  # all-NaN map: a miss, counted


def test_resize_bilinear_known_values_and_channel_sum():
    a = np.array([[0.0, 0.0], [0.0, 1.0]])
    out = resize_map(a, 4, 4)
    # align_corners=False: sample positions -0.25, 0.25, 0.75, 1.25 -> weights 0, .25, .75, 1
    w = np.array([0.0, 0.25, 0.75, 1.0])
    assert np.allclose(out, np.outer(w, w))
    t = torch.zeros(1, 3, 2, 2)
    t[0, 0, 1, 1] = 0.5
    t[0, 2, 1, 1] = 0.5
    assert np.allclose(resize_map(t, 4, 4), np.outer(w, w))
    # the point is found at the original resolution, not the map's
    sal = torch.zeros(7, 7)
    sal[6, 0] = 1
    gt = _mask(70, 70, [(69, 0)])
    # 7 -> 70 bilinear: rows 65..69 x cols 0..4 form a plateau of 1s (edge clamping); the
    # first maximum in raster order is (65, 0), 4 px from the ground-truth pixel
    r = pointing_row("i", _target(gt), "m", sal, tolerance=4)
    assert r["hit"] and (r["point_y"], r["point_x"]) == (65, 0)
    assert not pointing_row("i", _target(gt), "m", sal, tolerance=3.9)["hit"]


def test_empty_ground_truth_never_a_hit_and_not_scored():
    gt = np.zeros((10, 10), bool)
    r = pointing_row("i", _target(gt), "m", np.ones((10, 10)), tolerance=100)
    assert r["hit"] is False and r["skipped"] == "empty ground truth"
    assert not pointing_hit((0, 0), gt, tolerance=1e9)
    ok = pointing_row("j", _target(_mask(10, 10, [(9, 9)])), "m", np.eye(10), tolerance=0)
    assert not ok["hit"]  # argmax of eye is (0, 0)
    s = pointing_summary([r, ok])
    assert s.loc["m", "all"] == 0.0 and s.loc["m", "n_all"] == 1


def test_center_baseline():
    t = _target(_mask(11, 11, [(5, 10)]))
    assert center_point(11, 11) == (5.0, 5.0)
    rows = pointing_rows("i", [t], {}, tolerance=5)
    assert [r["method"] for r in rows] == [CENTER] and rows[0]["hit"]
    rows = pointing_rows("i", [t], {}, tolerance=4.9)
    assert not rows[0]["hit"]
    # even size: the centre is between pixels, (4.5, 4.5); pixel (0, 0) is 4.5*sqrt(2) = 6.36 away
    t2 = _target(_mask(10, 10, [(0, 0)]))
    assert not pointing_rows("i", [t2], {}, tolerance=6.3)[0]["hit"]
    assert pointing_rows("i", [t2], {}, tolerance=6.4)[0]["hit"]
    assert pointing_rows("i", [t2], {}, tolerance=6.4, center=False) == []


def test_mean_of_per_class_accuracies_not_per_sample():
    # class "a": 3 pairs, all hits; class "b": 1 pair, a miss.
    # per-class mean = (1 + 0) / 2 = 0.5, per-sample would be 3/4.
    hit_t = _target(_mask(20, 20, [(0, 0)]), "a")
    miss_t = _target(_mask(20, 20, [(19, 19)]), "b")
    sal = np.zeros((20, 20))
    sal[0, 0] = 1
    rows = [pointing_row(f"img{i}", hit_t, "m", sal, tolerance=2) for i in range(3)]
    rows.append(pointing_row("img3", miss_t, "m", sal, tolerance=2))
    s = pointing_summary(pd.DataFrame(rows))
    assert s.loc["m", "all"] == pytest.approx(0.5)
    assert s.loc["m", "class:a"] == 1.0 and s.loc["m", "class:b"] == 0.0
    assert s.loc["m", "n_all"] == 4 and s.loc["m", "n_classes"] == 2
    assert "per-class" in s.attrs["settings"]
    pc = per_class_table(rows)
    assert pc.loc["a", ("all", "m")] == 1.0


def _sample():
    # 100 x 100 image: "small" 10x10 box (1 %), "big" 60x60 box (36 %), "hard" only difficult
    return Sample("s1", None, 100, 100, objects=[
        Obj("small", (0, 0, 10, 10)),
        Obj("big", (40, 40, 100, 100)),
        Obj("hard", (0, 50, 20, 70), difficult=True),
        Obj("big", (0, 90, 5, 100), difficult=True),  # difficult box of a present class: not in GT
    ])


def test_targets_difficult_subset_and_difficult_boxes():
    ts = {t.class_name: t for t in pointing_targets(_sample())}
    assert set(ts) == {"small", "big"}          # "hard" has only difficult boxes: skipped
    assert ts["small"].coverage == pytest.approx(0.01) and ts["small"].difficult
    assert ts["big"].coverage == pytest.approx(0.36) and not ts["big"].difficult
    assert not ts["big"].mask[95, 2]            # the difficult box is not ground truth
    alone = Sample("s2", None, 100, 100, objects=[Obj("small", (0, 0, 10, 10)),
                                                  Obj("hard", (50, 50, 60, 60), difficult=True)])
    (t,) = pointing_targets(alone)
    assert t.coverage < 0.25 and not t.difficult  # no other (non-difficult) class present
    # exactly one quarter is not "less than a quarter"
    q = Sample("s3", None, 100, 100, objects=[Obj("q", (0, 0, 50, 50)), Obj("x", (90, 90, 91, 91))])
    tq = {t.class_name: t for t in pointing_targets(q)}
    assert tq["q"].coverage == 0.25 and not tq["q"].difficult and tq["x"].difficult
    assert [t.class_name for t in pointing_targets(_sample(), classes=["big"])] == ["big"]
    assert pointing_targets(Sample("e", None, 10, 10, objects=[Obj("h", (0, 0, 2, 2), difficult=True)])) == []


def test_summary_difficult_subset_by_hand():
    s = _sample()

    def explain(sample, names, method):
        out = {}
        for c in names:
            m = np.zeros((50, 50))           # half resolution, resized to 100x100
            if method == "good" or c == "big":
                y, x = (2, 2) if c == "small" else (35, 35)
            else:
                y, x = (49, 0)               # "bad" misses "small"
            m[y, x] = 1
            out[c] = torch.from_numpy(m)
        return out

    df = pointing_game([s, s], explain, ["good", "bad"], tolerance=15)
    assert len(df) == 2 * 2 * 3  # 2 images x 2 classes x (center, good, bad)
    summ = pointing_summary(df)
    assert summ.loc["good", "all"] == 1.0 and summ.loc["good", "difficult"] == 1.0
    # bad: small 0/2, big 2/2 -> all = 0.5 ; difficult subset contains only "small" -> 0.0
    assert summ.loc["bad", "all"] == 0.5 and summ.loc["bad", "difficult"] == 0.0
    assert summ.loc["bad", "n_difficult"] == 2
    # center (49.5, 49.5): inside "big" -> hit; "small" (nearest pixel (9, 9), 57 px away) -> miss
    assert summ.loc[CENTER, "all"] == 0.5 and summ.loc[CENTER, "difficult"] == 0.0


def test_scaled_tolerance_and_string_option():
    assert scaled_tolerance(224, 300) == 15
    assert scaled_tolerance(448, 600) == 30
    assert scaled_tolerance(600, 112) == 7.5
    t = _target(_mask(448, 448, [(0, 25)]))
    sal = np.zeros((448, 448))
    sal[0, 0] = 1
    (_, r) = pointing_rows("i", [t], {"m": {"a": sal}}, tolerance="scaled")
    assert r["tolerance"] == 30 and r["hit"]
    (_, r) = pointing_rows("i", [t], {"m": {"a": sal}})
    assert r["tolerance"] == 15 and not r["hit"]


def test_masks_used_when_available():
    m = np.zeros((20, 20), bool)
    m[15, 15] = True
    s = Sample("m", None, 20, 20, objects=[Obj("a", (0, 0, 20, 20), mask=m)])
    (t,) = pointing_targets(s)
    assert t.mask.sum() == 1 and t.coverage == 1.0  # hits use the mask, subsets the box coverage
    (t,) = pointing_targets(s, use_masks=False)
    assert t.mask.sum() == 400


def test_map_to_image_crop_box():
    from clrp.evaluation.pointing import map_to_image

    sal = np.zeros((4, 4))
    sal[0, 0] = 1
    full = map_to_image(sal, 8, 8)
    assert full.shape == (8, 8) and not np.isnan(full).any()
    # the map covers columns 2..5 and rows 0..7 of an 8x8 image (a centre crop of a wider input)
    out = map_to_image(sal, 8, 8, crop_box=(2, 0, 6, 8))
    assert np.isnan(out[:, :2]).all() and np.isnan(out[:, 6:]).all()
    assert argmax_point(out) == (0, 2)
    assert not pointing_hit(argmax_point(out), _mask(8, 8, [(0, 0)]), tolerance=1.5)
    assert pointing_hit(argmax_point(out), _mask(8, 8, [(0, 0)]), tolerance=2)


# -- TorchRay's published protocol ---------------------------------------------------------------

def _torchray_saliency_to_point(saliency):
    """The point of TorchRay's examples/attribution_benchmark.py: argmax of the flattened map, (u, v)."""
    w = saliency.shape[3]
    point = torch.argmax(saliency.view(len(saliency), -1), dim=1, keepdim=True)
    return torch.cat((point % w, point // w), dim=1)


def _voc_label(h, w, objects):
    return {"annotation": {"size": {"width": str(w), "height": str(h)}, "object": [
        {"name": c, "difficult": str(int(d)), "bndbox": {"xmin": str(x0), "ymin": str(y0), "xmax": str(x1),
                                                         "ymax": str(y1)}} for c, (x0, y0, x1, y1), d in objects]}}


def test_torchray_convention_equals_torchrays_decisions():
    torchray = pytest.importorskip("torchray.benchmark.pointing_game")
    from torchray.benchmark import datasets as trd
    rng = np.random.default_rng(0)
    checked = {"hits": 0, "misses": 0, "ties": 0, "difficult_boxes": 0, "nan": 0, "edges": 0}
    for case in range(300):
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        tol = int(rng.integers(0, 16))
        classes = ["dog", "cat"]
        objects = []
        for c in classes:
            for _ in range(int(rng.integers(1, 3))):
                x0, y0 = int(rng.integers(1, w)), int(rng.integers(1, h))
                x1, y1 = int(rng.integers(x0, w + 1)), int(rng.integers(y0, h + 1))
                objects.append((c, (x0, y0, x1, y1), bool(rng.random() < 0.3)))
        sample = Sample(f"{case:06d}", None, w, h,
                        objects=[Obj(c, (x0 - 1, y0 - 1, x1, y1), d) for c, (x0, y0, x1, y1), d in objects])
        sal = rng.random((h, w)).astype(np.float32)
        kind = case % 5
        if kind == 1:  # a plateau of equal maxima: first in raster order
            sal[rng.integers(0, h, 4), rng.integers(0, w, 4)] = 2.0
        elif kind == 2:  # a NaN
            sal[rng.integers(0, h), rng.integers(0, w)] = np.nan
        elif kind == 3:  # the maximum exactly `tol` pixels (in a row) from a box
            _, (x0, y0, x1, y1), _ = objects[0]
            sal[min(h - 1, y1 - 1), min(w - 1, x1 - 1 + tol)] = 3.0
        targets = pointing_targets(sample, classes=classes, convention="torchray")
        label = _voc_label(h, w, objects)
        for t in targets:
            cid = trd.VOC_CLASSES.index(t.class_name)
            objs = [o for o in objects if o[0] == t.class_name]
            gt = trd.voc_as_mask(label, cid)
            assert np.array_equal(t.mask, gt.numpy()), case
            pg = torchray.PointingGame(20, tolerance=tol)
            u, v = _torchray_saliency_to_point(torch.from_numpy(sal)[None, None])[0].tolist()
            theirs = pg.evaluate(gt, (u, v)) == 1
            ours = pointing_row("i", t, "m", sal, tolerance=tol, convention="torchray")
            assert ours["hit"] == theirs, (case, t.class_name, ours)
            assert (ours["point_y"], ours["point_x"]) == (v, u)
            centre = pointing_row("i", t, CENTER, point=center_point(h, w, "torchray"), tolerance=tol,
                                  convention="torchray")
            assert centre["hit"] == (pg.evaluate(gt, (w / 2, h / 2)) == 1), case
            checked["hits" if theirs else "misses"] += 1
            checked["ties"] += kind == 1
            checked["nan"] += kind == 2
            checked["edges"] += kind == 3
            checked["difficult_boxes"] += any(d for _, _, d in objs)
    assert min(checked.values()) > 10, checked  # every situation was exercised


def test_torchray_convention_differs_where_documented():
    gt = _mask(20, 20, [(2, 12)])
    t = _target(gt)
    sal = np.zeros((20, 20), np.float32)
    sal[2, 2] = 1.0  # exactly 10 px from the ground truth
    assert pointing_row("i", t, "m", sal, tolerance=10)["hit"]  # inclusive
    assert not pointing_row("i", t, "m", sal, tolerance=10, convention="torchray")["hit"]  # strict
    sal[0, 5] = np.nan
    assert pointing_row("i", t, "m", sal, tolerance=10)["point_x"] == 2  # NaN never wins
    assert pointing_row("i", t, "m", sal, tolerance=10, convention="torchray")["point_x"] == 5
    assert center_point(20, 20) == (9.5, 9.5) and center_point(20, 20, "torchray") == (10.0, 10.0)
    s = Sample("x", None, 20, 20, objects=[Obj("a", (0, 0, 4, 4)), Obj("a", (10, 10, 14, 14), difficult=True)])
    (clrp_t,) = pointing_targets(s)
    (tr_t,) = pointing_targets(s, convention="torchray")
    assert clrp_t.mask.sum() == 16 and tr_t.mask.sum() == 32  # TorchRay counts the difficult box


def test_torchray_difficult_table(tmp_path):
    from clrp.evaluation.pointing import read_difficult_table
    path = tmp_path / "table.txt"
    path.write_text("000001\t" + "\t".join("1" if c == "dog" else "0" for c in
                                           __import__("clrp.evaluation.pointing", fromlist=["x"]).VOC_CLASSES) + "\n")
    assert read_difficult_table(str(path)) == {"000001": {"dog"}}
    (tmp_path / "named.txt").write_text("# image\tcircle\tstar\nscene_1\t0\t1\n")
    assert read_difficult_table(str(tmp_path / "named.txt")) == {"scene_1": {"star"}}
    (tmp_path / "bad.txt").write_text("000001\t1\t0\n")
    from clrp.errors import ClrpError
    with pytest.raises(ClrpError, match="expected an image id and 20 flags"):
        read_difficult_table(str(tmp_path / "bad.txt"))


def test_rows_rescored_at_another_tolerance_equal_rows_made_at_it():
    """at_tolerance re-scores stored rows from their distances: the same hits as rows computed at that
    tolerance, for both conventions, scaled or not; an empty ground truth stays a skipped miss."""
    rng = np.random.default_rng(0)
    targets = [_target(_mask(448, 300, [tuple(rng.integers(0, 300, 2)) for _ in range(3)]), name=f"c{i}")
               for i in range(6)] + [_target(np.zeros((448, 300), bool), name="empty")]
    maps = {"m": {t.class_name: rng.random((448, 300)) for t in targets}}
    for convention in ("clrp", "torchray"):
        rows = pd.DataFrame(pointing_rows("i", targets, maps, tolerance=15, convention=convention))
        for tol, scaled in ((0, False), (5, False), (10.0, True), (40, False), (400, True)):
            made = pd.DataFrame(pointing_rows("i", targets, maps, convention=convention,
                                              tolerance=scaled_tolerance(448, 300, base=tol) if scaled else tol))
            again = at_tolerance(rows, tol, scaled=scaled, convention=convention)
            assert again["hit"].tolist() == made["hit"].tolist()
            assert again["tolerance"].tolist() == made["tolerance"].tolist()
        assert 0 < at_tolerance(rows, 100)["hit"].sum() < at_tolerance(rows, 300)["hit"].sum() == rows["skipped"].isna().sum()
        assert not at_tolerance(rows, 1e6)["hit"].iloc[-1]  # the empty ground truth
    # a point exactly 10 px away: a hit at 10 for clrp, not for torchray (strict), both at 10.01
    sal = np.zeros((20, 20))
    sal[2, 2] = 1.0
    rows = pd.DataFrame([pointing_row("i", _target(_mask(20, 20, [(2, 12)])), "m", sal, tolerance=3)])
    assert not rows["hit"].iloc[0]
    assert at_tolerance(rows, 10)["hit"].iloc[0] and not at_tolerance(rows, 10, convention="torchray")["hit"].iloc[0]
    assert at_tolerance(rows, 10.01, convention="torchray")["hit"].iloc[0]
    assert rows["tolerance"].iloc[0] == 3  # the input is not changed
    with pytest.raises(ValueError, match="tolerance"):
        at_tolerance(rows, -1)


def test_torchray_convention_resizes_maps_as_torchray_does_on_ties():
    """Issue 16 item 6: maps were resized in float64 where TorchRay resizes a model's float32
    saliency (``torchray.attribution.common.resize_saliency``), so the arg-max of a plateau differed.
    Low-resolution maps of a few levels, upsampled to the image: ties everywhere."""
    pytest.importorskip("torchray.benchmark.pointing_game")
    from torchray.attribution.common import resize_saliency
    from torchray.benchmark.pointing_game import PointingGame

    from clrp.evaluation.pointing import map_to_image
    rng = np.random.default_rng(1)
    pairs = float64_differs = 0
    for case in range(150):
        sh, sw = int(rng.integers(3, 12)), int(rng.integers(3, 12))
        h, w = int(rng.integers(20, 70)), int(rng.integers(20, 70))
        sal = rng.choice(rng.choice([0.1, 0.2, 0.3, 0.7, 1 / 3], size=3), size=(sh, sw)).astype(np.float32)
        gt = np.zeros((h, w), bool)
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        gt[y0:y0 + int(rng.integers(1, 10)), x0:x0 + int(rng.integers(1, 10))] = True
        tol = int(rng.integers(0, 16))
        theirs_map = resize_saliency(None, torch.from_numpy(sal)[None, None], (w, h), "bilinear")
        u, v = _torchray_saliency_to_point(theirs_map)[0].tolist()
        hit = PointingGame(1, tolerance=tol).evaluate(torch.from_numpy(gt), (u, v)) == 1
        for full in (map_to_image(sal, h, w, None, "torchray"), sal):  # the runner's path and pointing_row's
            row = pointing_row("i", _target(gt), "m", full, tolerance=tol, convention="torchray")
            assert (row["point_y"], row["point_x"]) == (v, u), case
            assert row["hit"] == hit, case
        pairs += 1
        float64_differs += argmax_point(resize_map(sal, h, w)) != (v, u)
    assert float64_differs > 10, float64_differs  # the cases do tell the two resizings apart


def test_one_hit_rule_for_rows_rescoring_and_the_runner(monkeypatch):
    """Issue 20 item 4: the decision lived in pointing_hit, inline in pointing_row and again in
    at_tolerance. Now every path asks is_hit, and each gives what is_hit says."""
    from clrp.evaluation import pointing as P

    calls = []
    real = P.is_hit
    monkeypatch.setattr(P, "is_hit", lambda *a, **k: calls.append(a) or real(*a, **k))
    rng = np.random.default_rng(3)
    for convention in P.CONVENTIONS:
        rows = []
        for case in range(40):
            h, w = int(rng.integers(10, 40)), int(rng.integers(10, 40))
            gt = np.zeros((h, w), bool)
            gt[int(rng.integers(0, h)), int(rng.integers(0, w))] = True
            tol = float(rng.choice([0, 1, 2.5, 3, 5, 10]))
            row = pointing_row("i", _target(gt), "m", rng.random((h, w)), tolerance=tol, convention=convention)
            assert row["hit"] == real(row["distance"], tol, convention)
            point = (row["point_y"], row["point_x"])
            assert P.pointing_hit(point, gt, tol, convention) == row["hit"]
            rows.append(row)
        n = len(calls)
        again = at_tolerance(pd.DataFrame(rows), 4.0, convention=convention)
        assert len(calls) == n + 1  # one vectorised call
        assert list(again["hit"]) == [real(d, 4.0, convention) for d in again["distance"]]
    assert calls
    # the two conventions part exactly at the tolerance (inclusive vs strict), nowhere else
    assert real(5.0, 5) and not real(5.0, 5, "torchray") and real(4.999, 5, "torchray")
    assert not real(np.inf, 1e9) and not real(np.inf, 1e9, "torchray")
    with pytest.raises(ValueError):
        real(1.0, 2, "other")


def test_the_built_in_protocol_list_is_the_registry_s():
    """Issue 20 item 4: the dashboard kept its own copy of the built-in protocols."""
    from clrp.evaluation import PROTOCOL_REGISTRY, PROTOCOLS
    from clrp.evaluation.protocol import built_in_protocols

    assert PROTOCOLS == built_in_protocols() == ("pointing", "discriminativeness", "perturbation", "ablation")
    assert all(PROTOCOL_REGISTRY[p].built_in for p in PROTOCOLS)
    assert not [n for n, p in PROTOCOL_REGISTRY.items() if p.built_in and n not in PROTOCOLS]
