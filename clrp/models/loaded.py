"""What a model source hands out: :class:`LoadedModel` (a model ready to explain) and
:class:`ModelInfo` (one entry of a listing: whether it can be loaded now, and why not)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidTarget
from .preprocessing import Preprocessing

__all__ = ["LoadedModel", "ModelInfo", "IMAGENET_DOMAIN"]

IMAGENET_DOMAIN = ("ImageNet-1k: photographs of 1000 object classes (animals, objects, scenes), one main object "
                   "per photo")

@dataclass
class LoadedModel:
    """A model ready to explain: ``model`` (eval mode; loaded on the CPU, ``clrp.devices.place``
    moves it), its ``class_names`` and the ``preprocessing`` its inputs need."""

    model: nn.Module
    class_names: list[str]
    preprocessing: Preprocessing
    name: str
    description: str = ""
    architecture: str = ""
    multilabel: bool = False
    weights_path: Path | None = None
    meta: dict = field(default_factory=dict)
    #: What the model was trained on, in words: inputs far from it get confident, meaningless scores.
    domain: str = ""
    #: The device this model asks for (the lab TOML's ``device``; None: the policy's default), see
    #: ``clrp.devices``. Where it is now: ``clrp.devices.device_of(loaded)``.
    device: str | None = None

    def on_model_device(self, inputs, dtype: bool = True):
        """Inputs on the model's device (the dashboard prepares them on the CPU) and, with ``dtype``,
        in its dtype (explanations take float32 inputs for a half-precision model: clrp.precision)."""
        if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
            p = next(iter((*self.model.parameters(), *self.model.buffers())), None)
            if p is not None and (inputs.device != p.device or (dtype and inputs.dtype != p.dtype)):
                return inputs.to(p.device, p.dtype if dtype else inputs.dtype)
        return inputs

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_index(self, cls) -> int:
        """A class given by index or by name (case and punctuation ignored; any of an ImageNet
        name's comma-separated synonyms) -> its index; ``InvalidTarget`` otherwise."""
        from ..datasets.classmap import normalize_name

        names = list(self.class_names)
        if isinstance(cls, str):
            try:
                cls = int(cls)
            except ValueError:
                pass
        if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
            if 0 <= int(cls) < len(names):
                return int(cls)
            raise InvalidTarget(f"class {cls} is not in model {self.name!r}: it has classes 0..{len(names) - 1}")
        key = normalize_name(str(cls))
        for match in (lambda n: normalize_name(n) == key,
                      lambda n: key in [normalize_name(part) for part in n.split(",")]):
            hits = [i for i, n in enumerate(names) if match(n)]
            if hits:
                return hits[0]
        raise InvalidTarget(f"no class named {cls!r} in model {self.name!r} (e.g. {', '.join(names[:5])}, ...)")

    @property
    def box(self) -> tuple[list[float], list[float]]:
        """Per-channel input bounds ``(low, high)`` for the zB rule."""
        return self.preprocessing.box

    def to_tensor(self, image: Any, **kw) -> torch.Tensor:
        """Any user image (path, bytes, file-like, PIL image, uint8 array) -> ``[1, 3, H, W]``."""
        from ..imageio import load_image

        return load_image(image, self.preprocessing, **kw).tensor

    def load_image(self, image: Any, **kw):
        """:func:`clrp.imageio.load_image` with this model's preprocessing (tensor + display array)."""
        from ..imageio import load_image

        return load_image(image, self.preprocessing, **kw)

    def display_array(self, tensor: torch.Tensor) -> np.ndarray:
        """Input tensor -> RGB uint8 array at the same geometry."""
        return self.preprocessing.denormalize(tensor)

    def explain(self, inputs: torch.Tensor, targets, method: str = "lrp", rules: str = "paper",
                **options) -> torch.Tensor:
        """:func:`clrp.explain` on this model, with the zB box of its preprocessing by default."""
        from ..devices import explain_batched
        from ..methods import explain

        opts = self.preprocessing.method_options(options)
        # batched to the device's memory; out of memory: half the batch, then a ClrpError
        return explain_batched(lambda x, t: explain(self.model, x, t, method, rules=rules, **opts),
                               self.on_model_device(inputs, False), targets)

    def explain_neuron(self, inputs: torch.Tensor, layer: str, channel: int, contrast=None,
                       rules: str = "paper", **options) -> torch.Tensor:
        """:func:`clrp.explain_neuron` on this model, with its zB box by default."""
        from ..devices import without_oom_crash
        from ..methods import explain_neuron

        x = self.on_model_device(inputs, False)
        return without_oom_crash(lambda: explain_neuron(self.model, x, layer, channel, contrast=contrast, rules=rules,
                                                        **self.preprocessing.method_options(options)),
                                 getattr(x, "device", "cpu"))

    def layer_relevance(self, inputs: torch.Tensor, targets, layer: str, method: str = "lrp",
                        rules: str = "paper", **options) -> torch.Tensor:
        """:func:`clrp.layer_relevance` on this model (channel relevances of ``layer``)."""
        from ..devices import without_oom_crash
        from ..methods import layer_relevance

        x = self.on_model_device(inputs, False)
        return without_oom_crash(lambda: layer_relevance(self.model, x, targets, layer, method, rules=rules,
                                                         **self.preprocessing.method_options(options)),
                                 getattr(x, "device", "cpu"))

    def feature_layers(self) -> list[str]:
        """Hidden layers whose channels can be explained, in forward order (graph names)."""
        from ..engine import feature_layers

        return feature_layers(self.model, self.on_model_device(self.preprocessing.example_input()))

    def default_feature_layer(self) -> str:
        """The last feature map every path goes through (Grad-CAM's, feature ablation's and the
        neuron page's default layer)."""
        from ..engine import last_feature_layer

        return last_feature_layer(self.model, self.on_model_device(self.preprocessing.example_input()))

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, C]``."""
        return self.model(self.on_model_device(inputs))

    @torch.no_grad()
    def top_classes(self, inputs: torch.Tensor, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` highest-scoring classes of the first sample: ``(index, name, score)``, score =
        sigmoid probability for multi-label models, softmax otherwise."""
        logits = self.model(self.on_model_device(inputs[:1]))[0].float()
        p = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, 0)
        v, i = p.topk(min(k, p.numel()))
        return [(int(j), self.class_names[int(j)], float(s)) for s, j in zip(v, i)]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str  # the kind of its source: "bundled" | "lab" | "torchvision" | "timm" | a plug-in's (clrp.models.sources)
    description: str
    available: bool  # ready to load now (weights on disk)
    reason: str | None = None  # why not available (and whether it can be downloaded)
    weights_path: str | None = None
    downloadable: bool = False  # not on disk, but load() will download it (network permitting)
    source: str | None = None  # where a download would come from
    label: str | None = None  # what a picker shows instead of the name (None: the name)
