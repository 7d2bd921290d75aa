"""Dashboard pages through Streamlit's AppTest (no browser), plus unit tests of dashboard.core.

The bundled model is used when its weights are present; otherwise the bundled architecture with
random weights (``CLRP_DEV_RANDOM_MODELS=1``), so the pages are exercised either way.
"""
import io
import os
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

import clrp  # noqa: E402
from clrp.errors import ClrpError, DatasetError, InvalidTarget  # noqa: E402
from clrp.models import bundled  # noqa: E402
from clrp.evaluation.runs import rows_csv  # noqa: E402
from dashboard import core  # noqa: E402
from dashboard import jobs  # noqa: E402
from dashboard import ui  # noqa: E402
from dashboard.identity import User  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120
HAVE_BUNDLED = bundled.WEIGHTS_FILE.is_file() and bundled.META_FILE.is_file()
MODEL = "bundled" if HAVE_BUNDLED else "dev:bundled"
#: Reads any job of the store (the pages' users are the identity stub's per-session users).
ADMIN = User("test:admin", "admin", True, "proxy")
USER = User("test:user", "user", False, "proxy")


def finished(job_id: str) -> "jobs.Job":
    """The job once its worker has ended it (a wait on its state; the worker also starts a Python
    process and loads the model, hence more than the page's TIMEOUT on a loaded machine)."""
    return jobs.service().wait(ADMIN, job_id, 3 * TIMEOUT)


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv(core.DEV_ENV, "1")
    monkeypatch.setenv(core.RUNS_ENV, str(tmp_path / "runs"))
    monkeypatch.setenv(core.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(core.ROOTS_ENV, raising=False)
    from dashboard import ui

    ui.cached_model_choices.clear()
    yield


def app(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / page), default_timeout=TIMEOUT)
    at.session_state["clrp_model_key"] = MODEL
    return at


