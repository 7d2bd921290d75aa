"""Who is using the dashboard (contract shared by the pages, the job service and the stores).

Identity is the platform's, not the app's, set by ``[server.identity] mode`` in the lab TOML
(:mod:`dashboard.settings`):

- ``"oidc"``: Streamlit's ``st.login`` (OIDC, ``[auth]`` of ``.streamlit/secrets.toml``; needs Authlib);
  the user is ``st.user.email``.
- ``"proxy"``: a trusted reverse proxy (oauth2-proxy, Caddy/nginx with auth) puts the signed-in
  user in a header (``proxy_header``, default ``X-Forwarded-Email``). Only safe when the app is
  reachable through that proxy alone (bound to 127.0.0.1) and the proxy overwrites the header.
- ``"none"``: an anonymous random per-browser token kept in a cookie (never the Streamlit session
  id), so a reload keeps the same owner. On a loopback address the one user is the machine's own
  and is the admin; on any other address every page warns that the server is open.

``require_user()`` is the page gate (called by ``ui.page()``): it refuses users who are not signed
in or not on the allow-list, and keeps each Streamlit session bound to the user who started it.
A later script run of the same session that presents another identity (a second browser that
reconnected with the session's id, see docs/dashboard.md) has its session state cleared and is
refused. Every object a user makes (runs, uploads) is owned by ``User.id``.
"""
from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass
from typing import Optional

from .settings import IdentitySettings, server_settings

ANON_COOKIE = "clrp_owner"
_OWNER_STATE = "_clrp_owner"      # {"user": User, "client": id of the connection that presented it}
_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,64}")
_MAX_NAME = 256


@dataclass(frozen=True)
class User:
    id: str             # stable owner key: "oidc:<email>", "proxy:<user>" or "anon:<random token>"
    name: str           # what the page shows ("alice@lab.org", "anonymous")
    is_admin: bool = False
    kind: str = "anonymous"  # "oidc" | "proxy" | "anonymous"


class Refused(Exception):
    """Nobody acceptable is signed in; the message says why (shown instead of the page)."""


# ---------------------------------------------------------------------------------------------
# What the request presents (each reader is one function, so tests can stand in for the browser)

def request_headers() -> dict:
    """The headers of the connection of this session (``st.context.headers``)."""
    import streamlit as st

    return st.context.headers


def request_cookies() -> dict:
    import streamlit as st

    return st.context.cookies


def oidc_email() -> Optional[str]:
    """The signed-in OIDC user's e-mail (``st.user``), or None."""
    import streamlit as st

    try:
        if not st.user.is_logged_in:
            return None
        return st.user.get("email") or st.user.get("preferred_username") or st.user.get("sub")
    except Exception:  # no [auth] section: nobody is signed in
        return None


def connection_key() -> Optional[int]:
    """The identity of the browser connection this script run serves: a reconnect (same session,
    new websocket) gets another one. None outside a server (AppTest)."""
    try:
        from streamlit import runtime
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        if ctx is None or not runtime.exists():
            return None
        client = runtime.get_instance().get_client(ctx.session_id)
        if client is None or type(client).__module__ == "unittest.mock":
            return None  # AppTest's stand-in runtime (a new mock per run): one connection per AppTest
        return id(client)
    except Exception:
        return None


def bound_address() -> str:
    import streamlit as st

    return str(st.get_option("server.address") or "")


def is_loopback(address: str) -> bool:
    """Whether the server listens on loopback only (unset = every interface)."""
    a = (address or "").strip().strip("[]")
    if a == "localhost":
        return True
    try:
        return ipaddress.ip_address(a).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# Who this is

def _clean_name(value) -> Optional[str]:
    if not isinstance(value, str):
        return None
    v = value.strip()
    if not v or len(v) > _MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in v):
        return None
    return v


def _presented(ident: IdentitySettings, bound: Optional[dict], conn) -> User:
    """The user this script run's connection presents; raises :class:`Refused`."""
    if ident.mode == "proxy":
        name = _clean_name(request_headers().get(ident.proxy_header))
        if name is None:
            raise Refused(f"Sign-in required: this server admits users signed in through its proxy, and no "
                          f"user reached it with this request (header {ident.proxy_header} missing).")
        return _accepted(ident, name, "proxy")
    if ident.mode == "oidc":
        name = _clean_name(oidc_email())
        if name is None:
            raise Refused("Sign-in required: log in to use this server.")
        return _accepted(ident, name, "oidc")
    # anonymous: the browser's cookie; a first visit (no cookie yet) keeps its new token for the
    # whole connection; a new connection without the session's cookie is someone else
    token = request_cookies().get(ANON_COOKIE)
    if not (isinstance(token, str) and _TOKEN.fullmatch(token)):
        if bound is not None and bound["client"] == conn:
            token = bound["user"].id.split(":", 1)[1]
        else:
            token = secrets.token_urlsafe(24)
    local = is_loopback(bound_address())
    return User(id=f"anon:{token}", name="local user" if local else "anonymous", is_admin=local, kind="anonymous")


