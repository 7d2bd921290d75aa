"""Issue 16: the dashboard as a shared lab server -- identity, the page gate, sessions bound to
their user, the open-server warning, the model download allow-list, server paths shown only to
admins, and dataset text that cannot inject Markdown.

Identity comes from the trusted-header path (``[server.identity] mode = "proxy"``): AppTest cannot
send headers, so ``dashboard.identity.request_headers`` is replaced by what a proxy would send
(the browser test at the end runs the real server behind a small header-injecting proxy).
"""
from __future__ import annotations

import html
import json
import re
import socket
import threading
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from markdown_it import MarkdownIt  # noqa: E402
from streamlit import config as st_config  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from clrp.errors import DatasetError  # noqa: E402
from clrp.models import bundled  # noqa: E402
from dashboard import core, identity, ui  # noqa: E402
from dashboard.safetext import md, redact, safe_filename  # noqa: E402
from tests.test_app import MODEL, ROOT, TIMEOUT, _env, plain, png_bytes  # noqa: E402,F401 (_env: autouse)

PAGES = ["app.py", "pages/1_Explain.py", "pages/2_Class_contrast.py", "pages/3_Neuron_contrast.py",
         "pages/4_Pointing_Game.py", "pages/5_Ablation.py"]
HEADER = "X-Forwarded-Email"

#: Markdown injection payloads (the audit's: a remote image fetched by the viewer's browser, a fake
#: "log in again" link; plus raw HTML, a bare autolink, an emoji/icon shortcode and a heading).
PAYLOADS = ["![x](http://127.0.0.1:9/p.png)", "[session expired](http://evil.example/login)",
            "<img src=http://127.0.0.1:9/q.png>", "see http://evil.example", "# big :material/lock:"]


# ---------------------------------------------------------------------------------------------
# Helpers

def lab_toml(tmp_path: Path, monkeypatch, server: str, models: str = "") -> Path:
    p = tmp_path / "lab.toml"
    p.write_text(models + "\n" + server)
    monkeypatch.setenv("CLRP_MODELS_CONFIG", str(p))
    return p


PROXY = """
[server.identity]
mode = "proxy"
proxy_header = "X-Forwarded-Email"
allowed_users = ["alice@lab.org", "carol@lab.org"]
admins = ["bob@lab.org"]
"""


class Browser:
    """What the proxy sends with this browser's requests (mutable: the same session, another user)."""

    def __init__(self, monkeypatch, user: str | None = None):
        self.user = user
        monkeypatch.setattr(identity, "request_headers", lambda: {HEADER: self.user} if self.user else {})


def page(path: str, model: str = MODEL) -> AppTest:
    at = AppTest.from_file(str(ROOT / path), default_timeout=TIMEOUT)
    at.session_state["clrp_model_key"] = model
    return at


def sidebar_user(at) -> list[str]:
    return [c.value for c in at.sidebar.caption if "Signed in" in c.value or "sign\\-in" in c.value]


def refused_only(at, words: str) -> None:
    """A refusal and nothing else: no title, no navigation, no widget."""
    assert not at.exception
    assert len(at.error) == 1 and words in plain(at.error[0].value), [e.value for e in at.error]
    assert not at.title and not at.sidebar.get("page_link") and not at.selectbox and not at.get("bidi_component")


def rendered(value: str) -> str:
    """The HTML a CommonMark renderer makes of an element's Markdown (an independent reference)."""
    return MarkdownIt("commonmark").render(value)


def inert(value: str, payload: str) -> None:
    """The payload is shown as its own characters: no link, no image, no raw HTML, no heading."""
    out = rendered(value)
    assert "<a " not in out and "<img" not in out and "<h1" not in out, out
    assert html.escape(payload, quote=False) in out.replace("&quot;", '"'), out


def every_markdown_value(at) -> list[str]:
    vals = []
    for kind in ("error", "warning", "info", "success", "caption", "markdown", "subheader", "title"):
        vals += [e.value for e in at.get(kind)]
    vals += [p.proto.text for p in at.get("progress")]
    vals += [i.proto.caption for i in at.get("imgs")] if at.get("imgs") else []
    return vals


# ---------------------------------------------------------------------------------------------
# The gate

