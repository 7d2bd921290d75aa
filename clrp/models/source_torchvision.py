"""Every torchvision classification model with its ImageNet weights (:mod:`.torchvision_zoo`
has the metadata and construction details): ``resnet50`` (torchvision's default weights),
``resnet50.IMAGENET1K_V1`` (other weights by tag), or ``weights=<path>``. Weights live in the
torch hub cache (``torch.hub.get_dir()/checkpoints/<file name of the URL>``), downloaded there on
first use when allowed (:mod:`.download`)."""
from __future__ import annotations

from pathlib import Path

from . import architectures
from . import download as dl
from . import torchvision_zoo as tvz
from .loaded import IMAGENET_DOMAIN, LoadedModel, ModelInfo
from .source_base import ModelSource, explicit_weights, size_text
from .weights import apply_state_dict, load_state_dict

__all__ = ["TorchvisionSource", "imagenet_weights_path"]


def _weights_url(w) -> str:
    """The URL of a torchvision weights enum member (one place, so tests can point it elsewhere)."""
    return w.url


def imagenet_weights_path(name: str) -> Path:
    """Where the torch hub cache keeps torchvision's ImageNet weights of ``name`` (torchvision's
    own cache file: ``torch.hub.get_dir()/checkpoints/<file name of the weights URL>``)."""
    return dl.cached_file(_weights_url(tvz.weights_for(name)))


class TorchvisionSource(ModelSource):
    kind = "torchvision"
    description = "torchvision classifiers with ImageNet-1k weights"
    downloads = True
    order = 3

    def claims(self, name, config=None) -> bool:
        return tvz.is_name(name)

    def heading(self) -> str:
        mode = ("downloads are off ($CLRP_OFFLINE=1)" if not dl.downloads_enabled()
                else f"missing ones are downloaded there on first use from "
                     f"{dl.source_url(dl.TORCHVISION_BASE)}")
        return f"torchvision classifiers (ImageNet-1k weights); weights in {dl.hub_checkpoints()}, {mode}"

    def row_reason(self, info):
        # the rows share their reason (the heading says it) unless a download failed
        return info.reason if "failed" in (info.reason or "") else None

    def hint(self, config=None) -> str:
        return "any torchvision classification model (e.g. resnet50)"

    def list(self, config=None, names=()) -> list[str]:
        """Every model (default weights), plus other weights tags already in the hub cache."""
        out = []
        for n in tvz.names():
            out.append(n)
            default = tvz.weights_for(n).name
            for tag in tvz.tags(n):
                if tag != default and dl.cached_file(_weights_url(tvz.weights_for(f"{n}.{tag}"))).is_file():
                    out.append(f"{n}.{tag}")
        return out

    def available(self, config=None, names=()) -> list[ModelInfo]:
        return [self.info(n) for n in self.list(config, names)]

    def info(self, name: str) -> ModelInfo:
        arch, _ = tvz.split_name(name)
        w = tvz.weights_for(name)
        url = _weights_url(w)
        p = dl.cached_file(url)
        size = size_text(tvz.file_size_mb(name))
        note = "; attention layers: gradient methods only" if tvz.is_transformer(arch) else ""
        desc = f"torchvision {arch}, ImageNet-1k weights {w.name}" + (f" ({size})" if size else "") + note
        if p.is_file():
            return ModelInfo(name, self.kind, desc, True, None, str(p), False, url)
        missing = f"weights {p.name} not in the torch hub cache {p.parent}"
        if not dl.downloads_enabled():
            return ModelInfo(name, self.kind, desc, False,
                             f"{missing}; downloads are off (${dl.OFFLINE_ENV}=1): put the file there", str(p),
                             False, url)
        failed = dl.recent_failure(url)
        if failed:
            return ModelInfo(name, self.kind, desc, False,
                             f"{missing}; the last download failed ({failed}): offline? put the file there", str(p),
                             False, url)
        src = dl.source_url(url)
        return ModelInfo(name, self.kind, desc, False,
                         f"{missing}; downloadable ({size or 'size unknown'}) from {src} on first use", str(p), True,
                         url)

    def load(self, name, *, weights=None, config=None, download=None, progress=True, **options) -> LoadedModel:
        arch, _ = tvz.split_name(name)
        w = tvz.weights_for(name)
        url = _weights_url(w)
        fname = dl.file_name(url)
        if weights is not None:
            path, origin = explicit_weights(weights, f"ImageNet weights for {name}"), "weights= file"
        else:
            path = dl.cached_file(url)
            origin = "torch hub cache"
            if not path.is_file():
                path = dl.fetch(url, progress=progress, what=f"ImageNet weights for {name}",
                                help_text=f", pass weights=<path to {fname}>", allow=download)
                origin = "downloaded"
        sd, ignore = tvz.fix_state_dict(arch, load_state_dict(path))
        model = architectures.build_architecture(arch, len(w.meta["categories"]), initialize=False, weights=w)
        apply_state_dict(model, sd, path, ignore=ignore)
        note = " (attention layers: the gradient methods only, LRP refuses them)" if tvz.is_transformer(arch) else ""
        return LoadedModel(
            model=model.eval(),
            class_names=list(w.meta["categories"]),
            preprocessing=tvz.preprocessing(name),
            name=name,
            description=f"torchvision {arch}, ImageNet-1k weights {w.name} ({fname}){note}",
            architecture=arch,
            multilabel=False,
            weights_path=path,
            meta={"weights_url": url, "weights_tag": w.name, "weights_origin": origin},
            domain=IMAGENET_DOMAIN,
        )
