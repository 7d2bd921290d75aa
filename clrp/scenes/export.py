"""PASCAL VOC export of generated scenes, of any world: the exporter is given scenes and knows no
presets (:mod:`clrp.scenes.presets` says which world a preset generates).

:func:`export_voc` writes ``JPEGImages/*.jpg``, ``Annotations/*.xml`` (boxes converted to the VOC
convention: 1-based, inclusive), ``ImageSets/Main/<split>.txt`` and, in addition, lossless
``Masks/<id>_<k>.png`` object masks (one PNG per object, in annotation order), either into a folder
or a ``.zip``.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Iterable, Sequence
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

from .shapes import CLASS_NAMES, Scene

__all__ = ["export_voc", "scene_to_voc_xml"]


def scene_to_voc_xml(scene: Scene, filename: str, folder: str = "CLRPScenes") -> str:
    """VOC annotation XML for ``scene`` (boxes 1-based inclusive)."""
    h, w = scene.image.shape[:2]
    parts = [
        "<annotation>",
        f"  <folder>{escape(folder)}</folder>",
        f"  <filename>{escape(filename)}</filename>",
        "  <source><database>clrp procedural scenes</database></source>",
        f"  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for o in scene.objects:
        x0, y0, x1, y1 = o.box
        parts += [
            "  <object>",
            f"    <name>{escape(o.class_name)}</name>",
            "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>",
            "    <difficult>0</difficult>",
            f"    <bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def export_voc(scenes: Sequence[Scene] | Iterable[Scene], dest: str | os.PathLike, split: str = "test", *,
               masks: bool = True, jpeg_quality: int = 95, folder_name: str = "CLRPScenes") -> Path:
    """Write ``scenes`` as a PASCAL-VOC-style dataset.

    ``dest`` ending in ``.zip`` -> a zip archive (entries at its root: ``JPEGImages/``,
    ``Annotations/``, ``ImageSets/Main/<split>.txt``, ``Masks/``, ``labels.txt``);
    otherwise a folder (created; existing files with the same names are overwritten, and an
    existing ``<split>.txt`` is replaced). Masks, if requested, are ``Masks/<id>_<k>.png``
    (0/255, one per object, ``k`` = object order in the XML). Returns the path written.
    """
    dest = Path(dest)
    files: list[tuple[str, bytes]] = []
    ids: list[str] = []
    for i, sc in enumerate(scenes):
        sid = sc.name if sc.seed is not None else f"scene_{i:08d}"
        ids.append(sid)
        files.append((f"JPEGImages/{sid}.jpg", _jpeg_bytes(sc.image, jpeg_quality)))
        files.append((f"Annotations/{sid}.xml", scene_to_voc_xml(sc, f"{sid}.jpg", folder_name).encode("utf-8")))
        if masks:
            for k, o in enumerate(sc.objects):
                files.append((f"Masks/{sid}_{k}.png", _png_bytes(o.mask.astype(np.uint8) * 255)))
    files.append((f"ImageSets/Main/{split}.txt", ("\n".join(ids) + "\n").encode()))
    files.append(("labels.txt", ("\n".join(CLASS_NAMES) + "\n").encode()))
    if dest.suffix.lower() == ".zip":
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in files:
                zf.writestr(name, data)
    else:
        for name, data in files:
            p = dest / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    return dest
