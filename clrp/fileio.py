"""Small filesystem helpers shared by the run folders and the scene cache: locks, atomic writes,
OS errors turned into one-line ``ClrpError`` messages, and safe exports (CSV cells that a
spreadsheet would run as formulas, download file names)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import unicodedata

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
    except BaseException:  # e.g. write_csv's own ClrpError: no temporary file is left behind
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


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


# --- exports ------------------------------------------------------------------------------------
# Spreadsheet applications run a cell that starts with one of these as a formula (OWASP "CSV
# injection"); a leading tab or carriage return is stripped by some of them before that check.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def neutralize_cell(value):
    """``value`` made inert for a spreadsheet: a text that starts with ``= + - @``, a tab or a CR
    gets a leading ``'`` (what spreadsheets themselves use to mean "text"). Numbers, and texts
    that are plain numbers (``-1.5``), are returned unchanged: a negative number is no formula."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


_NUMERIC_KINDS = "biufcmM"  # bool, integers, floats, complex, dates: never formulas


def _safe_labels(index):
    """An index (or columns) with neutralised text labels, levels and names kept."""
    import pandas as pd

    if isinstance(index, pd.MultiIndex):
        return pd.MultiIndex.from_tuples([tuple(neutralize_cell(v) for v in t) for t in index],
                                         names=[neutralize_cell(n) for n in index.names])
    if index.dtype.kind in _NUMERIC_KINDS:
        return index
    return pd.Index([neutralize_cell(v) for v in index], dtype=object, name=neutralize_cell(index.name))


def safe_table(df):
    """A copy of a pandas table whose text cells, column names and index labels are neutralised
    (``neutralize_cell``); numeric columns are untouched, so they stay numeric."""
    out = df.copy()
    for i in range(out.shape[1]):
        col = out.iloc[:, i]
        if col.dtype.kind not in _NUMERIC_KINDS:  # text of any dtype (object, str, category)
            out.isetitem(i, [neutralize_cell(v) for v in col])
    out.columns = _safe_labels(out.columns)
    out.index = _safe_labels(out.index)
    return out


# CRLF line ends (RFC 4180): Python's csv quotes a cell holding a line-end character only when it is
# part of the line terminator, so with "\n" alone a bare "\r" in a cell would start a new row in a
# spreadsheet -- one that could begin with a formula.
_CSV_OPTIONS = {"lineterminator": "\r\n"}


def csv_bytes(df, index: bool = False) -> bytes:
    """A table as UTF-8 CSV bytes for a download, formula cells neutralised (``safe_table``)."""
    return safe_table(df).to_csv(index=index, **_CSV_OPTIONS).encode("utf-8")


def write_csv(df, path: str, index: bool = False) -> None:
    """A table written as CSV at ``path``, formula cells neutralised (``safe_table``)."""
    try:
        safe_table(df).to_csv(path, index=index, **_CSV_OPTIONS)
    except OSError as exc:
        raise os_error(exc, f"write {path}") from None


_UNSAFE_NAME = re.compile(r"[^\w.\-]+")


def safe_filename(name, default: str = "download", max_length: int = 120) -> str:
    """A download file name made of letters, digits, ``_``, ``-`` and ``.`` only: no folder
    separators or ``..``, no control or quote characters (HTTP header injection), no leading dot or
    dash (hidden files, command-line options) and no formula prefix; ``default`` when nothing is
    left. The extension is kept when the name has to be shortened."""
    text = unicodedata.normalize("NFKD", str(name or "")).encode("ascii", "ignore").decode("ascii")
    text = _UNSAFE_NAME.sub("_", text.replace("/", "_").replace("\\", "_"))
    text = re.sub(r"\.{2,}", ".", text).strip("._-+=@")
    if not text:
        return default
    if len(text) > max_length:
        stem, dot, ext = text.rpartition(".")
        keep = ext if dot and 0 < len(ext) <= 10 else ""
        text = text[:max_length - len(keep) - 1].rstrip("._-") + ("." + keep if keep else "")
    return text
