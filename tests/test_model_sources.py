"""The model-source registry (clrp.models.sources): every name goes to one source, and a lab's
plug-in source (prefix ``mylab:``) is listed by ``python -m clrp models`` and the dashboard's
picker and loads, registered in code or through a ``clrp.model_sources`` entry point."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import clrp.models as zoo
from clrp import cli
from clrp.errors import ModelLoadError
from clrp.models import sources

PLUGIN = textwrap.dedent('''
    """A lab's model source: one tiny CNN under the prefix ``mylab:``."""
    import torch
    from torch import nn

    from clrp.models import LoadedModel, ModelLoadError, ModelSource, Preprocessing

    CLASSES = ["cat", "dog"]


    def build():
        g = torch.Generator().manual_seed(7)
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(4, len(CLASSES)))
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        return net.eval()


    class MyLabZoo(ModelSource):
        kind = "mylab"
        title = "models of my lab"
        prefix = "mylab:"

        def list(self, config=None, names=()):
            return ["mylab:tiny"]

        def load(self, name, **options):
            if name != "mylab:tiny":
                raise ModelLoadError(f"my lab has no model {name!r}")
            return LoadedModel(build(), list(CLASSES), Preprocessing(input_size=(16, 16), resize=None), name=name,
                               description="tiny CNN of my lab", architecture="mylab-cnn")
