"""Who is using the dashboard (contract shared by the pages, the job service and the stores).

Identity is the platform's, not the app's: Streamlit's ``st.login`` (OIDC, ``.streamlit/secrets.toml``)
or a trusted reverse-proxy header named in the lab TOML; without either, an anonymous random
per-browser token (never the Streamlit session id). This module only answers ``current_user()``;
every object a user makes (runs, uploads) is owned by ``User.id``.

STUB: anonymous per-session user until the identity work lands (see issue 16).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    id: str             # stable owner key: "oidc:<email>", "proxy:<user>" or "anon:<random token>"
    name: str           # what the page shows ("alice@lab.org", "anonymous")
    is_admin: bool = False
    kind: str = "anonymous"  # "oidc" | "proxy" | "anonymous"


def current_user() -> User:
    """The signed-in user of this script run (raises nothing; refusals are shown by ``require_user``)."""
    import streamlit as st

    tok = st.session_state.setdefault("clrp_anon_token", secrets.token_urlsafe(18))
    return User(id=f"anon:{tok}", name="anonymous", is_admin=False, kind="anonymous")
