"""Non-Streamlit logic of the dashboard: model choices, explanations as arrays, dataset sources
(bundled scenes, uploaded archives, server folders inside allowed roots) and the server's
private folders. Evaluations run as jobs (:mod:`dashboard.jobs`). Importable and testable without Streamlit.

Environment (set by whoever starts the server):
- ``CLRP_MODELS_CONFIG``: TOML file listing lab models (see :func:`clrp.models.read_config`).
- ``TORCH_HOME``, ``CLRP_WEIGHTS_MIRROR``, ``CLRP_DOWNLOAD_TIMEOUT``, ``CLRP_OFFLINE=1``: where the
  torchvision weights are cached, where missing ones are downloaded from, and whether they are
  (see :mod:`clrp.models.download`). ``CLRP_TIMM_MODELS``: timm models to offer
  (comma-separated; those in the Hugging Face cache are offered anyway).
- ``CLRP_DATA_ROOTS``: colon-separated folders whose contents users may evaluate on; anything
  outside them (after resolving symlinks) is refused. Unset: no server folders at all.
- ``CLRP_RUNS_DIR``: the job store, run folders and uploads (default: ``clrp-dashboard-<uid>/runs``
  in the system temp dir). ``CLRP_CACHE_DIR``: generated scene datasets (default: same, ``cache``).
  Both are created 0700 and refused when they belong to another user.
- Jobs at once, queues and upload quotas: ``[server.limits]`` of the lab TOML (:mod:`dashboard.settings`).
- ``CLRP_DEV_RANDOM_MODELS=1``: also offer models with RANDOM weights (VGG16, the bundled
  architecture, a tiny 64 px ViT), clearly labelled -- for development and benchmarks only.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import torch

import clrp
from clrp.errors import ClrpError, DatasetError, ModelLoadError
from clrp.method_registry import REGISTRY
from clrp.models import ModelSource, register_source
from clrp.scenes.presets import EVALUATION_SEED

DEV_ENV = "CLRP_DEV_RANDOM_MODELS"
ROOTS_ENV = "CLRP_DATA_ROOTS"
RUNS_ENV = "CLRP_RUNS_DIR"
CACHE_ENV = "CLRP_CACHE_DIR"

#: Methods shown by default in the Explain grid (all of clrp.METHODS can be chosen).
DEFAULT_METHODS = ("lrp", "clrp1", "clrp2", "sglrp", "gradient", "gradcam")


def method_controls() -> dict:
    """The Explain page's method option controls, from the method records: control label -> the
    first option registered with that label (its choices, default and help); options of several
    methods that share a label share the control."""
    controls = {}
    for method in REGISTRY.values():
        for o in method.options:
            if o.control and o.choices:
                controls.setdefault(o.control, o)
    return controls


def options_for(method: str, values: dict) -> dict:
    """The options of ``method`` that the page's controls set ({control label: chosen value})."""
    return {o.name: values[o.control] for o in REGISTRY[method].options if o.control in values}


# ---------------------------------------------------------------------------------------------
# Models

@dataclass(frozen=True)
class ModelChoice:
    key: str            # what load_model() takes
    label: str          # what the picker shows
    kind: str           # its source's: bundled | lab | dev | torchvision | timm | a plug-in's
    description: str
    available: bool     # weights on the server now
    reason: Optional[str] = None   # why not available (or what a download would fetch)
    downloadable: bool = False     # not on the server yet; loading it downloads the weights once

    @property
    def selectable(self) -> bool:
        return self.available or self.downloadable


DEV_MODELS = {
    "dev:bundled": "bundled architecture (RANDOM weights, dev only)",
    "dev:vgg16": "vgg16 (RANDOM weights, dev/benchmark only)",
    "dev:vit": "tiny vision transformer, 64 px (RANDOM weights, dev only)",
}


