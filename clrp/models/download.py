"""Weights files in the torch hub cache, downloaded there on first use (torchvision's convention).

- A weights URL ``.../resnet50-11ad3fa6.pth`` is cached at
  ``torch.hub.get_dir()/checkpoints/resnet50-11ad3fa6.pth`` (``$TORCH_HOME/hub/checkpoints``), the
  file torchvision itself would use: weights downloaded by torchvision are found, and the other way
  round.
- A missing file is downloaded (unless downloads are off) into a temporary file in the same folder,
  checked against the hash prefix in its name as ``torch.hub`` does with ``check_hash=True`` (the
  SHA-256 of the file starts with the hex digits after the last ``-``), then renamed into place:
  the cache never holds a partial or corrupt file.
- Every network wait (name resolution, connecting, each read) is bounded by a timeout, so a machine
  without internet gets a :class:`~clrp.models.WeightsNotFound` that says which file to put where
  within seconds, never a hang. A failed download is not retried for a minute (the dashboard asks
  again on every page run); :func:`forget_failures` clears that memory.

Environment:

- ``CLRP_WEIGHTS_MIRROR``: replaces ``https://download.pytorch.org/models/`` in weights URLs:
  an ``http(s)://`` or ``file://`` URL, or a local folder (e.g. a lab's share holding the files).
  Proxies: the usual ``https_proxy`` / ``http_proxy`` / ``no_proxy`` variables apply.
- ``CLRP_DOWNLOAD_TIMEOUT``: seconds for each network wait (default 10).
- ``CLRP_OFFLINE=1``: never download; only the cache and explicit files are used.
"""
from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from ._errors import CorruptWeights, WeightsNotFound

__all__ = ["MIRROR_ENV", "TIMEOUT_ENV", "OFFLINE_ENV", "TORCHVISION_BASE", "check_reachable", "hub_checkpoints", "cached_file",
           "file_name", "hash_prefix", "source_url", "download_timeout", "downloads_enabled", "fetch",
           "recent_failure", "remember_failure", "forget_failures"]

MIRROR_ENV = "CLRP_WEIGHTS_MIRROR"
TIMEOUT_ENV = "CLRP_DOWNLOAD_TIMEOUT"
OFFLINE_ENV = "CLRP_OFFLINE"
TORCHVISION_BASE = "https://download.pytorch.org/models/"
DEFAULT_TIMEOUT = 10.0
#: Seconds during which a failed download is not tried again.
RETRY_AFTER = 60.0
_CHUNK = 1 << 20

_failures: dict[str, tuple[float, str]] = {}
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


# ---------------------------------------------------------------------------------------------
# Settings