def no_errors(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def plain(markdown: str) -> str:
    """An element's Markdown source without the backslash escapes of ``dashboard.safetext.md``
    (what the page shows)."""
    import re

    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def charts(at):
    return at.get("plotly_chart")


def map_grids(at) -> list[dict]:
    """The data of each map grid of the page (``clrp.viz.map_grid_data`` + the display)."""
    import json

    return [json.loads(c.proto.json) for c in at.get("bidi_component") if c.proto.component_name == "clrp_map_grid"]


def downloads_do_not_rerun(at) -> None:
    """A download must not rerun the page: a rerun replaces the other buttons' deferred files, and a
    click on one of them in the meantime fails ("Deferred file ... not found", the CI failure of stop 14)."""
    buttons = at.get("download_button")
    assert buttons and all(b.proto.ignore_rerun for b in buttons), [b.label for b in buttons if not b.proto.ignore_rerun]


def heatmaps(at) -> int:
    """Number of maps drawn over all map grids of the page."""
    return sum(len(g["maps"]) for g in map_grids(at))


def png_bytes(size=(64, 48), color=(200, 30, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Pages

def test_home_shows_first_explanation_without_click():
    at = app("app.py").run()
    no_errors(at)
    assert at.selectbox(key="_model_picker").value == MODEL
    assert len(at.get("image")) == 1  # the input
    assert heatmaps(at) == 4  # LRP and CLRP2 for the two top classes
    assert not at.get("download_button")
    assert "A first explanation" in [s.value for s in at.subheader]


def test_explain_sample_scene_all_methods_and_display_change():
    at = app("pages/1_Explain.py").run()
    no_errors(at)
    assert heatmaps(at) == len(core.DEFAULT_METHODS)
    at.multiselect(key="explain_methods").set_value(list(clrp.METHODS)).run()
    no_errors(at)
    warnings = [w for w in at.warning if "Random weights" not in w.value]
    assert heatmaps(at) + len(warnings) == len(clrp.METHODS)  # every method drawn, or a reason given
    # choose two classes: one row per class
    at.multiselect(key="explain_methods").set_value(["lrp", "clrp2"]).run()
    at.multiselect(key="explain_classes").set_value([0, 1]).run()
    no_errors(at)
    assert heatmaps(at) == 4
    # rule preset; display settings of the session (what the browser's grid sends back): re-render
    at.selectbox(key="explain_rules").set_value("epsilon_plus").run()
    at.session_state[ui.DISPLAY_STATE] = {"cmap": "hot", "opacity": 0.3, "scale": "per_map", "clip": 97.0}
    at.run()
    no_errors(at)
    assert map_grids(at)[0]["display"] == {"cmap": "hot", "opacity": 0.3, "scale": "per_map", "clip": 97.0}
    # CLRP2 with an epsilon output layer is refused by the engine: a readable warning, not a crash
    assert any("CLRP2" in w.value for w in at.warning)
    # LRP under other presets side by side
    at.multiselect(key="explain_presets").set_value(["paper", "zplus"]).run()
    no_errors(at)
    assert heatmaps(at) == 2 * (1 + 2)  # per class: LRP (epsilon_plus) + LRP[paper] + LRP[zplus]; CLRP2 refused
    assert [b.label for b in at.get("download_button")][:3] == ["Maps (PNG + .npy, zip)", "Grid (PNG)",
                                                               "Settings (JSON)"]
    downloads_do_not_rerun(at)


def test_explain_page_offers_a_plugin_method_with_a_control_for_its_option():
    """A method registered once (clrp.method_registry.register_method) is listed on the Explain page,
    gets a control for its option (derived from its record, not written into the page) and is
    explained with the value chosen there, in the kind of map its record names."""
    import base64

    import numpy as np

    from clrp.method_registry import REGISTRY, Method, Option, register_method

    register_method(Method("scaled_input_app", "Scaled input", "the input times a factor", "gradient", "my units",
                           lambda ctx: ctx.x * ctx.opts["scale"],
                           (Option("scale", 1.0, "the factor", choices=(1.0, 2.0), control="Plug-in scale",
                                   kinds={2.0: "attribution"}),)))
    try:
        at = app("pages/1_Explain.py").run()
        assert "Scaled input" in at.multiselect(key="explain_methods").options
        at.multiselect(key="explain_methods").set_value(["scaled_input_app"]).run()
        no_errors(at)
        values = {}
        for scale in (1.0, 2.0):
            at.selectbox(key="explain_option_Plug-in scale").set_value(scale).run()
            no_errors(at)
            (grid,) = map_grids(at)
            (item,) = grid["maps"]
            values[scale] = np.frombuffer(base64.b64decode(item["values"]), dtype="<f4")
            assert item["group"] == ("attribution" if scale == 2.0 else "my units")
        assert np.abs(values[1.0]).max() > 0 and np.allclose(values[2.0], 2 * values[1.0])
    finally:
        del REGISTRY["scaled_input_app"]


def test_explain_upload_image_and_bad_file():
    at = app("pages/1_Explain.py").run()
    at.radio(key="explain_img_src").set_value("Upload").run()
    at.file_uploader(key="explain_img_upload").set_value(("red.png", png_bytes(), "image/png")).run()
    no_errors(at)
    assert at.session_state["clrp_image"]["name"] == "red.png"
    assert heatmaps(at) == len(core.DEFAULT_METHODS)
    at.file_uploader(key="explain_img_upload").set_value(("notes.png", b"this is not an image", "image/png")).run()
    assert not at.exception
    assert at.error and "not an image" in at.error[0].value


def test_class_contrast_discriminativeness():
    at = app("pages/2_Class_contrast.py").run()
    no_errors(at)
    metrics = at.metric
    assert len(metrics) == 3  # LRP, CLRP1, CLRP2
    vals = {m.label.split(":")[0]: float(m.value) for m in metrics}
    assert all(-1 <= v <= 1 for v in vals.values())
    assert vals["LRP"] > vals["CLRP1"]  # contrastive maps of two classes agree less than LRP's
    assert heatmaps(at) == 6
    downloads_do_not_rerun(at)
    at.multiselect(key="contrast_classes").set_value([0, 1, 2]).run()
    no_errors(at)
    assert heatmaps(at) == 9


def test_neuron_contrast_views():
    at = app("pages/3_Neuron_contrast.py").run()
    no_errors(at)
    assert len(charts(at)) == 1 and len(map_grids(at)) == 1  # channel bars + the grid of maps
    assert heatmaps(at) == 3 * 3 + 2  # (neuron, vs rest, conditioned) x 3 + the pair
    layers = at.selectbox(key="neuron_layer").options
    at.selectbox(key="neuron_layer").set_value(layers[0]).run()
    no_errors(at)
    at.multiselect(key="neuron_picked").set_value([0]).run()
    at.multiselect(key="neuron_pair").set_value([1, 2]).run()
    no_errors(at)
    assert heatmaps(at) == 3 + 2


def _run_page(page, kind, n, extra=None):
    at = app(page).run()
    no_errors(at)
    at.number_input(key=f"{kind}_n").set_value(n).run()
    for k, v in (extra or {}).items():
        w = at.get_by_key(k) if hasattr(at, "get_by_key") else None
        w.set_value(v)
    at.run()
    at.button(key=f"{kind}_start").click().run()
    no_errors(at)
    run = finished(at.session_state[f"{kind}_current"])
    assert not run.active, "run did not finish"
    assert run.state == "done", (run.state, run.message, run.detail)
    at.run()
    no_errors(at)
    return at, run


def test_pointing_game_run_to_completion():
    t = time.time()
    at, run = _run_page("pages/4_Pointing_Game.py", "pointing", 4, {"pg_methods": ["lrp", "clrp2", "gradient"]})
    assert run.done == 4 and run.total == 4
    assert len(charts(at)) >= 1  # accuracy bars (+ per-class heatmap)
    labels = [b.label for b in at.get("download_button")]
    assert "pointing rows (CSV)" in labels and "Settings (JSON)" in labels
    downloads_do_not_rerun(at)
    res, summ = core.run_results(run.out_dir)
    csv = rows_csv(res["pointing"]).decode()
    assert csv.splitlines()[0].startswith("image_id,class_name,method,hit")
    assert set(summ["pointing"].index) == {"lrp", "clrp2", "gradient", "center"}
    # charts and tables name methods as the rest of the dashboard does (issue 11 item 10)
    assert set(at.dataframe[0].value["method"]) == {"LRP", "CLRP2", "Gradient", "Centre baseline"}
    assert set(_chart_words(at)) & {"lrp", "clrp2", "center"} == set()
    assert time.time() - t < TIMEOUT


def _chart_words(at) -> list:
    """Trace names and category labels of every plotly chart on the page."""
    import json

    words = []
    for c in charts(at):
        for t in json.loads(c.proto.spec)["data"]:
            words += [t.get("name") or ""] + [v for k in ("x", "y") for v in (t.get(k) or []) if isinstance(v, str)]
    return [w for w in words if w]


def test_ablation_run_to_completion():
    at, run = _run_page("pages/5_Ablation.py", "ablation", 2,
                        {"abl_methods": ["lrp", "clrp2"], "abl_steps": 5, "abl_repeats": 1, "abl_ks": "1, 4"})
    res, summ = core.run_results(run.out_dir)
    assert {"perturbation", "ablation"} <= set(res)
    assert len(charts(at)) >= 3  # curves, AOPC bars, ablation lines
    words = _chart_words(at)
    assert "LRP target" in words and "CLRP2 other classes" in words
    assert not [w for w in words if "lrp" in w], words


ALL_PAGES = ["app.py", "pages/1_Explain.py", "pages/2_Class_contrast.py", "pages/3_Neuron_contrast.py",
             "pages/4_Pointing_Game.py", "pages/5_Ablation.py"]


@pytest.mark.parametrize("page", ALL_PAGES)
def test_no_model_available_is_a_message_on_every_page(monkeypatch, page):
    from dashboard import ui

    monkeypatch.setattr(core, "model_choices", lambda: [
        core.ModelChoice("bundled", "bundled", "bundled", "", False, "missing weights file x.pt")])
    ui.cached_model_choices.clear()
    at = AppTest.from_file(str(ROOT / page), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.error and "missing weights file" in at.error[0].value
    if "Pointing" in page or "Ablation" in page:
        assert at.button(key=("pointing" if "Pointing" in page else "ablation") + "_start").disabled


@pytest.mark.parametrize("page", ALL_PAGES)
def test_model_that_fails_to_load_is_a_message(monkeypatch, page):
    """Weights listed as present but unreadable (e.g. half-written): a readable error, no traceback."""
    from clrp.errors import ModelLoadError
    from dashboard import ui

    monkeypatch.setattr(core, "model_choices", lambda: [
        core.ModelChoice("broken", "broken", "lab", "", True, None)])

    def boom(key):
        raise ModelLoadError("cannot read weights file /srv/broken.pt: truncated")

    monkeypatch.setattr(core, "load_model", boom)
    ui.cached_model_choices.clear()
    ui.get_model.clear()
    at = AppTest.from_file(str(ROOT / page), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.error and "truncated" in at.error[0].value


# ---------------------------------------------------------------------------------------------
# dashboard.core

def test_resolve_server_path_inside_outside_and_symlinks(tmp_path):
    root = tmp_path / "data"
    (root / "voc").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    roots = [root.resolve()]
    assert core.resolve_server_path(str(root / "voc"), roots) == (root / "voc").resolve()
    assert core.resolve_server_path("voc", roots) == (root / "voc").resolve()  # relative to the first root
    for bad in (str(outside), str(root / "escape"), str(root / ".." / "secret"), "/etc/passwd",
                str(root / "nope"), "/no/such/path"):  # outside or missing: one answer, no root named
        with pytest.raises(DatasetError, match="no such file or folder in the folders this server allows") as e:
            core.resolve_server_path(bad, roots)
        assert str(e.value) == f"{bad}: no such file or folder in the folders this server allows"
    # one answer for missing and not allowed (issue 16: it told which paths exist outside the roots)
    with pytest.raises(DatasetError, match="no such file or folder") as missing:
        core.resolve_server_path(str(root / "nope"), roots)
    with pytest.raises(DatasetError) as outside_existing:
        core.resolve_server_path(str(outside), roots)
    assert str(missing.value).replace(str(root / "nope"), "P") == str(outside_existing.value).replace(str(outside), "P")
    with pytest.raises(DatasetError, match="disabled"):
        core.resolve_server_path(str(root / "voc"), [])


def test_root_entries_name_no_server_path_and_resolve(tmp_path):
    a, b = tmp_path / "srv" / "data", tmp_path / "other" / "more"
    (a / "voc").mkdir(parents=True)
    (b / "coco").mkdir(parents=True)
    (b / "x.zip").write_bytes(b"PK")
    roots = [a.resolve(), b.resolve()]
    entries = core.list_root_entries(roots)
    assert entries == ["data/voc", "more/coco", "more/x.zip"]
    assert [core.resolve_server_path(e, roots) for e in entries] == [a / "voc", b / "coco", b / "x.zip"]


def test_data_roots_from_env(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    assert core.data_roots(f"{a}{os.pathsep}{b}{os.pathsep}") == [a.resolve()]  # missing folders dropped


def test_upload_suffix_and_class_index():
    with pytest.raises(DatasetError):
        core.upload_suffix("evil.exe")
    assert core.upload_suffix("../../x/D.ZIP") == ".zip" and core.upload_suffix("d.tar.gz") == ".tar.gz"
    lm = core.load_model("dev:bundled")
    assert lm.class_index("star") == lm.class_names.index("star")
    assert lm.class_index("STAR") == lm.class_index(" star ") == lm.class_names.index("star")
    assert lm.class_index(3) == lm.class_index("3") == 3
    with pytest.raises(InvalidTarget, match="no class named 'zebra'"):
        lm.class_index("zebra")
    with pytest.raises(InvalidTarget, match="classes 0..9"):
        lm.class_index(99)
    with pytest.raises(InvalidTarget):
        lm.class_index(True)


def test_dev_models_need_the_env(monkeypatch):
    monkeypatch.delenv(core.DEV_ENV)
    assert not any(c.kind == "dev" for c in core.model_choices())
    with pytest.raises(ClrpError):
        core.load_model("dev:vgg16")


def test_scenes_dataset_cached(tmp_path):
    d1 = core.scenes_dataset(3, 123, tmp_path)
    d2 = core.scenes_dataset(3, 123, tmp_path)
    assert d1 == d2 and len(list((d1 / "JPEGImages").iterdir())) == 3


def _zip(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def _run(kind, model_key, source, config, upload=None, user=USER):
    svc = jobs.service()
    return svc.wait(user, svc.submit(user, kind, model_key, source, config, upload=upload).id, 3 * TIMEOUT)


def test_runs_report_bad_uploads_readably(tmp_path):
    cfg = {"methods": ["lrp"], "protocols": ["pointing"]}
    # path traversal in the archive: refused by the safe extraction
    r = _run("pointing", "dev:bundled", {}, cfg, upload=("evil.zip", _zip([("../../escape.txt", b"x")])))
    assert r.state == "failed" and r.message and "Traceback" not in r.message
    # an archive with no dataset inside
    r = _run("pointing", "dev:bundled", {}, cfg, upload=("junk.zip", _zip([("readme.txt", b"hello")])))
    assert r.state == "failed" and "no VOC" in r.message
    # a missing model is a message too
    r = _run("pointing", "dev:no-such-model", {"kind": "scenes", "n": 2}, cfg)
    assert r.state == "failed" and "unknown development model 'dev:no-such-model'" in r.message
    svc = jobs.service()
    assert [x.state for x in svc.list(USER)] == ["failed"] * 3 and svc.list(User("other", "other")) == []
    with pytest.raises(ClrpError):
        svc.submit(USER, "pointing", "bundled", {"kind": "scenes"}, {"methods": []})


def test_cancel_keeps_finished_batches(tmp_path):
    svc = jobs.service()
    r = svc.submit(USER, "pointing", "dev:bundled", {"kind": "scenes", "n": 40},
                   {"methods": ["lrp"], "protocols": ["pointing"], "batch_size": 2})
    deadline = time.time() + TIMEOUT
    while svc.get(USER, r.id).done < 2 and svc.get(USER, r.id).active and time.time() < deadline:
        time.sleep(0.05)
    assert svc.cancel(USER, r.id)
    r = svc.wait(USER, r.id, TIMEOUT)
    assert r.state == "cancelled" and 2 <= r.done < 40
    res, _ = core.run_results(r.out_dir)
    assert res["pointing"]["image_id"].nunique() == r.done  # what finished stays on disk


def test_lab_model_from_toml_config(monkeypatch, tmp_path):
    import torch

    from clrp.models.bundled import build_model
    from clrp.scenes.shapes import CLASS_NAMES
    from dashboard import ui

    torch.save(build_model({"num_classes": len(CLASS_NAMES)}).state_dict(), tmp_path / "lab.pt")
    (tmp_path / "classes.txt").write_text("\n".join(CLASS_NAMES))
    (tmp_path / "lab.toml").write_text(
        '[[models]]\nname = "lab-scenes"\narchitecture = "scene_vgg"\nweights = "lab.pt"\n'
        'class_names = "classes.txt"\nmultilabel = true\nresize = false\ninput_size = [96, 96]\n'
        'mean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n\n'
        '[[models]]\nname = "lab-missing"\narchitecture = "vgg16"\nweights = "nope.pt"\nclass_names = "classes.txt"\n')
    monkeypatch.setenv("CLRP_MODELS_CONFIG", str(tmp_path / "lab.toml"))
    ui.cached_model_choices.clear()
    choices = {c.key: c for c in core.model_choices()}
    assert choices["lab-scenes"].available and not choices["lab-missing"].available
    assert "nope.pt" in choices["lab-missing"].reason
    at = AppTest.from_file(str(ROOT / "pages" / "1_Explain.py"), default_timeout=TIMEOUT)
    at.session_state["clrp_model_key"] = "lab-scenes"
    at.run()
    no_errors(at)
    assert "lab-scenes" in at.selectbox(key="_model_picker").options
    assert "lab-missing" not in at.selectbox(key="_model_picker").options  # listed under "not available"
    assert heatmaps(at) == len(core.DEFAULT_METHODS)


def test_pointing_game_on_an_uploaded_voc_zip(tmp_path):
    from clrp.scenes import easy, export

    z = export.export_voc(easy.iter_scenes(3, 11), tmp_path / "voc.zip")
    at = app("pages/4_Pointing_Game.py").run()
    at.radio(key="pointing_src").set_value("Upload an archive").run()
    at.file_uploader(key="pointing_archive").set_value(("voc.zip", z.read_bytes(), "application/zip")).run()
    no_errors(at)
    at.button(key="pointing_start").click().run()
    no_errors(at)
    run = finished(at.session_state["pointing_current"])
    assert run.state == "done" and run.done == 3, (run.state, run.message)
    assert run.settings()["dataset"]["path"] == "voc.zip"  # the server path is not exposed
    at.run()
    no_errors(at)


def test_pointing_game_on_a_server_folder(monkeypatch, tmp_path):
    from clrp.scenes import easy, export

    root = tmp_path / "datasets"
    export.export_voc(easy.iter_scenes(3, 7), root / "voc3")
    monkeypatch.setenv(core.ROOTS_ENV, str(root))
    at = app("pages/4_Pointing_Game.py").run()
    at.radio(key="pointing_src").set_value("Folder on the server").run()
    no_errors(at)
    at.text_input(key="pointing_server_path").input("/etc").run()
    assert at.error and "no such file or folder in the folders this server allows" in at.error[0].value \
        and not at.exception
    at.text_input(key="pointing_server_path").input("voc3").run()
    no_errors(at)
    at.button(key="pointing_start").click().run()
    run = finished(at.session_state["pointing_current"])
    assert run.state == "done" and run.done == 3, (run.state, run.message)


# ---------------------------------------------------------------------------------------------
# A torchvision ResNet-50 from a lab TOML (random weights): the single-image pages on a residual graph

RESNET = "lab-resnet50"


@pytest.fixture(scope="module")
def resnet_toml(tmp_path_factory):
    """A lab models TOML with a resnet50 (random weights, torch.save(model.state_dict())), 96 px inputs."""
    import torch
    import torchvision

    d = tmp_path_factory.mktemp("resnet-lab")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(num_classes=5).state_dict(), d / "resnet50.pt")
    (d / "classes.txt").write_text("cat\ndog\nbird\nfish\nhorse\n")
    (d / "lab.toml").write_text(
        f'[[models]]\nname = "{RESNET}"\narchitecture = "resnet50"\nweights = "resnet50.pt"\n'
        'class_names = "classes.txt"\ninput_size = 96\nresize = 110\ndescription = "ResNet-50, random weights"\n')
    return d / "lab.toml"


def resnet_app(page, resnet_toml, monkeypatch) -> AppTest:
    monkeypatch.setenv("CLRP_MODELS_CONFIG", str(resnet_toml))
    at = AppTest.from_file(str(ROOT / page), default_timeout=TIMEOUT)
    at.session_state["clrp_model_key"] = RESNET
    return at


def no_traceback(at):
    no_errors(at)
    assert not at.get("exception")


def test_resnet50_explain_page(resnet_toml, monkeypatch):
    at = resnet_app("pages/1_Explain.py", resnet_toml, monkeypatch).run()
    no_traceback(at)
    assert at.selectbox(key="_model_picker").value == RESNET
    assert heatmaps(at) == len(core.DEFAULT_METHODS)
    assert not [w.value for w in at.warning]  # every default method ran on the residual graph
    at.radio(key="explain_img_src").set_value("Upload").run()
    at.file_uploader(key="explain_img_upload").set_value(("red.png", png_bytes((80, 60)), "image/png")).run()
    no_traceback(at)
    assert heatmaps(at) == len(core.DEFAULT_METHODS)


def test_resnet50_class_contrast_page(resnet_toml, monkeypatch):
    at = resnet_app("pages/2_Class_contrast.py", resnet_toml, monkeypatch).run()
    no_traceback(at)
    assert len(at.metric) == 3 and heatmaps(at) == 6
    assert all(-1 <= float(m.value) <= 1 for m in at.metric)


def test_resnet50_neuron_contrast_layers_in_forward_order(resnet_toml, monkeypatch):
    at = resnet_app("pages/3_Neuron_contrast.py", resnet_toml, monkeypatch).run()
    no_traceback(at)
    sel = at.selectbox(key="neuron_layer")
    layers = list(sel.options)
    assert sel.value == "layer4"  # the last feature map every path goes through
    assert [layers.index(f"layer{i}") for i in (1, 2, 3, 4)] == sorted(layers.index(f"layer{i}") for i in (1, 2, 3, 4))
    assert layers.index("layer3.5.add") < layers.index("layer4") and "layer1.0.downsample" in layers
    assert heatmaps(at) == 3 * 3 + 2
    sel.set_value("layer3").run()  # layer4's channel numbers (up to 2047) do not all exist in layer3
    no_traceback(at)
    assert heatmaps(at) == 3 * 3 + 2
    assert all(c < 1024 for c in at.multiselect(key="neuron_picked").value)
    assert any("1024 channels of layer3" in s.value for s in at.subheader)


def test_model_choices_order_and_download_labels(resnet_toml, monkeypatch, tmp_path):
    monkeypatch.setenv("CLRP_MODELS_CONFIG", str(resnet_toml))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CLRP_OFFLINE", "1")
    choices = core.model_choices()
    kinds = [c.kind for c in choices]
    assert choices[0].key == "bundled" and kinds.index("lab") < kinds.index("torchvision")
    tv = {c.key: c for c in choices if c.kind == "torchvision"}
    assert {"resnet50", "densenet121", "efficientnet_b0", "vit_b_16"} <= set(tv)
    assert not tv["resnet50"].selectable and "downloads are off" in tv["resnet50"].reason
    monkeypatch.delenv("CLRP_OFFLINE")
    tv = {c.key: c for c in core.model_choices() if c.kind == "torchvision"}
    assert tv["resnet50"].downloadable and not tv["resnet50"].available
    assert tv["resnet50"].label == "resnet50 — downloads 98 MB on first use"
    # weights already in the hub cache: available, listed before the downloadable ones
    import torchvision

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]).write_bytes(b"x")
    tvl = [c for c in core.model_choices() if c.kind == "torchvision"]
    assert tvl[0].key == "resnet18" and tvl[0].available and tvl[0].label == "resnet18"
    assert core.default_model_key(core.model_choices()) == "bundled"


def test_offline_server_lists_torchvision_as_unavailable_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    at = AppTest.from_file(str(ROOT / "pages" / "1_Explain.py"), default_timeout=TIMEOUT)
    at.session_state["clrp_model_key"] = MODEL
    at.run()
    no_errors(at)
    assert "resnet50" not in at.selectbox(key="_model_picker").options  # offline: not offered
    notes = [c.value for c in at.caption if "torchvision models" in c.value]
    assert len(notes) == 1 and "downloads are off" in notes[0]


def test_picking_a_model_whose_download_fails_is_a_message(monkeypatch, tmp_path):
    """Downloads allowed but no network (a refused mirror here): a readable error within seconds,
    and the model is then listed as unavailable with the reason."""
    import socket

    from clrp.models import download

    download.forget_failures()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("CLRP_OFFLINE")
    monkeypatch.setenv("CLRP_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}/")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    try:
        at = AppTest.from_file(str(ROOT / "pages" / "1_Explain.py"), default_timeout=TIMEOUT)
        at.session_state["clrp_model_key"] = MODEL
        at.run()
        assert "squeezenet1_1 — downloads 5 MB on first use" in at.selectbox(key="_model_picker").options
        t = time.time()
        at.selectbox(key="_model_picker").set_value("squeezenet1_1").run()
        assert time.time() - t < 30
        assert not at.exception
        assert at.error and "squeezenet1_1-b8a52dc0.pth" in plain(at.error[0].value) and "refused" in at.error[0].value
        at.run()
        assert not at.exception
        assert not any(o.startswith("squeezenet1_1") for o in at.selectbox(key="_model_picker").options)
        assert at.selectbox(key="_model_picker").value == MODEL
        assert any("squeezenet1_1" in plain(c.value) and "failed" in c.value for c in at.caption)
    finally:
        download.forget_failures()


@pytest.mark.parametrize("page,n", [("pages/1_Explain.py", len(core.DEFAULT_METHODS)), ("pages/2_Class_contrast.py", 6),
                                    ("pages/3_Neuron_contrast.py", 3 * 3 + 2)])
def test_switching_to_the_resnet50_keeps_the_page_working(resnet_toml, monkeypatch, page, n):
    """Class indices, layers and channel numbers belong to a model: after switching models the page
    starts from the new model's defaults (the old picks used to leave it empty)."""
    monkeypatch.setenv("CLRP_MODELS_CONFIG", str(resnet_toml))
    at = app(page).run()
    no_traceback(at)
    at.selectbox(key="_model_picker").set_value(RESNET).run()
    no_traceback(at)
    assert heatmaps(at) == n, [i.value for i in at.info]
    if "Neuron" in page:
        assert at.selectbox(key="neuron_layer").value == "layer4"
    at.selectbox(key="_model_picker").set_value(MODEL).run()  # and back
    no_traceback(at)
    assert heatmaps(at) == n, [i.value for i in at.info]


def test_upload_store_is_bounded(tmp_path):
    """Issue 11 item 10, issue 16: an uploaded archive is stored once, in its user's private store,
    and deleted when the last job that reads it ends (unreferenced ones are pruned after
    jobs.UPLOAD_MAX_AGE_S; tests/test_jobs.py)."""
    import shutil

    from clrp.scenes import easy, export

    voc = tmp_path / "voc"
    export.export_voc(easy.iter_scenes(2, 30_000_000), voc)
    data = Path(shutil.make_archive(str(tmp_path / "voc"), "zip", voc)).read_bytes()
    r = _run("pointing", "dev:bundled", {"kind": "upload"}, {"methods": ["lrp"], "protocols": ["pointing"]},
             upload=("new.zip", data))
    assert r.state == "done", r.message
    store = core.runs_dir() / "uploads"
    assert not Path(r.source["path"]).exists() and [p for p in store.rglob("*") if p.is_file()] == []
    assert jobs.service().upload_bytes(USER.id) == 0
    assert core.run_results(r.out_dir)[0]["pointing"]["image_id"].nunique() == 2  # results stay
    assert r.settings()["dataset"] == {"kind": "upload", "path": "new.zip"}


def test_upload_messages_name_the_users_file_never_the_servers_copy(tmp_path):
    """Issue 11 item 6 in the dashboard: a run on an uploaded archive reports problems under the
    name the user uploaded, not the server's copy."""
    laughs = ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
              "<annotation><filename>x.jpg</filename><object><name>&b;</name></object></annotation>")
    cases = {"holiday photos.zip": (_zip([("VOC/Annotations/x.xml", laughs.encode()),
                                          ("VOC/JPEGImages/x.jpg", png_bytes())]), "refused"),
             "broken.zip": (b"PK\x03\x04 this is not really a zip archive", "corrupt")}
    for name, (data, word) in cases.items():
        r = _run("pointing", "dev:bundled", {"kind": "upload"}, {"methods": ["lrp"], "protocols": ["pointing"]},
                 upload=(name, data))
        path = Path(r.source["path"])
        assert r.state == "failed" and name in r.message and word in r.message, r.message
        assert path.name not in r.message and str(path.parent) not in r.message, r.message
        assert not path.exists()  # the copy is gone either way


def test_pointing_game_on_the_hard_scene_preset():
    """Issue 10: scenes-hard:N in the dashboard, the same datasets as the command line's."""
    at = app("pages/4_Pointing_Game.py").run()
    at.selectbox(key="pointing_preset").set_value("scenes-hard").run()
    at.number_input(key="pointing_n").set_value(2).run()
    at.multiselect(key="pg_methods").set_value(["lrp"]).run()
    at.button(key="pointing_start").click().run()
    no_errors(at)
    run = finished(at.session_state["pointing_current"])
    assert run.state == "done", (run.message, run.detail)
    res, _ = core.run_results(run.out_dir)
    assert set(res["pointing"]["image_id"].map(lambda i: i.split("_")[0])) == {"hard"}
    assert "2 scenes-hard" in run.label


def test_display_settings_sent_by_a_browser_are_checked():
    """The map grid sends its display choice from the browser: anything malformed or out of range
    falls back to the default, field by field, never to an error."""
    assert ui.valid_display(None) == ui.DEFAULT_DISPLAY
    assert ui.valid_display("hot") == ui.DEFAULT_DISPLAY
    good = {"cmap": "viridis", "opacity": 0.25, "scale": "per_map", "clip": 95.0}
    assert ui.valid_display(good) == good
    bad = {"cmap": "<img src=x>", "opacity": "1e9", "scale": "log", "clip": None, "extra": 1}
    assert ui.valid_display(bad) == ui.DEFAULT_DISPLAY
    assert ui.valid_display({"opacity": "0.5", "clip": 100})["opacity"] == 0.5
    assert ui.valid_display({"opacity": float("nan")})["opacity"] == ui.DEFAULT_DISPLAY["opacity"]
