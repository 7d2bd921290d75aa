"""Issue 11 item 8: feedback on long work -- progress inside a batch (explained pairs,
perturbation steps, ablations), an ETA, and an estimate of a run's duration before it starts
(Python, command line and dashboard)."""
import os
import re

import pytest
import torch

from clrp import cli, scenes
from clrp.datasets import open_dataset
from clrp.evaluation import RunConfig, estimate_duration, listen_progress, run_evaluation
from clrp.evaluation.runner import format_seconds
from clrp.models import LoadedModel, build_architecture
from clrp.models.bundled import bundled_preprocessing


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("progress")
    torch.manual_seed(0)
    net = build_architecture("scene_vgg", len(scenes.CLASS_NAMES)).eval()
    lm = LoadedModel(net, list(scenes.CLASS_NAMES), bundled_preprocessing(), name="tiny", multilabel=True)
    voc = scenes.voc_cache(3, scenes.EVALUATION_SEED, d / "cache")
    torch.save(net.state_dict(), d / "rand.pt")
    (d / "classes.txt").write_text("\n".join(scenes.CLASS_NAMES))
    return d, lm, voc


ABLATION = dict(methods=("lrp", "gradient"), protocols=("perturbation", "ablation"), steps=4, orders=("morf", "lerf"),
                ks=(1, 2), random_repeats=2, batch_size=3)


def test_ticks_count_every_explained_pair_perturbation_step_and_ablation(world, tmp_path):
    d, lm, voc = world
    ds = open_dataset(voc, "voc")
    seen = []
    with listen_progress(lambda unit, n: seen.append((unit, n))):
        res = run_evaluation(ds, lm, str(tmp_path / "run"), RunConfig.build(**ABLATION), resume=False)
    counts = {}
    for unit, n in seen:
        counts[unit] = counts.get(unit, 0) + n
    from clrp.evaluation import load_results

    rows = load_results(str(tmp_path / "run"))
    n_pairs = rows["perturbation"][["image_id", "target"]].drop_duplicates().shape[0]
    assert res.images_done == 3
    assert counts["explanations"] == n_pairs * 2  # every (image, class) pair, per method
    assert counts["perturbation steps"] == n_pairs * 2 * 2 * (4 + 1)  # methods x orders x (K + 1 scores)
    assert counts["ablations"] > 0
    # the whole batch (3 images) is one progress call, but the ticks came all along
    assert len(seen) > 10


def test_progress_estimate_counts_the_current_batch_and_extrapolates():
    from dashboard import jobs

    run = jobs.Job("r", "s", "ablation", "m", {}, {}, "/nonexistent", state="running", total=4)
    cancel = []
    rep = jobs.Reporter(run, lambda j: None, lambda: bool(cancel), interval=0)
    assert run.progress_estimate() == (0.0, None)  # no time promised before the first image
    run.work_started = 100.0
    rep.tick("explanations", 20)
    rep.tick("perturbation steps", 80)
    rep.batch_done(1, 4)                              # 100 units for the first image
    rep.tick("perturbation steps", 50)                # half of the second
    f, left = run.progress_estimate(now=110.0)
    assert f == pytest.approx(1.5 / 4)
    assert left == pytest.approx(10.0 * (1 - f) / f)
    cancel.append(1)                                  # the worker sees the store's cancel flag
    with pytest.raises(jobs.Cancelled):               # a cancel stops inside the batch now
        rep.tick("perturbation steps", 1)


def test_estimate_duration_times_the_first_images_and_leaves_nothing(world, tmp_path, monkeypatch):
    import tempfile

    d, lm, voc = world
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    est = estimate_duration(open_dataset(voc, "voc"), lm, RunConfig.build(**ABLATION), images=2)
    assert est.images_measured == 2 and est.images_total == 3
    assert est.seconds_per_image > 0 and est.seconds_total >= 3 * est.seconds_per_image
    assert re.match(r"about .+ for 3 images: .+ per image \(measured on 2\)", est.describe())
    assert os.listdir(tmp_path) == []  # the timing run's folder is gone
    limited = estimate_duration(open_dataset(voc, "voc"), lm, RunConfig.build(**{**ABLATION, "limit": 1}), images=1)
    assert limited.images_total == 1 and limited.images_measured == 1


def test_format_seconds():
    assert [format_seconds(s) for s in (3.21, 42.4, 132, 7300)] == ["3.2 s", "42 s", "2 min 12 s", "2.0 h"]


def test_cli_estimate_prints_the_duration_and_writes_no_results(world, tmp_path, capsys):
    d, _, _ = world
    out = tmp_path / "out"
    code = cli.main(["evaluate", "--dataset", "scenes:3", "--cache-dir", str(d / "cache"), "--model", "tiny",
                     "--architecture", "scene_vgg", "--weights", str(d / "rand.pt"), "--class-names",
                     str(d / "classes.txt"), "--methods", "lrp", "--protocols", "perturbation", "--steps", "3",
                     "--out", str(out), "--estimate", "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert re.search(r"estimated duration: about .+ for 3 images", text), text
    assert not (out / "results").exists() and not (out / "progress.jsonl").exists()


def test_dashboard_estimate_button_and_eta_line(monkeypatch, tmp_path):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from dashboard import core

    monkeypatch.setenv(core.DEV_ENV, "1")
    monkeypatch.setenv(core.RUNS_ENV, str(tmp_path / "runs"))
    monkeypatch.setenv(core.CACHE_ENV, str(tmp_path / "cache"))
    at = AppTest.from_file(os.path.join(os.path.dirname(__file__), "..", "pages", "5_Ablation.py"),
                           default_timeout=120)
    at.session_state["clrp_model_key"] = "dev:bundled"
    at.run()
    at.number_input(key="ablation_n").set_value(3).run()
    at.number_input(key="abl_steps").set_value(4).run()
    at.button(key="ablation_estimate").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    from dashboard import jobs
    from dashboard.identity import User

    admin = User("test:admin", "admin", True)
    est = jobs.service().wait(admin, at.session_state["ablation_estimate_job"][1], 120)  # timed by a worker
    assert est.kind == "estimate" and est.state == "done", (est.state, est.message)
    at.run()
    assert any(re.search(r"Estimate: about .+ for 3 images", i.value) for i in at.info), [i.value for i in at.info]
    at.button(key="ablation_start").click().run()
    run = jobs.service().wait(admin, at.session_state["ablation_current"], 120)
    assert run.state == "done", run.message
    at.run()
    bar = at.get("progress")[0]
    assert "3/3 images" in bar.proto.text and "perturbation steps" in bar.proto.text
