"""Explain an image: top-k predictions, classes x methods grid, downloads."""
import streamlit as st

import clrp
from clrp.errors import ClrpError
from dashboard import core, ui

lm, key, img, x, image = ui.image_page("Explain an image", "explain")

left, right = st.columns([1, 2])
with left:
    st.image(image, caption=f"{ui.md(img['name'])} as the model sees it ({image.shape[1]}×{image.shape[0]})", width="stretch")
with right:
    k = st.slider("Top-k predictions", 1, min(20, lm.num_classes), min(5, lm.num_classes), key="explain_k")
    top = ui.top_classes(key, img["digest"], x, k)
    score_name = "probability (sigmoid)" if lm.multilabel else "probability (softmax)"
    st.dataframe({"class": [n for _, n, _ in top], "index": [i for i, _, _ in top],
                  score_name: [round(s, 4) for _, _, s in top]}, hide_index=True, width="stretch")

st.subheader("What to explain")
# methods get a row of their own: eleven chips do not fit in a column
methods = st.multiselect("Methods", list(clrp.METHODS), default=list(core.DEFAULT_METHODS),
                         format_func=ui.method_label, key="explain_methods",
                         help="\n".join(f"- **{m}**: {d}" for m, d in clrp.METHODS.items()))
c1, c3 = st.columns([3, 1])
with c1:
    all_idx = list(range(lm.num_classes))
    # a new image starts from its top class unless the user chose classes; a new model always does
    ui.follow_default("explain_classes", [top[0][0]], owner=key, context=img["digest"])
    classes = st.multiselect("Class(es)", all_idx, format_func=lambda i: ui.class_label(lm, i),
                             key="explain_classes", help="Each class gets one row of maps")
with c3:
    presets = list(clrp.RULES)
    rules = st.selectbox("LRP rule preset", presets, index=presets.index("paper"), key="explain_rules",
                         help="\n".join(f"- **{n}**: {c.description}" for n, c in clrp.RULES.items()))
with st.expander("Method options"):
    extra_presets = st.multiselect("Also LRP with these rule presets", [p for p in presets if p != rules],
                                   key="explain_presets", help="Adds LRP maps under other presets to the grid, "
                                                               "to compare rule choices side by side")
    # one control per option label of the method records (plug-in methods' options included)
    controls = core.method_controls()
    control_values = {label: col.selectbox(label, list(o.choices), index=list(o.choices).index(o.default),
                                           key=f"explain_option_{label}", help=o.help)
                      for col, (label, o) in zip(st.columns(max(1, len(controls))), controls.items())}

if not classes or not methods:
    st.info("Choose at least one class and one method.")
    st.stop()


def options_for(method):
    return core.options_for(method, control_values)


# One row per class; within a row, maps of one kind (same units) side by side, so each kind's
# columns share a colour bar.
kind_order = list(clrp.MAP_KINDS)
row = sorted([(m, None) for m in methods] + [("lrp", p) for p in extra_presets],
             key=lambda mp: kind_order.index(clrp.map_kind(mp[0], options_for(mp[0])))
             if clrp.map_kind(mp[0], options_for(mp[0])) in kind_order else len(kind_order))
items, failures = [], []
with st.spinner("Explaining…"):
    for c in classes:
        for m, preset in row:
            title = f"{ui.method_label(m) if preset is None else f'LRP [{preset}]'} · {lm.class_names[c]}"
            try:
                R = ui.explain(key, img["digest"], x, m, c, preset or rules, options_for(m))
                items.append(ui.method_item(title, R, m, options_for(m)))
            except ClrpError as e:
                failures.append(f"{ui.md(title)}: {ui.shown(e)}")

for f in failures:
    st.warning(f, icon=":material/warning:")

if items:
    st.subheader("Explanations")
    per_class = len(row)
    ncol = per_class if per_class <= 6 else 4
    settings = {"model": key, "image": img["name"], "image_sha256_prefix": img["digest"],
                "classes": {int(c): lm.class_names[c] for c in classes}, "methods": methods, "rules": rules,
                "extra_lrp_presets": extra_presets, "options": {m: options_for(m) for m in methods},
                "clrp_version": clrp.__version__}
    ui.map_view(items, image, key="explain", settings=settings, columns=ncol, height=max(170, 1100 // ncol + 25),
                caption="Hover a map to read its values (relevance summed over colour channels).")
