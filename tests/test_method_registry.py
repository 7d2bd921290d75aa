"""One record per method (clrp.method_registry): explain(), the command line and the dashboard read
the same records, and a plug-in method registered once appears in all of them."""
import pytest
import torch

import clrp
from clrp import cli
from clrp.errors import ClrpError
from clrp.method_registry import MAP_KINDS, REGISTRY, Method, Option, integer, map_kind, register_method
from dashboard import core


def _scaled_input(ctx):
    return ctx.x * ctx.opts["scale"] * ctx.opts["repeat"]


PLUGIN = Method("scaled_input", "Scaled input", "The input times a factor (a plug-in for the tests)", "gradient",
                "my units", _scaled_input,
                (Option("scale", 1.0, "the factor", choices=(1.0, 2.0), control="Plug-in scale",
                        kinds={2.0: "attribution"}),
                 Option("repeat", 1, "a second factor", check=integer(1))))


@pytest.fixture
def plugin():
    register_method(PLUGIN)
    yield PLUGIN
    del REGISTRY[PLUGIN.name]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()


def test_a_plugin_method_is_explained_listed_and_offered_by_the_dashboard(plugin, capsys):
    assert clrp.METHODS["scaled_input"] == PLUGIN.description and clrp.METHOD_LABELS["scaled_input"] == "Scaled input"
    x = torch.rand(2, 3, 2, 2)
    assert torch.equal(clrp.explain(_model(), x, [0, 1], "scaled_input", scale=2.0, repeat=3), x * 6)
    with pytest.raises(ClrpError, match=r"scale must be 1.0 or 2.0"):
        clrp.explain(_model(), x, 0, "scaled_input", scale=3.0)
    with pytest.raises(ClrpError, match=r"repeat must be an integer >= 1, got 0"):
        clrp.explain(_model(), x, 0, "scaled_input", repeat=0)
    # the command line's listing
    assert cli.main(["methods"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("scaled_input"))
    assert PLUGIN.description in line and "[options: scale=1.0, repeat=1]" in line
    # the dashboard: a control for the option's label, and the options it sets
    controls = core.method_controls()
    assert controls["Plug-in scale"].choices == (1.0, 2.0)
    values = {label: o.default for label, o in controls.items()} | {"Plug-in scale": 2.0}
    assert core.options_for("scaled_input", values) == {"scale": 2.0}
    assert core.options_for("clrp1", values) == {"seed": "logit", "contrast": "clamp", "dual": "uniform"}
    assert core.options_for("gradient", values) == {}
    # the map's kind follows the records (an own kind is allowed)
    assert map_kind("scaled_input") == "my units" and map_kind("scaled_input", {"scale": 2.0}) == "attribution"


def test_the_command_line_refuses_a_plugin_options_bad_value_before_loading_anything(plugin, tmp_path, capsys):
    missing = str(tmp_path / "no_such.png")
    assert cli.main(["explain", missing, "--method", "scaled_input", "--option", "scaled_input.scale=5"]) == 2
    assert "error: scale must be 1.0 or 2.0" in capsys.readouterr().err


def test_bad_method_options_are_refused_before_the_model_or_the_image_is_read(tmp_path, capsys):
    """Before: the image and the model were loaded first, and a bad option failed at the end."""
    missing = str(tmp_path / "no_such.png")
    assert cli.main(["explain", missing, "--method", "clrp1", "--option", "clrp1.dual=other"]) == 2
    assert "error: dual must be 'uniform' or 'abs_logits'" in capsys.readouterr().err
    assert cli.main(["explain", missing, "--method", "gradcam", "--option", "gradcam.nope=1"]) == 2
    assert "method 'gradcam' has no option nope; its options: interpolation, layer, relu" in capsys.readouterr().err
    assert cli.main(["evaluate", "--dataset", str(tmp_path / "none"), "--methods", "smoothgrad", "--option",
                     "smoothgrad.samples=0", "--out", str(tmp_path / "o")]) == 2
    assert "error: samples must be an integer >= 1, got 0" in capsys.readouterr().err


def test_registration_refuses_what_the_tools_could_not_use():
    with pytest.raises(ClrpError, match="already registered"):
        register_method(REGISTRY["lrp"])
    with pytest.raises(ClrpError, match="family must be"):
        register_method(Method("odd", "Odd", "", "other", "relevance", _scaled_input))
    with pytest.raises(ClrpError, match="the default of option 'k' is not allowed"):
        register_method(Method("odd", "Odd", "", "gradient", "relevance", _scaled_input,
                               (Option("k", "c", choices=("a", "b")),)))
    assert "odd" not in REGISTRY


def test_every_builtin_record_is_complete():
    for name, m in REGISTRY.items():
        assert m.name == name and m.label and m.description and m.kind in MAP_KINDS
        for o in m.options:
            assert o.resolve(o.default) == o.default  # every default is allowed
    assert map_kind("clrp2", {"contrast": "reference"}) == "normalised relevance" == map_kind("clrp1", {"contrast": "reference"})
    assert map_kind("clrp2") == "relevance" and map_kind("sglrp") == "softmax relevance" and map_kind("nope") == "nope"
    assert list(clrp.METHOD_LABELS)[-1] == "center"  # the Pointing Game's baseline is labelled too


def test_layer_relevance_is_a_capability_of_the_record():
    """Only a record with ``layer`` gives relevance at a hidden layer: an LRP-family plug-in without
    one is refused (it is not taken for one of the built-in seeds)."""
    register_method(Method("relevance_plugin", "Relevance plug-in", "", "relevance", "relevance",
                           lambda ctx: ctx.x))
    try:
        with pytest.raises(ClrpError, match=r"needs an LRP-family method \(lrp, clrp1, clrp2, sglrp\)"):
            clrp.layer_relevance(_model(), torch.rand(1, 3, 2, 2), 0, "1", method="relevance_plugin")
    finally:
        del REGISTRY["relevance_plugin"]
    with pytest.raises(ClrpError, match="only an LRP-family method"):
        register_method(Method("odd", "Odd", "", "gradient", "sensitivity", _scaled_input, layer=lambda c, i: c.x))


def test_a_dashboard_evaluation_runs_a_plugin_method_in_its_worker_process(plugin, monkeypatch, tmp_path):
    """The job's worker is a new process: it registers the plug-in's record again from where the
    server found it (module:variable), as it does for plug-in protocols."""
    from .test_app import _run_page

    monkeypatch.setenv("CLRP_DEV_RANDOM_MODELS", "1")
    monkeypatch.setenv("CLRP_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("CLRP_CACHE_DIR", str(tmp_path / "cache"))
    _, run = _run_page("pages/4_Pointing_Game.py", "pointing", 2, {"pg_methods": ["scaled_input"]})
    res, _ = core.run_results(run.out_dir)
    assert set(res["pointing"]["method"]) == {"scaled_input", "center"}


def test_a_plugin_record_a_worker_cannot_import_is_refused_by_name(plugin):
    from clrp.method_registry import built_in, reference, register_reference

    assert built_in("lrp") and not built_in("scaled_input")
    assert reference("scaled_input") == "tests.test_method_registry:PLUGIN"
    assert register_reference("tests.test_method_registry:PLUGIN") is PLUGIN
    register_method(Method("local_only", "Local", "", "gradient", "sensitivity", _scaled_input))
    try:
        with pytest.raises(ClrpError, match="'local_only' cannot run in a worker process"):
            reference("local_only")
    finally:
        del REGISTRY["local_only"]
