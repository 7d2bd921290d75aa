"""Protocols are plug-ins: a protocol defined here, in a test module, is used by the runner, the
command line and the dashboard without any change to their code."""
from dataclasses import dataclass

import numpy as np
import pytest

from clrp import cli
from clrp.datasets import VocDataset
from clrp.errors import ClrpError
from clrp.evaluation import runner as R
from clrp.evaluation.protocol import REGISTRY, Chart, Protocol, register_protocol

from .test_runner import SETTINGS, _model, _voc


class MassInBox(Protocol):
    """Toy metric: the share of a map's positive relevance inside the class's boxes."""

    name, title, page = "toy_mass", "Toy: relevance mass in the box", "pointing"
    description = "share of the positive relevance inside the class's boxes"
    needs_objects = True

    @dataclass
    class Options:
        threshold: float = 0.0  # relevance below this counts as zero

    def validate(self, o, run):
        if o.threshold < 0:
            raise ClrpError("threshold must be >= 0")

    def ground_truth(self, sample, classes, o):
        return {c: sample.gt_mask(c, use_masks=False) for c in classes} if sample.objects else None

    def rows(self, batch, o):
        from clrp.evaluation.pointing import resize_map

        out = []
        for i, plist in batch.pairs_of().items():
            boxes = batch.ground_truth[self.name].get(i)
            if not boxes:
                continue
            for k, c, _ in plist:
                for m in batch.run.methods:
                    r = resize_map(batch.maps[m][k], *boxes[c].shape)
                    r = np.where(r > o.threshold, r, 0.0)
                    total = r.sum()
                    out.append({"image_id": batch.samples[i].image_id, "class_name": c, "method": m,
                                "share": float(r[boxes[c]].sum() / total) if total > 0 else float("nan")})
        return out

    def summary(self, df, options=None):
        return df.groupby("method")[["share"]].mean()

    def charts(self, summary, rows=None):
        return [Chart("bar", "Relevance mass in the box", summary.reset_index(), x="method", y="share")]


@pytest.fixture()
def toy():
    register_protocol(MassInBox)
    yield REGISTRY["toy_mass"]
    del REGISTRY["toy_mass"]


def test_the_runner_runs_a_registered_protocol(toy, tmp_path):
    _voc(str(tmp_path / "voc"))
    out = str(tmp_path / "out")
    R.run_evaluation(VocDataset(str(tmp_path / "voc")), _model(), out,
                     **dict(SETTINGS, protocols=("pointing", "toy_mass"), threshold=1e-9))
    res = R.load_results(out)
    assert set(res) == {"pointing", "toy_mass"} and len(res["toy_mass"]) == 7 * 2
    assert res["toy_mass"]["share"].between(0, 1).all()
    summ = R.summarize(out)
    assert list(summ["toy_mass"].columns) == ["share"]
    import json
    assert json.load(open(f"{out}/settings.json"))["options"]["toy_mass"] == {"threshold": 1e-9}
    with pytest.raises(ClrpError, match="threshold must be >= 0"):
        R.run_evaluation(VocDataset(str(tmp_path / "voc")), _model(), str(tmp_path / "bad"),
                         **dict(SETTINGS, protocols=("toy_mass",), threshold=-1.0))


def test_the_command_line_lists_and_runs_a_registered_protocol(toy, tmp_path, capsys):
    assert cli.main(["protocols"]) == 0
    assert "toy_mass: Toy: relevance mass in the box" in capsys.readouterr().out
    import torch

    from .test_cli import _model_args

    from clrp.scenes.shapes import CLASS_NAMES
    from clrp.models import build_architecture
    torch.manual_seed(0)
    torch.save(build_architecture("scene_vgg", len(CLASS_NAMES)).state_dict(), tmp_path / "rand.pt")
    (tmp_path / "classes.txt").write_text("\n".join(CLASS_NAMES))
    out = tmp_path / "run"
    code = cli.main(["evaluate", "--dataset", "scenes:3", "--cache-dir", str(tmp_path / "cache"), *_model_args(tmp_path),
                     "--methods", "lrp", "--protocols", "pointing,toy_mass", "--set", "toy_mass.threshold=0.1",
                     "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (out / "results" / "toy_mass.csv").is_file() and (out / "summary" / "toy_mass.csv").is_file()
    assert cli.main(["evaluate", "--dataset", "scenes:3", "--cache-dir", str(tmp_path / "cache"),
                     *_model_args(tmp_path), "--protocols", "toy_mass", "--set", "toy_mass.nope=1",
                     "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "protocol 'toy_mass' has no option 'nope'" in capsys.readouterr().err


def test_the_dashboard_offers_and_draws_a_registered_protocol(toy, monkeypatch, tmp_path):
    from .test_app import _run_page, app, no_errors

    monkeypatch.setenv("CLRP_DEV_RANDOM_MODELS", "1")
    monkeypatch.setenv("CLRP_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("CLRP_CACHE_DIR", str(tmp_path / "cache"))
    at = app("pages/4_Pointing_Game.py").run()
    no_errors(at)
    assert "Toy: relevance mass in the box" in at.multiselect(key="pg_protocols").options
    at, run = _run_page("pages/4_Pointing_Game.py", "pointing", 2, {"pg_protocols": ["pointing", "toy_mass"],
                                                                   "pg_methods": ["lrp"]})
    assert run.state == "done"
    titles = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("Relevance mass in the box" in t for t in titles)
    assert float(at.number_input(key="pg_toy_mass_threshold").value) == 0.0  # its option, as a widget
