"""Safe extraction of zip and tar archives (datasets uploaded by users).

Refused with ``UnsafeArchive`` (nothing outside ``dest`` is ever written):
* path traversal: absolute paths (``/x``, ``\\x``, ``C:x``), ``..`` components, names that
  resolve outside the destination (zip-slip);
* links: symlinks and hard links (zip entries whose Unix mode is a link, tar link members),
  device files, FIFOs;
* more than ``max_files`` entries; more than ``max_total_bytes`` uncompressed;
  a single member larger than ``max_file_bytes``;
* compression ratio above ``max_ratio`` -- per zip member (for members larger than
  ``ratio_min_bytes``; tiny text files legitimately compress well) and for the whole archive
  (uncompressed total / archive file size, checked while streaming, so a lying header or a
  compressed tar cannot get past it).

Counts and sizes are checked from the headers before anything is written: for a zip, the entry
count of the end-of-central-directory record is read first (a 60,000-entry zip is refused in
milliseconds, before its central directory is even parsed), then every central-directory entry;
for a tar, every member header. The byte counts are enforced again while streaming (header
sizes are not trusted). On refusal, the partially extracted files are removed.

Messages start with the archive's name as the user knows it (``display_name``, default: the file's
base name), never with the temporary path it was saved under. A damaged or truncated archive is
reported as "corrupt or unreadable zip/tar archive"; a file whose name says zip/tar but whose
content is not one gets the same message (``archive_kind``).
"""
from __future__ import annotations

import lzma
import os
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import Optional

from ..errors import DatasetError, UnsafeArchive
from .base import DEFAULT_ANNOTATION_LIMITS, UPLOAD_ANNOTATION_LIMITS, AnnotationLimits

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    max_total_bytes: int = 16 * 1024 ** 3   # 16 GiB: VOC2012 (2 GB) and COCO val (1 GB) fit
    max_file_bytes: int = 4 * 1024 ** 3     # largest single member (COCO train annotations: 450 MB)
    max_files: int = 250_000                # COCO train2017 has 118k images
    max_ratio: float = 100.0                # JPEGs ~1:1, XML/JSON ~5-20:1; bombs are >1000:1
    ratio_min_bytes: int = 1024 ** 2        # per-member ratio check only above 1 MiB uncompressed
    annotations: AnnotationLimits = DEFAULT_ANNOTATION_LIMITS  # largest CSV/JSON/XML file read


DEFAULT_LIMITS = ArchiveLimits()

# Archives uploaded through a web page: stricter. A VOC2007 test archive (about 10,500 entries,
# 0.9 GB) fits; server folders and the command line use DEFAULT_LIMITS.
UPLOAD_LIMITS = ArchiveLimits(max_total_bytes=4 * 1024 ** 3, max_file_bytes=1024 ** 3, max_files=30_000,
                              annotations=UPLOAD_ANNOTATION_LIMITS)

_SUFFIXES = ((".zip", "zip"), (".tar", "tar"), (".tar.gz", "tar"), (".tgz", "tar"), (".tar.bz2", "tar"),
             (".tbz2", "tar"), (".tbz", "tar"), (".tar.xz", "tar"), (".txz", "tar"))


def is_archive(path: str) -> bool:
    """True when the file's content is a zip or tar archive (see ``archive_kind`` for damaged ones)."""
    if not os.path.isfile(path):
        return False
    try:
        return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)
    except (OSError, EOFError, zlib.error, lzma.LZMAError, tarfile.TarError):
        return False


def archive_kind(path: str, name: Optional[str] = None) -> Optional[str]:
    """``"zip"`` or ``"tar"``: by content, else by the suffix of ``name`` or ``path`` (so a damaged
    ``.zip`` is still treated -- and reported -- as a zip archive); None for other files."""
    if not os.path.isfile(path):
        return None
    try:
        if zipfile.is_zipfile(path):
            return "zip"
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, EOFError, zlib.error, lzma.LZMAError, tarfile.TarError):
        pass
    for n in (name, path):
        low = os.path.basename(str(n or "")).lower()
        for suffix, kind in _SUFFIXES:
            if low.endswith(suffix):
                return kind
    return None


