"""The command line (`python -m clrp ...`), run in-process through clrp.cli.main."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from clrp import cli, scenes
from clrp.models import build_architecture


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random scene_vgg state_dict + class names, and a shared scenes cache folder."""
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    net = build_architecture("scene_vgg", len(scenes.CLASS_NAMES))
    torch.save(net.state_dict(), d / "rand.pt")
    (d / "classes.txt").write_text("\n".join(scenes.CLASS_NAMES))
    return d


def _model_args(d):
    return ["--model", "tiny", "--architecture", "scene_vgg", "--weights", str(d / "rand.pt"),
            "--class-names", str(d / "classes.txt")]


def _eval(d, out, *extra, dataset="scenes:6"):
    return cli.main(["evaluate", "--dataset", dataset, "--cache-dir", str(d / "cache"), *_model_args(d),
                     "--methods", "lrp,clrp2", "--protocols", "pointing,discriminativeness",
                     "--tolerance", "scaled", "--batch-size", "2", "--out", str(out), "--quiet", *extra])


def _done_ids(out):
    ids = []
    with open(os.path.join(out, "progress.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            ids += rec["image_ids"] + rec["skipped"]
    return ids


def test_evaluate_writes_results_settings_and_resumes(tiny, capsys):
    out = tiny / "run"
    assert _eval(tiny, out, "--limit", "3") == 0
    assert len(_done_ids(out)) == 3
    s = json.loads((out / "settings.json").read_text())
    assert s["model"]["architecture"] == "scene_vgg"
    assert len(s["model"]["weights_fingerprint_sha1"]) == 40
    assert s["rules"] == "paper" and s["tolerance"] == "scaled"
    assert s["methods"] == ["lrp", "clrp2"]
    assert s["dataset"]["seeds"] == [cli.SCENES_DEFAULT_SEED, cli.SCENES_DEFAULT_SEED + 5]
    assert set(s["versions"]) >= {"clrp", "torch", "torchvision", "python"}
    assert "contrast" in s["method_options"]["clrp2"]
    for proto in ("pointing", "discriminativeness"):
        assert (out / "results" / f"{proto}.csv").is_file()
        assert (out / "results" / f"{proto}.parquet").is_file()
        assert (out / "summary" / f"{proto}.csv").is_file()
    # the same folder without --resume is refused with a clear message
    capsys.readouterr()
    assert _eval(tiny, out) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # resume: only the 3 missing images are evaluated, none twice
    assert _eval(tiny, out, "--resume") == 0
    ids = _done_ids(out)
    assert len(ids) == 6 and len(set(ids)) == 6
    assert "3 images evaluated now, 6 in" in capsys.readouterr().out
    df = pd.read_parquet(out / "results" / "pointing.parquet")
    assert set(df["method"]) == {"lrp", "clrp2", "center"}
    assert df["image_id"].nunique() == 6
    # resuming with other settings is refused
    assert cli.main(["evaluate", "--dataset", "scenes:6", "--cache-dir", str(tiny / "cache"), *_model_args(tiny),
                     "--methods", "lrp", "--protocols", "pointing", "--out", str(out), "--resume", "--quiet"]) == 2


def test_shards_merge_to_the_full_run(tiny, capsys):
    full = tiny / "full"
    assert _eval(tiny, full) == 0
    parts = []
    for i in range(2):
        o = tiny / f"shard{i}"
        assert _eval(tiny, o, "--shard", f"{i}/2") == 0
        parts.append(o)
    a, b = set(_done_ids(parts[0])), set(_done_ids(parts[1]))
    assert not a & b and a | b == set(_done_ids(full))
    merged = tiny / "merged"
    assert cli.main(["merge", str(parts[0]), str(parts[1]), "--out", str(merged), "--quiet"]) == 0
    cols = ["image_id", "class_name", "method", "hit"]
    m = pd.read_parquet(merged / "results" / "pointing.parquet")[cols].sort_values(cols[:3]).reset_index(drop=True)
    f = pd.read_parquet(full / "results" / "pointing.parquet")[cols].sort_values(cols[:3]).reset_index(drop=True)
    pd.testing.assert_frame_equal(m, f)
    sm = pd.read_csv(merged / "summary" / "pointing.csv", index_col=0)
    sf = pd.read_csv(full / "summary" / "pointing.csv", index_col=0)
    np.testing.assert_allclose(sm.loc[sf.index, "all"], sf["all"])
    # merging a shard with itself is refused
    capsys.readouterr()
    assert cli.main(["merge", str(parts[0]), str(parts[0]), "--out", str(tiny / "m2"), "--quiet"]) == 2
    assert "repeats" in capsys.readouterr().err


def test_user_errors_exit_2_with_one_line(tiny, capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["evaluate", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "no such file"),
        (["evaluate", "--dataset", "scenes:x", "--out", str(tmp_path / "o")], "scenes:N"),
        (["evaluate", "--dataset", "scenes:2", *_model_args(tiny), "--methods", "nonsense",
          "--out", str(tmp_path / "o")], "unknown method"),
        (["evaluate", "--dataset", "scenes:2", *_model_args(tiny), "--shard", "3/2",
          "--out", str(tmp_path / "o")], "--shard"),
        (["evaluate", "--dataset", str(empty), *_model_args(tiny), "--out", str(tmp_path / "o")], "no VOC"),
        (["evaluate", "--dataset", "scenes:2", "--model", "vgg16", "--weights", str(tmp_path / "missing.pth"),
          "--out", str(tmp_path / "o")], "does not exist"),
        (["explain", str(tmp_path / "none.png"), *_model_args(tiny)], "no such file"),
    ]
    for argv, needle in cases:
        capsys.readouterr()
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err


def test_interrupt_says_how_to_resume(tiny, capsys, monkeypatch):
    import clrp.evaluation.runner as runner

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_evaluation", boom)
    assert _eval(tiny, tiny / "intr") == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "--resume" in err and "Traceback" not in err


def test_methods_models_explain(tiny, capsys, tmp_path):
    import clrp

    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    assert all(m in out for m in clrp.METHODS) and all(r in out for r in clrp.RULES)
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "bundled" in out and "vgg16" in out and "available" in out
    sc = scenes.generate_scene(cli.SCENES_DEFAULT_SEED)
    from PIL import Image

    Image.fromarray(sc.image).save(tmp_path / "scene.png")
    name = sc.objects[0].class_name
    assert cli.main(["explain", str(tmp_path / "scene.png"), *_model_args(tiny), "--method", "clrp2",
                     "--target", name, "--out", str(tmp_path / "m.npy"), "--png", str(tmp_path / "m.png")]) == 0
    m = np.load(tmp_path / "m.npy")
    assert m.shape == (96, 96) and np.isfinite(m).all()
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["explain", str(tmp_path / "scene.png"), *_model_args(tiny), "--target", "3"]) == 0
    capsys.readouterr()
    assert cli.main(["explain", str(tmp_path / "scene.png"), *_model_args(tiny), "--target", "unicorn"]) == 2
    assert "unicorn" in capsys.readouterr().err


def test_python_dash_m_does_not_import_streamlit():
    import subprocess
    import sys

    code = ("import sys, clrp.cli; rc = clrp.cli.main(['methods']); "
            "assert 'streamlit' not in sys.modules; sys.exit(rc)")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__))))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


