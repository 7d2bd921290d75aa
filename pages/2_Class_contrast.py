"""Class contrast: LRP versus CLRP for two or more classes of one image, with the
class-discriminativeness numbers (correlation between the classes' maps)."""
import itertools

import pandas as pd
import streamlit as st

import clrp
from clrp.errors import ClrpError
from clrp.evaluation import discriminativeness as disc
from clrp.evaluation.runs import rows_csv  # the one CSV writer (neutralises formula cells)
from dashboard import ui

lm, key, img, x, image = ui.image_page(
    "Class contrast", "contrast",
    caption="The paper found LRP maps of different classes of one image nearly identical on VGG16 (Pearson r ≈ 1); "
            "contrastive maps should differ (low or negative r). On the bundled model LRP's r is about 0.5 "
            "(docs/RESULTS.md). Each row is one method, each column one class.")
if lm.num_classes < 2:
    st.error("This model has a single output: there is nothing to contrast.")
    st.stop()

top = ui.top_classes(key, img["digest"], x, min(5, lm.num_classes))
c1, c2, c3 = st.columns([3, 2, 1])
with c1:
    # a new image starts from its two top classes unless the user chose classes; a new model always does
    ui.follow_default("contrast_classes", [i for i, _, _ in top[:2]], owner=key, context=img["digest"])
    classes = st.multiselect("Classes (two or more)", list(range(lm.num_classes)),
                             format_func=lambda i: ui.class_label(lm, i),
                             key="contrast_classes", help="Defaults to the two top-scoring classes")
with c2:
    methods = st.multiselect("Methods", list(clrp.METHODS), default=["lrp", "clrp1", "clrp2"],
                             format_func=ui.method_label, key="contrast_methods")
with c3:
    presets = list(clrp.RULES)
    rules = st.selectbox("Rule preset", presets, index=presets.index("paper"), key="contrast_rules")

st.image(image, caption=ui.md(img["name"]), width=160)
if len(classes) < 2 or not methods:
    st.info("Choose at least two classes and one method.")
    st.stop()

maps, rows, failures = {}, [], []
with st.spinner("Explaining…"):
    for m in methods:
        per = {}
        for c in classes:
            try:
                per[c] = ui.explain(key, img["digest"], x, m, c, rules)
            except ClrpError as e:
                failures.append(f"{ui.method_label(m)} · {ui.md(lm.class_names[c])}: {ui.shown(e)}")
        if len(per) == len(classes):
            maps[m] = per
for f in failures:
    st.warning(f, icon=":material/warning:")

for m, per in maps.items():
    two_d = {c: per[c].sum(0) for c in classes}
    for a, b in itertools.combinations(classes, 2):
        rows.append({"method": ui.method_label(m), "class A": lm.class_names[a], "class B": lm.class_names[b],
                     "Pearson r": disc.pearson(two_d[a], two_d[b]),
                     f"top-{int(disc.DEFAULT_Q * 100)}% IoU": disc.top_iou(two_d[a], two_d[b]),
                     "max |diff| (normalised)": disc.max_abs_diff(two_d[a], two_d[b])})

if rows:
    st.subheader("Discriminativeness")
    df = pd.DataFrame(rows)
    mcols = st.columns(min(4, len(maps)))
    for i, (m, g) in enumerate(df.groupby("method", sort=False)):
        r = g["Pearson r"].mean()
        mcols[i % len(mcols)].metric(f"{ui.md(m)}: Pearson r between classes", "undefined" if pd.isna(r) else f"{r:.3f}",
                                     help="Mean over class pairs. Near 1: the maps do not tell the classes apart.")
    st.dataframe(df.style.format({c: "{:.3f}" for c in df.columns if c not in ("method", "class A", "class B")}),
                 hide_index=True, width="stretch")

    st.subheader("Maps")
    items = []
    for m, per in maps.items():
        for c in classes:
            items.append(ui.method_item(f"{ui.method_label(m)} · {lm.class_names[c]}", per[c], m))
    st.download_button("Discriminativeness (CSV)", rows_csv(df), ui.safe_filename("discriminativeness.csv"),
                       "text/csv", key="contrast_csv", on_click="ignore")
    settings = {"model": key, "image": img["name"], "classes": {int(c): lm.class_names[c] for c in classes},
                "methods": list(maps), "rules": rules, "clrp_version": clrp.__version__}
    ui.map_view(items, image, key="contrast", settings=settings, columns=len(classes),
                height=max(170, min(330, 1100 // len(classes) + 25)))