class _Unreadable(Exception):
    """Internal: the archive's bytes cannot be decoded (member name, reason)."""

    def __init__(self, member: Optional[str], reason: str):
        super().__init__(reason)
        self.member = member
        self.reason = reason


def _reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, tarfile.ReadError) and text.startswith("file could not be opened successfully"):
        return "not a tar archive, nor a gzip-, bzip2- or xz-compressed one"
    if isinstance(e, EOFError) and "end" not in text.lower():
        text = f"unexpected end of data ({text})"
    return text.splitlines()[0][:300]


def _safe_relpath(name: str) -> str:
    """Validate an archive member name; return it as a normalised relative path."""
    if not name or "\x00" in name:
        raise UnsafeArchive(f"invalid member name {name!r}")
    n = name.replace("\\", "/")
    if n.startswith("/") or (len(n) >= 2 and n[1] == ":") or n.startswith("//"):
        raise UnsafeArchive(f"absolute path in archive: {name!r}")
    parts = [p for p in n.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchive(f"path traversal in archive: {name!r}")
    if not parts:
        return ""
    return os.path.join(*parts)


def _target(dest_real: str, rel: str) -> str:
    out = os.path.realpath(os.path.join(dest_real, rel))
    if out != dest_real and not out.startswith(dest_real + os.sep):
        raise UnsafeArchive(f"archive member escapes the destination: {rel!r}")
    return out


class _Budget:
    def __init__(self, limits: ArchiveLimits, archive_size: int):
        self.limits = limits
        self.archive_size = max(1, archive_size)
        self.total = 0

    def add(self, n: int, name: str, member_total: int):
        self.total += n
        lim = self.limits
        if member_total > lim.max_file_bytes:
            raise UnsafeArchive(f"{name!r}: member larger than {lim.max_file_bytes} bytes")
        if self.total > lim.max_total_bytes:
            raise UnsafeArchive(f"archive expands to more than {lim.max_total_bytes} bytes")
        if self.total > lim.ratio_min_bytes and self.total / self.archive_size > lim.max_ratio:
            raise UnsafeArchive(f"archive compression ratio above {lim.max_ratio:g} "
                                f"(possible decompression bomb)")


def _copy(src, dst_path: str, budget: _Budget, name: str, declared: int | None = None):
    written = 0
    with open(dst_path, "wb") as out:
        while True:
            try:
                chunk = src.read(_CHUNK)
            except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError,
                    NotImplementedError) as e:
                raise _Unreadable(name, _reason(e)) from None
            except OSError as e:  # gzip.BadGzipFile and friends: reading, not writing
                raise _Unreadable(name, _reason(e)) from None
            if not chunk:
                break
            written += len(chunk)
            if declared is not None and written > declared:
                raise UnsafeArchive(f"{name!r}: more data than its header declares")
            budget.add(len(chunk), name, written)
            out.write(chunk)


