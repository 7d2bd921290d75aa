"""COCO instances reader (``instances_*.json``); masks are decoded and rasterised by pycocotools.

* ``bbox [x, y, w, h]`` -> ``(x, y, x + w, y + h)`` (already 0-based pixel-edge coordinates).
* ``segmentation``: polygons (list of ``[x1, y1, x2, y2, ...]``), uncompressed RLE
  (``{"counts": [int, ...], "size": [h, w]}``) or compressed RLE (``counts`` as a string).
  pycocotools (``frPyObjects``, ``merge``, ``decode``) turns them into masks, so ground truth is
  bit-identical with every other COCO evaluation; clrp checks the input first (malformed
  polygons, RLE counts that do not cover the image, truncated RLE strings) so that a bad file is
  a reported problem, not a crash. Masks are decoded lazily, on first access of ``Obj.mask``.
* ``iscrowd`` is kept on ``Obj.iscrowd`` (crowd regions are ground truth for their class).
* categories may have sparse ids; class names are the category ``name``.

Problems reported: annotations for unknown images or categories, malformed bbox (the image is
skipped), malformed segmentation (the image is skipped), missing image files.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Iterator, Optional, Sequence

import numpy as np

from ..errors import DatasetError
from .base import (DEFAULT_ANNOTATION_LIMITS, MISSING_IMAGE, AnnotationLimits, Dataset, Obj, Sample, is_inside,
                   real_folder)


# ---------------------------------------------------------------------------------------------
# RLE
def rle_string_to_counts(s: str) -> list:
    """Decode COCO's compressed RLE string (pycocotools ``rleFrString``) into run lengths.

    Each count is a little-endian sequence of 5-bit groups stored as ``chr(48 + group)``, bit
    0x20 meaning "more groups follow" and bit 0x10 of the last group the sign; from the fourth
    count on, the value is a difference to the count two places earlier.
    """
    counts: list = []
    p, n = 0, len(s)
    while p < n:
        x = 0
        k = 0
        more = True
        while more:
            if p >= n:
                raise DatasetError("truncated RLE string")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise DatasetError(f"invalid character {s[p]!r} in RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(counts, height: int, width: int) -> np.ndarray:
    """Decode an RLE (``counts`` list or compressed string) to a bool [height, width] mask.

    Runs alternate 0,1,0,... starting with zeros, in column-major (Fortran) order.
    """
    from pycocotools import mask as coco_mask

    if isinstance(counts, (bytes, bytearray)):
        counts = counts.decode("ascii")
    text = counts if isinstance(counts, str) else None
    runs = [int(c) for c in (rle_string_to_counts(text) if text is not None else counts)]  # validation
    if any(c < 0 for c in runs):
        raise DatasetError("negative run length in RLE")
    total = height * width
    if sum(runs) != total:
        raise DatasetError(f"RLE covers {sum(runs)} pixels, image has {total}")
    rle = ({"counts": text.encode("ascii"), "size": [height, width]} if text is not None
           else coco_mask.frPyObjects({"counts": runs, "size": [height, width]}, height, width))
    return coco_mask.decode(rle).astype(np.bool_)


def rle_encode(mask: np.ndarray) -> list:
    """Uncompressed COCO RLE counts of a bool mask (column-major, starting with zeros)."""
    flat = np.asarray(mask, dtype=np.bool_).T.reshape(-1)
    counts = []
    cur = False
    run = 0
    for v in flat:
        if bool(v) == cur:
            run += 1
        else:
            counts.append(run)
            cur = not cur
            run = 1
    counts.append(run)
    return counts


def polygons_to_mask(polygons, height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons (the union of the parts) as pycocotools does."""
    from pycocotools import mask as coco_mask

    if not polygons:
        return np.zeros((height, width), dtype=np.bool_)
    rles = coco_mask.frPyObjects([[float(v) for v in p] for p in polygons], height, width)
    return coco_mask.decode(coco_mask.merge(rles)).astype(np.bool_)


def _check_segmentation(seg, height, width) -> None:
    if isinstance(seg, list):
        if not seg:
            raise DatasetError("empty polygon list")
        for poly in seg:
            if (not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2
                    or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in poly)):
                raise DatasetError("malformed polygon (needs >= 3 numeric x,y pairs)")
    elif isinstance(seg, dict):
        size = seg.get("size")
        counts = seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2):
            raise DatasetError("RLE without a [h, w] size")
        if height is not None and width is not None and [int(size[0]), int(size[1])] != [height, width]:
            raise DatasetError(f"RLE size {size} != image size [{height}, {width}]")
        if not isinstance(counts, (list, str)):
            raise DatasetError("RLE counts must be a list or a string")
    else:
        raise DatasetError(f"unknown segmentation type {type(seg).__name__}")


def _seg_loader(seg, height, width):
    def load():
        if isinstance(seg, list):
            return polygons_to_mask(seg, height, width)
        h, w = int(seg["size"][0]), int(seg["size"][1])
        return rle_decode(seg["counts"], h, w)
    return load


