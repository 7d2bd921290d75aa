"""Any user image -> the model's input tensor, and the displayable RGB array at the same geometry.

:func:`load_image` accepts a path, ``bytes``/``bytearray``/``memoryview``, a binary file-like
object (e.g. a Streamlit ``UploadedFile``), a PIL image or a uint8 array, in any format PIL
decodes (JPEG, PNG, WebP, BMP, TIFF, GIF (first frame), ...) and any mode:

- EXIF orientation is applied (``ImageOps.exif_transpose``);
- grayscale (``1``, ``L``) is replicated to RGB; ``CMYK``/``YCbCr`` are converted by PIL;
- 16-bit and 32-bit grayscale (``I;16``, ``I;16B``, ``I``, ``F``) are scaled to 8 bits
  (16-bit: value / 257; otherwise by the image's own range), not clipped;
- transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent colour) is composited on a
  **white** background by default (``background="black"`` or an RGB tuple to change);
- palette images are expanded.

It refuses, with :class:`clrp.errors.InvalidImage`: non-images, truncated or corrupt files,
images with more than ``max_pixels`` pixels (decompression bombs: checked from the header,
before decoding, and PIL's own ``DecompressionBombWarning``/``Error`` are turned into refusals),
inputs larger than ``max_bytes``, and degenerate sizes.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import InvalidImage

__all__ = [
    "MAX_PIXELS",
    "MAX_BYTES",
    "declared_size",
    "ModelImage",
    "open_image",
    "load_image",
    "to_tensor",
    "tensor_to_display",
]

#: Default limit on width * height (about 8000 x 5000). Larger images are refused.
MAX_PIXELS = 40_000_000
#: Default limit on the encoded size of an input, bytes.
MAX_BYTES = 64 * 1024 * 1024
_BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}


@dataclass
class ModelImage:
    """A decoded user image, ready for a model."""

    tensor: torch.Tensor  # [1, 3, H, W], normalised per the preprocessing
    display: np.ndarray  # uint8 H x W x 3, exactly the pixels the tensor encodes (before normalising)
    original: np.ndarray  # uint8 RGB at the decoded size (after EXIF rotation), before resize/crop
    original_size: tuple[int, int]  # (width, height) of ``original``
    source_format: str | None  # e.g. "JPEG", "PNG"
    source_mode: str  # PIL mode before conversion, e.g. "I;16", "CMYK", "P"


def _read_source(src: Any, max_bytes: int) -> io.BytesIO:
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    elif isinstance(src, (str, os.PathLike)):
        p = Path(src).expanduser()
        if not p.is_file():
            raise InvalidImage(f"image file not found: {p}")
        if p.stat().st_size > max_bytes:
            raise InvalidImage(f"image file {p.name} is larger than {max_bytes} bytes")
        data = p.read_bytes()
    elif hasattr(src, "read"):
        try:
            if hasattr(src, "seek"):
                src.seek(0)
        except Exception:
            pass
        data = src.read(max_bytes + 1)
        if isinstance(data, str):
            raise InvalidImage("the file-like object is opened in text mode; open it in binary mode ('rb')")
    else:
        raise InvalidImage(f"cannot read an image from a {type(src).__name__}")
    if len(data) > max_bytes:
        raise InvalidImage(f"the image is larger than {max_bytes} bytes")
    if not data:
        raise InvalidImage("empty input: no image data")
    return io.BytesIO(data)


def _to_8bit(arr: np.ndarray, mode: str) -> np.ndarray:
    """Single-channel high-bit-depth array -> uint8, scaled (not clipped)."""
    a = arr.astype(np.float64)
    if mode.startswith("I;16"):
        out = a / 257.0
    else:
        finite = a[np.isfinite(a)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            out = a * 255.0
        elif lo >= 0 and hi <= 255:
            out = a
        elif lo >= 0 and hi <= 65535:
            out = a / 257.0
        else:
            out = (a - lo) / (hi - lo if hi > lo else 1.0) * 255.0
        out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        g = _to_8bit(np.asarray(img), mode)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=2), "RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB", "1") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


def _too_many_pixels(size, max_pixels: int) -> InvalidImage:
    """The refusal of an image over ``max_pixels`` (clrp's limit, also for images Pillow itself
    refuses first: its own limit is an implementation detail the user cannot change)."""
    what = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels" if size else "more pixels than that"
    if size and size[0] * size[1] <= max_pixels:  # only a lowered Image.MAX_IMAGE_PIXELS refuses it
        return InvalidImage(f"refused: the image has {what}, more than Pillow's Image.MAX_IMAGE_PIXELS = "
                            f"{Image.MAX_IMAGE_PIXELS:,} set in this process (possible decompression bomb)")
    return InvalidImage(f"refused: the image has {what}, more than max_pixels = {max_pixels:,} (clrp's limit "
                        "against decompression bombs); downscale it first")


def declared_size(buf) -> tuple | None:
    """The size an image header declares, read by Pillow's format plugins directly (``Image.open``
    would refuse it again with its own limit); no pixel is decoded. None if no plugin reads it."""
    Image.init()
    buf.seek(0)
    prefix = buf.read(16)
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        try:
            if accept and not accept(prefix):
                continue
            buf.seek(0)
            return factory(buf, "").size
        except Exception:
            continue
    return None


def open_image(src: Any, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES,
               background: str | tuple[int, int, int] = "white") -> tuple[Image.Image, str | None, str]:
    """Decode ``src`` into an RGB PIL image (EXIF-rotated, transparency composited on
    ``background``). Returns ``(image, format, original_mode)``. Raises :class:`InvalidImage`."""
    bg = _BACKGROUNDS.get(background, background) if isinstance(background, str) else tuple(background)
    if not (isinstance(bg, tuple) and len(bg) == 3):
        raise ValueError(f"background must be 'white', 'black' or an RGB tuple, not {background!r}")
    bg = tuple(int(v) for v in bg)

    if isinstance(src, np.ndarray):
        a = src
        if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))):
            raise InvalidImage(f"arrays must be uint8 H x W, H x W x 1, x 3 or x 4, not {a.dtype} {a.shape}")
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[..., 0]
        if a.size == 0:
            raise InvalidImage("empty image array")
        if a.shape[0] * a.shape[1] > max_pixels:
            raise _too_many_pixels((a.shape[1], a.shape[0]), max_pixels)
        src = Image.fromarray(np.ascontiguousarray(a))

    if isinstance(src, Image.Image):
        img, fmt = src, getattr(src, "format", None)
        w, h = img.size
        if w * h > max_pixels:
            raise _too_many_pixels((w, h), max_pixels)
        mode = img.mode
        try:
            img = ImageOps.exif_transpose(img) or img
        except Exception:
            pass
        try:
            return _to_rgb(img, bg), fmt, mode
        except Exception as e:
            raise InvalidImage(f"cannot convert a {mode} image to RGB: {e}") from None

    buf = _read_source(src, max_bytes)
    prev_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(buf)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise _too_many_pixels(declared_size(buf), max_pixels) from None
            except UnidentifiedImageError:
                raise InvalidImage("not an image, or a format that cannot be decoded "
                                   "(supported: JPEG, PNG, WebP, BMP, TIFF, GIF, ...)") from None
            except Exception as e:
                raise InvalidImage(f"cannot open the image: {type(e).__name__}: {e}") from None
            fmt, mode = img.format, img.mode
            w, h = img.size
            if w <= 0 or h <= 0:
                raise InvalidImage(f"degenerate image size {w}x{h}")
            if w * h > max_pixels:
                raise _too_many_pixels((w, h), max_pixels)
            try:
                img.seek(0)
            except Exception:
                pass
            try:
                ImageFile.LOAD_TRUNCATED_IMAGES = False
                img.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise _too_many_pixels(img.size, max_pixels) from None
            except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
                raise InvalidImage(f"the {fmt or 'image'} file is truncated or corrupt: {e}") from None
            try:
                img = ImageOps.exif_transpose(img) or img
            except Exception:
                pass  # malformed EXIF: keep the stored orientation
            try:
                rgb = _to_rgb(img, bg)
            except InvalidImage:
                raise
            except Exception as e:
                raise InvalidImage(f"cannot convert a {mode} image to RGB: {e}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = prev_truncated
    return rgb, fmt, mode


def _preprocessing_of(preprocessing: Any):
    pp = getattr(preprocessing, "preprocessing", preprocessing)  # a LoadedModel or a Preprocessing
    if not hasattr(pp, "apply_geometry") or not hasattr(pp, "normalize"):
        raise TypeError("preprocessing must be a clrp.models.Preprocessing or a LoadedModel")
    return pp


def load_image(src: Any, preprocessing: Any, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES,
               background: str | tuple[int, int, int] = "white") -> ModelImage:
    """Decode any user image and turn it into the model's input.

    ``preprocessing``: a :class:`clrp.models.Preprocessing` or a ``LoadedModel``. Returns a
    :class:`ModelImage` whose ``tensor`` is ``[1, 3, H, W]`` (resized/cropped and normalised) and
    whose ``display`` is the RGB uint8 ``H x W x 3`` array at exactly that geometry.
    """
    pp = _preprocessing_of(preprocessing)
    rgb, fmt, mode = open_image(src, max_pixels=max_pixels, max_bytes=max_bytes, background=background)
    display = pp.display_array(rgb)
    return ModelImage(
        tensor=pp.normalize(display),
        display=display,
        original=np.asarray(rgb, dtype=np.uint8).copy(),
        original_size=rgb.size,
        source_format=fmt,
        source_mode=mode,
    )


def to_tensor(src: Any, preprocessing: Any, **kw) -> torch.Tensor:
    """Shortcut: ``load_image(src, preprocessing, **kw).tensor``."""
    return load_image(src, preprocessing, **kw).tensor


def tensor_to_display(tensor: torch.Tensor, preprocessing: Any) -> np.ndarray:
    """Normalised input tensor ``[1, 3, H, W]`` -> RGB uint8 ``H x W x 3`` (same geometry)."""
    return _preprocessing_of(preprocessing).denormalize(tensor)