def download_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        t = float(raw)
    except ValueError:
        raise WeightsNotFound(f"${TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return t if t > 0 else DEFAULT_TIMEOUT


def downloads_enabled() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def hub_checkpoints() -> Path:
    """``torch.hub.get_dir()/checkpoints`` (follows ``$TORCH_HOME`` at call time)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def file_name(url: str) -> str:
    return urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]


def cached_file(url: str) -> Path:
    """Where the hub cache keeps the file of ``url``."""
    return hub_checkpoints() / file_name(url)


def hash_prefix(name: str) -> str | None:
    """The SHA-256 prefix ``torch.hub`` checks for a file name (``resnet50-11ad3fa6.pth`` ->
    ``11ad3fa6``), or None."""
    import torch.hub

    m = torch.hub.HASH_REGEX.search(name)
    return m.group(1) if m and m.group(1) else None


def source_url(url: str) -> str:
    """``url`` with ``https://download.pytorch.org/models/`` replaced by ``$CLRP_WEIGHTS_MIRROR``."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror or not url.startswith(TORCHVISION_BASE):
        return url
    rest = url[len(TORCHVISION_BASE):]
    if "://" not in mirror:  # a folder
        return Path(mirror).expanduser().resolve().as_uri().rstrip("/") + "/" + rest
    return mirror.rstrip("/") + "/" + rest


# ---------------------------------------------------------------------------------------------
# Failures remembered for a while

def recent_failure(url: str) -> str | None:
    """The reason the last download of ``url`` (from its current source: the mirror when one is
    set) failed, if that was less than a minute ago."""
    key = source_url(url)
    f = _failures.get(key)
    if f is None:
        return None
    when, reason = f
    if time.monotonic() - when > RETRY_AFTER:
        _failures.pop(key, None)
        return None
    return reason


def remember_failure(key: str, reason: str) -> None:
    """Record that fetching ``key`` (a source URL) just failed."""
    _failures[key] = (time.monotonic(), reason)


def forget_failures() -> None:
    _failures.clear()


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


# ---------------------------------------------------------------------------------------------
# Download

def _connect_address(url: str) -> tuple[str, int] | None:
    """The ``(host, port)`` the request will actually connect to (the proxy's when one applies)."""
    p = urllib.parse.urlparse(url)
    if p.scheme not in ("http", "https") or not p.hostname:
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(p.scheme)
    if proxy and not urllib.request.proxy_bypass(p.hostname):
        q = urllib.parse.urlparse(proxy if "://" in proxy else "http://" + proxy)
        return q.hostname, q.port or (443 if q.scheme == "https" else 80)
    return p.hostname, p.port or (443 if p.scheme == "https" else 80)


def check_reachable(url: str, timeout: float, *, connect: bool = True) -> None:
    """Raise ``OSError`` unless ``url``'s host resolves (and, with ``connect``, accepts a TCP
    connection) within ``timeout`` seconds. A client library that retries with backoff
    (huggingface_hub 0.x retries a refused connection for ~23 s) is called only after this."""
    addr = _connect_address(url)
    if addr is None:
        return
    _resolve(addr[0], timeout)
    if connect:
        with socket.create_connection(addr, timeout=timeout):
            pass


class _ResolveError(OSError):
    pass


def _resolve(host: str, timeout: float) -> None:
    """Resolve ``host`` within ``timeout`` seconds (``getaddrinfo`` itself ignores socket
    timeouts: a machine with an unreachable DNS server would otherwise wait for minutes)."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    out: dict = {}

    def work():
        try:
            socket.getaddrinfo(host, None)
            out["ok"] = True
        except OSError as e:
            out["error"] = e

    t = threading.Thread(target=work, name="clrp-resolve", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"resolving {host} timed out after {timeout:g} s (${TIMEOUT_ENV})")
    if "error" in out:
        raise _ResolveError(f"cannot resolve {host} (no network or no DNS?): {out['error']}")


def _reason(e: BaseException, timeout: float) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        e = e.reason if isinstance(e.reason, BaseException) else e
        if not isinstance(e, BaseException):  # pragma: no cover
            return str(e)
    if isinstance(e, (TimeoutError, socket.timeout)):
        text = str(e)
        return text if "timed out after" in text else f"no answer within {timeout:g} s (timeout: ${TIMEOUT_ENV})"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (_ResolveError, socket.gaierror)):
        return str(e)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def fetch(url: str, dest: str | os.PathLike | None = None, *, progress: bool = True, what: str = "weights",
          help_text: str = "", allow: bool | None = None) -> Path:
    """``dest`` (default: the hub cache file of ``url``), downloaded from ``url`` (or its mirror)
    when missing; ``allow=False`` or ``$CLRP_OFFLINE=1`` forbids downloading. Raises
    :class:`WeightsNotFound` (offline, refused, timeout, HTTP error; the message names the file,
    the URL and where to put it, plus ``help_text``) or :class:`CorruptWeights` (hash prefix
    mismatch; nothing is kept). The file gets the usual permissions (umask), not a temporary
    file's private ones: a shared cache stays readable by the lab."""
    dest = Path(dest) if dest is not None else cached_file(url)
    if dest.is_file():
        return dest
    src = source_url(url)
    where = (f"Put the file {dest.name} (from {url}) at {dest} (torch.hub.get_dir()/checkpoints, which follows "
             f"$TORCH_HOME){help_text}, or set ${MIRROR_ENV} to a server or folder that holds it.")
    if allow is False or not downloads_enabled():
        off = "download=False" if allow is False else f"${OFFLINE_ENV}=1"
        raise WeightsNotFound(f"{what}: {dest.name} is not in the torch hub cache and downloads are off "
                              f"({off}). {where}")
    with _lock(str(dest)):
        if dest.is_file():  # another thread finished it meanwhile
            return dest
        failed = recent_failure(url)
        if failed:
            raise WeightsNotFound(f"{what}: {dest.name} is not in the torch hub cache and its download failed "
                                  f"less than {RETRY_AFTER:g} s ago ({failed}; not retried yet). {where}")
        timeout = download_timeout()
        mirror = f" (mirror of {url})" if src != url else ""
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WeightsNotFound(f"{what}: cannot create the cache folder {dest.parent}: {e}. {where}") from None
        tmp = str(dest.parent / f".{dest.name}.{uuid.uuid4().hex}.partial")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as e:
            raise WeightsNotFound(f"{what}: cannot write into the cache folder {dest.parent}: {e}. {where}") from None
        try:
            sha = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as f:
                try:
                    check_reachable(src, timeout, connect=False)  # urllib bounds the connection itself
                    req = urllib.request.Request(src, headers={"User-Agent": "clrp (torch.hub compatible)"})
                    with urllib.request.urlopen(req, timeout=timeout) as r:
                        total = r.headers.get("Content-Length") if hasattr(r, "headers") else None
                        total = int(total) if total and total.isdigit() else None
                        from tqdm import tqdm

                        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                                  desc=f"downloading {dest.name}", disable=not progress, leave=False) as bar:
                            while True:
                                buf = r.read(_CHUNK)
                                if not buf:
                                    break
                                f.write(buf)
                                sha.update(buf)
                                size += len(buf)
                                bar.update(len(buf))
                    if total is not None and size != total:
                        raise OSError(f"the connection closed after {size} of {total} bytes")
                except (OSError, http.client.HTTPException, ValueError) as e:
                    reason = _reason(e, timeout)
                    _failures[src] = (time.monotonic(), reason)
                    raise WeightsNotFound(f"{what}: {dest.name} is not in the torch hub cache and downloading "
                                          f"it from {src}{mirror} failed: {reason}. {where}") from None
            prefix = hash_prefix(dest.name)
            digest = sha.hexdigest()
            if prefix and not digest.startswith(prefix):
                reason = f"SHA-256 {digest[:16]}... does not start with {prefix}, the hash in its name"
                _failures[src] = (time.monotonic(), f"corrupt download ({reason})")
                raise CorruptWeights(f"{what}: the download of {dest.name} from {src}{mirror} is corrupt: {reason}. "
                                     f"Nothing was saved. {where}")
            os.replace(tmp, dest)
            _failures.pop(src, None)
            return dest
        finally:
            if os.path.exists(tmp):
                try:
                    os.unlink(tmp)
                except OSError:  # pragma: no cover
                    pass
