"""Ablation on a dataset: region perturbation (MoRF/LeRF, AOPC) and hidden-unit ablation, in the
background, with live curves."""
import streamlit as st

from clrp.evaluation import perturbation as pert
from dashboard import evaluation as ev
from dashboard import ui

KIND = "ablation"
lm, source = ev.page_frame(
    KIND, "Ablation",
    "Region perturbation: remove the most (MoRF) or least (LeRF) relevant patches first and follow the target "
    "score (AOPC). Hidden-unit ablation: zero the top-k units of a layer by relevance and compare the drop of "
    "the target with the other classes'. Runs in the background.")
config = None
with ui.guard("the settings"):
    methods, rules = ev.method_picker("abl", ["lrp", "clrp1", "clrp2", "gradient"])
    protocols = ev.protocol_picker("abl", "ablation", ["perturbation", "ablation"])
    c1, c2, c3, c4 = st.columns([1, 1, 1, 2])
    patch = c1.number_input("Patch (px)", 2, 64, 8, key="abl_patch")
    steps = c2.number_input("Steps", 1, 1000, 30, key="abl_steps", help="Patches removed one per step")
    baseline = c3.selectbox("Replace with", list(pert.BASELINES), key="abl_baseline")
    orders = c4.multiselect("Orders", list(pert.ORDERS), default=list(pert.ORDERS), key="abl_orders",
                            format_func=str.upper, help="MoRF: most relevant first; LeRF: least relevant first; "
                                                        "RANDOM: a random order (the reference)")
    c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
    layers = ui.feature_layers(st.session_state[ui.MODEL_STATE])[0] if lm is not None else []
    layer = c1.selectbox("Ablation layer", ["(default: the last feature map)"] + layers, key="abl_layer")
    ks = c2.text_input("k values", "1, 2, 4, 8, 16", key="abl_ks", help="Numbers of top units zeroed")
    repeats = c3.number_input("Random repeats", 1, 50, 3, key="abl_repeats")
    limit = c4.number_input("Max images (0 = all)", 0, 100000, 0, key="abl_limit")
    try:
        kvals = tuple(sorted({int(v) for v in ks.replace(";", ",").split(",") if v.strip()}))
        if not kvals or min(kvals) < 1:
            raise ValueError
    except ValueError:
        st.error("k values: give positive integers separated by commas, e.g. 1, 2, 4")
        kvals = None
    config = {"methods": methods, "rules": rules, "protocols": protocols, **ev.plugin_options("abl", protocols),
              "patch": int(patch), "steps": int(steps), "baseline": baseline, "orders": orders,
              "layer": None if layer.startswith("(") else layer, "ks": kvals, "random_repeats": int(repeats),
              "limit": int(limit) or None, "batch_size": 4}
    if lm is not None and not methods:
        st.info("Choose at least one method.")
ev.run_controls(KIND, lm, source, config, ready=bool(config and config["methods"] and config["protocols"]
                                                      and config["ks"]))
