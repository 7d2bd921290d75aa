"""Dataset readers: PASCAL VOC, COCO instances, CSV of boxes, class-per-folder trees.

``open_dataset(path, format="auto")`` opens a folder, an annotation file or an archive (zip/tar,
extracted safely into a temporary folder that ``close()`` removes). See ``base`` for the record
types and the box convention (0-based, exclusive end).

``display_name`` is the name the user knows the data by (an uploaded file's original name, a
server folder relative to its root): every message and problem names the file under it, never
under the temporary path it was saved or extracted to.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import Optional, Sequence

from ..errors import DatasetError, UnsafeArchive
from .archive import DEFAULT_LIMITS, UPLOAD_LIMITS, ArchiveLimits, archive_kind, is_archive, safe_extract
from .base import (DEFAULT_ANNOTATION_LIMITS, IMAGE_EXTENSIONS, MISSING_IMAGE, UPLOAD_ANNOTATION_LIMITS,
                   AnnotationLimits, Dataset, Obj, Problem, Sample, box_to_mask, load_rgb)
from .classmap import ClassMapping, NoClassMapped, map_classes, normalize_name
from .coco import CocoDataset, polygons_to_mask, rle_decode, rle_encode, rle_string_to_counts
from .simple import CsvDataset, FolderDataset
from .voc import VocDataset, parse_voc_xml

FORMATS = ("voc", "coco", "csv", "folders")

__all__ = [
    "open_dataset", "detect_format", "Dataset", "Sample", "Obj", "Problem", "ClassMapping",
    "map_classes", "normalize_name", "NoClassMapped", "VocDataset", "CocoDataset", "CsvDataset", "FolderDataset",
    "safe_extract", "ArchiveLimits", "DEFAULT_LIMITS", "UPLOAD_LIMITS", "is_archive", "archive_kind", "box_to_mask", "load_rgb",
    "rle_decode", "rle_encode", "rle_string_to_counts", "polygons_to_mask", "parse_voc_xml",
    "DatasetError", "UnsafeArchive", "FORMATS", "IMAGE_EXTENSIONS", "AnnotationLimits",
    "DEFAULT_ANNOTATION_LIMITS", "UPLOAD_ANNOTATION_LIMITS", "MISSING_IMAGE",
]


def _is_coco_json(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return b'"images"' in head or b'"annotations"' in head or b'"categories"' in head


def _find_voc_root(d: str, depth: int = 3) -> Optional[str]:
    if os.path.isdir(os.path.join(d, "Annotations")) and os.path.isdir(os.path.join(d, "JPEGImages")):
        return d
    if depth == 0:
        return None
    try:
        subs = sorted(x for x in os.listdir(d) if not x.startswith(".") and not x.startswith("__MACOSX"))
    except OSError:
        return None
    for x in subs:
        p = os.path.join(d, x)
        if os.path.isdir(p) and not os.path.islink(p):
            r = _find_voc_root(p, depth - 1)
            if r:
                return r
    return None


def _find_half_voc(d: str, depth: int = 3) -> Optional[str]:
    """What is missing when ``d`` holds one half of a VOC layout (JPEGImages/ or Annotations/
    alone), so it is not taken for a class-per-folder tree with one class; else None."""
    for dirpath, dirnames, _ in os.walk(d):
        if dirpath[len(d):].count(os.sep) >= depth:
            dirnames[:] = []
        names = set(dirnames)
        if "JPEGImages" in names and "Annotations" not in names:
            return ("a JPEGImages/ folder without Annotations/ next to it: the annotations are missing. "
                    "A PASCAL VOC dataset needs both (Annotations/ holds one XML file of boxes per image)")
        if "Annotations" in names and "JPEGImages" not in names:
            return ("an Annotations/ folder without JPEGImages/ next to it: the images are missing. "
                    "A PASCAL VOC dataset needs both")
        dirnames[:] = sorted(x for x in dirnames if not x.startswith(".") and x != "__MACOSX")
    return None


def _find_files(d: str, exts, depth: int = 2) -> list:
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        if dirpath[len(d):].count(os.sep) >= depth:
            dirnames[:] = []
        dirnames[:] = sorted(x for x in dirnames if not x.startswith(".") and x != "__MACOSX")
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                   if f.lower().endswith(exts) and not f.startswith("."))
    return out


def detect_format(path: str) -> tuple:
    """Return ``(format, location)`` for a folder or file: location is the VOC root, the COCO
    JSON, the CSV or the class-folder root. Raises ``DatasetError`` if nothing fits."""
    if os.path.isfile(path):
        low = path.lower()
        if low.endswith(".json"):
            return "coco", path
        if low.endswith(".csv"):
            return "csv", path
        if low.endswith(".xml"):
            raise DatasetError(f"{path}: a single XML file; open the VOC folder (with Annotations/) instead")
        raise DatasetError(f"{path}: unknown dataset file type (expected a folder, a .zip or .tar archive, "
                           "a COCO .json or a .csv of boxes)")
    if not os.path.isdir(path):
        raise DatasetError(f"{path}: no such file or folder")
    voc = _find_voc_root(path)
    if voc:
        return "voc", voc
    jsons = [j for j in _find_files(path, (".json",)) if _is_coco_json(j)]
    if jsons:
        inst = [j for j in jsons if os.path.basename(j).startswith("instances")]
        return "coco", (inst or jsons)[0]
    csvs = _find_files(path, (".csv",), depth=1)
    if csvs:
        return "csv", csvs[0]
    half = _find_half_voc(path)
    if half:
        raise DatasetError(f"{path}: {half}")
    subdirs = [x for x in os.listdir(path) if not x.startswith(".") and os.path.isdir(os.path.join(path, x))]
    if subdirs:
        # a single wrapping folder (typical for archives): look inside it
        if len(subdirs) == 1 and not any(f.lower().endswith(IMAGE_EXTENSIONS)
                                         for f in os.listdir(os.path.join(path, subdirs[0]))):
            return detect_format(os.path.join(path, subdirs[0]))
        return "folders", path
    raise DatasetError(f"{path}: no VOC (Annotations/ + JPEGImages/), COCO JSON, CSV or class folders found")


def open_dataset(path: str, format: str = "auto", *, split: Optional[str] = None,
                 images_dir: Optional[str] = None, classes: Optional[Sequence[str]] = None,
                 limits: ArchiveLimits = DEFAULT_LIMITS, extract_to: Optional[str] = None,
                 display_name: Optional[str] = None, **reader_options) -> Dataset:
    """Open a dataset folder, annotation file (COCO ``.json``, ``.csv``) or archive (zip/tar).

    Image paths named by annotations must resolve inside the dataset: the folder given, the
    archive's extraction folder, or for a single annotation file its folder (COCO: the folder
    above ``annotations/``) or ``images_dir``. Absolute paths, ``..`` escapes and symlinks that
    point out are reported with the same message as a missing file (``MISSING_IMAGE``).
    Annotation files larger than ``limits.annotations`` (``AnnotationLimits``) are refused.

    ``format``: ``"auto"`` or one of ``FORMATS``. ``split``: VOC ``ImageSets/Main/<split>.txt``.
    ``images_dir``: image folder for COCO/CSV (guessed if omitted). ``classes``: restrict to these
    dataset classes (objects of other classes are dropped and reported). Archives are extracted
    with ``safe_extract(limits=...)`` (``UPLOAD_LIMITS`` for files uploaded through a web page)
    into ``extract_to`` or a temporary folder removed by ``Dataset.close()`` (or at garbage
    collection; on an error it is removed at once). ``display_name``: the name messages use for
    ``path`` (e.g. an upload's original file name; default: an archive's base name, a folder's
    path as given); problems inside it are named relative to it. ``reader_options`` go to the
    reader (e.g. ``box_convention`` for CSV, ``use_segmentation`` for COCO).
    """
    path = os.fspath(path)
    if format != "auto" and format not in FORMATS:
        raise DatasetError(f"unknown format {format!r}; expected 'auto' or one of {FORMATS}")
    if os.path.isfile(path) and archive_kind(path, display_name):
        shown = display_name or os.path.basename(path)
        tmp = None
        if extract_to is None:
            tmp = tempfile.mkdtemp(prefix="clrp-dataset-")
            extract_to = tmp
        try:
            safe_extract(path, extract_to, limits, display_name=shown)
            ds = _open_named(extract_to, format, shown, split=split, images_dir=images_dir,
                             classes=classes, annotation_limits=limits.annotations, **reader_options)
        except BaseException:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if tmp:
            ds.on_close(weakref.finalize(ds, shutil.rmtree, tmp, True))
        return ds
    return _open_named(path, format, display_name or path, split=split, images_dir=images_dir,
                       classes=classes, annotation_limits=limits.annotations, **reader_options)


def _rename(msg: str, path: str, shown: str) -> str:
    """``msg`` with the internal ``path`` (and its absolute/real forms) replaced by ``shown``."""
    if shown == path:
        return msg
    for p in sorted({path, os.path.abspath(path), os.path.realpath(path)}, key=len, reverse=True):
        msg = msg.replace(p, shown)
    if os.path.isfile(path):  # readers name a single file by its base name
        base = os.path.basename(path)
        if msg.startswith(base + ":"):
            msg = shown + msg[len(base):]
    return msg


def _open_named(path: str, format: str, shown: str, **kw) -> Dataset:
    """``_open`` with the messages and problems naming ``path`` as ``shown``."""
    try:
        ds = _open(path, format, **kw)
    except DatasetError as e:
        msg = _rename(str(e), path, shown)
        if msg == str(e):
            raise
        raise type(e)(msg) from e.__cause__
    ds.display_name = shown
    ds.base = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return ds


def _open(path: str, format: str, *, split: Optional[str] = None, images_dir: Optional[str] = None,
          classes: Optional[Sequence[str]] = None, annotation_limits: AnnotationLimits = DEFAULT_ANNOTATION_LIMITS,
          **reader_options) -> Dataset:
    # a folder (or an archive's extraction folder) confines the images; a single file, its reader
    reader_options = dict(reader_options, annotation_limits=annotation_limits)
    if os.path.isdir(path):
        reader_options.setdefault("confine", path)
    if format == "auto" or os.path.isfile(path):
        detected, loc = detect_format(path)
        fmt = detected if format == "auto" else format
    else:  # explicit format for a folder: look for that format's files only
        fmt, loc = format, path
        if fmt == "voc":
            loc = _find_voc_root(path) or path
        elif fmt in ("coco", "csv"):
            found = [f for f in _find_files(path, (".json",) if fmt == "coco" else (".csv",))
                     if fmt == "csv" or _is_coco_json(f)]
            if fmt == "coco":
                found = [f for f in found if os.path.basename(f).startswith("instances")] or found
            if not found:
                raise DatasetError(f"{path}: no {fmt.upper()} annotation file found")
            loc = found[0]
    if fmt == "voc":
        return VocDataset(loc, split=split, classes=classes, **reader_options)
    if fmt == "coco":
        return CocoDataset(loc, images_dir=images_dir, classes=classes, **reader_options)
    if fmt == "csv":
        return CsvDataset(loc, images_dir=images_dir, classes=classes, **reader_options)
    return FolderDataset(loc, classes=classes, confine=reader_options.get("confine"))