def _accepted(ident: IdentitySettings, name: str, kind: str) -> User:
    if not ident.allows(name):
        raise Refused(f"{name} is not on this server's list of users ([server.identity] allowed_users, "
                      f"{len(ident.allowed_users)} users). Ask the server's admin to add you.")
    return User(id=f"{kind}:{name.lower()}", name=name, is_admin=ident.is_admin(name), kind=kind)


def identify() -> User:
    """The user of this script run, bound to its session; raises :class:`Refused`. A session
    that presents another identity than the one it was started with is cleared first."""
    import streamlit as st

    ident = server_settings().identity  # an invalid [server] table: ClrpError, the page refuses
    bound = st.session_state.get(_OWNER_STATE)
    conn = connection_key()
    user = _presented(ident, bound, conn)
    if bound is not None and bound["user"].id != user.id:
        st.session_state.clear()
        raise Refused("This session was started by another user or browser. Reload the page to start "
                      "your own session.")
    st.session_state[_OWNER_STATE] = {"user": user, "client": conn}
    return user


def current_user() -> User:
    """The signed-in user of this script run. Pages pass ``require_user`` first (``ui.page``);
    elsewhere a refusal stops the script run after showing why."""
    import streamlit as st

    bound = st.session_state.get(_OWNER_STATE)
    if bound is not None and bound["client"] == connection_key():
        return bound["user"]
    return require_user()


def require_user() -> User:
    """The page gate: the user, or a refusal message and ``st.stop()`` (nothing else rendered)."""
    import streamlit as st

    from clrp.errors import ClrpError

    from .safetext import md

    try:
        user = identify()
    except Refused as e:
        st.error(md(str(e)), icon=":material/lock:")
        if server_settings().identity.mode == "oidc" and "log in" in str(e):
            provider = server_settings().identity.oidc_provider or None
            st.button("Log in", on_click=st.login, args=(provider,) if provider else (), type="primary")
        st.stop()
    except ClrpError as e:  # the lab TOML's [server] table is invalid: fail closed
        st.error("This server's settings are invalid; the admin's log has the details.", icon=":material/lock:")
        import logging

        logging.getLogger("clrp.dashboard").error("invalid server settings: %s", e)
        st.stop()
    if user.kind == "anonymous":
        _keep_cookie(user.id.split(":", 1)[1])
    return user


def open_server_warning() -> Optional[str]:
    """Why this server is open to anyone who can reach it, or None."""
    ident = server_settings().identity
    addr = bound_address()
    if is_loopback(addr):
        return None
    where = f"on {addr}" if addr else "on every network interface"
    if ident.mode == "none":
        return (f"This server listens {where} without sign-in: anyone who can reach it can use it, and see "
                "and cancel what is run here. For a shared server, bind it to 127.0.0.1 behind a proxy with "
                "sign-in, or turn on [server.identity] (docs/dashboard.md, Deploying for a lab).")
    if ident.mode == "proxy":
        return (f"This server listens {where} and trusts the {ident.proxy_header} header: anyone who reaches "
                "it without the proxy can claim to be any user. Bind it to 127.0.0.1 behind the proxy.")
    return None


_COOKIE_JS = """
export default function (component) {
  const { data } = component;
  const want = `${data.name}=${data.value}`;
  if (!document.cookie.split("; ").includes(want)) {
    const secure = location.protocol === "https:" ? "; Secure" : "";
    document.cookie = `${want}; Path=/; Max-Age=31536000; SameSite=Strict${secure}`;
  }
}
"""
_cookie_component = None


def _keep_cookie(token: str) -> None:
    """Have the browser keep the anonymous owner token (a reload then keeps the same owner)."""
    import streamlit as st

    global _cookie_component
    if request_cookies().get(ANON_COOKIE) == token:  # the browser has it
        return
    if _cookie_component is None:
        _cookie_component = st.components.v2.component("clrp_owner_cookie", js=_COOKIE_JS)
    with st.sidebar:
        _cookie_component(data={"name": ANON_COOKIE, "value": token}, key="_clrp_owner_cookie")
