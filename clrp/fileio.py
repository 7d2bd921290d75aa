"""Small filesystem helpers shared by the run folders and the scene cache: locks, atomic writes,
and OS errors turned into one-line ``ClrpError`` messages."""
from __future__ import annotations

import contextlib
import json
import os
import threading

from .errors import ClrpError

try:  # POSIX advisory locks: released by the OS when the process dies
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_THREAD_LOCKS: dict = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def os_error(exc: OSError, what: str) -> ClrpError:
    """``cannot <what>: <reason>`` for an OSError (read-only filesystem, a file in the way, ...)."""
    reason = exc.strerror or type(exc).__name__
    where = exc.filename if exc.filename else ""
    return ClrpError(f"cannot {what}: {reason}" + (f" ({where})" if where else ""))


def makedirs(path: str, what: str | None = None) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise ClrpError(f"cannot {what or f'create the folder {path}'}: a file is in the way ({path})") from None
    except OSError as exc:
        raise os_error(exc, what or f"create the folder {path}") from None
    if not os.path.isdir(path):
        raise ClrpError(f"cannot {what or f'create the folder {path}'}: {path} is not a folder")


def write_json_atomic(path: str, obj, **kw) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, **kw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise os_error(exc, f"write {path}") from None


def write_atomic(path: str, write) -> None:
    """``write(tmp)`` writes the file at a temporary path that then replaces ``path``: a failure
    (a full disk, a lost mount) leaves the old file or none, never a truncated one, and is a
    one-line ``ClrpError``."""
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise os_error(exc if exc.filename else OSError(exc.errno, exc.strerror, path), f"write {path}") from None


@contextlib.contextmanager
def file_lock(path: str, *, blocking: bool, busy: str = "is in use"):
    """An exclusive lock on ``path`` (created if needed), held by this process and thread.

    Non-blocking: raises ``ClrpError`` ("<path> <busy> (pid N)") when another holder has it. The
    lock is advisory (``fcntl.flock``): every clrp process takes it, and the OS releases it when
    its holder dies, so a crashed run never leaves a folder locked."""
    with _THREAD_LOCKS_GUARD:  # flock does not exclude threads of one process: a lock per path does
        tlock = _THREAD_LOCKS.setdefault(os.path.abspath(path), threading.Lock())
    if not tlock.acquire(blocking=blocking):
        raise ClrpError(f"{os.path.dirname(path) or path} {busy} (by another thread of this process)")
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise os_error(exc, f"lock {path}") from None
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    raise ClrpError(f"{os.path.dirname(path) or path} {busy} (pid {holder})") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock
    finally:
        tlock.release()
