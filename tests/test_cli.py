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
