"""Non-Streamlit logic of the dashboard: model choices, explanations as arrays, dataset sources
(bundled scenes, uploaded archives, server folders inside allowed roots) and the registry of
background evaluation runs. Importable and testable without Streamlit.

Environment (set by whoever starts the server):
- ``CLRP_MODELS_CONFIG``: TOML file listing lab models (see :func:`clrp.models.read_config`).
- ``TORCH_HOME``, ``CLRP_WEIGHTS_MIRROR``, ``CLRP_DOWNLOAD_TIMEOUT``, ``CLRP_OFFLINE=1``: where the
  torchvision weights are cached, where missing ones are downloaded from, and whether they are
  (see :mod:`clrp.models.download`). ``CLRP_TIMM_MODELS``: timm models to offer
  (comma-separated; those in the Hugging Face cache are offered anyway).
- ``CLRP_DATA_ROOTS``: colon-separated folders whose contents users may evaluate on; anything
  outside them (after resolving symlinks) is refused. Unset: no server folders at all.
- ``CLRP_RUNS_DIR``: where evaluation runs write their results (default: a folder in the
  system temp dir). ``CLRP_CACHE_DIR``: generated scene datasets (default: temp dir).
- ``CLRP_MAX_RUNS``: evaluation runs executed at once on the server (default 1; others queue).
- ``CLRP_DEV_RANDOM_MODELS=1``: also offer models with RANDOM weights (VGG16, the bundled
  architecture), clearly labelled -- for development and benchmarks only.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

import clrp
from clrp.errors import ClrpError, DatasetError, ModelLoadError
from clrp.scenes import EVALUATION_SEED

DEV_ENV = "CLRP_DEV_RANDOM_MODELS"
ROOTS_ENV = "CLRP_DATA_ROOTS"
RUNS_ENV = "CLRP_RUNS_DIR"
CACHE_ENV = "CLRP_CACHE_DIR"
MAX_RUNS_ENV = "CLRP_MAX_RUNS"

#: Methods shown by default in the Explain grid (all of clrp.METHODS can be chosen).
DEFAULT_METHODS = ("lrp", "clrp1", "clrp2", "sglrp", "gradient", "gradcam")


# ---------------------------------------------------------------------------------------------
# Models

@dataclass(frozen=True)
class ModelChoice:
    key: str            # what load_model() takes
    label: str          # what the picker shows
    kind: str           # bundled | lab | dev | torchvision | timm
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
}


def dev_models_enabled() -> bool:
    return os.environ.get(DEV_ENV, "").strip().lower() in ("1", "true", "yes", "on")


_ORDER = {"bundled": 0, "lab": 1, "dev": 2, "torchvision": 3, "timm": 4}


def _size_note(description: str) -> str:
    import re

    m = re.search(r"\((\d+(?:\.\d+)? [MG]B)\)", description or "")
    return f" {m.group(1)}" if m else ""


def model_choices() -> list[ModelChoice]:
    """Every model the picker lists, available or not (with the reason): the bundled model, lab
    models, dev models, then torchvision and timm models -- those whose weights are on the server
    first, then those downloaded on first use. Fast: no network, no model is built."""
    from clrp.models import available_models

    out = []
    for m in available_models():
        if m.available:
            label = m.name
        elif m.downloadable:
            label = f"{m.name} — downloads{_size_note(m.description)} on first use"
        else:
            label = f"{m.name} (unavailable)"
        out.append(ModelChoice(m.name, label, m.kind, m.description, m.available, m.reason, m.downloadable))
    if dev_models_enabled():
        for k, label in DEV_MODELS.items():
            out.append(ModelChoice(k, label, "dev", label, True, None))
    return sorted(out, key=lambda c: (_ORDER.get(c.kind, 5), c.kind in ("torchvision", "timm") and not c.available))


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
    """A ``clrp.models.LoadedModel`` for a picker key. Raises ``ModelLoadError`` (a ClrpError)."""
    if key.startswith("dev:"):
        if not dev_models_enabled():
            raise ModelLoadError(f"{key} is a development model; set {DEV_ENV}=1 to enable it")
        return _dev_model(key)
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
            from clrp import scenes
            from clrp.models.bundled import build_model, bundled_preprocessing

            model = build_model({"num_classes": len(scenes.CLASS_NAMES)}).eval()
            return LoadedModel(model, list(scenes.CLASS_NAMES), bundled_preprocessing(), name=key,
                               description=DEV_MODELS[key], architecture="scene_vgg", multilabel=True)
    raise ModelLoadError(f"unknown development model {key!r}")


# ---------------------------------------------------------------------------------------------
# Images and explanations

def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def scene_png(seed: int) -> bytes:
    """A bundled procedural scene as PNG bytes (so samples and uploads take one code path)."""
    from clrp import scenes, viz

    return viz.to_png(scenes.generate_scene(int(seed)).image)


def scene_info(seed: int) -> dict:
    from clrp import scenes

    sc = scenes.generate_scene(int(seed))
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
    refused = DatasetError(f"{str(path).strip()} is not a folder or file this server allows (it is missing, "
                           "unreadable or outside the allowed folders)")
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
    """Folders and archives directly inside the roots (for a picker)."""
    out = []
    for r in roots:
        try:
            for e in sorted(Path(r).iterdir()):
                if e.name.startswith("."):
                    continue
                if e.is_dir() or e.suffix.lower() in (".zip", ".tar", ".gz", ".tgz", ".json", ".csv"):
                    out.append(str(e))
                if len(out) >= limit:
                    return out
        except OSError:
            continue
    return out


def cache_dir() -> Path:
    d = Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "clrp-dashboard" / "cache")
    d.mkdir(parents=True, exist_ok=True)
    return d


def runs_dir() -> Path:
    d = Path(os.environ.get(RUNS_ENV) or Path(tempfile.gettempdir()) / "clrp-dashboard" / "runs")
    d.mkdir(parents=True, exist_ok=True)
    return d


def scenes_dataset(n: int, seed: int = EVALUATION_SEED, root: Optional[Path] = None, preset: str = "scenes") -> Path:
    """A VOC folder of ``n`` generated scenes of ``preset`` (``clrp.scene_presets.PRESETS``: the
    bundled ``scenes`` or ``scenes-hard``; seeds ``seed..seed+n-1``), generated once and kept in the
    cache folder (never half-written, safe for several sessions) -- the ``scenes:N:SEED`` /
    ``scenes-hard:N:SEED`` datasets of the command line."""
    from clrp.scene_presets import SceneSpec, dataset_dir, preset_module

    n = int(n)
    if not 1 <= n <= 5000:
        raise DatasetError("choose between 1 and 5000 scenes")
    preset_module(preset)  # an unknown preset: a message listing them
    return Path(dataset_dir(SceneSpec(preset, n, int(seed)), root if root is not None else cache_dir()))


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


#: Uploaded archives older than this are deleted (a run deletes its own copy when it ends; this
#: catches copies left by a server that stopped mid-run).
UPLOAD_MAX_AGE_S = 6 * 3600
_UPLOAD_PREFIX = "clrp-upload-"


def prune_uploads(max_age_s: float = UPLOAD_MAX_AGE_S, root: Optional[Path] = None, now: Optional[float] = None) -> int:
    """Delete upload folders older than ``max_age_s``; returns how many were deleted."""
    import shutil

    root = Path(root) if root is not None else cache_dir()
    now = time.time() if now is None else now
    n = 0
    for d in root.glob(_UPLOAD_PREFIX + "*"):
        try:
            if d.is_dir() and now - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)
                n += 1
        except OSError:
            continue
    return n


def discard_upload(path: str | os.PathLike) -> None:
    """Delete the private folder :func:`save_upload` made for ``path`` (nothing else)."""
    import shutil

    folder = Path(path).parent
    if folder.name.startswith(_UPLOAD_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


def save_upload(name: str, data: bytes, folder: Optional[Path] = None) -> Path:
    """Store an uploaded archive under a fresh private folder (never using the client's path);
    older uploads are pruned first (:data:`UPLOAD_MAX_AGE_S`)."""
    base = os.path.basename(str(name or "upload")).replace("\x00", "")
    low = base.lower()
    suffix = next((s for s in ARCHIVE_SUFFIXES if low.endswith(s)), None)
    if suffix is None:
        raise DatasetError(f"{base}: upload a dataset archive ({', '.join(ARCHIVE_SUFFIXES)})")
    if not data:
        raise DatasetError(f"{base} is empty")
    if folder is None:
        prune_uploads()
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix=_UPLOAD_PREFIX, dir=cache_dir()))
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / ("dataset" + suffix)
    p.write_bytes(data)
    return p


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


# ---------------------------------------------------------------------------------------------
# Background evaluation runs

class _Cancelled(Exception):
    """Raised inside run_evaluation's progress callback to stop a run (what finished stays)."""


@dataclass
class EvalRun:
    id: str
    session: str
    kind: str                       # "pointing" | "ablation" (which page started it)
    model_key: str
    source: dict
    config: dict                    # RunConfig fields
    out_dir: str
    label: str = ""
    state: str = "queued"           # queued | running | done | cancelled | failed
    done: int = 0
    total: Optional[int] = None
    message: str = ""
    detail: str = ""
    created: float = field(default_factory=time.time)
    started: Optional[float] = None
    finished: Optional[float] = None
    problems: list = field(default_factory=list)
    units: dict = field(default_factory=dict)     # work inside batches: explanations, perturbation steps, ...
    work_started: Optional[float] = None          # model loaded and dataset opened
    _units_at_batch: int = 0                      # sum(units) when the last batch was written
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: Optional[threading.Thread] = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    @property
    def fraction(self) -> float:
        if self.state == "done":
            return 1.0
        if not self.total:
            return 0.0
        return max(0.0, min(1.0, self.done / self.total))

    def cancel(self) -> None:
        self._cancel.set()

    def tick(self, unit: str, n: int) -> None:
        """Work inside a batch (``clrp.evaluation.progress``); a cancel stops the batch here."""
        self.units[unit] = self.units.get(unit, 0) + int(n)
        if self._cancel.is_set():
            raise _Cancelled()

    def batch_done(self, done: int, total: Optional[int]) -> None:
        self.done = int(done)
        if total:
            self.total = int(total)
        self._units_at_batch = sum(self.units.values())
        if self._cancel.is_set():
            raise _Cancelled()

    def progress_estimate(self, now: Optional[float] = None) -> tuple[float, Optional[float]]:
        """``(fraction done, seconds left or None)``: images done plus the share of the current
        batch's work (its units against the units per image so far), extrapolated at the
        measured rate. No time is promised before the first image is done."""
        if self.state == "done":
            return 1.0, 0.0
        if not self.total or not self.done or self.work_started is None:
            return self.fraction, None
        units = sum(self.units.values())
        per_image = self._units_at_batch / self.done if self._units_at_batch else 0.0
        partial = min(1.0, (units - self._units_at_batch) / per_image) if per_image else 0.0
        f = max(0.0, min(1.0, (self.done + partial) / self.total))
        elapsed = (now or time.time()) - self.work_started
        return f, (elapsed * (1 - f) / f if f > 0 else None)

    def wait(self, timeout: Optional[float] = None) -> bool:
        t = self._thread
        if t is not None:
            t.join(timeout)
        return not self.active

    def settings(self) -> dict:
        """What a user downloads as JSON: enough to reproduce the run."""
        return {"run_id": self.id, "kind": self.kind, "model": self.model_key, "dataset": _public_source(self.source),
                "config": self.config, "clrp_version": clrp.__version__}


def _public_source(source: dict) -> dict:
    s = dict(source)
    if s.get("kind") == "upload":
        s["path"] = s.get("name", "uploaded archive")
        s.pop("name", None)
        s.pop("owned", None)
    return s


class RunRegistry:
    """Module-level registry of runs keyed by (session id, run id). Lives as long as the server
    process, so leaving a page (or the page re-running) never loses a run."""

    def __init__(self, max_parallel: Optional[int] = None):
        self._runs: dict[tuple[str, str], EvalRun] = {}
        self._lock = threading.Lock()
        n = max_parallel or int(os.environ.get(MAX_RUNS_ENV, "1") or 1)
        self._slots = threading.BoundedSemaphore(max(1, n))

    def start(self, session: str, kind: str, model_key: str, source: dict, config: dict, *,
              model_loader: Callable[[str], Any] = load_model, label: str = "") -> EvalRun:
        from clrp.evaluation.runner import RunConfig

        RunConfig.build(**config)  # unknown settings: a ClrpError before anything starts
        if not config.get("methods"):
            raise ClrpError("choose at least one method")
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        safe_session = "".join(ch for ch in session if ch.isalnum() or ch in "-_")[:40] or "anon"
        out_dir = runs_dir() / safe_session / run_id
        run = EvalRun(run_id, session, kind, model_key, dict(source), dict(config), str(out_dir), label=label)
        with self._lock:
            self._runs[(session, run_id)] = run
        t = threading.Thread(target=self._work, args=(run, model_loader), name=f"clrp-eval-{run_id}", daemon=True)
        run._thread = t
        t.start()
        return run

    def _work(self, run: EvalRun, model_loader):
        from clrp.evaluation.runner import RunConfig, run_evaluation

        ds = None
        acquired = False
        try:
            while not acquired:
                if run._cancel.is_set():
                    raise _Cancelled()
                acquired = self._slots.acquire(timeout=0.2)
            run.state = "running"
            run.started = time.time()
            lm = model_loader(run.model_key)
            ds = open_source(run.source)
            try:
                run.total = len(ds)
            except Exception:
                run.total = None
            if run.config.get("limit") and run.total:
                run.total = min(run.total, int(run.config["limit"]))
            if run.total == 0:
                raise DatasetError("the dataset holds no images")

            from clrp.evaluation.distributed import lab_executor
            from clrp.evaluation.progress import listening

            cfg = RunConfig.build(**run.config)
            run.work_started = time.time()
            with listening(run.tick):
                res = run_evaluation(ds, lm, run.out_dir, cfg, resume=False, progress=run.batch_done,
                                     executor=lab_executor())
            run.done = res.images_done
            run.problems = [f"{p.file}: {p.reason}" for p in res.problems][:200]
            if res.images_done == 0:
                run.state = "failed"
                run.message = ("no image could be evaluated: none has an object of a class the model knows"
                               + (f" ({len(res.problems)} files skipped as broken)" if res.problems else ""))
            else:
                run.state = "done"
                run.message = f"{res.images_done} images evaluated"
                if res.images_skipped:
                    run.message += f", {res.images_skipped} skipped (no class of the model)"
        except _Cancelled:
            run.state = "cancelled"
            run.message = f"cancelled after {run.done} images (results so far are kept)"
        except ClrpError as e:
            run.state = "failed"
            run.message = str(e)
        except Exception as e:  # unexpected: generic message, details for the expander
            run.state = "failed"
            run.message = "the evaluation stopped with an unexpected error"
            run.detail = f"{type(e).__name__}: {e}\n\n" + traceback.format_exc(limit=8)
        finally:
            if ds is not None and ds.problems and not run.problems:
                run.problems = [f"{p.file}: {p.reason}" for p in ds.problems][:200]
            if ds is not None:
                try:
                    ds.close()
                except Exception:
                    pass
            if run.source.get("kind") == "upload" and run.source.get("owned"):
                discard_upload(run.source["path"])  # the results stay; the archive copy goes
            if acquired:
                self._slots.release()
            run.finished = time.time()
            try:
                os.makedirs(run.out_dir, exist_ok=True)
                with open(os.path.join(run.out_dir, "dashboard_run.json"), "w", encoding="utf-8") as f:
                    json.dump({**run.settings(), "state": run.state, "message": run.message}, f, indent=2,
                              default=str)
            except OSError:
                pass

    def get(self, session: str, run_id: str) -> Optional[EvalRun]:
        with self._lock:
            return self._runs.get((session, run_id))

    def list(self, session: str, kind: Optional[str] = None) -> list[EvalRun]:
        with self._lock:
            runs = [r for (s, _), r in self._runs.items() if s == session and (kind is None or r.kind == kind)]
        return sorted(runs, key=lambda r: r.created, reverse=True)


REGISTRY = RunRegistry()


def estimate(model_key: str, source: dict, config: dict, *, model_loader: Callable[[str], Any] = load_model,
             images: int = 2):
    """Time the run these settings describe on its first ``images`` images
    (:func:`clrp.evaluation.estimate_duration`); an upload's archive is read from ``source["data"]``
    and its temporary copy deleted afterwards."""
    from clrp.evaluation.runner import RunConfig, estimate_duration

    src = dict(source)
    saved = None
    if src.get("kind") == "upload" and "data" in src:
        up = src.pop("data")
        saved = save_upload(up.name, up.getvalue())
        src["path"] = str(saved)
    ds = None
    try:
        lm = model_loader(model_key)
        ds = open_source(src)
        return estimate_duration(ds, lm, RunConfig.build(**config), images=images)
    finally:
        if ds is not None:
            ds.close()
        if saved is not None:
            discard_upload(saved)


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
