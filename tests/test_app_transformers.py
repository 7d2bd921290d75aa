"""Dashboard pages on a vision transformer (``dev:vit``: a tiny torchvision ViT with random
weights) through Streamlit's AppTest: Explain, Class contrast and Neuron contrast draw LRP-family
maps at the input resolution without errors."""
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from dashboard import core  # noqa: E402
from tests.test_app import ROOT, TIMEOUT, _env, _run, heatmaps, no_errors  # noqa: E402,F401 (_env: autouse)

VIT = "dev:vit"


def vit_app(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / page), default_timeout=TIMEOUT)
    at.session_state["clrp_model_key"] = VIT
    return at


def test_dev_vit_is_a_transformer_with_64_px_inputs():
    lm = core.load_model(VIT)
    assert type(lm.model).__name__ == "VisionTransformer" and lm.preprocessing.input_size == (64, 64)


def test_explain_page_on_a_vision_transformer():
    at = vit_app("pages/1_Explain.py").run()
    no_errors(at)
    assert at.selectbox(key="_model_picker").value == VIT
    assert heatmaps(at) == len(core.DEFAULT_METHODS)
    assert not [w.value for w in at.warning if "Random weights" not in w.value]
    at.multiselect(key="explain_methods").set_value(["lrp", "clrp1", "clrp2", "sglrp"]).run()
    at.selectbox(key="explain_rules").set_value("cp_lrp").run()
    no_errors(at)
    assert heatmaps(at) == 4 and not [w.value for w in at.warning if "Random weights" not in w.value]


def test_class_contrast_page_on_a_vision_transformer():
    at = vit_app("pages/2_Class_contrast.py").run()
    no_errors(at)
    assert len(at.metric) == 3 and heatmaps(at) == 6
    assert all(-1 <= float(m.value) <= 1 for m in at.metric)


def test_neuron_contrast_page_on_a_vision_transformer():
    """Block outputs (the channel is the token) and an attention node whose channel is the head."""
    at = vit_app("pages/3_Neuron_contrast.py").run()
    no_errors(at)
    assert heatmaps(at) == 3 * 3 + 2
    layers = list(at.selectbox(key="neuron_layer").options)
    block = "encoder.layers.encoder_layer_0"
    heads = block + ".self_attention.scaled_dot_product_attention"
    assert {block, heads} <= set(layers) and layers.index(heads) < layers.index(block), layers
    at.selectbox(key="neuron_layer").set_value(block).run()
    no_errors(at)
    assert heatmaps(at) == 3 * 3 + 2 and len(at.multiselect(key="neuron_picked").options) == 17  # 16 patches + class
    at.selectbox(key="neuron_layer").set_value(heads).run()
    no_errors(at)
    assert len(at.multiselect(key="neuron_picked").options) == 2  # two heads
    assert heatmaps(at) == 2 * 3 + 2  # (neuron, vs rest, conditioned) per head + the pair


@pytest.mark.slow
def test_pointing_game_job_on_a_vision_transformer():
    """A dashboard job (its own worker process) runs the Pointing Game with LRP and CLRP2 on the ViT."""
    r = _run("pointing", VIT, {"kind": "scenes", "n": 4}, {"methods": ["lrp", "clrp2"], "protocols": ["pointing"]})
    assert r.state == "done", (r.state, r.message, r.detail)
    from clrp.evaluation.runner import load_results

    rows = load_results(r.out_dir)["pointing"]
    assert r.done == 4 and {"lrp", "clrp2"} <= set(rows["method"]) and rows["hit"].isin([True, False]).all()
