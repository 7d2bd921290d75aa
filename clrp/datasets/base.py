"""Common record types of the dataset readers.

Box convention (every reader converts to it)
--------------------------------------------
``Obj.box = (x0, y0, x1, y1)`` in 0-based *pixel-edge* coordinates with an EXCLUSIVE end:
the box covers the pixel columns ``x0 .. x1-1`` and rows ``y0 .. y1-1`` when the values are
integers (a box of one pixel at the top-left corner is ``(0, 0, 1, 1)``). Width is ``x1 - x0``.
This is the COCO convention (``[x, y, w, h]`` -> ``(x, y, x + w, y + h)``) and what NumPy
slicing expects. PASCAL VOC XML boxes are 1-based inclusive, so VOC ``xmin..xmax`` becomes
``(xmin - 1, ..., xmax, ...)``. Non-integer boxes are rasterised to every pixel they touch
(``floor(x0) .. ceil(x1) - 1``), clipped to the image.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from ..errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def box_to_mask(box: Sequence[float], height: int, width: int) -> np.ndarray:
    """Rasterise a box (0-based, exclusive end) to a bool [height, width] mask, clipped."""
    x0, y0, x1, y1 = box
    c0 = max(0, int(math.floor(x0)))
    r0 = max(0, int(math.floor(y0)))
    c1 = min(width, int(math.ceil(x1)))
    r1 = min(height, int(math.ceil(y1)))
    m = np.zeros((height, width), dtype=np.bool_)
    if c1 > c0 and r1 > r0:
        m[r0:r1, c0:c1] = True
    return m


class Obj:
    """One annotated object.

    ``mask`` is an optional bool [H, W] array; readers with segmentations (COCO) decode it lazily
    on first access (``mask_loader``), so iterating a dataset never decodes masks you don't use.
    ``iscrowd`` marks COCO crowd regions (kept as ground truth: the region does show the class).
    """

    __slots__ = ("class_name", "box", "difficult", "iscrowd", "_mask", "_mask_loader")

    def __init__(self, class_name: str, box: Sequence[float], difficult: bool = False,
                 mask: Optional[np.ndarray] = None, iscrowd: bool = False,
                 mask_loader: Optional[Callable[[], np.ndarray]] = None):
        self.class_name = str(class_name)
        self.box = tuple(float(v) for v in box)
        self.difficult = bool(difficult)
        self.iscrowd = bool(iscrowd)
        self._mask = None if mask is None else np.asarray(mask, dtype=np.bool_)
        self._mask_loader = mask_loader

    @property
    def mask(self) -> Optional[np.ndarray]:
        if self._mask is None and self._mask_loader is not None:
            self._mask = np.asarray(self._mask_loader(), dtype=np.bool_)
            self._mask_loader = None
        return self._mask

    @property
    def has_mask(self) -> bool:
        return self._mask is not None or self._mask_loader is not None

    def portable(self) -> "Obj":
        """A copy with its mask (if any) loaded and no file loader: it travels to another process
        or machine without the files."""
        o = copy.copy(self)
        o._mask, o._mask_loader = self.mask, None
        return o

    def region(self, height: int, width: int, use_mask: bool = True) -> np.ndarray:
        """Bool [H, W] ground-truth region: the mask if available (and ``use_mask``), else the box."""
        if use_mask and self.has_mask:
            m = self.mask
            if m.shape != (height, width):
                raise DatasetError(f"mask shape {m.shape} != image size {(height, width)}")
            return m
        return box_to_mask(self.box, height, width)

    def __repr__(self):
        return (f"Obj({self.class_name!r}, box={self.box}, difficult={self.difficult}"
                f"{', iscrowd=True' if self.iscrowd else ''}{', mask' if self.has_mask else ''})")

    def __eq__(self, other):
        return (isinstance(other, Obj) and self.class_name == other.class_name
                and self.box == other.box and self.difficult == other.difficult
                and self.iscrowd == other.iscrowd)


@dataclass
class Sample:
    """One image of a dataset. The image itself is loaded on demand (``load_image``).

    ``labels``: the image-level class names (for class-folder trees, the folder name; for
    annotated datasets, every class with at least one object, difficult or not).
    """

    image_id: str
    path: Optional[str]
    width: Optional[int]
    height: Optional[int]
    objects: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    loader: Optional[Callable[[], object]] = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if not self.labels and self.objects:
            seen = []
            for o in self.objects:
                if o.class_name not in seen:
                    seen.append(o.class_name)
            self.labels = seen

    @property
    def classes(self) -> list:
        return list(self.labels)

    def load_image(self):
        """The image as an RGB ``PIL.Image``. Raises ``DatasetError`` if it cannot be decoded."""
        if self.loader is not None:
            return self.loader()
        if self.path is None:
            raise DatasetError(f"{self.image_id}: no image path")
        return load_rgb(self.path)

    def ensure_size(self) -> tuple:
        """Fill ``width``/``height`` from the image header if the annotation lacks them."""
        if self.width is None or self.height is None:
            if self.path is None:
                img = self.load_image()
                self.width, self.height = img.size
            else:
                from PIL import Image
                try:
                    with Image.open(self.path) as im:  # reads the header only
                        self.width, self.height = im.size
                except Exception as e:
                    raise DatasetError(f"{os.path.basename(self.path)}: cannot read image size ({e})") from e
        return self.width, self.height

    def objects_of(self, class_name: str, include_difficult: bool = False) -> list:
        return [o for o in self.objects if o.class_name == class_name
                and (include_difficult or not o.difficult)]

    def gt_mask(self, class_name: str, use_masks: bool = True) -> Optional[np.ndarray]:
        """Union of the class's non-difficult objects (masks where present, else boxes).

        Returns None when the class has no non-difficult object in this image (the Pointing Game
        skips such a class). Reads the image header if the size is not annotated.
        """
        objs = self.objects_of(class_name)
        if not objs:
            return None
        self.ensure_size()
        m = np.zeros((self.height, self.width), dtype=np.bool_)
        for o in objs:
            m |= o.region(self.height, self.width, use_masks)
        return m


@dataclass
class Problem:
    """A file that was skipped, and why."""

    file: str
    reason: str

    def __str__(self):
        return f"{self.file}: {self.reason}"


# A cap on decoded image size: defends against decompression bombs in user datasets.
MAX_IMAGE_PIXELS = 64_000_000

# The one answer for an image an annotation names that is missing, or outside the dataset's
# folders (absolute path, ``..``, a symlink pointing out): the two must read the same, so that a
# dataset's list of skipped files cannot probe which server paths exist.
MISSING_IMAGE = "missing image file (image paths must name files inside the dataset folder)"


@dataclass(frozen=True)
class AnnotationLimits:
    """The largest annotation file each reader opens, in bytes (a lab server sets its own). A
    bigger file is refused with a message naming the limit and its value (``check_size``)."""

    csv_bytes: int = 1024 ** 3          # the CSV reader keeps ~2-3x the file size (docs/EVALUATION.md)
    json_bytes: int = 2 * 1024 ** 3     # COCO train2017 instances: 450 MB; json.load keeps ~6x
    xml_bytes: int = 4 * 1024 ** 2      # one VOC XML per image: a few KB

    def check_size(self, path: str, kind: str, shown: Optional[str] = None) -> None:
        """Raise ``DatasetError`` when the file at ``path`` is larger than the ``kind`` limit."""
        limit = getattr(self, f"{kind}_bytes")
        try:
            size = os.path.getsize(path)
        except OSError:
            return  # the reader's own open() reports it
        if size > limit:
            raise DatasetError(f"{shown or os.path.basename(path)}: the {kind.upper()} annotation file is "
                               f"{_mib(size)}, more than the limit of {_mib(limit)} for {kind.upper()} "
                               f"annotation files ({kind}_bytes = {limit} bytes); ask the server admin "
                               "to raise it, or split the file")


def _mib(n: int) -> str:
    if n < 1024 ** 2:
        return f"{n:,} bytes"
    return f"{n / 1024 ** 2:,.1f} MiB" if n < 1024 ** 3 else f"{n / 1024 ** 3:,.2f} GiB"


DEFAULT_ANNOTATION_LIMITS = AnnotationLimits()
# Files uploaded through a web page: COCO val2017 instances (25 MB) fit with room to spare; at the
# readers' peaks (CSV <= 4x, JSON ~6x) one upload's annotations stay within ~1.5 GB of memory.
UPLOAD_ANNOTATION_LIMITS = AnnotationLimits(csv_bytes=256 * 1024 ** 2, json_bytes=256 * 1024 ** 2)


def real_folder(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def is_inside(real: str, folders) -> bool:
    """True when the real path ``real`` is one of ``folders`` (real paths) or lies below one."""
    return any(real == f or real.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


def load_rgb(path: str):
    """Open an image file as RGB, refusing non-images and decompression bombs (DatasetError)."""
    from PIL import Image
    import warnings

    def too_large(size):
        what = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels" if size else "more pixels than that"
        return DatasetError(f"{os.path.basename(path)}: image too large ({what}, more than the limit of "
                            f"{MAX_IMAGE_PIXELS:,} pixels for dataset images, MAX_IMAGE_PIXELS)")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise too_large(im.size)
                im.load()
                return im.convert("RGB")
    except DatasetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        from ..imageio import declared_size  # Pillow refused it with its own limit: quote ours

        with open(path, "rb") as f:
            raise too_large(declared_size(f)) from None
    except FileNotFoundError as e:
        raise DatasetError(f"{os.path.basename(path)}: missing image file") from e
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        detail = str(e).replace(os.path.abspath(path), os.path.basename(path)).replace(path, os.path.basename(path))
        raise DatasetError(f"{os.path.basename(path)}: cannot decode image ({type(e).__name__}: {detail})") from e


class Dataset:
    """Base class of the readers: lazy iteration over ``Sample`` records.

    * ``iter(ds)`` / ``ds.samples()`` yield samples without loading images; broken annotations
      are appended to ``ds.problems`` (``Problem(file, reason)``) and skipped.
    * ``ds.iter_images()`` yields ``(sample, PIL image)`` and skips (and reports) images that
      cannot be decoded.
    * ``ds.class_names()`` lists the dataset's classes; ``ds.map_classes(model_class_names,
      mapping=None)`` maps them to a model's outputs (``ClassMapping`` with the unmapped ones).
    * Datasets opened from an archive own a temporary extraction folder; ``close()`` (or a
      ``with`` block) removes it.
    * ``display_name`` is the name of the data as the user knows it (set by ``open_dataset``);
      problems name files relative to ``base`` (the folder or archive the user gave), so a
      temporary extraction path never appears in them.
    * ``refused`` (file -> reason) lists the annotation files that were refused as unsafe or
      unreadable; ``map_classes`` says so (and raises when they were the only annotations).
    """

    format = "base"

    def __init__(self, root: str, confine=None):
        self.root = root
        # image files must resolve inside these folders (real paths; see ``contained_file``)
        self.confined_to: list = [real_folder(f) for f in
                                  ([confine] if isinstance(confine, (str, os.PathLike)) else (confine or [root]))]
        self.display_name: str = root
        self.base: Optional[str] = None
        self.problems: list = []
        self.refused: dict = {}
        self._problem_keys: set = set()
        self._cleanup: Optional[Callable[[], None]] = None

    def contained_file(self, folder: str, name: str) -> Optional[str]:
        """``folder/name`` when it is a file whose real path lies inside ``confined_to``, else None
        (missing and not allowed are one answer: ``MISSING_IMAGE``)."""
        name = str(name)
        if not name or "\x00" in name or os.path.isabs(name):
            return None
        path = os.path.join(folder, name)
        real = os.path.realpath(path)
        if not is_inside(real, self.confined_to) or not os.path.isfile(real):
            return None
        return path

    # --- problems -----------------------------------------------------------------------------
    def shown_path(self, file: str) -> str:
        """``file`` as the user knows it: relative to ``base`` (or ``root``) when inside it."""
        file = str(file)
        if not os.path.isabs(file):
            return file
        for base in (self.base, self.root):
            if base:
                for b in {os.path.abspath(base), os.path.realpath(base)}:
                    if file.startswith(b.rstrip(os.sep) + os.sep):
                        return os.path.relpath(file, b)
        return os.path.basename(file)

    def _scrub(self, text: str) -> str:
        for base in (self.base, self.root):
            if base:
                for b in sorted({os.path.abspath(base), os.path.realpath(base)}, key=len, reverse=True):
                    text = text.replace(b.rstrip(os.sep) + os.sep, "")
        return text

    def report(self, file: str, reason: str) -> None:
        file, reason = self.shown_path(file), self._scrub(str(reason))
        key = (file, reason)
        if key not in self._problem_keys:  # iterating twice must not duplicate problems
            self._problem_keys.add(key)
            self.problems.append(Problem(file, reason))

    # --- iteration ----------------------------------------------------------------------------
    def samples(self) -> Iterator[Sample]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Sample]:
        return self.samples()

    def __len__(self) -> int:
        raise NotImplementedError

    def load_checked(self, s: Sample):
        """The sample's image, or None (reported as a problem) when it cannot be decoded or its
        size disagrees with the annotation."""
        try:
            img = s.load_image()
        except DatasetError as e:
            self.report(s.path or s.image_id, str(e))
            return None
        if s.width is None or s.height is None:
            s.width, s.height = img.size
        elif (s.width, s.height) != img.size:
            self.report(s.path or s.image_id,
                        f"annotated size {s.width}x{s.height} != image size {img.size[0]}x{img.size[1]}")
            return None
        return img

    def iter_images(self) -> Iterator[tuple]:
        for s in self.samples():
            img = self.load_checked(s)
            if img is not None:
                yield s, img

    def class_names(self) -> list:
        raise NotImplementedError

    def annotation_count(self) -> Optional[int]:
        """How many annotation files the dataset has (None where that is not a meaningful count)."""
        return None

    def refuse(self, file: str, reason: str) -> None:
        """Record an annotation file that was refused (unsafe or unreadable) -- and report it."""
        self.report(file, reason)
        self.refused.setdefault(self.shown_path(file), self._scrub(str(reason)))

    def map_classes(self, model_class_names: Sequence[str], mapping: Optional[dict] = None):
        """Map the dataset's classes to a model's outputs (``ClassMapping``). The mapping's report
        names the refused annotation files; when every annotation was refused (so no class is
        left), raises ``DatasetError`` saying so instead of returning an empty mapping."""
        from .classmap import map_classes, refused_summary

        names = self.class_names()
        total = self.annotation_count()
        if not names and self.refused:
            raise DatasetError(f"{self.display_name}: "
                               + refused_summary(self.refused, total, "so no annotation is left to evaluate"))
        cm = map_classes(names, model_class_names, mapping)
        cm.refused = dict(self.refused)
        cm.annotation_files = total
        return cm

    # --- resources ----------------------------------------------------------------------------
    def on_close(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once, when the dataset is closed (e.g. remove the folder it was extracted to)."""
        self._cleanup = fn

    def close(self) -> None:
        if self._cleanup is not None:
            fn, self._cleanup = self._cleanup, None
            fn()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"{type(self).__name__}(root={self.root!r})"
