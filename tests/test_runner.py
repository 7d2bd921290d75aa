"""Resumable evaluation runner on a tiny VOC fixture and a tiny random CNN."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

clrp = pytest.importorskip("clrp")
if not hasattr(clrp, "explain"):
    pytest.skip("engine not available yet", allow_module_level=True)

from clrp.datasets import VocDataset  # noqa: E402
from clrp.errors import ClrpError  # noqa: E402
from clrp.evaluation import runner as R  # noqa: E402
from clrp.evaluation.protocol import Batch  # noqa: E402
from clrp.evaluation.runs import RunFolder  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from types import SimpleNamespace as LoadedModel  # noqa: E402  (anything with model/class_names/preprocessing)

from clrp.models import Preprocessing  # noqa: E402


def _voc(root, n=5):
    ann, jpg = os.path.join(root, "Annotations"), os.path.join(root, "JPEGImages")
    os.makedirs(ann)
    os.makedirs(jpg)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(os.path.join(jpg, f"{i:03d}.jpg"))
        objs = [("dog", (1, 1, 12, 10), 0), ("cat", (20, 12, 40, 30), 0)]
        if i % 2:
            objs.append(("unicorn", (5, 5, 9, 9), 0))
        if i == 3:
            objs = [("dog", (1, 1, 40, 30), 0)]
        if i == 4:
            objs = [("unicorn", (1, 1, 4, 4), 0)]   # no mapped class: image skipped
        xml = "".join(f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
                      f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                      for c, b, d in objs)
        with open(os.path.join(ann, f"{i:03d}.xml"), "w") as f:
            f.write(f"<annotation><filename>{i:03d}.jpg</filename><size><width>40</width>"
                    f"<height>30</height></size>{xml}</annotation>")
    with open(os.path.join(ann, "999.xml"), "w") as f:
        f.write("<annotation><object>")   # broken annotation: reported


def _model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 3)).eval()
    pp = Preprocessing(input_size=(16, 16), resize=None)
    return LoadedModel(model=net, class_names=["Dog", "cat", "person"], preprocessing=pp)


SETTINGS = dict(methods=("lrp", "clrp2"), protocols=R.PROTOCOLS, steps=4, patch=4, batch_size=2,
                ks=(1, 3), random_repeats=2, perturbation_batch=3)


def _frames(out):
    res = R.load_results(out)
    key = {"pointing": ["image_id", "class_name", "method"],
           "discriminativeness": ["image_id", "method", "class_a", "class_b"],
           "perturbation": ["image_id", "class_name", "method", "order"],
           "ablation": ["image_id", "target", "ranking", "k"]}
    return {p: df.sort_values(key[p]).reset_index(drop=True) for p, df in res.items()}


def test_run_and_resume_equal_one_uninterrupted_run(tmp_path, device):
    _voc(str(tmp_path / "voc"))
    lm = _model()
    on = dict(SETTINGS, device=device)  # the model is moved there once, by the runner
    full = R.run_evaluation(VocDataset(str(tmp_path / "voc")), lm, str(tmp_path / "full"), **on)
    assert json.load(open(tmp_path / "full" / "settings.json"))["device"].split(":")[0] == device.type
    assert full.images_new == 4 and full.images_skipped == 1
    assert any("999.xml" in p.file for p in full.problems)
    m = json.load(open(tmp_path / "full" / "settings.json"))["mapping"]
    assert m["unmapped"] == ["unicorn"] and m["index"] == {"dog": 0, "cat": 1}
    a = _frames(str(tmp_path / "full"))
    # pairs: images 0,1,2 have dog+cat, image 3 dog only -> 7 pairs x (center + 2 methods)
    assert len(a["pointing"]) == 7 * 3
    assert set(a["pointing"]["method"]) == {"center", "lrp", "clrp2"}
    assert len(a["discriminativeness"]) == 3 * 2
    assert len(a["perturbation"]) == 7 * 2 * 3 and (a["perturbation"]["steps"] == 4).all()
    # ablation: 7 pairs x 2 k x (lrp, clrp2, one shared random)
    assert len(a["ablation"]) == 7 * 2 * 3
    summ = R.summarize(str(tmp_path / "full"))
    assert set(summ) == set(R.PROTOCOLS)
    assert 0 <= summ["pointing"].loc["lrp", "all"] <= 1

    # interrupted run: 2 images, then resume
    part = str(tmp_path / "part")
    r1 = R.run_evaluation(VocDataset(str(tmp_path / "voc")), lm, part, limit=2, **on)
    assert r1.images_new == 2
    r2 = R.run_evaluation(VocDataset(str(tmp_path / "voc")), lm, part, **on)
    assert r2.images_new == 2 and r2.images_done == 5
    r3 = R.run_evaluation(VocDataset(str(tmp_path / "voc")), lm, part, **on)
    assert r3.images_new == 0
    b = _frames(part)
    for p in R.PROTOCOLS:
        cols = [c for c in a[p].columns if c != "scores"]
        assert a[p][cols].equals(b[p][cols]), p


def test_crash_mid_batch_is_redone(tmp_path, monkeypatch):
    _voc(str(tmp_path / "voc"))
    lm = _model()
    out = str(tmp_path / "out")
    calls = {"n": 0}
    real = R._process_batch

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            # a part file of this batch reaches the disk, then the process dies
            RunFolder(out).write_part("pointing", 2, [{"image_id": "junk", "class_name": "x", "method": "m",
                                                "hit": True, "skipped": None, "tolerance": 15.0,
                                                "difficult": False}])
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(R, "_process_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        R.run_evaluation(VocDataset(str(tmp_path / "voc")), lm, out, **SETTINGS)
    assert "junk" not in set(R.load_results(out)["pointing"]["image_id"])  # orphan not loaded
    monkeypatch.setattr(R, "_process_batch", real)
    r = R.run_evaluation(VocDataset(str(tmp_path / "voc")), lm, out, **SETTINGS)
    assert r.images_new == 2
    pts = R.load_results(out)["pointing"]
    assert "junk" not in set(pts["image_id"]) and len(pts) == 7 * 3
    assert not os.path.exists(os.path.join(out, "pointing", "part-000002.parquet")) or \
        "junk" not in set(__import__("pandas").read_parquet(os.path.join(out, "pointing", "part-000002.parquet"))["image_id"])


def test_settings_mismatch_and_bad_arguments(tmp_path):
    _voc(str(tmp_path / "voc"), n=2)
    lm = _model()
    out = str(tmp_path / "o")
    R.run_evaluation(VocDataset(str(tmp_path / "voc")), lm, out, methods=("lrp",), protocols=("pointing",))
    with pytest.raises(ClrpError, match="different settings"):
        R.run_evaluation(VocDataset(str(tmp_path / "voc")), lm, out, methods=("lrp",), protocols=("pointing",),
                         tolerance=5)
    other = _model()
    with torch.no_grad():
        other.model[0].weight[0, 0, 0, 0] += 1
    with pytest.raises(ClrpError, match="different settings"):
        R.run_evaluation(VocDataset(str(tmp_path / "voc")), other, out, methods=("lrp",), protocols=("pointing",))
    with pytest.raises(ClrpError, match="already holds"):
        R.run_evaluation(VocDataset(str(tmp_path / "voc")), lm, out, resume=False, methods=("lrp",),
                         protocols=("pointing",))
    with pytest.raises(ClrpError, match="unknown method"):
        R.run_evaluation(VocDataset(str(tmp_path / "voc")), lm, str(tmp_path / "x"), methods=("magic",))
    with pytest.raises(ClrpError, match="no dataset class"):
        bad = LoadedModel(model=lm.model, class_names=["a", "b", "c"], preprocessing=lm.preprocessing)
        R.run_evaluation(VocDataset(str(tmp_path / "voc")), bad, str(tmp_path / "y"))
    assert R.default_ablation_layer(lm.model) == "4"


def test_model_geometry_crop_and_folder_dataset(tmp_path):
    from clrp.datasets import FolderDataset

    lm = _model()
    crop = LoadedModel(model=lm.model, class_names=lm.class_names,
                       preprocessing=Preprocessing(input_size=(16, 16), resize=16))
    # 40x30 image: shorter side 30 -> 16, resized 21x16, centre crop 16x16 at x = 2..18
    batch = Batch([], [], [], {}, {}, None, crop.preprocessing, [], None, R.RunConfig(geometry="model"))
    image = SimpleNamespace(width=40, height=30)
    assert batch.crop_box(image) == pytest.approx((2 * 40 / 21, 0, 18 * 40 / 21, 30))
    _voc(str(tmp_path / "voc"), n=2)
    out = str(tmp_path / "o")
    R.run_evaluation(VocDataset(str(tmp_path / "voc")), crop, out, methods=("lrp",), protocols=("pointing",),
                     geometry="model")
    pts = R.load_results(out)["pointing"]
    got = pts[pts["method"] == "lrp"]
    assert len(got) == 4
    lo, hi = 2 * 40 / 21 - 1, 18 * 40 / 21
    assert ((got["point_x"] >= lo) & (got["point_x"] <= hi)).all()  # arg-max inside the crop

    for c, n in (("Dog", 2), ("cat", 1)):
        for i in range(n):
            os.makedirs(tmp_path / "f" / c, exist_ok=True)
            Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(tmp_path / "f" / c / f"{i}.png")
    res = R.run_evaluation(FolderDataset(str(tmp_path / "f")), lm, str(tmp_path / "fo"), methods=("lrp",),
                           protocols=("pointing", "perturbation", "ablation"), steps=2, patch=8, ks=(1,))
    assert res.images_new == 3
    frames = R.load_results(str(tmp_path / "fo"))
    assert "pointing" not in frames                    # labels only: no ground-truth regions
    assert len(frames["perturbation"]) == 3 * 3 and set(frames["ablation"]["class_name"]) == {"Dog", "cat"}


def test_broken_mask_reported_and_image_skipped(tmp_path):
    _voc(str(tmp_path / "voc"), n=3)
    os.makedirs(tmp_path / "voc" / "Masks")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "voc" / "Masks" / "001_0.png")  # wrong size
    (tmp_path / "voc" / "Masks" / "002_0.png").write_bytes(b"not a png")
    ok = np.zeros((30, 40), np.uint8)
    ok[2:5, 2:5] = 255
    Image.fromarray(ok).save(tmp_path / "voc" / "Masks" / "000_0.png")
    (tmp_path / "voc" / "JPEGImages" / "003.jpg").write_bytes(b"garbage")
    (tmp_path / "voc" / "Annotations" / "003.xml").write_text(
        (tmp_path / "voc" / "Annotations" / "000.xml").read_text().replace("000.jpg", "003.jpg"))
    lm = _model()
    res = R.run_evaluation(VocDataset(str(tmp_path / "voc")), lm, str(tmp_path / "o"), methods=("lrp",),
                           protocols=("pointing",))
    assert res.images_new == 1 and res.images_skipped == 3
    assert any(p.file.endswith("003.jpg") and "cannot decode" in p.reason for p in res.problems)
    again = R.run_evaluation(VocDataset(str(tmp_path / "voc")), lm, str(tmp_path / "o"), methods=("lrp",),
                             protocols=("pointing",))
    assert again.images_new == 0 and again.images_skipped == 0  # nothing retried
    reasons = " | ".join(f"{p.file}: {p.reason}" for p in res.problems)
    assert "001.jpg: ground truth" in reasons and "002.jpg: ground truth" in reasons
    pts = R.load_results(str(tmp_path / "o"))["pointing"]
    assert set(pts["image_id"]) == {"000"}
    dog = pts[(pts["class_name"] == "dog") & (pts["method"] == "center")].iloc[0]
    assert dog["coverage"] == pytest.approx(120 / 1200)  # subsets use box coverage (spec)
    lrp = pts[(pts["class_name"] == "dog") & (pts["method"] == "lrp")].iloc[0]
    # hits are judged against the 3x3 mask (rows/cols 2..4), not the 12x10 box
    d = min(np.hypot(lrp["point_y"] - y, lrp["point_x"] - x) for y in range(2, 5) for x in range(2, 5))
    assert lrp["distance"] == pytest.approx(d)
    logged = [json.loads(l) for l in open(tmp_path / "o" / "problems.jsonl")]
    assert sum("ground truth" in r["reason"] for r in logged) == 2


def test_a_residual_network_runs_every_protocol_unchanged(tmp_path):
    import torchvision
    _voc(str(tmp_path / "voc"))
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3).eval()
    lm = LoadedModel(model=net, class_names=["Dog", "cat", "person"],
                     preprocessing=Preprocessing(input_size=(64, 64), resize=None))
    out = str(tmp_path / "res")
    r = R.run_evaluation(VocDataset(str(tmp_path / "voc")), lm, out, **SETTINGS)
    assert r.images_new == 4
    res = _frames(out)
    assert set(res) == set(R.PROTOCOLS) and all(len(df) for df in res.values())
    assert set(res["ablation"]["layer"]) == {"layer4"}  # the engine's last feature map, by module path
    assert json.load(open(os.path.join(out, "settings.json")))["ablation_layer"] == "layer4"
