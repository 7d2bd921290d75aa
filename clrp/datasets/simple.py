"""CSV-of-boxes reader and class-per-folder image trees.

CSV: one row per box, columns ``filename, class, xmin, ymin, xmax, ymax`` (a header row with
these names is optional; extra columns ``difficult``, ``width``, ``height`` are used when the
header names them). Rows of one file are grouped into one sample, in order of first appearance.
A row with an empty class and empty coordinates lists an image without objects.
Box convention of the CSV: ``box_convention="xyxy"`` (default) = 0-based pixel-edge coordinates
with exclusive end, as in COCO/torchvision (``(0, 0, 10, 10)`` is a 10x10 box);
``"voc"`` = 1-based inclusive like VOC XML (converted by ``xmin - 1, ymin - 1``).

Class-per-folder tree: ``root/<class>/<image>`` -- image-level labels only, no boxes (used for
feature ablation and perturbation, not for the Pointing Game).
"""
from __future__ import annotations

import csv
import math
import os
from array import array
from typing import Iterator, Optional, Sequence

import numpy as np

from ..errors import DatasetError
from .base import (DEFAULT_ANNOTATION_LIMITS, IMAGE_EXTENSIONS, MISSING_IMAGE, AnnotationLimits, Dataset, Obj,
                   Sample)

CSV_COLUMNS = ("filename", "class", "xmin", "ymin", "xmax", "ymax")
CSV_OPTIONAL_COLUMNS = ("difficult", "width", "height")
_OK, _NO_OBJECT, _BAD = 0, 1, 2
_MAX_REASONS = 10_000  # reasons kept for malformed rows; later ones say "malformed row" only


