"""PASCAL VOC reader (also ImageNet validation boxes, which use the same XML).

Layout: ``root/Annotations/*.xml`` + ``root/JPEGImages/*`` (+ optional
``root/ImageSets/Main/<split>.txt``). XML is parsed with ``defusedxml`` (entity declarations and
external entities/DTDs are refused, so billion-laughs and XXE files are reported, never expanded).
VOC boxes (1-based, inclusive) are converted to the package convention (0-based, exclusive end):
``(xmin - 1, ymin - 1, xmax, ymax)``.

Object masks, when present, are attached lazily (``Obj.mask``; the Pointing Game then uses them
instead of boxes): ``Masks/<id>_<k>.png`` (clrp's scene export: one 0/255 PNG per object, ``k`` =
object order in the XML) or VOC's ``SegmentationObject/<id>.png`` (pixel value ``k + 1`` = the
k-th object; 255 = void, not part of any object). ``use_masks=False`` ignores them.

Problems reported (file skipped, iteration goes on): unparsable or unsafe XML, missing image,
malformed box (non-numeric, empty, outside the image), missing class name. Objects whose class is
not in ``classes`` (when given) are dropped and reported as "unknown class".
"""
from __future__ import annotations

import math
import os
from typing import Iterator, Optional, Sequence

from ..errors import DatasetError
from .base import DEFAULT_ANNOTATION_LIMITS, IMAGE_EXTENSIONS, MISSING_IMAGE, AnnotationLimits, Dataset, Obj, Sample

MAX_XML_BYTES = DEFAULT_ANNOTATION_LIMITS.xml_bytes