def dev_models_enabled() -> bool:
    return os.environ.get(DEV_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class DevModels(ModelSource):
    """``dev:...``: models with RANDOM weights, listed only with ``$CLRP_DEV_RANDOM_MODELS=1``
    (registered in every process that imports the dashboard: the server and its job workers)."""

    kind = "dev"
    title = "development models (RANDOM weights)"
    prefix = "dev:"

    def list(self, config=None, names=()) -> list[str]:
        return list(DEV_MODELS) if dev_models_enabled() else []

    def available(self, config=None, names=()) -> list:
        from clrp.models import ModelInfo

        return [ModelInfo(k, self.kind, DEV_MODELS[k], True, label=DEV_MODELS[k]) for k in self.list()]

    def load(self, name, **ignored):
        if not dev_models_enabled():
            raise ModelLoadError(f"{name} is a development model; set {DEV_ENV}=1 to enable it")
        return _dev_model(name)


register_source(DevModels(), replace=True)


def _size_note(description: str) -> str:
    import re

    m = re.search(r"\((\d+(?:\.\d+)? [MG]B)\)", description or "")
    return f" {m.group(1)}" if m else ""


def model_choices() -> list[ModelChoice]:
    """Every model the picker lists, available or not (with the reason), in the order of their
    sources (clrp.models.sources: the bundled models, lab models, plug-ins and dev models, then
    torchvision and timm models -- of those, the ones whose weights are on the server first, then
    those downloaded on first use). Fast: no network, no model is built."""
    from clrp.models import available_models
    from clrp.models.sources import get_source

    out, rank, downloads = [], {}, {}
    for m in available_models():
        if m.available:
            label = m.label or m.name
        elif m.downloadable:
            label = f"{m.name} — downloads{_size_note(m.description)} on first use"
        else:
            label = f"{m.name} (unavailable)"
        out.append(ModelChoice(m.name, label, m.kind, m.description, m.available, m.reason, m.downloadable))
        if m.kind not in rank:
            rank[m.kind] = len(rank)
            try:
                downloads[m.kind] = get_source(m.kind).downloads
            except ModelLoadError:  # a broken plug-in's entry
                downloads[m.kind] = False
    return sorted(out, key=lambda c: (rank[c.kind], downloads[c.kind] and not c.available))


def default_model_key(choices: Sequence[ModelChoice]) -> Optional[str]:
    """The bundled model if available, else the first available model, else None (never a model
    that would have to be downloaded first)."""
    avail = [c for c in choices if c.available]
    for c in avail:
        if c.key == "bundled":
            return c.key
    return avail[0].key if avail else None


NOT_ALLOWED = "not on this server's download allow-list"


def download_refusal(models_settings) -> str:
    """Why a visitor may not download a model: the limit and its value."""
    allowed = list(models_settings.downloadable)
    return (f"{NOT_ALLOWED} ([server.models] downloadable = {allowed}"
            + ("; visitors use the models already on the server" if not allowed else "")
            + "); an admin can download it")


def restrict_downloads(choices: Sequence[ModelChoice], models_settings) -> list[ModelChoice]:
    """``choices`` as a visitor who is not an admin gets them: models not on the server yet are
    downloadable only when ``[server.models] downloadable`` lists them (or holds ``"*"``)."""
    import dataclasses

    out = []
    for c in choices:
        if c.downloadable and not c.available and not models_settings.may_download(c.key):
            c = dataclasses.replace(c, downloadable=False, reason=download_refusal(models_settings),
                                    label=f"{c.key} (unavailable)")
        out.append(c)
    return out


def load_model(key: str):
    """A ``clrp.models.LoadedModel`` for a picker key, from its source. Raises ``ModelLoadError``
    (a ClrpError)."""
    from clrp.models import load

    return load(key)


def _dev_model(key: str):
    from clrp.models import LoadedModel, Preprocessing

    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(0)
        if key == "dev:vgg16":
            import torchvision

            model = torchvision.models.vgg16(weights=None).eval()
            names = list(torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"])
            return LoadedModel(model, names, Preprocessing(), name=key, description=DEV_MODELS[key],
                               architecture="vgg16", multilabel=False)
        if key == "dev:bundled":
            from clrp.models.bundled import build_model, bundled_preprocessing
            from clrp.scenes.shapes import CLASS_NAMES

            model = build_model({"num_classes": len(CLASS_NAMES)}).eval()
            return LoadedModel(model, list(CLASS_NAMES), bundled_preprocessing(), name=key,
                               description=DEV_MODELS[key], architecture="scene_vgg", multilabel=True)
        if key == "dev:vit":
            from torchvision.models.vision_transformer import VisionTransformer

            from clrp.models.bundled import bundled_preprocessing
            from clrp.scenes.shapes import CLASS_NAMES

            model = VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32,
                                      mlp_dim=64, num_classes=len(CLASS_NAMES)).eval()
            with torch.no_grad():  # torchvision's init zeroes the head: every logit 0 and every map empty
                torch.nn.init.normal_(model.heads.head.weight, std=0.1)
            pre = replace(bundled_preprocessing(), input_size=(64, 64))
            return LoadedModel(model, list(CLASS_NAMES), pre, name=key, description=DEV_MODELS[key],
                               architecture="vit", multilabel=True)
    raise ModelLoadError(f"unknown development model {key!r}")


# ---------------------------------------------------------------------------------------------
# Images and explanations

def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def scene_png(seed: int) -> bytes:
    """A bundled procedural scene as PNG bytes (so samples and uploads take one code path)."""
    from clrp import viz
    from clrp.scenes import easy

    return viz.to_png(easy.generate_scene(int(seed)).image)


def scene_info(seed: int) -> dict:
    from clrp.scenes import easy

    sc = easy.generate_scene(int(seed))
    return {"seed": int(seed), "classes": sc.class_names, "boxes": [list(o.box) for o in sc.objects]}


# ---------------------------------------------------------------------------------------------
# Dataset sources

def data_roots(env: Optional[str] = None) -> list[Path]:
    """The allowed server folders (``$CLRP_DATA_ROOTS``, colon-separated), resolved; missing
    folders are dropped."""
    raw = os.environ.get(ROOTS_ENV, "") if env is None else env
    out = []
    for part in raw.split(os.pathsep):
        part = part.strip()
        if not part:
            continue
        p = Path(part).expanduser()
        if p.is_dir():
            out.append(p.resolve())
    return out


def resolve_server_path(path: str, roots: Sequence[Path]) -> Path:
    """``path`` resolved with symlinks followed: absolute, relative to the root it names
    (``<root folder name>/sub/dir``, as :func:`display_path` shows it) or else to the first root.
    Raises ``DatasetError`` unless it exists and lies inside one of ``roots``, with one message
    for missing and not allowed (the answer never tells which paths exist outside the roots)."""
    if not roots:
        raise DatasetError(f"server folders are disabled: the server admin has not set {ROOTS_ENV}")
    if not path or not str(path).strip():
        raise DatasetError("enter a folder or file path")
    refused = DatasetError(f"{path}: no such file or folder in the folders this server allows")
    if "\x00" in str(path):
        raise refused
    p = Path(str(path).strip()).expanduser()
    if not p.is_absolute():
        named = [Path(r) for r in roots if p.parts and Path(r).name == p.parts[0]]
        p = named[0].parent / p if named else Path(roots[0]) / p
    try:
        real = p.resolve(strict=True)
    except (FileNotFoundError, OSError, RuntimeError):
        raise refused from None
    for r in roots:
        r = Path(r).resolve()
        if real == r or r in real.parents:
            return real
    raise refused


def display_path(path: Path | str, roots: Sequence[Path]) -> str:
    """A path inside the roots as users who are not admins see it: ``<root folder name>/rest``
    (never the server's absolute path); :func:`resolve_server_path` takes it back."""
    return _relative_to_root(Path(path), roots)


def list_root_entries(roots: Sequence[Path], limit: int = 200) -> list[str]:
    """Folders and archives directly inside the roots (for a picker), as ``<root name>/<entry>``:
    the server's absolute paths are not shown; ``resolve_server_path`` reads this form."""
    out = []
    for r in roots:
        try:
            for e in sorted(Path(r).iterdir()):
                if e.name.startswith("."):
                    continue
                if e.is_dir() or e.suffix.lower() in (".zip", ".tar", ".gz", ".tgz", ".json", ".csv"):
                    out.append(f"{Path(r).name}/{e.name}")
                if len(out) >= limit:
                    return out
        except OSError:
            continue
    return out


def private_dir(path: str | os.PathLike) -> Path:
    """``path`` as a folder only this server's user can use: created 0700 (with its missing
    parents), or, when it exists, checked: a real folder (not a link), owned by this uid and not
    writable by others (a predictable path under /tmp may have been made by someone else first).
    A folder of ours that others may only read is tightened to 0700. Raises ``ClrpError``."""
    p = Path(path)
    missing = []
    for q in (p, *p.parents):  # every folder this makes is 0700, not only the last one
        if os.path.lexists(q):
            break
        missing.append(q)
    for q in reversed(missing):
        try:
            q.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ClrpError(f"cannot create the server folder {q}: {exc.strerror}") from None
    st = os.lstat(p)
    if not stat.S_ISDIR(st.st_mode):
        raise ClrpError(f"refusing to use {p}: it is not a folder (a link or a file)")
    if st.st_uid != os.getuid():
        raise ClrpError(f"refusing to use {p}: it belongs to another user (uid {st.st_uid}, this server runs as "
                        f"uid {os.getuid()}); set {RUNS_ENV} / {CACHE_ENV} to folders of this user")
    if st.st_mode & 0o022:
        raise ClrpError(f"refusing to use {p}: others may write into it (mode {stat.S_IMODE(st.st_mode):o})")
    if st.st_mode & 0o077:
        os.chmod(p, 0o700)
    return p


def _default_root() -> Path:
    """The default parent of the runs and cache folders: per uid under the temp dir, checked."""
    return private_dir(Path(tempfile.gettempdir()) / f"clrp-dashboard-{os.getuid()}")


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return private_dir(env if env else _default_root() / "cache")


def runs_dir() -> Path:
    """The runs root: the job store (``jobs.sqlite``), run folders, uploads (all 0700)."""
    env = os.environ.get(RUNS_ENV)
    return private_dir(env if env else _default_root() / "runs")


def scenes_dataset(n: int, seed: int = EVALUATION_SEED, root: Optional[Path] = None, preset: str = "scenes") -> Path:
    """A VOC folder of ``n`` generated scenes of ``preset`` (``clrp.scenes.presets.PRESETS``: the
    bundled ``scenes`` or ``scenes-hard``; seeds ``seed..seed+n-1``), generated once and kept in the
    cache folder (never half-written, safe for several sessions) -- the ``scenes:N:SEED`` /
    ``scenes-hard:N:SEED`` datasets of the command line."""
    from clrp.scenes.presets import SceneSpec, dataset_dir, get_preset

    n = int(n)
    if not 1 <= n <= 5000:
        raise DatasetError("choose between 1 and 5000 scenes")
    get_preset(preset)  # an unknown preset: a message listing them
    return Path(dataset_dir(SceneSpec(preset, n, int(seed)), root if root is not None else cache_dir()))


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def upload_suffix(name: str) -> str:
    """The archive suffix of an uploaded file's name (``.zip``, ``.tar.gz``, ...); ``DatasetError``
    for anything else. Only the suffix of the client's name is ever used, never its path."""
    base = os.path.basename(str(name or "upload")).replace("\x00", "")
    low = base.lower()
    suffix = next((s for s in ARCHIVE_SUFFIXES if low.endswith(s)), None)
    if suffix is None:
        raise DatasetError(f"{base}: upload a dataset archive ({', '.join(ARCHIVE_SUFFIXES)})")
    return suffix


def _relative_to_root(path: Path, roots: Sequence[Path]) -> str:
    """``path`` as the user typed it relative to its allowed root (``root-name/sub/dir``)."""
    for r in roots:
        r = Path(r).resolve()
        if path == r or r in path.parents:
            return str(Path(r.name) / path.relative_to(r))
    return path.name


def open_source(source: dict):
    """Open the dataset a source dict describes: ``{"kind": "scenes", "n": .., "seed": ..}``,
    ``{"kind": "upload", "path": ...}`` or ``{"kind": "server", "path": ...}`` (checked against the
    roots again here). Returns a ``clrp.datasets.Dataset``; raises ``ClrpError`` subclasses."""
    from clrp.datasets import UPLOAD_LIMITS, open_dataset

    kind = source.get("kind")
    fmt = source.get("format", "auto")
    if kind == "scenes":
        return open_dataset(str(scenes_dataset(source.get("n", 16), source.get("seed", EVALUATION_SEED),
                                               preset=source.get("preset", "scenes"))), "voc")
    if kind == "upload":  # messages name the user's file, never the server's copy
        return open_dataset(str(source["path"]), fmt, limits=UPLOAD_LIMITS,
                            display_name=os.path.basename(str(source.get("name") or "the uploaded archive")))
    if kind == "server":
        roots = data_roots()
        real = resolve_server_path(source["path"], roots)
        return open_dataset(str(real), fmt, display_name=_relative_to_root(real, roots))
    raise DatasetError(f"unknown dataset source {kind!r}")


def run_results(out_dir: str) -> tuple[dict, dict]:
    """``(load_results, summarize)`` of a (possibly partial) run folder; empty dicts if nothing
    is written yet."""
    from clrp.evaluation.runner import load_results, summarize

    if not os.path.isdir(out_dir):
        return {}, {}
    res = load_results(out_dir)
    if not res:
        return {}, {}
    return res, summarize(res)