def test_subset_file_limits_the_images(tiny):
    ids = [scenes.generate_scene(cli.SCENES_DEFAULT_SEED + k).name for k in (1, 4)]
    lst = tiny / "ids.txt"
    lst.write_text("\n".join(ids) + "\n")
    out = tiny / "subset"
    assert _eval(tiny, out, "--subset", str(lst)) == 0
    assert sorted(_done_ids(out)) == sorted(ids)
    assert json.loads((out / "settings.json").read_text())["subset"] == str(lst)


def _small_state_dict(model):
    """Random weights stored small (each tensor a strided view of a short random vector)."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            sd[k] = torch.zeros_like(v)
        elif v.ndim <= 1:
            sd[k] = (1 if k.endswith(("weight", "running_var")) else 0) + 0.1 * torch.rand(v.shape, generator=g)
        else:
            fan_in = int(np.prod(v.shape[1:]))
            base = torch.randn(sum(v.shape) - v.ndim + 1, generator=g) / fan_in ** 0.5
            sd[k] = base.as_strided(v.shape, (1,) * v.ndim)
    return sd


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory):
    """A resnet50 and a resnet18 state_dict with random weights, as a user passes with --weights."""
    d = tmp_path_factory.mktemp("tv")
    for name in ("resnet50", "resnet18"):
        m = build_architecture(name, 1000, initialize=False)
        torch.save(_small_state_dict(m), d / f"{name}-random.pth")
    return d


def test_models_lists_torchvision_and_timm_with_availability(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ") and ln.split()}
    for name in ("bundled", "resnet50", "densenet121", "efficientnet_b0", "vit_b_16", "convnext_tiny"):
        assert name in lines, name
    assert "available" in lines["bundled"] and "NOT available" in lines["resnet50"]
    assert "downloads are off ($CLRP_OFFLINE=1)" in out and str(tmp_path / "torch") in out
    assert out.index("bundled") < out.index("alexnet")
    monkeypatch.delenv("CLRP_OFFLINE")
    assert cli.main(["models", "--timm", "resnet18"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ") and ln.split()}
    assert "downloadable" in lines["resnet50"] and "98 MB" in lines["resnet50"]
    pytest.importorskip("timm")
    assert "timm:resnet18" in lines
    monkeypatch.setenv("CLRP_OFFLINE", "1")
    assert cli.main(["models", "--available"]) == 0
    out = capsys.readouterr().out
    assert "bundled" in out and "resnet50" not in out


def test_explain_and_evaluate_with_a_torchvision_model_and_weights_file(resnet_weights, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(scenes.generate_scene(cli.SCENES_DEFAULT_SEED).image).save(tmp_path / "scene.png")
    w50 = resnet_weights / "resnet50-random.pth"
    assert cli.main(["explain", str(tmp_path / "scene.png"), "--model", "resnet50", "--weights", str(w50),
                     "--method", "clrp2", "--target", "tench", "--out", str(tmp_path / "m.npy")]) == 0
    out = capsys.readouterr().out
    assert "'tench' (0)" in out
    m = np.load(tmp_path / "m.npy")
    assert m.shape == (224, 224) and np.isfinite(m).all()  # resnet50's transforms: crop 224
    # evaluate: the scene classes mapped onto ImageNet indices
    mapping = json.dumps({c: i for i, c in enumerate(scenes.CLASS_NAMES)})
    out_dir = tmp_path / "run"
    assert cli.main(["evaluate", "--dataset", "scenes:2", "--cache-dir", str(tmp_path / "cache"), "--model", "resnet18",
                     "--weights", str(resnet_weights / "resnet18-random.pth"), "--mapping", mapping,
                     "--methods", "lrp,clrp2", "--protocols", "pointing", "--out", str(out_dir), "--quiet"]) == 0
    s = json.loads((out_dir / "settings.json").read_text())
    assert s["model"]["architecture"] == "resnet18" and s["model"]["weights_path"].endswith("resnet18-random.pth")
    assert pd.read_parquet(out_dir / "results" / "pointing.parquet")["image_id"].nunique() == 2
    # without --weights and offline: one line naming the file and where to put it
    capsys.readouterr()
    assert cli.main(["explain", str(tmp_path / "scene.png"), "--model", "resnet50", "--offline"]) == 2
    err = capsys.readouterr().err
    assert "resnet50-11ad3fa6.pth" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_evaluate_with_every_image_skipped_exits_1(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    voc = tmp_path / "voc"  # every image of this dataset is broken
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    for i in range(2):
        (voc / "JPEGImages" / f"{i}.jpg").write_bytes(b"not a jpeg")
        (voc / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.jpg</filename><size><width>20</width><height>20</height></size>"
            "<object><name>circle</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    code = cli.main(["evaluate", "--dataset", str(voc), *_model_args(tiny), "--methods", "lrp",
                     "--protocols", "pointing", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "error: no image could be evaluated: 2 image(s) skipped" in err and "2 file(s) unreadable" in err


@pytest.mark.parametrize("ci", ["", "1"])
def test_browser_tests_say_why_they_skip_and_are_required_in_ci(ci):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, CLRP_CHROMIUM="/nonexistent/chromium", CI=ci)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", "-n", "0",
                        "tests/test_browser.py"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    n = sum(ln.startswith("def test_") for ln in open(root / "tests" / "test_browser.py"))
    if ci:
        assert r.returncode != 0 and "browser tests are required when CI is set" in out, out[-2000:]
    else:
        assert r.returncode == 0 and f"{n} skipped" in out and "/nonexistent/chromium not found" in out, out[-2000:]


def test_merge_refuses_runs_of_different_datasets(tiny, capsys):
    """Issue 16 item 6: merge dropped the dataset digest before comparing, so shards of two different
    datasets were joined into one table."""
    seed = cli.SCENES_DEFAULT_SEED
    a, b = tiny / "ds_a", tiny / "ds_b"
    assert _eval(tiny, a, "--shard", "0/2", dataset=f"scenes:6:{seed}") == 0
    assert _eval(tiny, b, "--shard", "1/2", dataset=f"scenes:6:{seed + 100}") == 0
    da = json.loads((a / "settings.json").read_text())["dataset"]
    db = json.loads((b / "settings.json").read_text())["dataset"]
    capsys.readouterr()
    assert cli.main(["merge", str(a), str(b), "--out", str(tiny / "mixed"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "dataset" in err and da["source_digest"] in err and db["source_digest"] in err
    assert da["source_digest"] != db["source_digest"]
    assert not (tiny / "mixed" / "progress.jsonl").exists()
