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

Headers are validated before anything is written, and the byte counts are enforced again while
streaming (header sizes are not trusted). On refusal, the partially extracted files are removed.
"""
from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass

from ..errors import DatasetError, UnsafeArchive

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    max_total_bytes: int = 16 * 1024 ** 3   # 16 GiB: VOC2012 (2 GB) and COCO val (1 GB) fit
    max_file_bytes: int = 4 * 1024 ** 3     # largest single member (COCO train annotations: 450 MB)
    max_files: int = 250_000                # COCO train2017 has 118k images
    max_ratio: float = 100.0                # JPEGs ~1:1, XML/JSON ~5-20:1; bombs are >1000:1
    ratio_min_bytes: int = 1024 ** 2        # per-member ratio check only above 1 MiB uncompressed


DEFAULT_LIMITS = ArchiveLimits()


def is_archive(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    try:
        return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)
    except OSError:
        return False


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
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            written += len(chunk)
            if declared is not None and written > declared:
                raise UnsafeArchive(f"{name!r}: more data than its header declares")
            budget.add(len(chunk), name, written)
            out.write(chunk)


def safe_extract(archive: str, dest: str, limits: ArchiveLimits = DEFAULT_LIMITS) -> str:
    """Extract ``archive`` (zip, tar, tar.gz/bz2/xz) into ``dest`` safely; returns ``dest``.

    Raises ``UnsafeArchive`` (see module doc) or ``DatasetError`` for an unreadable archive.
    """
    os.makedirs(dest, exist_ok=True)
    dest_real = os.path.realpath(dest)
    before = set(os.listdir(dest_real))
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest_real, limits)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, dest_real, limits)
        else:
            raise DatasetError(f"{os.path.basename(archive)}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as e:
        _remove_new(dest_real, before)
        raise DatasetError(f"{os.path.basename(archive)}: cannot extract ({type(e).__name__}: {e})") from e
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


def _extract_zip(archive: str, dest_real: str, limits: ArchiveLimits):
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"{os.path.basename(archive)}: unreadable zip ({e})") from e
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_files:
            raise UnsafeArchive(f"archive has {len(infos)} entries (limit {limits.max_files})")
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
        src = open_fn()
        if src is None:
            continue
        with src:
            _copy(src, target, budget, name, declared=declared)


def _extract_tar(archive: str, dest_real: str, limits: ArchiveLimits):
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise DatasetError(f"{os.path.basename(archive)}: unreadable tar ({e})") from e
    with tf:
        members = []
        total = 0
        archive_size = max(1, os.path.getsize(archive))
        try:
            for m in tf:  # streams headers; stops at the count limit before reading everything
                if len(members) >= limits.max_files:
                    raise UnsafeArchive(f"archive has more than {limits.max_files} entries")
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
        except tarfile.TarError as e:
            raise DatasetError(f"{os.path.basename(archive)}: corrupt tar ({e})") from e
        _write_members(dest_real, _Budget(limits, os.path.getsize(archive)),
                       ((rel, m.isdir(), m.name, m.size, lambda m=m: tf.extractfile(m)) for m, rel in members))