def parse_voc_xml(data: bytes, name: str = "<xml>", max_bytes: int = MAX_XML_BYTES):
    """Parse one VOC annotation; returns (filename, width, height, [(class, box, difficult)]).

    Raises ``DatasetError`` with the reason for anything malformed or unsafe.
    """
    import defusedxml
    import defusedxml.ElementTree as ET
    from xml.etree.ElementTree import ParseError

    if len(data) > max_bytes:
        raise DatasetError(f"annotation larger than the limit for XML annotation files "
                           f"(xml_bytes = {max_bytes} bytes)")
    try:
        root = ET.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except defusedxml.EntitiesForbidden as e:
        if getattr(e, "sysid", None) or getattr(e, "pubid", None):
            raise DatasetError("unsafe XML refused: it declares an external entity (a file or URL to read "
                               "into the annotation); clrp never loads those") from e
        raise DatasetError("unsafe XML refused: it declares entities (<!ENTITY>), which can expand without "
                           "bound (billion laughs); clrp never expands them") from e
    except (defusedxml.ExternalReferenceForbidden, defusedxml.DTDForbidden) as e:
        raise DatasetError("unsafe XML refused: it refers to an external entity or DTD, which clrp never "
                           "loads") from e
    except defusedxml.DefusedXmlException as e:
        raise DatasetError(f"unsafe XML refused ({type(e).__name__})") from e
    except (ParseError, ValueError) as e:
        raise DatasetError(f"malformed XML ({e})") from e
    if root.tag != "annotation":
        raise DatasetError(f"root element is <{root.tag}>, expected <annotation>")
    filename = (root.findtext("filename") or "").strip() or None
    width = height = None
    size = root.find("size")
    if size is not None:
        try:
            w, h = size.findtext("width"), size.findtext("height")
            if w is not None and h is not None:
                width, height = int(float(w)), int(float(h))
                if width <= 0 or height <= 0:
                    width = height = None  # some VOC files say 0x0; take the size from the image
        except ValueError as e:
            raise DatasetError(f"bad <size> ({e})") from e
    objects = []
    for i, o in enumerate(root.findall("object")):
        cname = (o.findtext("name") or "").strip()
        if not cname:
            raise DatasetError(f"object {i}: missing <name>")
        diff_txt = (o.findtext("difficult") or "0").strip()
        try:
            difficult = bool(int(float(diff_txt)))
        except ValueError:
            raise DatasetError(f"object {i} ({cname}): bad <difficult> {diff_txt!r}")
        bb = o.find("bndbox")
        if bb is None:
            raise DatasetError(f"object {i} ({cname}): missing <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise DatasetError(f"object {i} ({cname}): bad box (missing or non-numeric coordinate)")
        if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
            raise DatasetError(f"object {i} ({cname}): bad box (non-finite coordinate)")
        if xmax < xmin or ymax < ymin:
            raise DatasetError(f"object {i} ({cname}): bad box (xmax < xmin or ymax < ymin): "
                               f"{xmin:g},{ymin:g},{xmax:g},{ymax:g}")
        box = (xmin - 1.0, ymin - 1.0, xmax, ymax)
        if width is not None and (box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height):
            raise DatasetError(f"object {i} ({cname}): bad box (outside the {width}x{height} image)")
        objects.append((cname, box, difficult))
    return filename, width, height, objects


class VocDataset(Dataset):
    format = "voc"

    def __init__(self, root: str, split: Optional[str] = None, classes: Optional[Sequence[str]] = None,
                 annotations_dir: str = "Annotations", images_dir: str = "JPEGImages",
                 use_masks: bool = True, confine: Optional[str] = None,
                 annotation_limits: AnnotationLimits = DEFAULT_ANNOTATION_LIMITS):
        super().__init__(root, confine)
        self.max_xml_bytes = annotation_limits.xml_bytes
        self.masks_dir = os.path.join(root, "Masks") if use_masks else None
        self.segobj_dir = os.path.join(root, "SegmentationObject") if use_masks else None
        if self.masks_dir and not os.path.isdir(self.masks_dir):
            self.masks_dir = None
        if self.segobj_dir and not os.path.isdir(self.segobj_dir):
            self.segobj_dir = None
        self.ann_dir = os.path.join(root, annotations_dir)
        self.img_dir = os.path.join(root, images_dir)
        if not os.path.isdir(self.ann_dir):
            raise DatasetError(f"{root}: no {annotations_dir}/ folder (not a VOC dataset)")
        self.classes_filter = list(classes) if classes is not None else None
        self.split = split
        if split is not None:
            lst = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
            if not os.path.isfile(lst):
                raise DatasetError(f"{root}: no ImageSets/Main/{split}.txt")
            with open(lst, encoding="utf-8", errors="replace") as f:
                # lines are "<id>" or, in per-class lists, "<id> <label>" (keep every id once)
                ids = []
                seen = set()
                for line in f:
                    parts = line.split()
                    if parts and parts[0] not in seen:
                        seen.add(parts[0])
                        ids.append(parts[0])
            self.ids = ids
        else:
            self.ids = sorted(os.path.splitext(n)[0] for n in os.listdir(self.ann_dir)
                              if n.lower().endswith(".xml") and not n.startswith("."))
        self._class_names: Optional[list] = None

    def __len__(self):
        return len(self.ids)

    def _image_path(self, image_id: str, filename: Optional[str]) -> Optional[str]:
        names = ([os.path.basename(filename)] if filename else []) + [
            image_id + e for ext in IMAGE_EXTENSIONS for e in (ext, ext.upper())]
        for n in names:
            if os.path.lexists(os.path.join(self.img_dir, n)):
                return self.contained_file(self.img_dir, n)  # None for a symlink pointing out
        return None

    def read(self, image_id: str) -> Sample:
        """Parse one annotation; raises ``DatasetError`` (with the reason) if it is unusable."""
        xml_path = os.path.join(self.ann_dir, image_id + ".xml")
        try:
            if self.contained_file(self.ann_dir, image_id + ".xml") is None:  # a split list may name ../x
                raise DatasetError("missing annotation file (annotation paths must name files inside the "
                                   "dataset folder)")
            try:
                with open(xml_path, "rb") as f:
                    data = f.read(self.max_xml_bytes + 1)
            except OSError as e:
                raise DatasetError(f"cannot read annotation ({e.strerror or e})") from e
            filename, width, height, raw = parse_voc_xml(data, xml_path, self.max_xml_bytes)
        except DatasetError as e:
            e.annotation_refused = True  # the file itself is unusable (samples() records it)
            raise
        img = self._image_path(image_id, filename)
        if img is None:
            raise DatasetError(f"{filename or image_id + '.jpg'}: {MISSING_IMAGE}")
        objs = []
        for k, (cname, box, difficult) in enumerate(raw):
            if self.classes_filter is not None and cname not in self.classes_filter:
                self.report(os.path.basename(xml_path), f"unknown class {cname!r} (object dropped)")
                continue
            objs.append(Obj(cname, box, difficult, mask_loader=self._mask_loader(image_id, k)))
        return Sample(image_id=image_id, path=img, width=width, height=height, objects=objs)

    def _mask_loader(self, image_id: str, k: int):
        if self.masks_dir:
            p = self.contained_file(self.masks_dir, f"{image_id}_{k}.png")
            if p:
                return lambda: _read_mask(p) > 0
        if self.segobj_dir:
            p = self.contained_file(self.segobj_dir, f"{image_id}.png")
            if p:
                return lambda: _read_mask(p) == k + 1
        return None

    def annotation_count(self) -> int:
        return len(self.ids)

    def samples(self) -> Iterator[Sample]:
        for image_id in self.ids:
            try:
                yield self.read(image_id)
            except DatasetError as e:
                if getattr(e, "annotation_refused", False):
                    self.refuse(image_id + ".xml", str(e))
                else:
                    self.report(image_id + ".xml", str(e))

    def class_names(self) -> list:
        """Every class named in the annotations (scans the XML files once; images not opened)."""
        if self.classes_filter is not None:
            return list(self.classes_filter)
        if self._class_names is None:
            names = set()
            for s in self.samples():
                names.update(o.class_name for o in s.objects)
            self._class_names = sorted(names)
        return list(self._class_names)


def _read_mask(path: str):
    """A mask PNG as an integer array (palette indices for palette PNGs, grey levels otherwise)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.width * im.height > 64_000_000:
                raise DatasetError(f"{os.path.basename(path)}: mask too large")
            if im.mode not in ("P", "L", "1", "I", "I;16"):
                im = im.convert("L")
            return np.asarray(im).astype(np.int32)
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{os.path.basename(path)}: cannot read mask ({e})") from e