class CsvDataset(Dataset):
    """A CSV of boxes, read in one streaming pass into compact arrays.

    Memory is bounded by the file: per row, its numbers in typed arrays (~60 bytes) and its file
    name once per run of rows naming the same image; no Python object per row. The rows of one
    image are grouped by a hash of the file name (names are compared again when a group is read).
    """

    format = "csv"

    def __init__(self, csv_path: str, images_dir: Optional[str] = None,
                 classes: Optional[Sequence[str]] = None, box_convention: str = "xyxy",
                 delimiter: str = ",", confine: Optional[str] = None,
                 annotation_limits: AnnotationLimits = DEFAULT_ANNOTATION_LIMITS):
        root = os.path.dirname(os.path.abspath(csv_path))
        super().__init__(root, [confine or root] + ([images_dir] if images_dir else []))
        if box_convention not in ("xyxy", "voc"):
            raise DatasetError(f"box_convention must be 'xyxy' or 'voc', got {box_convention!r}")
        self.csv_path = csv_path
        self.images_dir = images_dir or self.root
        self.classes_filter = list(classes) if classes is not None else None
        self.offset = 1.0 if box_convention == "voc" else 0.0
        name = os.path.basename(csv_path)
        annotation_limits.check_size(csv_path, "csv", name)
        try:
            f = open(csv_path, newline="", encoding="utf-8-sig", errors="replace")
        except OSError as e:
            raise DatasetError(f"{name}: cannot read ({e.strerror or e})") from e
        with f:
            self._read(csv.reader(f, delimiter=delimiter), name)
        self._group()

    # --- the one pass ----------------------------------------------------------------------------
    def _read(self, reader, name: str) -> None:
        self._names = bytearray()                 # file names, stored once per run of equal names
        self._run_at = array("q", [0])            # run k's name is _names[_run_at[k]:_run_at[k + 1]]
        self._run = array("i")                    # row -> its run
        self._hash = array("q")
        self._line, self._status, self._cls = array("i"), array("b"), array("i")
        self._box, self._diff = array("d"), array("b")
        self._wh = None                           # (width, height) per row, if the header has them
        self._reasons: dict = {}                  # row -> why it is malformed (the first _MAX_REASONS)
        self._class_ids: dict = {}                # class name -> id (order of first appearance)
        header = None
        prev = None
        for lineno, row in enumerate(reader, 1):
            if not row or all(not c.strip() for c in row):
                continue
            cells = [c.strip() for c in row]
            if header is None and not self._line and lineno == 1 and _is_header(cells):
                header = [c.lower() for c in cells]
                if "width" in header and "height" in header:
                    self._wh = array("i")
                missing = [c for c in CSV_COLUMNS if c not in header]
                if missing:
                    raise DatasetError(
                        f"{name}: the header lacks the column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)} (it has: {', '.join(cells)[:200]}); a CSV of boxes needs "
                        f"{', '.join(CSV_COLUMNS)} (optional: {', '.join(CSV_OPTIONAL_COLUMNS)})")
                continue
            if header is not None:
                rec = dict(zip(header, cells))
                fn = rec.get("filename") or f"line {lineno}"
                bad = (f"line {lineno}: {len(cells)} fields, header has {len(header)}"
                       if len(cells) != len(header) else None)
            else:
                rec = dict(zip(CSV_COLUMNS, cells))
                fn = cells[0] or f"line {lineno}"
                bad = f"line {lineno}: expected 6 fields, got {len(cells)}" if len(cells) < 6 else None
            if bad is None and not rec.get("filename"):
                self.report(name, f"line {lineno}: empty filename")
                continue
            if fn != prev:
                encoded = fn.encode("utf-8", "surrogatepass")
                prev, prev_hash = fn, hash(fn)
                self._names += encoded
                self._run_at.append(len(self._names))
            self._run.append(len(self._run_at) - 2)
            self._hash.append(prev_hash)
            self._line.append(lineno)
            status, cls, box, wh, diff = (self._parse(rec, lineno) if bad is None
                                          else (_BAD, -1, (0.0,) * 4, (-1, -1), 0))
            if isinstance(status, str):
                bad, status = status, _BAD
            if bad is not None and len(self._reasons) < _MAX_REASONS:
                self._reasons[len(self._status)] = bad
            self._status.append(status)
            self._cls.append(cls)
            self._box.extend(box)
            if self._wh is not None:
                self._wh.extend(wh)
            self._diff.append(diff)

    def _parse(self, r: dict, lineno: int) -> tuple:
        """(status or reason, class id, box, (width, height), difficult) of one row."""
        nothing = (-1, (0.0,) * 4, (-1, -1), 0)
        wh = (-1, -1)
        if r.get("width") and r.get("height"):
            try:
                wh = (int(float(r["width"])), int(float(r["height"])))
            except (ValueError, OverflowError):
                return (f"line {lineno}: bad width/height",) + nothing
        cname = r.get("class", "")
        coords = [r.get(k, "") for k in ("xmin", "ymin", "xmax", "ymax")]
        if not cname and not any(coords):
            return (_NO_OBJECT, -1, (0.0,) * 4, wh, 0)  # image listed without objects
        if not cname:
            return (f"line {lineno}: empty class",) + nothing
        cls = self._class_ids.setdefault(cname, len(self._class_ids))
        try:
            x0, y0, x1, y1 = (float(v) for v in coords)
        except ValueError:
            return (f"line {lineno}: bad box {coords} (non-numeric)", cls) + nothing[1:]
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            return (f"line {lineno}: bad box {coords} (non-finite)", cls) + nothing[1:]
        box = (x0 - self.offset, y0 - self.offset, x1, y1)
        if box[2] <= box[0] or box[3] <= box[1]:
            return (f"line {lineno}: bad box {coords} (empty or inverted)", cls) + nothing[1:]
        flag = r.get("difficult", "0") or "0"
        try:
            difficult = int(bool(int(float(flag))))
        except (ValueError, OverflowError):
            return (f"line {lineno}: bad difficult flag {flag!r}", cls) + nothing[1:]
        return (_OK, cls, box, wh, difficult)

    def _group(self) -> None:
        """Rows of one image together: ``_order`` lists row indices by image, images in order of
        first appearance; ``_starts`` delimits them."""
        hashes = np.frombuffer(self._hash, dtype=np.int64) if len(self._hash) else np.zeros(0, np.int64)
        order = np.argsort(hashes, kind="stable")
        sorted_h = hashes[order]
        starts = np.flatnonzero(np.r_[True, sorted_h[1:] != sorted_h[:-1]]) if len(order) else np.zeros(0, int)
        firsts = order[starts]  # stable sort: each group's first row in file order
        by_appearance = np.argsort(firsts, kind="stable")
        bounds = np.r_[starts, len(order)]
        index = np.int32 if len(order) < 2 ** 31 else np.int64
        self._order = order.astype(index)
        self._group_start = bounds[by_appearance].astype(index)  # arrays, not a tuple per image
        self._group_end = bounds[by_appearance + 1].astype(index)
        del self._hash  # not needed any more

    def _name(self, row: int) -> str:
        run = self._run[row]
        return self._names[self._run_at[run]:self._run_at[run + 1]].decode("utf-8", "surrogatepass")

    def _images(self) -> Iterator[tuple]:
        """(file name, row indices in file order) per image."""
        for g in range(len(self._group_start)):
            rows = self._order[self._group_start[g]:self._group_end[g]]
            names: dict = {}
            for row in rows:  # one name unless two names share a hash
                names.setdefault(self._name(int(row)), []).append(int(row))
            yield from names.items()

    def __len__(self):
        return len(self._group_start)

    def _sample(self, fn: str, rows: list) -> Sample:
        bad = next((r for r in rows if self._status[r] == _BAD), None)
        if bad is not None:
            raise DatasetError(self._reasons.get(bad, f"line {self._line[bad]}: malformed row"))
        width = height = None
        objs = []
        classes = list(self._class_ids)
        for r in rows:
            if self._wh is not None and self._wh[2 * r] >= 0:
                width, height = self._wh[2 * r], self._wh[2 * r + 1]
            if self._status[r] == _NO_OBJECT:
                continue
            cname = classes[self._cls[r]]
            if self.classes_filter is not None and cname not in self.classes_filter:
                self.report(fn, f"line {self._line[r]}: unknown class {cname!r} (object dropped)")
                continue
            objs.append(Obj(cname, tuple(self._box[4 * r:4 * r + 4]), bool(self._diff[r])))
        path = self.contained_file(self.images_dir, fn)
        if path is None:
            raise DatasetError(MISSING_IMAGE)
        return Sample(image_id=fn, path=path, width=width, height=height, objects=objs)

    def samples(self) -> Iterator[Sample]:
        for fn, rows in self._images():
            try:
                yield self._sample(fn, rows)
            except DatasetError as e:
                self.report(fn, str(e))

    def class_names(self) -> list:
        if self.classes_filter is not None:
            return list(self.classes_filter)
        return sorted(self._class_ids)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _is_header(cells) -> bool:
    """The first row names columns: it has ``filename`` and ``class``, or it is no row of boxes
    (a non-number where a coordinate goes) -- then the missing columns are named."""
    low = [c.lower() for c in cells]
    if "filename" in low and "class" in low:
        return True
    return len(cells) >= 6 and all(c and not _is_number(c) for c in cells[2:6])


