"""The depth study (scripts/depth_study.py) end to end on tiny models and a few scenes, and the
trainer's ``--features`` (scripts/train_bundled_model.py)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from clrp import scenes, scenes_hard
from clrp.models import bundled

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def torch_globals():
    """The scripts set torch's thread count and deterministic mode: restore them."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


def test_parse_features_and_depth_configs():
    assert bundled.parse_features("32,M,64,m,128,G") == [32, "M", 64, "M", 128, "G"]
    with pytest.raises(ValueError):
        bundled.parse_features("32,X")
    with pytest.raises(ValueError):
        bundled.parse_features("M,G")
    assert {d: bundled.n_convs(c) for d, c in bundled.DEPTH_CONFIGS.items()} == {3: 3, 4: 4, 5: 5, 9: 9}
    assert bundled.DEPTH_CONFIGS[5] == bundled.DEFAULT_CONFIG


def test_trainer_features_and_study_end_to_end(tmp_path, torch_globals):
    train = _script("train_bundled_model")
    depths = {2: "8,M,8,G", 4: "8,M,8,M,8,8,G"}
    for d, spec in depths.items():
        assert train.main(["--features", spec, "--name", f"scenes_vgg_d{d}", "--out", str(tmp_path),
                           "--steps", "2", "--batch", "4", "--train-scenes", "16", "--heldout", "8",
                           "--monitor", "0", "--threads", "1", "--workers", "1"]) == 0
        meta = json.loads((tmp_path / f"scenes_vgg_d{d}.json").read_text())
        assert meta["n_convs"] == d and meta["architecture"]["features"] == bundled.parse_features(spec)
        assert "--features" in meta["training"]["command"]
        sd = torch.load(tmp_path / f"scenes_vgg_d{d}.pt", weights_only=True)
        assert sum(1 for k, v in sd.items() if k.startswith("features.") and v.dim() == 4) == d
        assert not any("running_mean" in k for k in sd)          # batch norm folded
    assert not (tmp_path / "bundled_scenes_vgg.pt").exists()

    study = _script("depth_study")
    doc = tmp_path / "study.md"
    other = tmp_path / "other.md"
    other.write_text("# Other world\n\nsome table\n")
    assert study.main(["--world", "scenes", "--models", str(tmp_path), "--depths", "2,4", "--n", "2",
                       "--doc", str(doc), "--append-doc", str(other)]) == 0
    text = doc.read_text()
    assert "World: `scenes`" in text and "clrp.models.bundled.DEPTH_CONFIGS" in text
    assert "| 2 | 2 |" in text and "| 4 | 4 |" in text
    assert "## Layer by layer, 4 convs" in text and "features.0 (conv)" in text
    assert "## Other world" in text                              # appended, headings one level down
    numbers = json.loads(doc.with_suffix(".json").read_text())
    assert [r["convs"] for r in numbers["summary"]] == [2, 4]
    for r in numbers["summary"]:
        for m in ("lrp", "clrp1", "clrp2", "sglrp"):
            assert -1.0 <= r[f"{m} mean r"] <= 1.0
        assert 0.0 <= r["share with a present logit < 0"] <= 1.0
    seeds = numbers["seeds"]
    assert len(seeds) == 2 and all(len(scenes.generate_scene(s).objects) == 2 for s in seeds)
    assert seeds[0] >= 30_000_000


def test_two_class_seeds_per_world():
    study = _script("depth_study")
    easy = study.two_class_seeds(3, 30_000_000, "scenes")
    hard = study.two_class_seeds(3, 30_000_000, "scenes-hard")
    assert all(len(scenes.generate_scene(s).objects) == 2 for s in easy)
    assert all(len(scenes_hard.scene_classes(s)) == 2 for s in hard)
    assert study.two_class_seeds(3, 30_000_000) == hard              # the default world is unchanged