@pytest.mark.parametrize("path", PAGES)
def test_unauthenticated_request_is_refused_on_every_page(tmp_path, monkeypatch, path):
    lab_toml(tmp_path, monkeypatch, PROXY)
    Browser(monkeypatch, None)
    at = page(path).run()
    refused_only(at, "Sign-in required")


def test_allow_list_and_admin_flag(tmp_path, monkeypatch):
    lab_toml(tmp_path, monkeypatch, PROXY)
    b = Browser(monkeypatch, "mallory@lab.org")
    at = page("pages/4_Pointing_Game.py").run()
    refused_only(at, "not on this server's list of users")
    assert "allowed_users, 2 users" in plain(at.error[0].value)

    b.user = "Alice@Lab.org"  # e-mail case does not matter
    at = page("pages/4_Pointing_Game.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.title and sidebar_user(at) == ["Signed in as **" + md("Alice@Lab.org") + "**"]
    assert identity.current_user  # noqa: B018 (the contract the job service uses)
    assert at.session_state["_clrp_owner"]["user"] == identity.User("proxy:alice@lab.org", "Alice@Lab.org", False,
                                                                     "proxy")

    b.user = "bob@lab.org"  # an admin needs no entry in allowed_users
    at = page("pages/4_Pointing_Game.py").run()
    assert not at.error and sidebar_user(at) == ["Signed in as **" + md("bob@lab.org") + "** · admin"]
    assert at.session_state["_clrp_owner"]["user"].is_admin


def test_a_session_stays_bound_to_the_user_who_started_it(tmp_path, monkeypatch):
    """Session takeover: a later script run of the same session that presents another user (a
    second browser that reconnected with the session's id) finds the session cleared and refused."""
    lab_toml(tmp_path, monkeypatch, PROXY)
    b = Browser(monkeypatch, "alice@lab.org")
    at = page("pages/1_Explain.py").run()
    assert not at.error and at.session_state["clrp_image"]["name"]
    at.session_state["alice_secret"] = "run 42"
    b.user = "carol@lab.org"
    at.run()
    refused_only(at, "started by another user")
    assert "alice_secret" not in at.session_state and "clrp_image" not in at.session_state
    b.user = None  # and a request without the header is refused too, not served alice's session
    at.run()
    refused_only(at, "Sign-in required")


def test_invalid_server_settings_refuse_every_page(tmp_path, monkeypatch):
    lab_toml(tmp_path, monkeypatch, '[server.identity]\nmode = "proxy"\nallowed = ["alice"]\n')
    Browser(monkeypatch, "alice@lab.org")
    at = page("app.py").run()
    refused_only(at, "settings are invalid")


def test_oidc_login_through_st_user(tmp_path, monkeypatch):
    lab_toml(tmp_path, monkeypatch, '[server.identity]\nmode = "oidc"\nadmins = ["alice@lab.org"]\n')
    at = page("pages/4_Pointing_Game.py")
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception and "log in" in plain(at.error[0].value) and [b.label for b in at.button] == ["Log in"]
    assert not at.title
    at = page("pages/4_Pointing_Game.py")
    at.user = {"is_logged_in": True, "email": "alice@lab.org"}
    at.run()
    assert not at.error and sidebar_user(at) == ["Signed in as **" + md("alice@lab.org") + "** · admin"]
    assert at.session_state["_clrp_owner"]["user"].id == "oidc:alice@lab.org"


def test_anonymous_owner_is_a_per_browser_cookie_token(monkeypatch):
    """Without identity: each browser gets a random owner token (never the session id), handed to
    the browser as a cookie; a reload that sends the cookie back is the same owner."""
    at1 = page("pages/4_Pointing_Game.py").run()
    at2 = page("pages/4_Pointing_Game.py").run()
    u1, u2 = (a.session_state["_clrp_owner"]["user"] for a in (at1, at2))
    assert u1.kind == "anonymous" and u1.id.startswith("anon:") and u1.id != u2.id
    cookie = [json.loads(c.proto.json) for c in at1.get("bidi_component")
              if c.proto.component_name == "clrp_owner_cookie"]
    token = u1.id.split(":", 1)[1]
    assert cookie == [{"name": identity.ANON_COOKIE, "value": token}]
    monkeypatch.setattr(identity, "request_cookies", lambda: {identity.ANON_COOKIE: token})
    reload = page("pages/4_Pointing_Game.py").run()
    assert reload.session_state["_clrp_owner"]["user"].id == u1.id
    assert not [c for c in reload.get("bidi_component") if c.proto.component_name == "clrp_owner_cookie"]


@pytest.fixture
def bound_to(request):
    """The server's bind address for one test (restored after)."""
    old = st_config.get_option("server.address")

    def set_address(addr):
        st_config.set_option("server.address", addr)

    yield set_address
    st_config.set_option("server.address", old)


@pytest.mark.parametrize("path", PAGES)
def test_non_loopback_without_identity_warns_on_every_page(bound_to, path):
    bound_to("0.0.0.0")
    at = page(path).run()
    warn = [plain(w.value) for w in at.warning if "without sign-in" in plain(w.value)]
    assert len(warn) == 1 and "0.0.0.0" in warn[0]
    assert not at.session_state["_clrp_owner"]["user"].is_admin  # nobody is the admin of an open server


def test_loopback_has_no_warning_and_the_local_user_is_admin(bound_to):
    for addr in ("127.0.0.1", "localhost", "::1"):
        bound_to(addr)
        at = page("pages/4_Pointing_Game.py").run()
        assert not [w for w in at.warning if "sign-in" in plain(w.value)]
        assert at.session_state["_clrp_owner"]["user"].is_admin
    bound_to("")  # unset: every interface
    assert identity.open_server_warning() and "every network interface" in identity.open_server_warning()


def test_proxy_mode_on_a_public_address_warns_that_the_header_can_be_forged(tmp_path, monkeypatch, bound_to):
    lab_toml(tmp_path, monkeypatch, PROXY)
    Browser(monkeypatch, "alice@lab.org")
    bound_to("0.0.0.0")
    at = page("app.py").run()
    assert any("claim to be any user" in plain(w.value) for w in at.warning)


# ---------------------------------------------------------------------------------------------
# Models: who may download what

def test_visitors_download_only_allow_listed_models(tmp_path, monkeypatch):
    monkeypatch.delenv("CLRP_OFFLINE")  # downloads allowed on this server; nothing is fetched here
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    lab_toml(tmp_path, monkeypatch, PROXY)
    b = Browser(monkeypatch, "alice@lab.org")
    at = page("pages/1_Explain.py").run()
    opts = at.selectbox(key="_model_picker").options
    assert not any("on first use" in o for o in opts), opts
    notes = [plain(c.value) for c in at.sidebar.caption if "allow" in c.value]
    assert len(notes) == 1 and "[server.models] downloadable = []" in notes[0], notes  # the limit and its value

    # a forged session value does not load a model that is not offered
    at.session_state["clrp_model_key"] = "resnet50"
    at.run()
    assert at.selectbox(key="_model_picker").value == MODEL and not at.error

    lab_toml(tmp_path, monkeypatch, PROXY + '\n[server.models]\ndownloadable = ["resnet18"]\n')
    at = page("pages/1_Explain.py").run()
    opts = at.selectbox(key="_model_picker").options
    assert [o for o in opts if "on first use" in o] == [next(o for o in opts if o.startswith("resnet18 "))]

    b.user = "bob@lab.org"  # an admin may download any
    at = page("pages/1_Explain.py").run()
    assert sum("on first use" in o for o in at.selectbox(key="_model_picker").options) > 20


def test_models_kept_in_memory_come_from_the_settings(tmp_path, monkeypatch):
    from dashboard.settings import read_server_settings

    p = tmp_path / "lab.toml"
    p.write_text("[server.models]\nmax_in_memory = 2\n")
    assert read_server_settings(p).models.max_in_memory == 2
    p.write_text("[server.models]\nmax_in_memory = 0\n")
    with pytest.raises(Exception, match="max_in_memory"):
        read_server_settings(p)
    # the shared model cache is bounded by the setting the server started with
    assert ui.get_model._info.max_entries == ui._models_in_memory() == 4


# ---------------------------------------------------------------------------------------------
# Server paths and URLs: admins only

def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_weights_error_names_mirror_and_paths_only_to_admins(tmp_path, monkeypatch):
    from clrp.models import download

    download.forget_failures()
    port = _refused_port()
    monkeypatch.delenv("CLRP_OFFLINE")
    monkeypatch.setenv("CLRP_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}/mirror/")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    lab_toml(tmp_path, monkeypatch, PROXY + '\n[server.models]\ndownloadable = ["squeezenet1_1"]\n')
    b = Browser(monkeypatch, "alice@lab.org")
    try:
        shown = {}
        for user in ("alice@lab.org", "bob@lab.org"):
            b.user = user
            download.forget_failures()
            ui.cached_model_choices.clear()
            at = page("pages/1_Explain.py").run()
            at.selectbox(key="_model_picker").set_value("squeezenet1_1").run()
            assert not at.exception and at.error
            shown[user] = plain(at.error[0].value)
        assert f"127.0.0.1:{port}" in shown["bob@lab.org"]  # the admin sees the mirror
        assert "127.0.0.1" not in shown["alice@lab.org"] and "squeezenet1_1" in shown["alice@lab.org"]
        assert str(tmp_path) not in shown["alice@lab.org"] and "<URL>" in shown["alice@lab.org"]
    finally:
        download.forget_failures()


def test_lab_model_errors_hide_server_paths_from_visitors(tmp_path, monkeypatch):
    missing = tmp_path / "secret-lab" / "weights.pt"
    models = (f'[[models]]\nname = "lab-net"\narchitecture = "resnet18"\nweights = "{missing}"\n'
              f'class_names = "{tmp_path / "secret-lab" / "classes.txt"}"\n')
    lab_toml(tmp_path, monkeypatch, PROXY, models)
    b = Browser(monkeypatch, "alice@lab.org")
    seen = {}
    for user in ("alice@lab.org", "bob@lab.org"):
        b.user = user
        ui.cached_model_choices.clear()
        at = page("pages/1_Explain.py").run()
        seen[user] = " ".join(plain(c.value) for c in at.sidebar.caption if "lab-net" in plain(c.value))
    assert "secret-lab" in seen["bob@lab.org"]
    assert "lab-net" in seen["alice@lab.org"] and "secret-lab" not in seen["alice@lab.org"]


def _voc_root(tmp_path):
    from clrp.scenes import easy, export

    root = tmp_path / "datasets"
    export.export_voc(easy.iter_scenes(2, 7), root / "voc2")
    return root


def test_server_folder_picker_shows_roots_only_to_admins_and_answers_once(tmp_path, monkeypatch):
    root = _voc_root(tmp_path)
    monkeypatch.setenv(core.ROOTS_ENV, str(root))
    lab_toml(tmp_path, monkeypatch, PROXY)
    b = Browser(monkeypatch, "alice@lab.org")
    at = page("pages/4_Pointing_Game.py").run()
    at.radio(key="pointing_src").set_value("Folder on the server").run()
    pick = at.selectbox(key="pointing_server_pick")
    assert "datasets/voc2" in pick.options and not any(str(tmp_path) in o for o in pick.options)
    assert str(tmp_path) not in at.text_input(key="pointing_server_path").help
    # one answer for an existing and a missing path outside the roots (nothing tells them apart)
    answers = []
    for probe in ("/etc", "/etc-does-not-exist-4711"):
        at.text_input(key="pointing_server_path").input(probe).run()
        answers.append(plain(at.error[0].value))
    assert answers[0] == answers[1] and "no such file or folder in the folders this server allows" in answers[0]
    # the name the picker shows is a path the server takes back
    at.text_input(key="pointing_server_path").input("datasets/voc2").run()
    assert not at.error
    assert core.resolve_server_path("datasets/voc2", [root.resolve()]) == (root / "voc2").resolve()

    b.user = "bob@lab.org"
    at = page("pages/4_Pointing_Game.py").run()
    at.radio(key="pointing_src").set_value("Folder on the server").run()
    # the admin sees every root's full path in the help; the picker's entries are the same short form
    assert "datasets/voc2" in at.selectbox(key="pointing_server_pick").options
    assert str(root.resolve()) in plain(at.text_input(key="pointing_server_path").help)


def test_guard_redacts_unexpected_error_details_for_visitors(tmp_path, monkeypatch):
    lab_toml(tmp_path, monkeypatch, PROXY)
    b = Browser(monkeypatch, "alice@lab.org")
    script = (
        "from dashboard import ui\n"
        "ui.page('t')\n"
        "with ui.guard('reading'):\n"
        "    raise OSError('cannot open /srv/secret/data.bin via https://mirror.lab/x')\n")
    at = AppTest.from_string(script, default_timeout=TIMEOUT).run()
    assert "/srv/secret" not in at.code[0].value and "mirror.lab" not in at.code[0].value
    b.user = "bob@lab.org"
    at = AppTest.from_string(script, default_timeout=TIMEOUT).run()
    assert "/srv/secret/data.bin" in at.code[0].value


# ---------------------------------------------------------------------------------------------
# Markdown injection from dataset text

def test_md_escapes_payloads_to_their_own_characters():
    for p in PAYLOADS + ["a\n\n# b", "$x$", "**bold** _i_ `c`", "\\[x](y)"]:
        out = rendered(md(p))
        assert "<a " not in out and "<img" not in out and "<h1" not in out and "<em>" not in out, out
        text = re.sub(r"<[^>]+>", "", out).strip()
        assert html.unescape(text) == " ".join(p.split()) if "\n" in p else html.unescape(text) == p


@pytest.fixture
def payload_model(tmp_path):
    """A lab model (the bundled network) whose class names are injection payloads."""
    if not bundled.WEIGHTS_FILE.is_file():
        pytest.skip("needs the bundled model's weights")
    meta = json.loads(bundled.META_FILE.read_text())
    names = PAYLOADS + [f"class {i}" for i in range(len(meta["class_names"]) - len(PAYLOADS))]
    (tmp_path / "classes.json").write_text(json.dumps(names))
    arch = meta["architecture"]
    inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in arch.items() if k != "num_classes")
    return names, (f'[[models]]\nname = "payload-net"\narchitecture = "scene_vgg"\nweights = "{bundled.WEIGHTS_FILE}"\n'
                   f'class_names = "classes.json"\nmultilabel = true\narch_config = {{ {inline} }}\n'
                   f'input_size = {arch.get("input_size", 96)}\nresize = false\n')


