"""Model input preprocessing: PIL image -> normalised tensor, and the matching display array."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["Preprocessing"]

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the model's input.

    - ``resize`` is an int: the shorter side is resized to ``resize`` (aspect kept), then the
      centre ``input_size`` crop is taken (torchvision's ``Resize(resize) + CenterCrop``).
    - ``resize`` is None: the whole image is resized to ``input_size`` (aspect not kept, no crop).
    Then pixel values are scaled to [0, 1] and normalised per channel: ``(x - mean) / std``.
    Resizing uses PIL with ``interpolation`` (PIL's filters antialias when downsampling, like
    torchvision's ``antialias=True``).
    """

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    input_size: tuple[int, int] = (224, 224)  # (height, width)
    resize: int | None = 256
    interpolation: str = "bilinear"

    def __post_init__(self):
        size = self.input_size
        if isinstance(size, int):
            size = (size, size)
        object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values (RGB)")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}")

    # ----------------------------------------------------------------------------------------
    def geometry(self, width: int, height: int) -> dict:
        """How an image of ``width x height`` maps to the input: the resized size and the crop
        box ``(left, top, right, bottom)`` in resized coordinates."""
        h, w = self.input_size
        if self.resize is None:
            return {"resized": (w, h), "crop": (0, 0, w, h)}
        short, long_ = (width, height) if width <= height else (height, width)
        new_short = int(self.resize)
        new_long = int(new_short * long_ / short)
        rw, rh = (new_short, new_long) if width <= height else (new_long, new_short)
        # torchvision CenterCrop rounding
        top = int(round((rh - h) / 2.0))
        left = int(round((rw - w) / 2.0))
        return {"resized": (rw, rh), "crop": (left, top, left + w, top + h)}

    def apply_geometry(self, image: Image.Image) -> Image.Image:
        """Resize/crop an RGB PIL image to exactly ``input_size``."""
        g = self.geometry(*image.size)
        img = image
        if img.size != tuple(g["resized"]):
            img = img.resize(g["resized"], _RESAMPLE[self.interpolation])
        left, top, right, bottom = g["crop"]
        if (left, top, right, bottom) != (0, 0, img.size[0], img.size[1]):
            img = img.crop((left, top, right, bottom))  # pads with black if the crop is larger
        return img

    def display_array(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """RGB uint8 ``H x W x 3`` array at the model's input geometry."""
        if isinstance(image, np.ndarray):
            image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
        return np.asarray(self.apply_geometry(image.convert("RGB")), dtype=np.uint8).copy()

    def normalize(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``[N,] H x W x 3`` array(s) at input geometry -> float tensor ``[N, 3, H, W]``."""
        t = torch.as_tensor(np.asarray(array))
        if t.ndim == 3:
            t = t.unsqueeze(0)
        t = t.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (t - mean) / std

    def to_tensor(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """RGB PIL image or uint8 ``H x W x 3`` array (any size) -> ``[1, 3, H, W]`` input tensor."""
        return self.normalize(self.display_array(image))

    def batch(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        return torch.cat([self.to_tensor(im) for im in images], 0)

    def denormalize(self, tensor: torch.Tensor) -> np.ndarray:
        """Input tensor ``[1, 3, H, W]`` or ``[3, H, W]`` -> RGB uint8 ``H x W x 3``."""
        t = tensor.detach().cpu().float()
        if t.ndim == 4:
            t = t[0]
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        x = (t * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
        return x.permute(1, 2, 0).numpy().copy()

    @property
    def box(self) -> tuple[list[float], list[float]]:
        """Per-channel bounds of normalised inputs: ``((0 - mean) / std, (1 - mean) / std)``."""
        low = [(0.0 - m) / s for m, s in zip(self.mean, self.std)]
        high = [(1.0 - m) / s for m, s in zip(self.mean, self.std)]
        return low, high

    def method_options(self, options: dict | None = None) -> dict:
        """``options`` for :func:`clrp.explain` with this preprocessing's zB box as the default
        (the one place that default is set: the CLI, the runner and the dashboard all use it)."""
        opts = dict(options or {})
        if opts.get("box") is None:
            opts["box"] = self.box
        return opts

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A zero input batch of the model's geometry (to trace the model or list its layers)."""
        return torch.zeros(batch, 3, *self.input_size)

    def describe_geometry(self, width: int, height: int) -> str:
        """How an image of ``width x height`` becomes the model input, in words."""
        h, w = self.input_size
        if self.resize is None:
            if width * h == height * w:
                return f"resized from {width}×{height} to {w}×{h}"
            return (f"squashed from {width}×{height} to {w}×{h}: the model takes the whole image with its aspect "
                    f"ratio changed ({width / height:.2f} → {w / h:.2f})")
        g = self.geometry(width, height)
        rw, rh = g["resized"]
        left, top, right, bottom = g["crop"]
        if (left, top, right, bottom) == (0, 0, rw, rh):
            return f"resized from {width}×{height} to {w}×{h}"
        return (f"resized from {width}×{height} to {rw}×{rh} (shorter side {self.resize}), then the centre "
                f"{w}×{h} crop: the model does not see the borders outside it")

    def to_dict(self) -> dict:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": list(self.input_size),
            "resize": self.resize,
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(
            mean=tuple(d.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(d.get("std", (0.229, 0.224, 0.225))),
            input_size=d.get("input_size", (224, 224)),
            resize=d.get("resize", 256),
            interpolation=d.get("interpolation", "bilinear"),
        )
