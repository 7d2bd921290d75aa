"""The lab server's settings: the ``[server]`` table of the lab TOML (``$CLRP_MODELS_CONFIG``,
the same file that lists lab models), with safe defaults for a single user on 127.0.0.1.
Never imports Streamlit.

Sub-tables (each key optional; defaults below): ``[server.identity]`` (who may sign in, admins,
trusted proxy header), ``[server.models]`` (which models visitors may download, how many stay
in memory) and ``[server.limits]`` (quotas). Unknown keys and wrong types are errors naming them::

    [server.limits]
    jobs_running_per_user = 1      # a user's jobs evaluated at once (their others wait)
    jobs_queued_per_user = 3       # a user's jobs waiting, on top of the running ones
    jobs_running_server = 1        # evaluations at once on this server
    jobs_queued_server = 20        # jobs waiting on this server, all users together
    estimates_running_server = 1   # "Estimate duration" jobs at once (a pool of their own: short)
    upload_bytes_per_user = 1073741824   # archives a user's queued/running jobs hold (one copy each)
    worker_threads = 0             # torch threads per worker process (0: CPU cores - 1, at least 1)
    worker_nice = 10               # workers' OS priority below the web server's (0-19)
"""
from __future__ import annotations

import dataclasses
import os
import typing
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
    estimates_running_server: int = 1
    upload_bytes_per_user: int = 1 << 30
    worker_threads: int = 0
    worker_nice: int = 10

    def threads(self) -> int:
        """Torch threads of a worker: the setting, or all cores but one (the web server's)."""
        return self.worker_threads if self.worker_threads > 0 else max(1, (os.cpu_count() or 2) - 1)


#: The smallest value each limit may take (a server with 0 running jobs would run nothing).
_MINIMUM = {"jobs_running_per_user": 1, "jobs_running_server": 1, "estimates_running_server": 1,
            "jobs_queued_per_user": 0, "jobs_queued_server": 0, "upload_bytes_per_user": 0,
            "worker_threads": 0, "worker_nice": 0}


@dataclass(frozen=True)
class ServerSettings:
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)


def _table(cls, raw, where: str):
    """``cls`` (a frozen dataclass) from a TOML table: unknown keys and wrong types are errors
    naming them; lists become tuples."""
    if not isinstance(raw, dict):
        raise ClrpError(f"{where} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ClrpError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in raw.items():
        want = hints[k]
        if want is tuple:
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise ClrpError(f"{where}.{k} must be a list of strings")
            v = tuple(v)
        elif want is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ClrpError(f"{where}.{k} must be an integer, not {v!r}")
            low = _MINIMUM.get(k, 0) if cls is LimitSettings else None
            if low is not None and v < low:
                raise ClrpError(f"{where}.{k} must be at least {low}, not {v}")
        elif want is str and not isinstance(v, str):
            raise ClrpError(f"{where}.{k} must be a string, not {v!r}")
        out[k] = v
    return cls(**out)


_SUBTABLES = {"identity": IdentitySettings, "models": ModelSettings, "limits": LimitSettings}
_cache: dict = {}


def read_server_settings(path: os.PathLike | str) -> ServerSettings:
    """The ``[server]`` table of the TOML file at ``path`` (defaults for a table left out)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f).get("server", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ClrpError(f"cannot read the lab config {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ClrpError(f"lab config {path}: [server] must be a table")
    unknown = sorted(set(raw) - set(_SUBTABLES))
    if unknown:
        raise ClrpError(f"lab config {path}: unknown key(s) in [server]: {', '.join(unknown)}; "
                        f"known: {', '.join(_SUBTABLES)}")
    out = ServerSettings(**{k: _table(cls, raw.get(k, {}), f"[server.{k}]") for k, cls in _SUBTABLES.items()})
    out.identity.check(str(path))
    out.models.check(str(path))
    return out


def server_settings(path: str | None = None) -> ServerSettings:
    """The ``[server]`` table of ``path`` (default ``$CLRP_MODELS_CONFIG``); defaults when there is
    no file or no table. Re-read when the file changes (cheap: keyed by its mtime)."""
    from clrp.models import CONFIG_ENV

    path = path if path is not None else os.environ.get(CONFIG_ENV)
    if not path or not os.path.isfile(path):
        return ServerSettings()
    try:
        key = (os.path.abspath(path), os.stat(path).st_mtime_ns)
    except OSError:
        return ServerSettings()
    if key in _cache:
        return _cache[key]
    out = read_server_settings(path)
    _cache.clear()
    _cache[key] = out
    return out
