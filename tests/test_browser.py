"""The dashboard in a real browser: a ``streamlit run app.py`` server and Debian's chromium driven
by Playwright (never ``playwright install``). Screenshots go to ``artifacts/screenshots/``; with
``CLRP_UPDATE_DOC_SCREENSHOTS=1`` they are also copied (1200 px wide) to ``docs/screenshots/``.

The server runs with ``CLRP_DEV_RANDOM_MODELS=1`` so the pages work even before the bundled
model's weights exist; the bundled model is the default whenever it is present.
"""
from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CLRP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "artifacts" / "screenshots"
DOC_SHOTS = ROOT / "docs" / "screenshots"
PAGES = {"home": "", "explain": "Explain", "class_contrast": "Class_contrast", "neuron_contrast": "Neuron_contrast",
         "pointing_game": "Pointing_Game", "ablation": "Ablation"}
T = 90_000  # ms

try:
    from playwright.sync_api import expect, sync_playwright
    expect.set_options(timeout=T)
except ImportError:  # pragma: no cover
    expect = sync_playwright = None


def _missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} not found (apt-get install chromium)"
    if sync_playwright is None:
        return "the playwright Python package is not installed"
    return None


def _require_browser():
    """Each browser test says it was skipped, and why; under CI (``$CI`` set) they must run."""
    why = _missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests are required when CI is set: {why}")
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path, env_extra: dict | None = None, port: int | None = None):
    """Start ``streamlit run app.py`` on 127.0.0.1; returns (process, base url, log path)."""
    port = port or _free_port()
    env = dict(os.environ, CLRP_DEV_RANDOM_MODELS="1", CLRP_RUNS_DIR=str(tmp / "runs"),
               CLRP_CACHE_DIR=str(tmp / "cache"), PYTHONUNBUFFERED="1", **(env_extra or {}))
    log = tmp / f"streamlit-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc, url, log
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError("streamlit did not become healthy in 60 s")


def stop_server(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require_browser()
    tmp = tmp_path_factory.mktemp("dashboard")
    proc, url, log = start_server(tmp)
    try:
        yield url
    finally:
        stop_server(proc)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def new_page(browser, **kw):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True, **kw)
    page = ctx.new_page()
    page.set_default_timeout(T)
    return ctx, page


_CUT_JS = """() => {
  const cut = [];
  const main = document.querySelector('[data-testid="stMain"]');
  for (const el of main.querySelectorAll('*')) {  // text shortened with an ellipsis
    if (el.offsetParent !== null && el.scrollWidth > el.clientWidth + 1
        && getComputedStyle(el).textOverflow === 'ellipsis') cut.push(el.textContent);
  }
  for (const box of main.querySelectorAll('[data-baseweb="select"]')) {  // chips scrolled out of their box
    const outer = box.getBoundingClientRect();
    for (const tag of box.querySelectorAll('[data-baseweb="tag"]')) {
      const r = tag.getBoundingClientRect();
      if (r.left < outer.left - 1 || r.right > outer.right + 1) cut.push('chip ' + tag.textContent);
    }
  }
  return cut;
}"""


def nothing_cut(page):
    """Issue 11 item 10: no widget label or multiselect chip is cut off at the default width."""
    assert page.evaluate(_CUT_JS) == []


def shoot(page, name: str):
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.wait_for_timeout(800)  # let plotly charts finish drawing
    # Streamlit scrolls inside its main container: grow the viewport to the content for a full shot
    h = page.evaluate("() => Math.max(...['stMain', 'stAppViewContainer', 'stMainBlockContainer']"
                      ".map(t => document.querySelector(`[data-testid=\"${t}\"]`))"
                      ".filter(Boolean).map(e => e.scrollHeight), document.body.scrollHeight)")
    old = page.viewport_size
    page.set_viewport_size({"width": old["width"], "height": int(min(max(h, old["height"]), 4000))})
    page.wait_for_timeout(600)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(old)
    if os.environ.get("CLRP_UPDATE_DOC_SCREENSHOTS") == "1":
        from PIL import Image

        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        im = Image.open(path).convert("RGB")
        if im.width > 1200:
            im = im.resize((1200, round(im.height * 1200 / im.width)), Image.Resampling.LANCZOS)
        im = im.crop((0, 0, im.width, min(im.height, 1600)))
        im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(DOC_SHOTS / f"{name}.png", optimize=True)