def safe_extract(archive: str, dest: str, limits: ArchiveLimits = DEFAULT_LIMITS, *,
                 display_name: Optional[str] = None) -> str:
    """Extract ``archive`` (zip, tar, tar.gz/bz2/xz) into ``dest`` safely; returns ``dest``.

    Raises ``UnsafeArchive`` (see module doc) or ``DatasetError`` for an unreadable archive; every
    message starts with ``display_name`` (default: the archive's base name). On any error, what
    was extracted is removed again.
    """
    shown = display_name or os.path.basename(str(archive))
    os.makedirs(dest, exist_ok=True)
    dest_real = os.path.realpath(dest)
    before = set(os.listdir(dest_real))
    kind = archive_kind(archive, display_name) or "zip or tar"

    def scrub(text: str) -> str:
        for p in sorted({dest_real, os.path.abspath(dest), str(dest)}, key=len, reverse=True):
            text = text.replace(p + os.sep, "").replace(p, "")
        for p in sorted({os.path.abspath(archive), str(archive)}, key=len, reverse=True):
            text = text.replace(p, shown)
        return text

    try:
        if os.path.getsize(archive) == 0:
            raise _Unreadable(None, "the file is empty")
        if kind == "zip":
            _extract_zip(archive, dest_real, limits)
        elif kind == "tar":
            _extract_tar(archive, dest_real, limits)
        else:
            raise DatasetError("not a zip or tar archive")
    except _Unreadable as e:
        _remove_new(dest_real, before)
        where = f"member {e.member!r} cannot be read: " if e.member else ""
        raise DatasetError(f"{shown}: corrupt or unreadable {kind} archive ({where}{scrub(e.reason)})") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, NotImplementedError) as e:
        _remove_new(dest_real, before)
        raise DatasetError(f"{shown}: corrupt or unreadable {kind} archive ({scrub(_reason(e))})") from None
    except DatasetError as e:  # UnsafeArchive included: the same class, named after the archive
        _remove_new(dest_real, before)
        raise type(e)(f"{shown}: {scrub(str(e))}") from None
    except OSError as e:  # writing failed (disk full, permissions): not the archive's fault
        _remove_new(dest_real, before)
        raise DatasetError(f"{shown}: cannot extract ({scrub(e.strerror or _reason(e))})") from None
    except BaseException:
        _remove_new(dest_real, before)
        raise
    return dest


def _remove_new(dest_real: str, before: set) -> None:
    """Remove what an interrupted extraction created in ``dest_real``."""
    for entry in set(os.listdir(dest_real)) - before:
        p = os.path.join(dest_real, entry)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.remove(p)
            except OSError:
                pass


