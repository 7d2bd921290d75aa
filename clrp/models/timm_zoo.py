"""timm models as ``timm:<name>`` (optional: everything else works without timm).

- Names: any ``timm.list_models()`` name, with or without a pretrained tag
  (``timm:resnet50``, ``timm:resnet50.a1_in1k``).
- Weights: timm's pretrained weights from the Hugging Face cache (``$HF_HUB_CACHE``, default
  ``~/.cache/huggingface/hub``), downloaded there through ``huggingface_hub`` on first use (timeouts
  from ``$CLRP_DOWNLOAD_TIMEOUT``, ``$HF_ENDPOINT`` for a mirror, never when ``$CLRP_OFFLINE=1``);
  legacy weights with only a URL go through the torch hub cache like torchvision's. Or an explicit
  ``weights=`` file (a state_dict, ``.pth`` read with ``weights_only=True``, or ``.safetensors``).
  timm's own checkpoint filter for the architecture is applied (``pretrained_cfg_overlay``).
- Class names: ImageNet-1k (torchvision's category names) for 1000-class ImageNet weights,
  timm's ImageNet-12k/21k/22k descriptions where timm knows the subset, ``class i`` otherwise.
- Preprocessing: ``timm.data.resolve_data_config`` (input size, mean, std, interpolation,
  ``crop_pct`` -> resize of the shorter side before the centre crop).
- Listing (:func:`listed_names`): the names in ``$CLRP_TIMM_MODELS`` (comma-separated) and the timm
  weights already in the Hugging Face cache; thousands of timm models exist, so no others.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from . import download
from ._errors import ModelLoadError, WeightsNotFound
from .preprocessing import Preprocessing

PREFIX = "timm:"
LIST_ENV = "CLRP_TIMM_MODELS"
_HF_FILES = ("model.safetensors", "pytorch_model.bin")

__all__ = ["PREFIX", "LIST_ENV", "installed", "strip", "is_model", "pretrained_cfg", "cached_weights",
           "fetch_weights", "listed_names", "preprocessing", "class_names", "hf_cache_dir"]


def installed() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def _timm():
    try:
        import timm
    except ImportError:
        raise ModelLoadError("timm models need the 'timm' package (pip install timm)") from None
    return timm


def strip(name: str) -> str:
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def is_model(name: str) -> bool:
    """Whether timm (if installed) knows ``name`` (``timm:`` prefix optional, tag allowed)."""
    if not installed():
        return False
    import timm

    n = strip(name)
    if not timm.models.is_model(n):
        return False
    arch, tag = timm.models.split_model_name_tag(n)
    return not tag or pretrained_cfg(n) is not None


def pretrained_cfg(name: str) -> dict | None:
    """timm's pretrained config of ``name`` (its default tag when none is given), or None when
    timm has no pretrained weights for it."""
    timm = _timm()
    n = strip(name)
    try:
        cfg = timm.models.get_pretrained_cfg(n, allow_unregistered=False)
    except (RuntimeError, ValueError, KeyError):
        cfg = None
    if cfg is None:
        return None
    d = cfg.to_dict()
    d.setdefault("architecture", timm.models.split_model_name_tag(n)[0])
    d["name"] = n if "." in n else f"{d['architecture']}.{d.get('tag') or ''}".rstrip(".")
    return d


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache (read at call time, like ``huggingface_hub`` at import)."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _hf_files(cfg: dict) -> tuple[str, ...]:
    fn = cfg.get("hf_hub_filename")
    return (fn,) if fn else _HF_FILES


def _repo_dir(repo_id: str) -> Path:
    return hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def _hf_cached(repo_id: str, files: tuple[str, ...]) -> Path | None:
    """A file of ``repo_id`` already in the HF cache (no network, no huggingface_hub import)."""
    repo = _repo_dir(repo_id)
    ref = repo / "refs" / "main"
    snaps = []
    if ref.is_file():
        snaps.append(repo / "snapshots" / ref.read_text().strip())
    if (repo / "snapshots").is_dir():
        snaps += sorted((repo / "snapshots").iterdir())
    for snap in snaps:
        for fn in files:
            p = snap / fn
            if p.is_file():
                return p
    return None


def cached_weights(cfg: dict) -> Path | None:
    """The pretrained weights file of ``cfg`` when it is already on disk."""
    if cfg.get("hf_hub_id"):
        p = _hf_cached(cfg["hf_hub_id"], _hf_files(cfg))
        if p is not None:
            return p
    if cfg.get("url"):
        p = download.cached_file(cfg["url"])
        if p.is_file():
            return p
    return None


def weights_source(cfg: dict) -> str | None:
    if cfg.get("hf_hub_id"):
        return f"https://huggingface.co/{cfg['hf_hub_id']} ({' or '.join(_hf_files(cfg))})"
    return cfg.get("url") or None


def _where(cfg: dict) -> str:
    if cfg.get("hf_hub_id"):
        return (f"Download {' or '.join(_hf_files(cfg))} from https://huggingface.co/{cfg['hf_hub_id']} on a machine "
                f"with internet and pass weights=<that file>, or fill the Hugging Face cache {hf_cache_dir()} "
                f"(e.g. copy it from another machine; $HF_ENDPOINT selects a mirror)")
    return f"pass weights=<a state_dict file for {cfg.get('architecture')}>"


def fetch_weights(cfg: dict, *, progress: bool = True, allow: bool | None = None) -> Path:
    """The pretrained weights of ``cfg``: from the caches, else downloaded (Hugging Face hub, or the
    legacy URL through the torch hub cache). Raises :class:`WeightsNotFound` with what to do."""
    name = f"timm:{cfg['name']}"
    p = cached_weights(cfg)
    if p is not None:
        return p
    if not cfg.get("hf_hub_id") and not cfg.get("url"):
        raise WeightsNotFound(f"{name}: timm lists no pretrained weights for it; pass weights=<a state_dict file>")
    if not cfg.get("hf_hub_id"):
        return download.fetch(cfg["url"], progress=progress, what=f"weights of {name}",
                              help_text=", pass weights=<path>", allow=allow)
    repo = cfg["hf_hub_id"]
    if allow is False or not download.downloads_enabled():
        off = "download=False" if allow is False else f"${download.OFFLINE_ENV}=1"
        raise WeightsNotFound(f"{name}: its weights ({repo} on the Hugging Face hub) are not in the cache "
                              f"{hf_cache_dir()} and downloads are off ({off}). {_where(cfg)}.")
    key = f"hf://{os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}/{repo}"
    failed = download.recent_failure(key)
    if failed:
        raise WeightsNotFound(f"{name}: downloading its weights ({repo}) failed less than {download.RETRY_AFTER:g} s "
                              f"ago ({failed}; not retried yet). {_where(cfg)}.")
    try:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
    except ImportError:
        raise WeightsNotFound(f"{name}: downloading timm weights needs the 'huggingface_hub' package. "
                              f"{_where(cfg)}.") from None
    timeout = download.download_timeout()
    endpoint = os.environ.get("HF_ENDPOINT") or None
    missing = getattr(hf_errors, "RemoteEntryNotFoundError", None) or hf_errors.EntryNotFoundError
    local_missing = getattr(hf_errors, "LocalEntryNotFoundError", ())
    last = "no weights file found in the repository"
    try:
        download.check_reachable(endpoint or "https://huggingface.co", timeout)
        for fn in _hf_files(cfg):
            # one metadata request first: hf_hub_download retries a failed connection for a
            # minute (backoff), which would look like a hang on a machine without internet
            try:
                huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(repo, fn, endpoint=endpoint),
                                                     timeout=timeout, endpoint=endpoint)
            except missing as e:
                if local_missing and isinstance(e, local_missing):
                    raise
                last = f"{fn} is not in {repo}"
                continue
            return Path(huggingface_hub.hf_hub_download(repo, fn, cache_dir=hf_cache_dir(), endpoint=endpoint,
                                                        etag_timeout=timeout))
    except Exception as e:  # connection errors, timeouts, HTTP errors, offline mode
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        download.remember_failure(key, f"{type(e).__name__}: {reason}"[:300])
        raise WeightsNotFound(f"{name}: its weights are not in the Hugging Face cache {hf_cache_dir()} and downloading "
                              f"them from {repo} failed ({type(e).__name__}: {reason[:300]}). {_where(cfg)}.") from None
    download.remember_failure(key, last)
    raise WeightsNotFound(f"{name}: {last}. {_where(cfg)}.")


def download_state(cfg: dict) -> tuple[bool, str | None]:
    """``(downloadable, reason)`` for the listing, without any network call."""
    if not cfg.get("hf_hub_id") and not cfg.get("url"):
        return False, "timm lists no pretrained weights for it (pass weights=)"
    if not download.downloads_enabled():
        return False, (f"weights not in the Hugging Face cache {hf_cache_dir()}; downloads are off "
                       f"(${download.OFFLINE_ENV}=1)")
    if cfg.get("hf_hub_id"):
        key = f"hf://{os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}/{cfg['hf_hub_id']}"
    else:
        key = cfg["url"]
    failed = download.recent_failure(key)
    if failed:
        return False, f"weights not in the cache; the last download failed ({failed})"
    return True, f"weights not in the cache; downloadable from {weights_source(cfg)} on first use"


# ---------------------------------------------------------------------------------------------
# Listing

def listed_names() -> list[str]:
    """``timm:<name>`` for the names in ``$CLRP_TIMM_MODELS`` and the timm weights in the HF cache
    (no timm import, no network)."""
    out: list[str] = []
    for part in os.environ.get(LIST_ENV, "").replace(";", ",").split(","):
        part = part.strip()
        if part:
            out.append(PREFIX + strip(part))
    root = hf_cache_dir()
    try:
        cached = sorted(p.name[len("models--timm--"):] for p in root.iterdir() if p.name.startswith("models--timm--"))
    except OSError:
        cached = []
    for n in cached:
        if PREFIX + n not in out and _hf_cached(f"timm/{n}", _HF_FILES) is not None:
            out.append(PREFIX + n)
    return out


# ---------------------------------------------------------------------------------------------
# Metadata

def preprocessing(cfg: dict | None = None, model=None) -> Preprocessing:
    """``timm.data.resolve_data_config`` as a :class:`Preprocessing`: centre crop of
    ``input_size`` after resizing the shorter side to ``floor(size / crop_pct)`` (timm's eval
    transform), or the whole image resized (``crop_mode="squash"`` with ``crop_pct=1``)."""
    from timm.data import resolve_data_config

    dc = resolve_data_config({}, pretrained_cfg=cfg, model=model) if cfg is not None else \
        resolve_data_config({}, model=model)
    _, h, w = dc["input_size"]
    crop_pct = float(dc.get("crop_pct") or 0.875)
    mode = dc.get("crop_mode", "center")
    interp = str(dc.get("interpolation", "bicubic")).lower()
    interp = interp if interp in ("bilinear", "bicubic", "nearest") else "bicubic"
    resize = None if (mode == "squash" and crop_pct >= 1.0) else int(math.floor(min(h, w) / crop_pct))
    mean, std = tuple(dc["mean"]), tuple(dc["std"])
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return Preprocessing(mean=mean, std=std, input_size=(h, w), resize=resize, interpolation=interp)


def imagenet_categories() -> list[str]:
    import torchvision

    return list(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def class_names(cfg: dict | None, num_classes: int) -> list[str]:
    """ImageNet-1k names (torchvision's) for 1000-class ImageNet weights, timm's label
    descriptions for the other ImageNet subsets it knows, ``class i`` otherwise."""
    subset = None
    offset = int((cfg or {}).get("label_offset") or 0)
    if cfg is not None:
        try:
            from timm.data import infer_imagenet_subset

            subset = infer_imagenet_subset(cfg)
        except Exception:
            subset = None
    if num_classes - offset == 1000 and subset in (None, "imagenet-1k"):
        return ["background"] * offset + imagenet_categories()
    if subset:
        try:
            from timm.data import ImageNetInfo

            names = [d.split(",")[0].strip() for d in ImageNetInfo(subset).label_descriptions()]
            if len(names) + offset == num_classes:
                return ["background"] * offset + names
        except Exception:
            pass
    return [f"class {i}" for i in range(num_classes)]
