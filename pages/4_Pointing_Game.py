"""Pointing Game on a dataset (bundled scenes, an uploaded archive or a server folder), in the
background, with live per-method accuracies."""
import streamlit as st

from dashboard import evaluation as ev
from dashboard import ui

KIND = "pointing"
lm, source = ev.page_frame(
    KIND, "Pointing Game",
    "For each (image, class present): is the map's arg-max within the tolerance of the class's ground truth? "
    "Score = mean of per-class accuracies; “difficult” = small object with another class present. Runs in "
    "the background: you can leave the page and come back.")
config = None
with ui.guard("the settings"):
    methods, rules = ev.method_picker("pg", ["lrp", "clrp1", "clrp2", "sglrp", "gradient", "gradcam"])
    c1, c2, c3, c4 = st.columns(4)
    scaled = c1.checkbox("Scaled tolerance", False, key="pg_scaled",
                         help="Scale the tolerance with the image size: 15 px at 224 px, proportionally otherwise")
    tol = c1.number_input("Tolerance (px)", 0.0, 200.0, 15.0, 1.0, key="pg_tol", disabled=scaled)
    use_masks = c2.checkbox("Use masks", True, key="pg_masks",
                            help="Hits against the objects' masks when the dataset has them (else their boxes)")
    center = c2.checkbox("Centre baseline", True, key="pg_center", help="Always point at the image centre")
    geometry = c3.selectbox("Geometry", ["full", "model"], key="pg_geom",
                            help="full: whole image resized to the model input; model: the model's own resize + "
                                 "centre crop")
    limit = c4.number_input("Max images (0 = all)", 0, 100000, 0, key="pg_limit")
    batch = c4.number_input("Images per batch", 1, 64, 4, key="pg_batch",
                            help="Results are written after each batch (resume and cancel keep them)")
    protocols = ev.protocol_picker("pg", "pointing", ["pointing", "discriminativeness"])
    config = {"methods": methods, "rules": rules, "protocols": protocols, **ev.plugin_options("pg", protocols),
              "tolerance": "scaled" if scaled else float(tol), "use_masks": bool(use_masks), "center": bool(center),
              "geometry": geometry, "limit": int(limit) or None, "batch_size": int(batch)}
    if lm is not None and not methods:
        st.info("Choose at least one method.")
ev.run_controls(KIND, lm, source, config, ready=bool(config and config["methods"] and config["protocols"]))
