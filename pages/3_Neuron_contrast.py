"""Neuron contrast: the channels of a layer ranked by relevance for a class, single-neuron
explanations, neuron vs the rest of its layer, neuron vs neuron, and the class explanation
conditioned on one neuron."""
import numpy as np
import plotly.graph_objects as go
import streamlit as st

import clrp
from clrp.errors import ClrpError
from clrp.method_registry import with_layer_relevance
from dashboard import ui

lm, key, img, x, image = ui.image_page(
    "Neuron contrast", "neuron",
    caption="Which channels of a layer carry the decision for a class, what each one sees, and what separates "
            "two of them.")
layers = default_layer = None
with ui.guard("listing the model's layers"):
    layers, default_layer = ui.feature_layers(key)
if not layers:
    st.stop()

top = ui.top_classes(key, img["digest"], x, 1)
c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
# layers belong to the model (a new model starts from its default layer); the class follows the
# image's top class unless the user chose another
ui.follow_default("neuron_layer", default_layer if default_layer in layers else layers[0], owner=key)
ui.follow_default("neuron_class", top[0][0], owner=key, context=img["digest"])
with c1:
    layer = st.selectbox("Layer", layers, key="neuron_layer",
                         help="Layers of the model's graph, in forward order (default: the last feature map every "
                              "path goes through)")
with c2:
    target = st.selectbox("Class", list(range(lm.num_classes)), format_func=lambda i: ui.class_label(lm, i),
                          key="neuron_class")
with c3:
    # every method of the registry that gives relevance at a hidden layer (plug-ins too)
    method = st.selectbox("Ranking method", with_layer_relevance(), format_func=ui.method_label,
                          key="neuron_method", help="Relevance of each channel for the class (contrastive: "
                                                    "target minus dual, signed)")
with c4:
    presets = list(clrp.RULES)
    rules = st.selectbox("Rule preset", presets, index=presets.index("paper"), key="neuron_rules")

rel = None
with ui.guard("computing channel relevances"):
    rel = ui.layer_relevance(key, img["digest"], x, target, layer, method, rules)
if rel is None:
    st.stop()

k = rel.shape[0]
order = np.argsort(-rel, kind="stable")
st.subheader(f"Relevance of the {k} channels of {ui.md(layer)} for “{ui.md(lm.class_names[target])}”")
fig = go.Figure(go.Bar(x=np.arange(k), y=rel, marker_color=np.where(rel >= 0, "#b2182b", "#2166ac"),
                       hovertemplate="channel %{x}<br>relevance %{y:.4g}<extra></extra>"))
fig.update_layout(height=260, margin=dict(l=0, r=0, t=10, b=0), xaxis_title="channel", yaxis_title="relevance",
                  bargap=0.1)
st.plotly_chart(fig, key="neuron_bars", config={"displaylogo": False})
st.caption("Top channels: " + ", ".join(f"{int(i)} ({rel[i]:.3g})" for i in order[:8]))

st.subheader("Neurons")
# Channel numbers belong to a layer: another layer (or model) starts again from its own most relevant
# channels; a new image, class or ranking re-ranks them unless the user picked channels.
ranking = (img["digest"], target, method, rules)
ui.follow_default("neuron_picked", [int(i) for i in order[:3]], owner=(key, layer), context=ranking,
                  valid=lambda v: all(0 <= c < k for c in v))
ui.follow_default("neuron_pair", [int(i) for i in order[:2]], owner=(key, layer), context=ranking,
                  valid=lambda v: all(0 <= c < k for c in v))
n1, n2 = st.columns(2)
with n1:
    picked = st.multiselect("Neurons to explain", list(range(k)), key="neuron_picked",
                            help="Defaults to the three most relevant channels of the layer")
with n2:
    pair = st.multiselect("Neuron A vs neuron B", list(range(k)), max_selections=2, key="neuron_pair")

items, failures = [], []


def add(title, fn, kind="neuron relevance"):
    try:
        items.append(ui.MapItem(title, fn(), kind))
    except ClrpError as e:
        failures.append(f"{ui.md(title)}: {ui.shown(e)}")


with st.spinner("Explaining…"):
    for ch in picked:
        add(f"neuron {ch}", lambda ch=ch: ui.explain_neuron(key, img["digest"], x, layer, ch, None, rules))
        add(f"neuron {ch} vs rest of layer",
            lambda ch=ch: ui.explain_neuron(key, img["digest"], x, layer, ch, "rest", rules))
        add(f"class | neuron {ch}",
            lambda ch=ch: ui.explain(key, img["digest"], x, "lrp", target, rules, {"condition": (layer, (int(ch),))}),
            "relevance")
    if len(pair) == 2:
        a, b = pair
        add(f"neuron {a} vs {b}", lambda: ui.explain_neuron(key, img["digest"], x, layer, a, int(b), rules))
        add(f"neuron {b} vs {a}", lambda: ui.explain_neuron(key, img["digest"], x, layer, b, int(a), rules))
for f in failures:
    st.warning(f, icon=":material/warning:")

if items:
    settings = {"model": key, "image": img["name"], "layer": layer, "class": lm.class_names[target],
                "ranking_method": method, "rules": rules, "neurons": picked, "pair": pair,
                "clrp_version": clrp.__version__}
    ui.map_view(items, image, key="neuron", settings=settings, columns=3, height=330,
                caption="Per neuron: its own explanation, the neuron against the rest of its layer (CLRP1 analogue), "
                        "and the class explanation conditioned on the neuron (only relevance flowing through it). "
                        "Last row: two neurons against each other.")
