"""Warnings about an input that a model will explain without complaint but whose explanation means
little: the one source of their text for the command line (``python -m clrp explain``) and the
dashboard (plain text: the caller escapes or formats it).
"""
from __future__ import annotations

from typing import Optional, Sequence

#: Below this many pixels on the shorter side, an image is mostly interpolation once resized to the
#: model's input (a 224 px model sees each pixel of a 32 px image as a 7 x 7 block).
MIN_IMAGE_SIDE = 32

#: Architectures trained on a narrow synthetic world (clrp's procedural scenes): any other image is
#: outside what they know, and their confident scores on it mean nothing.
NARROW_DOMAIN_ARCHITECTURES = ("scene_vgg",)


def domain_warning(loaded) -> Optional[str]:
    """``"The model NAME knows only DOMAIN"`` for a model trained on a narrow world, else None."""
    if getattr(loaded, "architecture", "") not in NARROW_DOMAIN_ARCHITECTURES:
        return None
    domain = (getattr(loaded, "domain", "") or "").rstrip(".")
    return f"The model {loaded.name} knows only {domain}." if domain else None


def small_image_warning(size: Sequence[int]) -> Optional[str]:
    """A warning for an image smaller than ``MIN_IMAGE_SIDE`` on a side (``size``: width, height)."""
    w, h = (int(v) for v in size)
    if min(w, h) >= MIN_IMAGE_SIDE:
        return None
    return (f"The image is only {w}x{h} pixels: below {MIN_IMAGE_SIDE} px on a side, the model sees "
            "it enlarged, mostly interpolated pixels, so its scores and maps say little about the content.")


def input_warnings(loaded, size: Sequence[int], *, known_scene: bool = False) -> list:
    """Every warning for explaining an image of ``size`` (width, height) with ``loaded``;
    ``known_scene``: the image is one of clrp's own scenes (no domain warning then)."""
    out = [] if known_scene else [domain_warning(loaded)]
    out.append(small_image_warning(size))
    return [w for w in out if w]