''')


def _write_plugin(folder, *, entry_point=True, broken_entry_point=False):
    (folder / "mylab_zoo.py").write_text(PLUGIN)
    if not entry_point:
        return
    info = folder / "mylab_zoo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mylab-zoo\nVersion: 0.1\n")
    eps = "[clrp.model_sources]\nmylab = mylab_zoo:MyLabZoo\n"
    if broken_entry_point:
        eps += "broken = mylab_zoo_missing:Nothing\n"
    (info / "entry_points.txt").write_text(eps)


@pytest.fixture
def mylab(tmp_path, monkeypatch):
    """The plug-in module importable (no entry point: not registered); unregistered afterwards."""
    _write_plugin(tmp_path, entry_point=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    import mylab_zoo

    yield mylab_zoo
    sources.unregister_source("mylab")
    sys.modules.pop("mylab_zoo", None)


def _listed(out):
    return {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ") and ln.split()}


def test_each_name_goes_to_its_source(tmp_path):
    cfg = tmp_path / "lab.toml"
    cfg.write_text('[[models]]\nname = "voc-net"\narchitecture = "resnet18"\nweights = "w.pt"\nclass_names = "c.txt"\n')
    expect = {"bundled": "bundled", "bundled-hard": "bundled", "resnet50": "torchvision",
              "resnet50.IMAGENET1K_V1": "torchvision", "timm:resnet18": "timm", "voc-net": "lab"}
    for name, kind in expect.items():
        assert sources.source_for(name, cfg).kind == kind, name
    assert sources.source_for("no-such-model", cfg) is None
    assert [s.kind for s in sources.registered()][:2] == ["bundled", "lab"]
    assert {"bundled", "lab", "torchvision", "timm", "file"} <= {s.kind for s in sources.registered()}


def test_a_kind_or_prefix_cannot_be_taken_twice(mylab):
    sources.register_source(mylab.MyLabZoo)
    with pytest.raises(ModelLoadError, match="kind 'mylab' is already registered"):
        sources.register_source(mylab.MyLabZoo())

    class Impostor(mylab.MyLabZoo):
        kind = "impostor"

    with pytest.raises(ModelLoadError, match="prefix 'mylab:' is already the model source 'mylab'"):
        sources.register_source(Impostor())
    with pytest.raises(ModelLoadError, match="must be a clrp.models.ModelSource"):
        sources.register_source(object())


def test_a_registered_plug_in_is_listed_loaded_and_offered_by_the_dashboard(mylab, capsys, tmp_path):
    with pytest.raises(ModelLoadError, match=r"unknown model 'mylab:tiny'") as before:
        zoo.load("mylab:tiny")
    assert "mylab:<name>" not in str(before.value)
    zoo.register_source(mylab.MyLabZoo())

    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "models of my lab:" in out and "available" in _listed(out)["mylab:tiny"]
    # after the bundled and lab models, before the library zoos
    assert out.index("bundled and lab models:") < out.index("models of my lab:") < out.index("torchvision classifiers")

    lm = zoo.load("mylab:tiny")
    assert lm.name == "mylab:tiny" and lm.class_names == ["cat", "dog"]
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(lm.predict(x), mylab.build()(x))  # the plug-in's own model
    assert lm.explain(x, 1).shape[-2:] == (16, 16)
    with pytest.raises(ModelLoadError, match="my lab has no model 'mylab:huge'"):
        zoo.load("mylab:huge")
    with pytest.raises(ModelLoadError, match=r"unknown model 'nope'; available: .*mylab:<name>"):
        zoo.load("nope")

    from dashboard import core

    keys = [c.key for c in core.model_choices()]
    assert "mylab:tiny" in keys and keys.index("bundled") < keys.index("mylab:tiny") < keys.index("alexnet")
    choice = next(c for c in core.model_choices() if c.key == "mylab:tiny")
    assert choice.available and choice.kind == "mylab" and choice.label == "mylab:tiny"
    torch.testing.assert_close(core.load_model("mylab:tiny").predict(x), mylab.build()(x))

    # a lab TOML may not name a model after a plug-in's prefix
    cfg = tmp_path / "lab.toml"
    cfg.write_text('[[models]]\nname = "mylab:x"\narchitecture = "resnet18"\nweights = "w.pt"\nclass_names = "c.txt"\n')
    with pytest.raises(ModelLoadError, match="name 'mylab:x' is reserved"):
        zoo.read_config(cfg)

    sources.unregister_source("mylab")
    assert "mylab:tiny" not in [i.name for i in zoo.available_models()]
    with pytest.raises(ModelLoadError, match=r"unknown model 'mylab:tiny'"):
        zoo.load("mylab:tiny")


def test_an_entry_point_source_is_found_and_a_broken_one_is_listed(tmp_path, monkeypatch):
    _write_plugin(tmp_path, broken_entry_point=True)
    monkeypatch.syspath_prepend(str(tmp_path))  # sys.path changed: the entry points are read again
    try:
        infos = {i.name: i for i in zoo.available_models()}
        assert infos["mylab:tiny"].available and infos["mylab:tiny"].kind == "mylab"
        broken = infos["<broken>"]
        assert not broken.available and "mylab_zoo_missing" in broken.reason and "could not be loaded" in broken.reason
        assert zoo.load("mylab:tiny").class_names == ["cat", "dog"]
    finally:
        sources.unregister_source("mylab")
        sys.modules.pop("mylab_zoo", None)


@pytest.mark.slow
def test_python_dash_m_clrp_models_lists_and_loads_an_installed_plug_in(tmp_path):
    """A new process (the CLI, a dashboard worker) finds the plug-in through its entry point."""
    _write_plugin(tmp_path)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), repo]), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "clrp", "models", "--available"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "models of my lab:" in r.stdout and "available" in _listed(r.stdout)["mylab:tiny"]
    code = "import clrp.models as m; print(m.load('mylab:tiny').class_names)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "['cat', 'dog']", r.stderr


def test_the_dashboard_picker_offers_and_explains_with_a_plug_in_model(mylab, monkeypatch):
    pytest.importorskip("streamlit")
    import json
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from dashboard import core, ui

    zoo.register_source(mylab.MyLabZoo())
    monkeypatch.setenv(core.RUNS_ENV, str(Path(mylab.__file__).parent / "runs"))
    ui.cached_model_choices.clear()
    root = Path(__file__).resolve().parents[1]
    at = AppTest.from_file(str(root / "pages" / "1_Explain.py"), default_timeout=120)
    at.session_state["clrp_model_key"] = "mylab:tiny"
    at.run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert at.selectbox(key="_model_picker").value == "mylab:tiny"
    grids = [json.loads(c.proto.json) for c in at.get("bidi_component") if c.proto.component_name == "clrp_map_grid"]
    assert sum(len(g["maps"]) for g in grids) == len(core.DEFAULT_METHODS)  # every default method drawn
    ui.cached_model_choices.clear()