class FolderDataset(Dataset):
    """``root/<class>/<image>`` trees; labels only (``Sample.objects`` is empty)."""

    format = "folders"

    def __init__(self, root: str, classes: Optional[Sequence[str]] = None, confine: Optional[str] = None):
        super().__init__(root, confine)
        if not os.path.isdir(root):
            raise DatasetError(f"{root}: not a folder")
        subdirs = sorted(d for d in os.listdir(root)
                         if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
        self._classes = []
        self._files = []  # (class, relative path) -- names only, images opened on demand
        for d in subdirs:
            if classes is not None and d not in classes:
                continue
            files = []
            for dirpath, dirnames, filenames in os.walk(os.path.join(root, d)):
                dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
                for fn in sorted(filenames):
                    if (not fn.startswith(".") and fn.lower().endswith(IMAGE_EXTENSIONS)
                            and self.contained_file(dirpath, fn)):  # no symlink pointing out
                        files.append(os.path.relpath(os.path.join(dirpath, fn), root))
            if files:
                self._classes.append(d)
                self._files.extend((d, f) for f in files)
        if not self._files:
            raise DatasetError(f"{root}: no class folders with images")

    def __len__(self):
        return len(self._files)

    def samples(self) -> Iterator[Sample]:
        for cls, rel in self._files:
            yield Sample(image_id=rel.replace(os.sep, "/"), path=os.path.join(self.root, rel),
                         width=None, height=None, objects=[], labels=[cls])

    def class_names(self) -> list:
        return list(self._classes)
