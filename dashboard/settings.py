"""The lab server's settings: the ``[server]`` table of the lab TOML (``$CLRP_MODELS_CONFIG``,
the same file that lists lab models), with safe defaults for a single user on 127.0.0.1.
Never imports Streamlit.

Sub-tables (each key optional; defaults below): ``[server.identity]`` (who may sign in, admins,
trusted proxy header), ``[server.models]`` (which models visitors may download, how many stay
in memory) and ``[server.limits]`` (quotas). Unknown keys are an error naming them.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from clrp.errors import ClrpError

IDENTITY_MODES = ("none", "oidc", "proxy")


@dataclass(frozen=True)
class IdentitySettings:
    mode: str = "none"                    # "none" | "oidc" | "proxy"
    proxy_header: str = "X-Forwarded-Email"
    allowed_users: tuple = ()             # empty: anyone the identity provider admits
    admins: tuple = ()
    oidc_provider: str = ""               # st.login(provider): a [auth.<name>] of secrets.toml; "" = [auth]

    def check(self, where: str) -> None:
        if self.mode not in IDENTITY_MODES:
            raise ClrpError(f"{where}: [server.identity] mode must be one of {', '.join(IDENTITY_MODES)}, "
                            f"not {self.mode!r}")
        if self.mode == "proxy" and not self.proxy_header.strip():
            raise ClrpError(f"{where}: [server.identity] proxy_header is empty")

    def allows(self, name: str) -> bool:
        """Whether a signed-in user may use the server (admins always may)."""
        if not self.allowed_users:
            return True
        return _norm(name) in {_norm(u) for u in (*self.allowed_users, *self.admins)}

    def is_admin(self, name: str) -> bool:
        return _norm(name) in {_norm(u) for u in self.admins}


def _norm(name: str) -> str:
    return str(name).strip().lower()


@dataclass(frozen=True)
class ModelSettings:
    #: torchvision/timm models (picker keys, e.g. "resnet50", "timm:vit_small_patch16_224") that
    #: visitors may download into the server's cache; "*" allows every one. Admins may download
    #: any. Default: none (visitors get the bundled model, lab models and weights already cached).
    downloadable: tuple = ()
    #: models kept loaded in memory at once, over every session (least recently used evicted).
    max_in_memory: int = 4

    def check(self, where: str) -> None:
        if not isinstance(self.max_in_memory, int) or self.max_in_memory < 1:
            raise ClrpError(f"{where}: [server.models] max_in_memory must be a positive integer")

    def may_download(self, key: str) -> bool:
        return "*" in self.downloadable or key in self.downloadable


@dataclass(frozen=True)
class LimitSettings:
    jobs_running_per_user: int = 1
    jobs_queued_per_user: int = 3
    jobs_running_server: int = 1
    jobs_queued_server: int = 20


@dataclass(frozen=True)
class ServerSettings:
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)


def _build(cls, table, where: str, name: str):
    """A settings dataclass from a TOML table; unknown keys are an error naming them."""
    if table is None:
        return cls()
    if not isinstance(table, dict):
        raise ClrpError(f"{where}: [server.{name}] must be a table")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ClrpError(f"{where}: [server.{name}] has unknown keys {unknown} (known: {sorted(known)})")
    values = {k: tuple(str(x) for x in v) if isinstance(v, list) else v for k, v in table.items()}
    return cls(**values)


def read_server_settings(path: Optional[os.PathLike | str]) -> ServerSettings:
    """The ``[server]`` table of the TOML file at ``path`` (None: the defaults)."""
    if path is None:
        return ServerSettings()
    import tomllib

    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ClrpError(f"lab settings {p.name}: cannot read the [server] table ({e})") from None
    server = data.get("server", {})
    if not isinstance(server, dict):
        raise ClrpError(f"{p.name}: [server] must be a table")
    tables = {"identity": IdentitySettings, "models": ModelSettings, "limits": LimitSettings}
    unknown = sorted(set(server) - set(tables))
    if unknown:
        raise ClrpError(f"{p.name}: [server] has unknown tables {unknown} (known: {sorted(tables)})")
    out = ServerSettings(**{k: _build(cls, server.get(k), p.name, k) for k, cls in tables.items()})
    out.identity.check(p.name)
    out.models.check(p.name)
    return out


_CACHE: dict = {}


def server_settings() -> ServerSettings:
    """The settings of ``$CLRP_MODELS_CONFIG`` (re-read when the file changes)."""
    from clrp.models import CONFIG_ENV

    raw = os.environ.get(CONFIG_ENV, "").strip()
    if not raw:
        return ServerSettings()
    p = Path(raw).expanduser()
    try:
        stamp = p.stat().st_mtime_ns
    except OSError:
        return ServerSettings()  # a missing lab file is reported where lab models are read
    key = (str(p), stamp)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = read_server_settings(p)
    return _CACHE[key]