def wait_app_idle(page):
    """Wait until Streamlit has finished running the script (no 'running' indicator)."""
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')")


def plotly_charts(page):
    """Plotly charts (the evaluation pages' charts)."""
    return page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot')


def map_grid(page):
    """The map grids (dashboard/static/map_grid.js; Playwright's CSS locators pierce their shadow root)."""
    return page.locator(".clrp-map-grid")


_GRIDS_JS = ("() => { const g = []; for (const e of document.querySelectorAll('*')) { const r = e.shadowRoot "
             "&& e.shadowRoot.querySelector('.clrp-map-grid'); if (r) g.push(r); } return g; }")
_COUNT_JS = (f"() => ({_GRIDS_JS})().filter(g => g.dataset.draws !== '0')"
             ".map(g => Number(g.dataset.maps)).reduce((a, b) => a + b, 0)")


def expect_heatmaps(page, n):
    """Wait until the page's map grids have drawn exactly ``n`` maps."""
    page.wait_for_function(f"(n) => ({_COUNT_JS})() === n", arg=n)


def no_exception(page):
    assert page.locator('[data-testid="stException"]').count() == 0


def goto(page, url, name):
    page.goto(f"{url}/{PAGES[name]}")
    page.wait_for_selector('[data-testid="stMain"] h1')
    wait_app_idle(page)


def nav(page, label):
    """Go to another page through the sidebar: the same Streamlit session (a URL load starts a new one)."""
    page.locator('[data-testid="stSidebar"] a', has_text=label).first.click()
    expect(page.locator('[data-testid="stMain"] h1').first).to_be_visible()
    wait_app_idle(page)


def png_file(path: Path, color=(30, 160, 40)) -> Path:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (160, 120), color)
    ImageDraw.Draw(im).ellipse((40, 20, 120, 100), fill=(240, 200, 20))
    im.save(path)
    return path


# ---------------------------------------------------------------------------------------------

def test_pages_render_and_upload(server, browser, tmp_path):
    ctx, page = new_page(browser)
    try:
        goto(page, server, "home")
        expect(page.locator('[data-testid="stImage"] img')).to_have_count(1)  # the input
        expect_heatmaps(page, 4)  # LRP and CLRP2 for the two top classes
        no_exception(page)
        links = page.locator('[data-testid="stSidebar"] a')
        expect(links.first).to_have_text(re.compile("Home"))
        expect(page.locator('[data-testid="stSidebar"] a', has_text=re.compile(r"^app$"))).to_have_count(0)
        shoot(page, "home")
        nothing_cut(page)

        goto(page, server, "explain")
        expect(map_grid(page)).to_be_visible()
        page.get_by_text("Upload", exact=True).click()
        page.locator('[data-testid="stFileUploader"] input[type=file]').set_input_files(
            str(png_file(tmp_path / "disc.png")))
        expect(page.get_by_text(re.compile(r"disc\.png → model input"))).to_be_visible()
        wait_app_idle(page)
        expect_heatmaps(page, 6)
        no_exception(page)
        shoot(page, "explain")
        nothing_cut(page)

        # a file that is not an image: a readable error, no traceback
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"definitely not a PNG")
        page.locator('[data-testid="stFileUploader"] input[type=file]').set_input_files(str(bad))
        expect(page.locator('[data-testid="stAlertContentError"]').first).to_contain_text("not an image")
        no_exception(page)

        for name, n in (("class_contrast", 6), ("neuron_contrast", 11)):
            goto(page, server, name)
            # the bad upload is still the current image on these pages: go back to a scene
            if page.locator('[data-testid="stAlertContentError"]').count():
                page.get_by_text("Bundled scene", exact=True).click()
                wait_app_idle(page)
            expect_heatmaps(page, n)
            no_exception(page)
            shoot(page, name)
            nothing_cut(page)
    finally:
        ctx.close()


def _download(page, name: str) -> bytes:
    with page.expect_download() as dl:
        page.get_by_role("button", name=name).click()
    return Path(dl.value.path()).read_bytes()


def _server_display(page, want: dict, tries: int = 60) -> dict:
    """The display settings the server holds (its settings download), once they equal ``want``:
    the browser sends them after drawing, and the server reruns the maps' fragment."""
    from playwright.sync_api import Error

    got = None
    for _ in range(tries):
        wait_app_idle(page)
        try:
            got = json.loads(_download(page, "Settings (JSON)"))["display"]
        except Error as e:  # a rerun replaced the button's file while it was fetched: ask again
            if "canceled" not in str(e):
                raise
            continue
        if all(got.get(k) == v for k, v in want.items()):
            return got
    raise AssertionError(f"the server never got {want}; last {got}")


