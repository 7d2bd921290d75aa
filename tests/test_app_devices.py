"""The dashboard on each available device: the model is moved where the policy says
(``$CLRP_DEVICE`` here), explanations run there and the sidebar says which device it is."""
import pytest

pytest.importorskip("streamlit")
import streamlit as st  # noqa: E402

from clrp.devices import DEVICE_ENV  # noqa: E402

from .test_app import _env, app, heatmaps, no_errors  # noqa: E402,F401  (_env: the dashboard's test settings)


@pytest.fixture
def fresh_caches():
    """Models and maps cached by earlier tests were made on another device."""
    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()


def test_home_explains_on_each_device_and_names_it(device, monkeypatch, fresh_caches):
    monkeypatch.setenv(DEVICE_ENV, device.type)
    at = app("app.py").run()
    no_errors(at)
    assert heatmaps(at) == 4  # LRP and CLRP2 for the two top classes, computed on `device`
    runs_on = [c.value for c in at.caption if c.value.startswith("Runs on")]
    assert runs_on and runs_on[0].startswith(f"Runs on {device.type}"), runs_on  # read from the model itself