# ---------------------------------------------------------------------------------------------
class CocoDataset(Dataset):
    format = "coco"

    def __init__(self, annotation_file: str, images_dir: Optional[str] = None,
                 classes: Optional[Sequence[str]] = None, use_segmentation: bool = True,
                 confine: Optional[str] = None, annotation_limits: AnnotationLimits = DEFAULT_ANNOTATION_LIMITS):
        jdir = os.path.dirname(os.path.abspath(annotation_file))
        if confine is None:  # the dataset's folder: above annotations/ in COCO's own layout
            confine = os.path.dirname(jdir) if os.path.basename(jdir) == "annotations" else jdir
        super().__init__(jdir, [confine] + ([images_dir] if images_dir else []))
        self.annotation_file = annotation_file
        self.use_segmentation = use_segmentation
        annotation_limits.check_size(annotation_file, "json")
        try:
            with open(annotation_file, "rb") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{os.path.basename(annotation_file)}: cannot read COCO JSON ({e})") from e
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DatasetError(f"{os.path.basename(annotation_file)}: not a COCO instances file "
                               f"(no 'images' list)")
        anns = data.get("annotations") or []
        cats = data.get("categories") or []
        if not isinstance(anns, list) or not isinstance(cats, list):
            raise DatasetError(f"{os.path.basename(annotation_file)}: 'annotations'/'categories' must be lists")
        self.categories: dict = {}
        for c in cats:
            try:
                self.categories[int(c["id"])] = str(c["name"])
            except (KeyError, TypeError, ValueError):
                self.report(os.path.basename(annotation_file), f"malformed category {c!r:.80}")
        self.classes_filter = list(classes) if classes is not None else None
        self.images: list = []
        ids = set()
        for im in data["images"]:
            try:
                rec = (im["id"], str(im["file_name"]), int(im["width"]), int(im["height"]))
            except (KeyError, TypeError, ValueError):
                self.report(os.path.basename(annotation_file), f"malformed image entry {im!r:.80}")
                continue
            ids.add(rec[0])
            self.images.append(rec)
        self._anns = defaultdict(list)
        for a in anns:
            if not isinstance(a, dict) or a.get("image_id") not in ids:
                self.report(os.path.basename(annotation_file),
                            f"annotation {a.get('id') if isinstance(a, dict) else a!r:.40} "
                            f"refers to an unknown image")
                continue
            self._anns[a["image_id"]].append(a)
        self.images_dir = images_dir or self._guess_images_dir()

    def _guess_images_dir(self) -> str:
        jdir = os.path.dirname(os.path.abspath(self.annotation_file))
        base = os.path.splitext(os.path.basename(self.annotation_file))[0]
        split = base.split("_", 1)[1] if base.startswith("instances_") else base
        parent = os.path.dirname(jdir)
        cands = [os.path.join(parent, split), os.path.join(parent, "images", split),
                 os.path.join(jdir, split), os.path.join(jdir, "images"), os.path.join(parent, "images"),
                 jdir, parent]
        probe = [fn for _, fn, _, _ in self.images[:20]]
        for c in cands:  # only folders inside the dataset: the names probed come from the file
            if (os.path.isdir(c) and is_inside(real_folder(c), self.confined_to)
                    and any(self.contained_file(c, fn) for fn in probe)):
                return c
        return jdir

    def __len__(self):
        return len(self.images)

    def _objects(self, anns, width, height, fname) -> list:
        objs = []
        for a in anns:
            cid = a.get("category_id")
            try:
                cname = self.categories[int(cid)]
            except (KeyError, TypeError, ValueError):
                self.report(fname, f"annotation {a.get('id')}: unknown category id {cid!r} (object dropped)")
                continue
            if self.classes_filter is not None and cname not in self.classes_filter:
                self.report(fname, f"unknown class {cname!r} (object dropped)")
                continue
            bbox = a.get("bbox")
            try:
                x, y, w, h = (float(v) for v in bbox)
            except (TypeError, ValueError):
                raise DatasetError(f"annotation {a.get('id')}: bad bbox {bbox!r:.60}")
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
                raise DatasetError(f"annotation {a.get('id')}: bad bbox {bbox!r:.60} (empty or non-finite)")
            if x >= width or y >= height or x + w <= 0 or y + h <= 0:
                raise DatasetError(f"annotation {a.get('id')}: bad bbox {bbox!r:.60} (outside the image)")
            loader = None
            seg = a.get("segmentation")
            if self.use_segmentation and seg:
                _check_segmentation(seg, height, width)
                loader = _seg_loader(seg, height, width)
            objs.append(Obj(cname, (x, y, x + w, y + h), difficult=False,
                            iscrowd=bool(a.get("iscrowd", 0)), mask_loader=loader))
        return objs

    def samples(self) -> Iterator[Sample]:
        for image_id, fname, width, height in self.images:
            path = self.contained_file(self.images_dir, fname)
            if path is None:
                self.report(fname, MISSING_IMAGE)
                continue
            try:
                objs = self._objects(self._anns.get(image_id, []), width, height, fname)
            except DatasetError as e:
                self.report(fname, str(e))
                continue
            yield Sample(image_id=str(image_id), path=path, width=width, height=height, objects=objs)

    def class_names(self) -> list:
        if self.classes_filter is not None:
            return list(self.classes_filter)
        return [self.categories[k] for k in sorted(self.categories)]