@pytest.mark.slow
def test_class_names_and_file_names_come_out_inert(tmp_path, monkeypatch, payload_model):
    names, models = payload_model
    lab_toml(tmp_path, monkeypatch, PROXY, models)
    Browser(monkeypatch, "alice@lab.org")
    # home page: top classes in the caption and the score bars
    at = page("app.py", "payload-net").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    values = every_markdown_value(at)
    shown = [(v, p) for v in values for p in PAYLOADS if p in plain(v)]
    assert shown, values  # the top classes are shown (payloads among them)
    for v, p in shown:
        inert(v, p)
    # neuron page: the class name in the subheader; an uploaded file named like a link
    at = page("pages/3_Neuron_contrast.py", "payload-net").run()
    cls = names.index(PAYLOADS[1])
    at.selectbox(key="neuron_class").set_value(cls).run()
    sub = next(s.value for s in at.subheader if "channels" in s.value)
    inert(sub, PAYLOADS[1])
    at.radio(key="neuron_img_src").set_value("Upload").run()
    fname = "[session expired](http:evil.example).png"
    at.file_uploader(key="neuron_img_upload").set_value((fname, png_bytes((80, 60)), "image/png")).run()
    assert not at.exception
    note = next(v for v in every_markdown_value(at) if fname in plain(v))
    inert(note, fname)