def test_display_changes_are_drawn_in_the_browser_and_reach_the_downloads(server, browser):
    """Issue 11: colormap, opacity and scale redraw the maps in the browser (no round trip), the
    server learns the choice (downloads use it), and the browser's pixels equal the server's PNGs."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    ctx, page = new_page(browser)
    try:
        goto(page, server, "explain")
        expect_heatmaps(page, 6)
        grid = map_grid(page)
        grid.locator("select").select_option("hot")
        expect(grid).to_have_attribute("data-cmap", "hot")
        grid.locator("input[aria-label='Overlay opacity']").fill("0.4")
        expect(grid).to_have_attribute("data-opacity", "0.4")
        _server_display(page, {"cmap": "hot", "opacity": 0.4})
        # the browser's first map, pixel for pixel, against the server's overlay PNG of the same settings
        canvas = grid.locator("canvas[role=img]").first
        w, h, rgba = canvas.evaluate("c => [c.width, c.height, Array.from(c.getContext('2d')"
                                     ".getImageData(0, 0, c.width, c.height).data)]")
        drawn = np.array(rgba, dtype=int).reshape(h, w, 4)[..., :3]
        # two downloads back to back: the first must not rerun the page under the second (CI stop 14)
        _download(page, "Settings (JSON)")
        with zipfile.ZipFile(io.BytesIO(_download(page, "Maps (PNG + .npy, zip)"))) as zf:
            first = next(n for n in zf.namelist() if n.endswith(".png") and not n.endswith("_heatmap.png")
                         and n != "image.png")
            ref = np.asarray(Image.open(io.BytesIO(zf.read(first))).convert("RGB"), dtype=int)
        assert first.startswith("LRP") and ref.shape == drawn.shape
        assert np.abs(ref - drawn).max() <= 1
        # per-map scale: each title gives its own limit
        grid.get_by_text("per map", exact=True).click()
        expect(grid).to_have_attribute("data-scale", "per_map")
        expect(grid.locator("figcaption").first).to_contain_text("(±")
        _server_display(page, {"scale": "per_map"})
        no_exception(page)
    finally:
        ctx.close()


def _run_pointing(page, url, n=4, methods_text=None):
    goto(page, url, "pointing_game")
    box = page.get_by_role("spinbutton", name="Number of scenes")
    box.fill(str(n))
    box.press("Enter")
    wait_app_idle(page)
    page.get_by_role("button", name=re.compile("Run")).click()
    expect(page.get_by_text(re.compile(rf"done — {n}/{n} images"))).to_be_visible(timeout=180_000)
    wait_app_idle(page)
    expect(page.get_by_role("button", name="pointing rows (CSV)")).to_be_visible()
    with page.expect_download() as dl:
        page.get_by_role("button", name="pointing rows (CSV)").click()
    return Path(dl.value.path()).read_text()


def _check_csv(text, n):
    import pandas as pd

    df = pd.read_csv(io.StringIO(text))
    assert {"image_id", "class_name", "method", "hit"} <= set(df.columns)
    assert df["image_id"].nunique() == n
    assert {"lrp", "clrp1", "clrp2", "center"} <= set(df["method"])
    assert df["hit"].isin([True, False, 0, 1]).all()
    return df


def test_pointing_game_to_completion_and_csv(server, browser):
    ctx, page = new_page(browser)
    try:
        text = _run_pointing(page, server, 4)
        _check_csv(text, 4)
        expect(plotly_charts(page).first).to_be_visible()  # accuracy bars
        no_exception(page)
        shoot(page, "pointing_game")
        nothing_cut(page)

        nav(page, "Ablation")
        expect(page.locator('[data-testid="stMain"] h1').first).to_have_text(re.compile("Ablation"))
        box = page.get_by_role("spinbutton", name="Number of scenes")
        box.fill("2")
        box.press("Enter")
        steps = page.get_by_role("spinbutton", name="Steps")
        steps.fill("5")
        steps.press("Enter")
        wait_app_idle(page)
        page.get_by_role("button", name=re.compile("Run")).click()
        expect(page.get_by_text(re.compile(r"done — 2/2 images"))).to_be_visible(timeout=180_000)
        wait_app_idle(page)
        expect(page.get_by_role("button", name="perturbation rows (CSV)")).to_be_visible()
        no_exception(page)
        shoot(page, "ablation")
        nothing_cut(page)

        # back to the Pointing Game through the sidebar (same session): the finished run is still there
        nav(page, "Pointing Game")
        expect(page.get_by_text(re.compile(r"done — 4/4 images"))).to_be_visible()
        wait_app_idle(page)
        # a long run, cancelled: what finished is kept
        box = page.get_by_role("spinbutton", name="Number of scenes")
        box.fill("300")
        box.press("Enter")
        wait_app_idle(page)
        page.get_by_role("button", name=re.compile("Run")).click()
        expect(page.get_by_text(re.compile(r"running — [1-9]\d*/300"))).to_be_visible()
        page.get_by_role("button", name=re.compile("Cancel")).click()
        expect(page.get_by_text(re.compile(r"cancelled after [1-9]\d* images"))).to_be_visible()
        expect(page.get_by_text("Your earlier runs")).to_be_visible()  # runs belong to the user (issue 16)
        no_exception(page)
    finally:
        ctx.close()


def test_two_sessions_at_once_give_identical_results(server, browser):
    """Two browser contexts (two users) run the same Pointing Game at the same time on the shared
    cached model; both finish and their CSVs are identical."""
    out, errors = {}, []
    ctxs = [new_page(browser) for _ in range(2)]
    try:
        # Playwright's sync API is not thread-safe: drive both pages from this thread, interleaved.
        for ctx, page in ctxs:
            goto(page, server, "pointing_game")
            box = page.get_by_role("spinbutton", name="Number of scenes")
            box.fill("6")
            box.press("Enter")
            wait_app_idle(page)
        for ctx, page in ctxs:
            page.get_by_role("button", name=re.compile("Run")).click()
        for i, (ctx, page) in enumerate(ctxs):
            expect(page.get_by_text(re.compile(r"done — 6/6 images"))).to_be_visible(timeout=240_000)
            wait_app_idle(page)
            with page.expect_download() as dl:
                page.get_by_role("button", name="pointing rows (CSV)").click()
            out[i] = Path(dl.value.path()).read_text()
            no_exception(page)
    finally:
        for ctx, _ in ctxs:
            ctx.close()
    assert not errors
    _check_csv(out[0], 6)
    assert out[0] == out[1]


@pytest.fixture(scope="module")
def resnet_server(tmp_path_factory):
    """A server whose lab TOML lists a torchvision resnet50 with random weights (96 px inputs)."""
    _require_browser()
    import torch
    import torchvision

    tmp = tmp_path_factory.mktemp("resnet-dashboard")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(num_classes=5).state_dict(), tmp / "resnet50.pt")
    (tmp / "classes.txt").write_text("cat\ndog\nbird\nfish\nhorse\n")
    (tmp / "lab.toml").write_text(
        '[[models]]\nname = "lab-resnet50"\narchitecture = "resnet50"\nweights = "resnet50.pt"\n'
        'class_names = "classes.txt"\ninput_size = 96\nresize = 110\n')
    proc, url, log = start_server(tmp, {"CLRP_MODELS_CONFIG": str(tmp / "lab.toml"), "CLRP_OFFLINE": "1"})
    try:
        yield url
    finally:
        stop_server(proc)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]


def test_upload_explained_by_a_resnet50_lab_model(resnet_server, browser, tmp_path):
    ctx, page = new_page(browser)
    try:
        goto(page, resnet_server, "explain")
        expect(map_grid(page)).to_be_visible()  # the bundled model on the sample scene first
        picker = page.locator('[data-testid="stSidebar"]').get_by_role("combobox", name="Model")
        picker.click()
        page.get_by_role("option", name="lab-resnet50", exact=True).click()
        expect(picker).to_have_value("lab-resnet50")
        wait_app_idle(page)
        page.get_by_text("Upload", exact=True).click()
        page.locator('[data-testid="stFileUploader"] input[type=file]').set_input_files(
            str(png_file(tmp_path / "disc.png")))
        expect(page.get_by_text(re.compile(r"disc\.png → model input: .*96×96"))).to_be_visible()
        wait_app_idle(page)
        expect_heatmaps(page, 6)  # LRP, CLRP1, CLRP2, SGLRP, gradient, Grad-CAM on the residual graph
        expect(picker).to_have_value("lab-resnet50")
        no_exception(page)
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    finally:
        ctx.close()
