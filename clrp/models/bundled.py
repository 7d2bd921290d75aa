"""The bundled VGG-style scene classifier (architecture only; weights in ``assets/``).

Organised like torchvision's VGG (``features``, ``avgpool``, ``classifier``), built only from
layers the LRP engine supports: Conv2d (3x3, padding 1), ReLU, MaxPool2d, AdaptiveAvgPool2d,
Flatten, Linear, Dropout. No batch norm.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

#: Default architecture: conv widths per block ("M" = 2x2 max-pool), dense width, pooled grid.
DEFAULT_CONFIG: dict = {
    "features": [32, "M", 64, "M", 128, "M", 128, "M"],
    "pool": 4,
    "hidden": 256,
    "dropout": 0.3,
    "in_channels": 3,
    "num_classes": 10,
}


class SceneVGG(nn.Module):
    def __init__(self, features: Sequence = DEFAULT_CONFIG["features"], pool: int = 4, hidden: int = 256,
                 dropout: float = 0.3, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in features:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(c * pool * pool, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        return self.classifier(x)


def build_model(config: dict | None = None) -> SceneVGG:
    cfg = dict(DEFAULT_CONFIG)
    if config:
        cfg.update(config)
    return SceneVGG(cfg["features"], cfg["pool"], cfg["hidden"], cfg["dropout"], cfg["in_channels"], cfg["num_classes"])


# --------------------------------------------------------------------------------------------
# Files and preprocessing of the shipped model

from pathlib import Path as _Path

ASSETS_DIR = _Path(__file__).resolve().parent / "assets"
WEIGHTS_FILE = ASSETS_DIR / "bundled_scenes_vgg.pt"
META_FILE = ASSETS_DIR / "bundled_scenes_vgg.json"

#: Scenes are 128 x 128; the model sees them resized (whole image, PIL bilinear) to 96 x 96.
INPUT_SIZE = 96
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)

#: Seed ranges of generated scenes: training uses [0, 10_000_000), the held-out set stored in
#: the metadata uses [10_000_000, ...), and ``bundled_metrics`` defaults to 20_000_000+.
TRAIN_SEED_BASE = 0
HELDOUT_SEED_BASE = 10_000_000
METRICS_SEED_BASE = 20_000_000


def bundled_preprocessing():
    from .preprocessing import Preprocessing

    return Preprocessing(mean=MEAN, std=STD, input_size=(INPUT_SIZE, INPUT_SIZE), resize=None, interpolation="bilinear")


def scenes_to_tensor(images, preprocessing=None, flip=None) -> torch.Tensor:
    """uint8 scene images -> normalised batch ``[N, 3, 96, 96]`` (optionally h-flipping some)."""
    import numpy as np

    pp = preprocessing or bundled_preprocessing()
    arrs = []
    for i, im in enumerate(images):
        a = pp.display_array(im)
        if flip is not None and flip[i]:
            a = a[:, ::-1]
        arrs.append(a)
    return pp.normalize(np.stack(arrs))