def test_error_texts_with_payloads_are_inert(tmp_path, monkeypatch):
    """A dataset error naming a class or file (a ClrpError) goes through ui.guard."""
    lab_toml(tmp_path, monkeypatch, PROXY)
    Browser(monkeypatch, "alice@lab.org")
    script = ("from clrp.errors import DatasetError\nfrom dashboard import ui\nui.page('t')\n"
              f"with ui.guard('x'):\n    raise DatasetError({PAYLOADS[1]!r} + ' ' + {PAYLOADS[0]!r})\n")
    at = AppTest.from_string(script, default_timeout=TIMEOUT).run()
    inert(at.error[0].value, redact(PAYLOADS[1]))  # a visitor: inert, and the URLs hidden too
    inert(at.error[0].value, redact(PAYLOADS[0]))


def test_class_names_in_charts_are_not_plotly_markup(tmp_path, monkeypatch):
    """The Pointing Game's per-class heatmap labels its columns with the dataset's class names;
    Plotly reads <a href> and friends in labels."""
    lab_toml(tmp_path, monkeypatch, PROXY)
    Browser(monkeypatch, "alice@lab.org")
    bad = '<a href="http://evil.example/login">session expired</a>'
    script = ("import pandas as pd\nfrom clrp.evaluation.protocol import Chart\n"
              "from dashboard import evaluation as ev, ui\nui.page('t')\n"
              f"df = pd.DataFrame({{'class': [{bad!r}, 'cat'], 'method': ['lrp', 'lrp'], 'accuracy': [0.5, 1.0]}})\n"
              "ev.draw_chart(Chart('heatmap', 'Per-class accuracy', df, x='class', y='method', value='accuracy'), 'k')\n"
              "ev.draw_chart(Chart('bar', 'acc', df, x='class', y='accuracy', series='method'), 'b')\n")
    at = AppTest.from_string(script, default_timeout=TIMEOUT).run()
    assert not at.exception
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    xs = [x for f in figs for x in f["data"][0]["x"]]
    assert len(figs) == 2 and "cat" in xs and not any("<a" in x for x in xs)
    assert any(html.unescape(x) == bad for x in xs)  # shown as its own characters


