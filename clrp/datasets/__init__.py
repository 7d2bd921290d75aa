"""Dataset readers: PASCAL VOC, COCO instances, CSV of boxes, class-per-folder trees.

``open_dataset(path, format="auto")`` opens a folder, an annotation file or an archive (zip/tar,
extracted safely into a temporary folder that ``close()`` removes). See ``base`` for the record
types and the box convention (0-based, exclusive end).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import Optional, Sequence

from ..errors import DatasetError, UnsafeArchive
from .archive import DEFAULT_LIMITS, ArchiveLimits, is_archive, safe_extract
from .base import IMAGE_EXTENSIONS, Dataset, Obj, Problem, Sample, box_to_mask, load_rgb
from .classmap import ClassMapping, map_classes, normalize_name
from .coco import CocoDataset, polygons_to_mask, rle_decode, rle_encode, rle_string_to_counts
from .simple import CsvDataset, FolderDataset
from .voc import VocDataset, parse_voc_xml

FORMATS = ("voc", "coco", "csv", "folders")

__all__ = [
    "open_dataset", "detect_format", "Dataset", "Sample", "Obj", "Problem", "ClassMapping",
    "map_classes", "normalize_name", "VocDataset", "CocoDataset", "CsvDataset", "FolderDataset",
    "safe_extract", "ArchiveLimits", "DEFAULT_LIMITS", "is_archive", "box_to_mask", "load_rgb",
    "rle_decode", "rle_encode", "rle_string_to_counts", "polygons_to_mask", "parse_voc_xml",
    "DatasetError", "UnsafeArchive", "FORMATS", "IMAGE_EXTENSIONS",
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
        raise DatasetError(f"{path}: unknown dataset file type")
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
                 **reader_options) -> Dataset:
    """Open a dataset folder, annotation file (COCO ``.json``, ``.csv``) or archive (zip/tar).

    ``format``: ``"auto"`` or one of ``FORMATS``. ``split``: VOC ``ImageSets/Main/<split>.txt``.
    ``images_dir``: image folder for COCO/CSV (guessed if omitted). ``classes``: restrict to these
    dataset classes (objects of other classes are dropped and reported). Archives are extracted
    with ``safe_extract(limits=...)`` into ``extract_to`` or a temporary folder removed by
    ``Dataset.close()`` (or at garbage collection). ``reader_options`` go to the reader
    (e.g. ``box_convention`` for CSV, ``use_segmentation`` for COCO).
    """
    if format != "auto" and format not in FORMATS:
        raise DatasetError(f"unknown format {format!r}; expected 'auto' or one of {FORMATS}")
    tmp = None
    if os.path.isfile(path) and is_archive(path):
        if extract_to is None:
            tmp = tempfile.mkdtemp(prefix="clrp-dataset-")
            extract_to = tmp
        try:
            safe_extract(path, extract_to, limits)
            ds = open_dataset(extract_to, format, split=split, images_dir=images_dir,
                              classes=classes, **reader_options)
        except BaseException:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if tmp:
            fin = weakref.finalize(ds, shutil.rmtree, tmp, True)
            ds._cleanup = fin
        return ds
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
    return FolderDataset(loc, classes=classes)
