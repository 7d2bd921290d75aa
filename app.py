"""clrp dashboard — home page. Run: ``streamlit run app.py``.

Streamlit runs this file as ``__main__`` for every visitor (the page below). ``streamlit run``
also imports it once to serve it: as a module it is the server (``st.App``), whose start-up
hook warms the model and the first explanation (:mod:`dashboard.warmup`), so even the first
visitor after a restart gets the first heatmap from the cache."""
import streamlit as st


def home() -> None:
    from clrp import viz
    from clrp.scenes import presets
    from dashboard import core, ui

    ui.page("Home", ":material/home:")
    st.title("clrp — why did the network decide this, and not that?")
    st.markdown(
        "Explain a PyTorch CNN's decision for one class with **LRP** and **Contrastive LRP** (CLRP1, CLRP2, SGLRP) "
        "and compare them with gradient baselines.  \n"
        "Contrast two classes of one image, or two neurons of one layer, to see what is *specific* to each.  \n"
        "Measure explanations on whole datasets with the **Pointing Game** and **ablation** (region perturbation, "
        "hidden-unit ablation)."
    )

    lm = ui.model_picker()

    if lm is not None:
        with ui.guard("the first explanation"):
            key = st.session_state[ui.MODEL_STATE]
            seed = presets.SAMPLE_SEED
            image, top, items = ui.first_explanation(key)
            info = core.scene_info(seed) if lm.architecture == "scene_vgg" else None
            st.subheader("A first explanation")
            truth = f" Objects in the scene: {ui.md(', '.join(info['classes']))}." if info else ""
            st.caption(f"Bundled sample scene (seed {seed}).{truth} Model: **{ui.md(lm.name)}**. "
                       f"Top prediction: **{ui.md(top[0][1])}** ({top[0][2]:.2f}). LRP and CLRP2 for the top two classes: "
                       "where does each class's evidence lie, and what is specific to it? (The *Class contrast* page "
                       "measures how much the classes' maps agree.)")
            st.caption("More methods, your own images and downloads: the *Explain* page.")
            cols = st.columns([1, 4])
            with cols[0]:
                st.image(viz.to_png(image, scale=max(1, 200 // image.shape[1])), caption="input", width="stretch")
                for idx, name, score in top:
                    st.progress(min(1.0, max(0.0, score)), text=f"{ui.md(name)}: {score:.2f}")
            with cols[1]:
                ui.map_view(items, image, key="home", settings={}, columns=4, downloads=False)

    with st.expander("Models on this server"):
        st.dataframe(ui.model_table(), hide_index=True, width="stretch")
        st.caption("torchvision (and timm) models use the ImageNet weights in the server's torch hub (Hugging Face) "
                   "cache and download missing ones there on first use, unless the server runs offline "
                   "(CLRP_OFFLINE=1); lab models come from the TOML file named by $CLRP_MODELS_CONFIG. "
                   "See docs/dashboard.md.")

    st.divider()
    st.markdown("**Pages**")
    for p in ui.PAGES[1:]:
        st.page_link(p.path, label=f"**{p.title}** — {p.description}", icon=p.icon)


if __name__ == "__main__":
    home()
else:  # imported by `streamlit run app.py`: serve this file, warming the caches at start
    from dashboard.warmup import lifespan

    app = st.App(__file__, lifespan=lifespan)