def test_redact_and_safe_filename():
    t = "weights /root/.cache/torch/hub/x.pth from https://mirror.lab:8443/w/x.pth?t=1 (C:\\data\\y) ~/z; 3/4 and/or"
    r = redact(t)
    assert "/root" not in r and "mirror.lab" not in r and "C:" not in r and "~/z" not in r
    assert "3/4 and/or" in r and r.count("<server path>") == 3 and r.count("<URL>") == 1
    for bad in ("../../etc/passwd", "a b<script>.csv", "..", "\n.csv", "x" * 500 + ".csv", "évil\u202e.csv"):
        s = safe_filename(bad)
        assert re.fullmatch(r"[A-Za-z0-9._-]+", s) and not s.startswith(".") and "/" not in s and len(s) <= 120
    assert safe_filename("x" * 500 + ".csv").endswith(".csv") and safe_filename("run_1.csv") == "run_1.csv"


def test_one_answer_for_missing_and_outside_paths(tmp_path):
    root = tmp_path / "data"
    (root / "voc").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    msgs = []
    for p in (tmp_path / "other", tmp_path / "nope", root / "nope"):
        with pytest.raises(DatasetError) as e:
            core.resolve_server_path(str(p), [root.resolve()])
        msgs.append(str(e.value).replace(str(p), "P"))
        assert str(root) not in str(e.value).replace(str(p), "")  # the roots are not listed
    assert len(set(msgs)) == 1