def _zip_declared_entries(archive: str) -> Optional[int]:
    """The entry count of the zip's end-of-central-directory record (zip64 included), read from
    the last 64 KiB of the file without parsing the central directory; None if not found."""
    with open(archive, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        n = min(size, 22 + 0xFFFF)
        f.seek(size - n)
        tail = f.read(n)
        i = tail.rfind(b"PK\x05\x06")
        if i < 0 or len(tail) - i < 22:
            return None
        total = struct.unpack("<H", tail[i + 10:i + 12])[0]
        if total != 0xFFFF or i < 20 or tail[i - 20:i - 16] != b"PK\x06\x07":
            return total
        offset = struct.unpack("<Q", tail[i - 12:i - 4])[0]  # of the zip64 end record
        f.seek(offset)
        rec = f.read(56)
        if len(rec) < 56 or rec[:4] != b"PK\x06\x06":
            return total
        return struct.unpack("<Q", rec[32:40])[0]


def _check_layout(plan) -> None:
    """Refuse a name used both as a file and as a folder (``a`` and ``a/b``): it cannot be extracted."""
    files = {rel: name for rel, is_dir, name in plan if not is_dir}
    for rel, _, name in plan:
        parent = os.path.dirname(rel)
        while parent:
            if parent in files:
                raise DatasetError(f"the archive holds {files[parent]!r} as a file and also as the folder "
                                   f"of {name!r}; it cannot be extracted")
            parent = os.path.dirname(parent)


def _extract_zip(archive: str, dest_real: str, limits: ArchiveLimits):
    declared = _zip_declared_entries(archive)
    if declared is not None and declared > limits.max_files:
        raise UnsafeArchive(f"the archive has {declared} entries (limit {limits.max_files}); nothing was extracted")
    zf = zipfile.ZipFile(archive)  # BadZipFile: reported by safe_extract as a corrupt zip
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_files:
            raise UnsafeArchive(f"the archive has {len(infos)} entries (limit {limits.max_files}); "
                                "nothing was extracted")
        total = 0
        plan = []
        for info in infos:
            rel = _safe_relpath(info.filename)
            mode = (info.external_attr >> 16) & 0xFFFF
            if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                kind = "symlink" if stat.S_ISLNK(mode) else "special file"
                raise UnsafeArchive(f"{kind} in archive: {info.filename!r}")
            if info.flag_bits & 0x1:
                raise UnsafeArchive(f"encrypted member: {info.filename!r}")
            total += info.file_size
            if info.file_size > limits.max_file_bytes:
                raise UnsafeArchive(f"{info.filename!r}: member larger than {limits.max_file_bytes} bytes")
            if total > limits.max_total_bytes:
                raise UnsafeArchive(f"archive expands to more than {limits.max_total_bytes} bytes")
            if (info.file_size > limits.ratio_min_bytes
                    and info.file_size / max(1, info.compress_size) > limits.max_ratio):
                raise UnsafeArchive(f"{info.filename!r}: compression ratio "
                                    f"{info.file_size / max(1, info.compress_size):.0f} above "
                                    f"{limits.max_ratio:g} (possible zip bomb)")
            if rel:
                plan.append((info, rel))
        _check_layout([(rel, info.is_dir(), info.filename) for info, rel in plan])
        _write_members(dest_real, _Budget(limits, os.path.getsize(archive)),
                       ((rel, info.is_dir(), info.filename, info.file_size, lambda info=info: zf.open(info))
                        for info, rel in plan))


def _write_members(dest_real: str, budget: "_Budget", members) -> None:
    """Write checked archive members ``(rel, is_dir, name, declared_size, open_fn)`` under ``dest_real``."""
    for rel, is_dir, name, declared, open_fn in members:
        target = _target(dest_real, rel)
        if is_dir:
            os.makedirs(target, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _target(dest_real, rel)  # parents may not be links (we never create links)
        try:
            src = open_fn()
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError,
                NotImplementedError) as e:
            raise _Unreadable(name, _reason(e)) from None
        if src is None:
            continue
        with src:
            _copy(src, target, budget, name, declared=declared)


def _extract_tar(archive: str, dest_real: str, limits: ArchiveLimits):
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as e:
        raise _Unreadable(None, _reason(e)) from None
    with tf:
        members = []
        total = 0
        archive_size = max(1, os.path.getsize(archive))
        try:
            for m in tf:  # streams headers; stops at the count limit before reading everything
                if len(members) >= limits.max_files:
                    raise UnsafeArchive(f"the archive has more than {limits.max_files} entries; "
                                        "nothing was extracted")
                rel = _safe_relpath(m.name)
                if m.issym() or m.islnk():
                    raise UnsafeArchive(f"link in archive: {m.name!r} -> {m.linkname!r}")
                if not (m.isfile() or m.isdir()):
                    raise UnsafeArchive(f"special file in archive: {m.name!r}")
                total += m.size
                if m.size > limits.max_file_bytes:
                    raise UnsafeArchive(f"{m.name!r}: member larger than {limits.max_file_bytes} bytes")
                if total > limits.max_total_bytes:
                    raise UnsafeArchive(f"archive expands to more than {limits.max_total_bytes} bytes")
                if total > limits.ratio_min_bytes and total / archive_size > limits.max_ratio:
                    raise UnsafeArchive(f"archive compression ratio above {limits.max_ratio:g} "
                                        f"(possible decompression bomb)")
                if rel:
                    members.append((m, rel))
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as e:
            raise _Unreadable(None, _reason(e)) from None
        _check_layout([(rel, m.isdir(), m.name) for m, rel in members])
        _write_members(dest_real, _Budget(limits, os.path.getsize(archive)),
                       ((rel, m.isdir(), m.name, m.size, lambda m=m: tf.extractfile(m)) for m, rel in members))
