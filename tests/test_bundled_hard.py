"""The shipped ``bundled-hard`` model: loading by name, its metadata, and its stated held-out mAP."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from clrp import models
from clrp.scenes import hard
from clrp.models import bundled, bundled_hard
from clrp.models.bundled_metrics import evaluate_model


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    return models.load("bundled-hard")


def test_loads_by_name_with_its_metadata(lm):
    assert lm.name == "bundled-hard" and lm.multilabel
    assert lm.class_names == list(hard.CLASS_NAMES)
    assert tuple(lm.preprocessing.input_size) == (bundled_hard.INPUT_SIZE,) * 2
    meta = json.loads(bundled_hard.META_FILE.read_text())
    assert meta["architecture"]["features"] == bundled_hard.HARD_CONFIG["features"]
    assert meta["scene_preset"] == "scenes-hard" and meta["scene_size"] == hard.SCENE_SIZE
    assert set(meta["heldout_metrics"]["per_class_AP"]) == set(hard.CLASS_NAMES)
    assert meta["heldout_metrics"]["scene_seeds"][0] == bundled_hard.HELDOUT_SEED_BASE
    # deeper than the bundled model, batch norm folded away, small enough for the repository
    convs = [m for m in lm.model.modules() if isinstance(m, nn.Conv2d)]
    easy = [m for m in models.load("bundled").model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8 > len(easy)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in lm.model.modules())
    assert bundled_hard.WEIGHTS_FILE.stat().st_size < 5e6
    assert "bundled-hard" in [i.name for i in models.available_models() if i.available]


def test_meets_its_stated_held_out_map(lm):
    """The first 150 scenes of the held-out set the metadata states its mAP on."""
    meta = json.loads(bundled_hard.META_FILE.read_text())
    stated = meta["heldout_metrics"]["mAP"]
    m = evaluate_model(lm.model, n=150, seed=bundled_hard.HELDOUT_SEED_BASE, model_name="bundled-hard")
    assert m["preset"] == "scenes-hard" and m["n_scenes"] == 150
    assert m["mAP"] >= stated - 0.03, (m["mAP"], stated)
    # and it has learned the hard world: far above the label prior (~0.33 mAP for a constant model)
    assert m["mAP"] >= 0.6


def test_metrics_command_reports_the_hard_model(capsys):
    from clrp.models import bundled_metrics

    assert bundled_metrics.main(["--model", "bundled-hard", "-n", "8", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "model: bundled-hard on scenes-hard scenes" in out and "mAP:" in out


def test_cli_evaluates_scenes_hard_with_bundled_hard(tmp_path):
    from clrp import cli

    out = tmp_path / "run"
    rc = cli.main(["evaluate", "--dataset", "scenes-hard:2:30000000", "--model", "bundled-hard", "--methods", "lrp",
                   "--protocols", "pointing", "--out", str(out), "--quiet"])
    assert rc == 0
    settings = json.loads((out / "settings.json").read_text())
    assert "scenes-hard" in json.dumps(settings)
    assert (out / "scenes-hard-2-30000000" / "complete.json").is_file()


def test_fold_batch_norm_keeps_the_function():
    torch.manual_seed(0)
    cfg = dict(bundled_hard.HARD_CONFIG)
    m = bundled.build_model(cfg, batch_norm=True)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
    m.eval()
    x = torch.randn(2, 3, 128, 128)
    assert torch.allclose(bundled.fold_batch_norm(m, cfg)(x), m(x), atol=1e-4)