# ---------------------------------------------------------------------------------------------
# The real server behind a reverse proxy that injects the user header (two browsers, two users)

class HeaderProxy:
    """A minimal reverse proxy on 127.0.0.1: removes any X-Forwarded-Email a client sends and sets
    it from the test's ``who`` cookie (what oauth2-proxy does after its own sign-in), one request
    per connection; websocket upgrades are piped through after the rewritten handshake."""

    def __init__(self, upstream_port: int):
        import asyncio

        self.upstream = upstream_port
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start():
            self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(start()),
                                                       self.loop.run_forever()), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    async def handle(self, reader, writer):
        import asyncio

        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = [ln for ln in head.decode("latin-1").split("\r\n")[1:] if ln]
        upgrade = any(ln.lower().startswith("upgrade:") for ln in lines)
        keep, user = [head.decode("latin-1").split("\r\n")[0]], None
        for line in lines:
            name, _, value = line.partition(":")
            low = name.strip().lower()
            if low == HEADER.lower():
                continue  # never trust the client's copy
            if low == "cookie":
                m = re.search(r"(?:^|;\s*)who=([A-Za-z0-9@._-]+)", value.strip())
                user = m.group(1) if m else None
            if low in ("connection", "keep-alive") and not upgrade:
                continue
            keep.append(line)
        if not upgrade:
            keep.append("Connection: close")
        if user:
            keep.append(f"{HEADER}: {user}")
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        uw.write(("\r\n".join(keep) + "\r\n\r\n").encode("latin-1"))

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                try:
                    dst.close()
                except Exception:
                    pass

        await asyncio.gather(pipe(reader, uw), pipe(ur, writer))

    def close(self):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


