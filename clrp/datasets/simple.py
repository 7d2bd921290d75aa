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
from typing import Iterator, Optional, Sequence

from ..errors import DatasetError
from .base import IMAGE_EXTENSIONS, Dataset, Obj, Sample

CSV_COLUMNS = ("filename", "class", "xmin", "ymin", "xmax", "ymax")


class CsvDataset(Dataset):
    format = "csv"

    def __init__(self, csv_path: str, images_dir: Optional[str] = None,
                 classes: Optional[Sequence[str]] = None, box_convention: str = "xyxy",
                 delimiter: str = ","):
        super().__init__(os.path.dirname(os.path.abspath(csv_path)))
        if box_convention not in ("xyxy", "voc"):
            raise DatasetError(f"box_convention must be 'xyxy' or 'voc', got {box_convention!r}")
        self.csv_path = csv_path
        self.images_dir = images_dir or self.root
        self.classes_filter = list(classes) if classes is not None else None
        self.offset = 1.0 if box_convention == "voc" else 0.0
        self._groups: dict = {}   # filename -> list of (line, row dict) ; rows are small, kept
        self._bad: dict = {}      # filename -> reason (first bad row)
        name = os.path.basename(csv_path)
        try:
            f = open(csv_path, newline="", encoding="utf-8-sig")
        except OSError as e:
            raise DatasetError(f"{name}: cannot read ({e.strerror or e})") from e
        with f:
            reader = csv.reader(f, delimiter=delimiter)
            header = None
            for lineno, row in enumerate(reader, 1):
                if not row or all(not c.strip() for c in row):
                    continue
                cells = [c.strip() for c in row]
                if lineno == 1 and header is None and _looks_like_header(cells):
                    header = [c.lower() for c in cells]
                    missing = [c for c in CSV_COLUMNS if c not in header]
                    if missing:
                        raise DatasetError(f"{name}: header lacks column(s) {missing}")
                    continue
                if header is not None:
                    rec = dict(zip(header, cells))
                    if len(cells) != len(header):
                        self._mark_bad(rec.get("filename") or f"line {lineno}",
                                       f"line {lineno}: {len(cells)} fields, header has {len(header)}")
                        continue
                else:
                    if len(cells) < 6:
                        self._mark_bad(cells[0] if cells else f"line {lineno}",
                                       f"line {lineno}: expected 6 fields, got {len(cells)}")
                        continue
                    rec = dict(zip(CSV_COLUMNS, cells))
                fn = rec["filename"]
                if not fn:
                    self.report(name, f"line {lineno}: empty filename")
                    continue
                self._groups.setdefault(fn, []).append((lineno, rec))

    def _mark_bad(self, fn, reason):
        self._groups.setdefault(fn, [])
        self._bad.setdefault(fn, reason)

    def __len__(self):
        return len(self._groups)

    def _sample(self, fn, rows) -> Sample:
        if fn in self._bad:
            raise DatasetError(self._bad[fn])
        width = height = None
        objs = []
        for lineno, r in rows:
            if r.get("width") and r.get("height"):
                try:
                    width, height = int(float(r["width"])), int(float(r["height"]))
                except ValueError:
                    raise DatasetError(f"line {lineno}: bad width/height")
            cname = r.get("class", "")
            coords = [r.get(k, "") for k in ("xmin", "ymin", "xmax", "ymax")]
            if not cname and not any(coords):
                continue  # image listed without objects
            if not cname:
                raise DatasetError(f"line {lineno}: empty class")
            try:
                x0, y0, x1, y1 = (float(v) for v in coords)
            except ValueError:
                raise DatasetError(f"line {lineno}: bad box {coords} (non-numeric)")
            if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
                raise DatasetError(f"line {lineno}: bad box {coords} (non-finite)")
            box = (x0 - self.offset, y0 - self.offset, x1, y1)
            if box[2] <= box[0] or box[3] <= box[1]:
                raise DatasetError(f"line {lineno}: bad box {coords} (empty or inverted)")
            if self.classes_filter is not None and cname not in self.classes_filter:
                self.report(fn, f"line {lineno}: unknown class {cname!r} (object dropped)")
                continue
            diff = r.get("difficult", "0") or "0"
            try:
                difficult = bool(int(float(diff)))
            except ValueError:
                raise DatasetError(f"line {lineno}: bad difficult flag {diff!r}")
            objs.append(Obj(cname, box, difficult))
        path = os.path.join(self.images_dir, fn)
        if not os.path.isfile(path):
            raise DatasetError("missing image file")
        return Sample(image_id=fn, path=path, width=width, height=height, objects=objs)

    def samples(self) -> Iterator[Sample]:
        for fn, rows in self._groups.items():
            try:
                yield self._sample(fn, rows)
            except DatasetError as e:
                self.report(fn, str(e))

    def class_names(self) -> list:
        if self.classes_filter is not None:
            return list(self.classes_filter)
        seen = []
        for rows in self._groups.values():
            for _, r in rows:
                c = r.get("class", "")
                if c and c not in seen:
                    seen.append(c)
        return sorted(seen)


def _looks_like_header(cells) -> bool:
    low = [c.lower() for c in cells]
    return "filename" in low and "class" in low


class FolderDataset(Dataset):
    """``root/<class>/<image>`` trees; labels only (``Sample.objects`` is empty)."""

    format = "folders"

    def __init__(self, root: str, classes: Optional[Sequence[str]] = None):
        super().__init__(root)
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
                    if not fn.startswith(".") and fn.lower().endswith(IMAGE_EXTENSIONS):
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
