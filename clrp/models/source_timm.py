"""timm models as ``timm:<name>`` (when timm is installed; :mod:`.timm_zoo` has the weights,
preprocessing and class names): pretrained weights from the Hugging Face cache or hub, or
``weights=<path>``. Listed: ``$CLRP_TIMM_MODELS``, names asked for and those in the HF cache."""
from __future__ import annotations

from pathlib import Path

from . import timm_zoo
from ._errors import ModelLoadError, WeightsNotFound
from .architectures import classifier_outputs
from .loaded import IMAGENET_DOMAIN, LoadedModel, ModelInfo
from .source_base import ModelSource, explicit_weights
from .weights import apply_state_dict, load_state_dict

__all__ = ["TimmSource"]


class TimmSource(ModelSource):
    kind = "timm"
    title = "timm models ($CLRP_TIMM_MODELS, --timm and those in the Hugging Face cache)"
    description = "timm models"
    prefix = timm_zoo.PREFIX
    downloads = True
    order = 4

    def hint(self, config=None) -> str:
        return f"{self.prefix}<name> (see `python -m clrp models`)"

    def list(self, config=None, names=()) -> list[str]:
        out = [self.prefix + timm_zoo.strip(t) for t in names] + timm_zoo.listed_names()
        return list(dict.fromkeys(out))

    def available(self, config=None, names=()) -> list[ModelInfo]:
        return [self.info(n) for n in self.list(config, names)]

    def info(self, name: str) -> ModelInfo:
        if not timm_zoo.installed():
            return ModelInfo(name, self.kind, "timm model", False,
                             "the 'timm' package is not installed (pip install timm)")
        if not timm_zoo.is_model(name):
            return ModelInfo(name, self.kind, "timm model", False,
                             f"timm has no model (or pretrained tag) {timm_zoo.strip(name)!r}")
        cfg = timm_zoo.pretrained_cfg(name)
        if cfg is None:
            return ModelInfo(name, self.kind, f"timm {timm_zoo.strip(name)}", False,
                             "timm has no pretrained weights for it (load it with weights=)")
        desc = f"timm {cfg['name']} ({cfg.get('num_classes')} classes)"
        p = timm_zoo.cached_weights(cfg)
        if p is not None:
            return ModelInfo(name, self.kind, desc, True, None, str(p), False, timm_zoo.weights_source(cfg))
        ok, reason = timm_zoo.download_state(cfg)
        return ModelInfo(name, self.kind, desc, False, reason, None, ok, timm_zoo.weights_source(cfg))

    def load(self, name, *, weights=None, config=None, download=None, progress=True, **options) -> LoadedModel:
        if not timm_zoo.installed():
            raise ModelLoadError(f"{name}: timm models need the 'timm' package (pip install timm)")
        import timm

        n = timm_zoo.strip(name)
        if not timm_zoo.is_model(n):
            raise ModelLoadError(f"unknown model {name!r}: timm has no model (or pretrained tag) {n!r}")
        cfg = timm_zoo.pretrained_cfg(n)
        if weights is not None:
            path, origin = explicit_weights(weights, name), "weights= file"
        else:
            if cfg is None:
                raise WeightsNotFound(f"{name}: timm has no pretrained weights for it; pass weights=<a state_dict file>")
            cached = timm_zoo.cached_weights(cfg)
            path = cached or timm_zoo.fetch_weights(cfg, progress=progress, allow=download)
            origin = "cache" if cached else "downloaded"
        sd = load_state_dict(path)
        try:
            if cfg is not None:
                model = timm.create_model(n, pretrained=True, pretrained_cfg_overlay={"state_dict": sd})
                for attr in ("pretrained_cfg", "default_cfg"):
                    c = getattr(model, attr, None)
                    if isinstance(c, dict):
                        c.pop("state_dict", None)
            else:
                model = timm.create_model(n, pretrained=False)
                apply_state_dict(model, sd, path)
        except ModelLoadError:
            raise
        except (RuntimeError, KeyError, ValueError) as e:
            raise ModelLoadError(f"weights {path} do not fit timm {n}: {str(e).splitlines()[0][:500]}") from None
        num = classifier_outputs(model)
        return LoadedModel(
            model=model.eval(),
            class_names=timm_zoo.class_names(cfg, num),
            preprocessing=timm_zoo.preprocessing(cfg, model=model),
            name=name,
            description=f"timm {n}" + (f" ({cfg.get('hf_hub_id') or cfg.get('url')})" if cfg else ""),
            architecture=f"timm:{n}",
            multilabel=False,
            weights_path=Path(path),
            meta={"weights_origin": origin, "hf_hub_id": (cfg or {}).get("hf_hub_id")},
            domain=IMAGENET_DOMAIN if num == 1000 else "",
        )