#: Records the page's websockets and the subprotocols they were opened with (Streamlit sends
#: ["streamlit", xsrf token, session id to resume]); with ``__clrpForceSession`` set, every socket
#: asks to resume that session instead (what a second browser that learnt the id can do).
SOCKET_HOOK = """
(() => {
  const Orig = window.WebSocket;
  window.__clrpSockets = []; window.__clrpProtocols = [];
  function Hooked(url, protocols) {
    let p = Array.isArray(protocols) ? [...protocols] : (protocols ? [protocols] : []);
    if (window.__clrpForceSession) { while (p.length < 2) p.push(""); p = [p[0], p[1], window.__clrpForceSession]; }
    window.__clrpProtocols.push(p);
    const ws = new Orig(url, p);
    window.__clrpSockets.push(ws);
    return ws;
  }
  Hooked.prototype = Orig.prototype;
  Object.assign(Hooked, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
  window.WebSocket = Hooked;
})();
"""


@pytest.mark.browser
@pytest.mark.slow
def test_two_browsers_behind_a_header_proxy(tmp_path):
    """Two users in two browser contexts each see their own name; a request without the header is
    refused; a third user whose browser resumes the first user's session id is refused and
    does not see the first user's page."""
    from tests import test_browser as tb

    tb._require_browser()
    from playwright.sync_api import expect, sync_playwright

    lab = tmp_path / "lab.toml"
    lab.write_text(PROXY)
    proc, url, log = tb.start_server(tmp_path, {"CLRP_MODELS_CONFIG": str(lab)})
    proxy = HeaderProxy(int(url.rsplit(":", 1)[1]))
    base = f"http://127.0.0.1:{proxy.port}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=tb.CHROMIUM, args=tb.ARGS)
            try:
                pages = {}
                for who in ("alice@lab.org", "bob@lab.org", None):
                    ctx = browser.new_context(viewport={"width": 1300, "height": 900})
                    ctx.add_init_script(SOCKET_HOOK)
                    if who:
                        ctx.add_cookies([{"name": "who", "value": who, "url": base}])
                    pg = ctx.new_page()
                    pg.set_default_timeout(tb.T)
                    pg.goto(base + "/Pointing_Game")
                    pages[who] = pg
                side = lambda pg: pg.locator('[data-testid="stSidebar"]')  # noqa: E731
                expect(side(pages["alice@lab.org"])).to_contain_text("Signed in as alice@lab.org")
                expect(side(pages["bob@lab.org"])).to_contain_text("Signed in as bob@lab.org · admin")
                expect(pages["alice@lab.org"].get_by_role("heading", name="Pointing Game")).to_be_visible()
                assert "alice" not in side(pages["bob@lab.org"]).inner_text()
                assert "bob" not in side(pages["alice@lab.org"]).inner_text()
                anon = pages[None]
                expect(anon.get_by_text("Sign-in required")).to_be_visible()
                assert anon.get_by_role("heading", name="Pointing Game").count() == 0
                assert anon.locator('[data-testid="stSidebarNav"], [data-testid="stPageLink"]').count() == 0

                # session takeover: carol's browser reconnects with alice's session id (a browser
                # sends it in the websocket's subprotocols when it reconnects)
                alice = pages["alice@lab.org"]
                alice.evaluate("window.__clrpSockets.at(-1).close()")  # alice's browser reconnects...
                alice.wait_for_function("window.__clrpProtocols.some(p => p.length > 2 && p[2]) "
                                        "&& window.__clrpSockets.at(-1).readyState === 1")
                expect(side(alice)).to_contain_text("Signed in as alice@lab.org")
                sid = alice.evaluate("window.__clrpProtocols.find(p => p.length > 2 && p[2])[2]")
                ctx = browser.new_context(viewport={"width": 1300, "height": 900})
                ctx.add_cookies([{"name": "who", "value": "carol@lab.org", "url": base}])
                ctx.add_init_script(f"window.__clrpForceSession = {json.dumps(sid)};")
                ctx.add_init_script(SOCKET_HOOK)
                carol = ctx.new_page()
                carol.set_default_timeout(tb.T)
                carol.goto(base + "/Pointing_Game")
                carol.wait_for_function("window.__clrpProtocols.some(p => p[2])")  # it did send alice's id
                expect(carol.get_by_text("started by another user")).to_be_visible()
                assert "alice" not in carol.locator("body").inner_text()
            finally:
                browser.close()
    finally:
        proxy.close()
        tb.stop_server(proc)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
