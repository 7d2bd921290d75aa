"""The bundled VGG-style scene classifier (architecture only; weights in ``assets/``).

Organised like torchvision's VGG (``features``, ``avgpool``, ``classifier``), built only from
layers the LRP engine supports: Conv2d (3x3, padding 1), ReLU, MaxPool2d, AdaptiveAvgPool2d,
Flatten, Linear, Dropout. The shipped model has no batch norm: it is *trained* with BatchNorm2d
after each conv (``batch_norm=True``; plain VGG without it stays at the label prior for
thousands of steps on these scenes), and the batch norms are then folded exactly into the
convolutions (:func:`fold_batch_norm`).

Feature spec: an int = conv3x3 (+BN) + ReLU with that many channels, ``"M"`` = 2x2 max-pool,
``"G"`` = a global max-pool over the whole remaining map (a MaxPool2d whose kernel is the map
size at ``input_size``), i.e. "is this feature present anywhere", which suits multi-label
presence and learns much faster than average pooling here.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

#: Default architecture (input 96 x 96: 96 -> 48 -> 24 -> 12 -> global max -> 1 x 1).
DEFAULT_CONFIG: dict = {
    "features": [32, "M", 64, "M", 128, "M", 128, 128, "G"],
    "input_size": 96,
    "pool": 1,
    "hidden": 256,
    "dropout": 0.3,
    "in_channels": 3,
    "num_classes": 10,
}


#: Networks of the easy-world depth study (``scripts/research/depth_study.py --world scenes``), by number of
#: convs: the shipped 5-conv model and the same family with 3, 4 and 9 convs (the 9-conv one in VGG's
#: pattern of blocks of 1-1-2-2-3 convs between pools, its upper widths 64 and 96 instead of 128 so
#: that its weights stay near 2 MB and it trains as fast as the shipped one on a CPU); input size,
#: global max-pool and hidden layer alike. Trained on the shipped model's training scenes with its
#: recipe: ``scripts/assets/train_bundled_model.py --features 32,M,64,M,128,G --name scenes_vgg_d3`` etc.
DEPTH_CONFIGS: dict[int, dict] = {
    3: dict(DEFAULT_CONFIG, features=[32, "M", 64, "M", 128, "G"]),
    4: dict(DEFAULT_CONFIG, features=[32, "M", 64, "M", 128, "M", 128, "G"]),
    5: dict(DEFAULT_CONFIG),
    9: dict(DEFAULT_CONFIG, features=[32, "M", 64, "M", 64, 64, "M", 96, 96, "M", 96, 96, 96, "G"]),
}


def parse_features(text: str) -> list:
    """``"32,M,64,M,128,G"`` -> ``[32, "M", 64, "M", 128, "G"]`` (ints = convs, ``M``/``G`` = pools)."""
    out: list = []
    for tok in str(text).split(","):
        tok = tok.strip()
        if tok.upper() in ("M", "G"):
            out.append(tok.upper())
        elif tok.isdigit() and int(tok) > 0:
            out.append(int(tok))
        else:
            raise ValueError(f"bad feature spec item {tok!r} in {text!r}: expected a channel count, M or G")
    if not any(isinstance(v, int) for v in out):
        raise ValueError(f"feature spec {text!r} has no conv")
    return out


def n_convs(config: dict) -> int:
    return sum(1 for v in config["features"] if v not in ("M", "G"))


class SceneVGG(nn.Module):
    def __init__(self, features: Sequence = DEFAULT_CONFIG["features"], pool: int = 1, hidden: int = 256,
                 dropout: float = 0.3, in_channels: int = 3, num_classes: int = 10, input_size: int = 96,
                 batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, int(input_size)
        for v in features:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
            elif v == "G":
                layers.append(nn.MaxPool2d(kernel_size=size, stride=size))
                size = 1
            else:
                layers.append(nn.Conv2d(c, int(v), kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(int(v)))
                layers.append(nn.ReLU(inplace=True))
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


def build_model(config: dict | None = None, batch_norm: bool = False) -> SceneVGG:
    cfg = dict(DEFAULT_CONFIG)
    if config:
        cfg.update(config)
    return SceneVGG(cfg["features"], cfg["pool"], cfg["hidden"], cfg["dropout"], cfg["in_channels"],
                    cfg["num_classes"], cfg["input_size"], batch_norm=batch_norm)


def load_trained(weights) -> tuple[SceneVGG, dict]:
    """A network written by the training scripts (``scripts/assets/train_*_model.py``): the weights file
    and its metadata ``.json`` beside it -> ``(model in eval mode, metadata)``; tensors only."""
    import json
    from pathlib import Path

    path = Path(weights)
    meta = json.loads(path.with_suffix(".json").read_text())
    model = build_model(meta["architecture"])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval(), meta


@torch.no_grad()
def fold_batch_norm(trained: SceneVGG, config: dict | None = None) -> SceneVGG:
    """A BN-free :class:`SceneVGG` computing exactly what ``trained`` (built with
    ``batch_norm=True``) computes in eval mode: each BatchNorm2d is folded into the conv before it."""
    plain = build_model(config, batch_norm=False)
    convs = [m for m in trained.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in trained.features if isinstance(m, nn.BatchNorm2d)]
    targets = [m for m in plain.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(bns) == len(targets)
    for conv, bn, dst in zip(convs, bns, targets):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        dst.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        dst.bias.copy_(bn.bias + (conv.bias - bn.running_mean) * scale)
    plain.classifier.load_state_dict(trained.classifier.state_dict())
    return plain.eval()


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
