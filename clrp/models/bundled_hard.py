"""The ``bundled-hard`` scene classifier: a deeper VGG-pattern :class:`~clrp.models.bundled.SceneVGG`
for the hard scene preset (:mod:`clrp.scenes.hard`), and the models of the depth study.

Same building blocks as the bundled model (3x3 convs trained with batch norm, which is folded into
the convs before shipping; 2x2 max-pools; a global max-pool; one hidden dense layer), more convs:
VGG's pattern of blocks of two (and three) convs between pools. Input: the whole 224 px scene
resized to 128 x 128 (small objects, 20-44 px in the scene, are 11-25 px there).

``DEPTH_CONFIGS`` holds the networks of ``scripts/research/depth_study.py``: the same family with 4, 8
(= ``HARD_CONFIG``) and 13 convs (VGG16's pattern of 2-2-3-3-3), trained on the same scenes with
the same recipe (``scripts/assets/train_hard_model.py --depth``).
"""
from __future__ import annotations

from pathlib import Path

from .bundled import ASSETS_DIR

#: Scenes are 224 x 224; the model sees them resized (whole image, PIL bilinear) to 128 x 128.
INPUT_SIZE = 128
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)

#: The shipped model: 8 convs (VGG pattern 2-2-2-2), 128 -> 64 -> 32 -> 16 -> global max.
HARD_CONFIG: dict = {
    "features": [32, 32, "M", 64, 64, "M", 128, 128, "M", 192, 192, "G"],
    "input_size": INPUT_SIZE,
    "pool": 1,
    "hidden": 256,
    "dropout": 0.3,
    "in_channels": 3,
    "num_classes": 10,
}

#: Networks of the depth study, by number of convs (hidden dense layer, pooling and widths alike).
DEPTH_CONFIGS: dict[int, dict] = {
    4: dict(HARD_CONFIG, features=[32, "M", 64, "M", 128, "M", 192, "G"]),
    8: dict(HARD_CONFIG),
    13: dict(HARD_CONFIG, features=[32, 32, "M", 64, 64, "M", 128, 128, 128, "M", 192, 192, 192, "M",
                                    192, 192, 192, "G"]),
}

WEIGHTS_FILE: Path = ASSETS_DIR / "bundled_hard_vgg.pt"
META_FILE: Path = ASSETS_DIR / "bundled_hard_vgg.json"
LOG_FILE: Path = ASSETS_DIR / "bundled_hard_training_log.txt"

#: Seeds of hard scenes, as in the easy preset: training [0, 10_000_000), held-out (metadata)
#: 10_000_000+, metrics 20_000_000+, evaluation 30_000_000+.
TRAIN_SEED_BASE = 0
HELDOUT_SEED_BASE = 10_000_000
METRICS_SEED_BASE = 20_000_000


def hard_preprocessing(input_size: int = INPUT_SIZE):
    from .preprocessing import Preprocessing

    return Preprocessing(mean=MEAN, std=STD, input_size=(int(input_size), int(input_size)), resize=None,
                         interpolation="bilinear")
