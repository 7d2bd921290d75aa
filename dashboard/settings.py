"""The lab server's settings: the ``[server]`` table of the lab TOML (``$CLRP_MODELS_CONFIG``,
the same file that lists lab models), with safe defaults for a single user on 127.0.0.1.
Never imports Streamlit.

Sub-tables (each key optional; defaults below): ``[server.identity]`` (who may sign in, admins,
trusted proxy header) and ``[server.limits]`` (quotas). Unknown keys are an error naming them.

STUB: fields are added by the identity and job-service work (issue 16).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class IdentitySettings:
    mode: str = "none"                    # "none" | "oidc" | "proxy"
    proxy_header: str = "X-Forwarded-Email"
    allowed_users: tuple = ()             # empty: anyone the identity provider admits
    admins: tuple = ()


@dataclass(frozen=True)
class LimitSettings:
    jobs_running_per_user: int = 1
    jobs_queued_per_user: int = 3
    jobs_running_server: int = 1
    jobs_queued_server: int = 20


@dataclass(frozen=True)
class ServerSettings:
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    limits: LimitSettings = field(default_factory=LimitSettings)


def server_settings() -> ServerSettings:
    return ServerSettings()
