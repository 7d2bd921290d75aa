"""Resumable evaluation runner: dataset x model x methods -> result files, batch by batch.

``run_evaluation(dataset, model, out_dir, ...)`` iterates the dataset lazily, explains each
(image, class) pair with every method ONCE per batch and feeds the same maps to the chosen
protocols (``pointing``, ``discriminativeness``, ``perturbation``, ``ablation``). The output
folder (settings, progress, parts, resume, lock) is a :class:`~clrp.evaluation.runs.RunFolder`:
after each batch one Parquet part per protocol is written, then the batch's record is appended
to ``progress.jsonl``; a later call with the same settings skips the recorded images (resume).

``load_results(out_dir)`` reads the rows back; ``summarize(out_dir)`` gives the summary tables.

Which classes are evaluated in an image: the classes with at least one non-difficult object
(datasets with boxes/masks), or the image labels (class-folder trees: no Pointing Game, no
discriminativeness with a single label). Classes that do not map to a model output are skipped
and listed under ``mapping`` in ``settings.json``.

Geometry: ``geometry="full"`` (default) feeds the whole image resized to the model's input size
(aspect not kept), so a map covers the whole image -- the usual Pointing Game setting.
``geometry="model"`` uses the model's own preprocessing (e.g. resize 256 + centre crop 224); the
map then covers only the crop, the rest of the image is NaN for the Pointing Game (never the
arg-max), and ground truth outside the crop can only be missed.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..errors import ClrpError
from . import ablation, discriminativeness, perturbation, pointing  # noqa: F401  (register the protocols)
from .protocol import REGISTRY, Batch, built_in_protocols, make_options, option_fields, protocol, split_options
from .distributed import LocalExecutor
from .runs import RunFolder, dataset_digest, model_fingerprint

#: The built-in protocols; REGISTRY also holds any registered later.
PROTOCOLS = built_in_protocols()
SETTINGS_FORMAT = 2


@dataclass
class RunConfig:
    methods: tuple = ("lrp", "clrp1", "clrp2")
    protocols: tuple = ("pointing", "discriminativeness")
    rules: str = "paper"
    method_options: dict = field(default_factory=dict)   # method -> {option: value}
    mapping: Optional[dict] = None                       # dataset class -> model class name/index
    geometry: str = "full"                               # "full" | "model"
    batch_size: int = 8                                  # images per batch (and per part file)
    explain_batch: Optional[int] = None                  # (image, class) pairs per explain call at most
    #                                                      (None: sized to the device's free memory, clrp.devices)
    limit: Optional[int] = None                          # at most this many images in total
    seed: int = 0
    options: dict = field(default_factory=dict)          # protocol -> its Options (or a dict of them)

    @classmethod
    def build(cls, **settings) -> "RunConfig":
        """A RunConfig from flat settings: run fields as they are, protocol options (``tolerance``,
        ``steps``, ``layer``, ...) routed to the protocols that have them."""
        names = {f.name for f in dataclasses.fields(cls)}
        rest, per = split_options({k: v for k, v in settings.items() if k not in names}, REGISTRY)
        if rest:
            raise ClrpError(f"unknown setting(s) {', '.join(sorted(rest))}; run settings: {', '.join(sorted(names))}; "
                            f"protocol options: {', '.join(sorted({f for p in REGISTRY for f in option_fields(p)}))}")
        own = {k: (tuple(v) if isinstance(v, list) and k in ("methods", "protocols") else v)
               for k, v in settings.items() if k in names}
        options = {p: dict(o) if isinstance(o, dict) else dataclasses.asdict(o)
                   for p, o in (own.pop("options", None) or {}).items()}
        for p, o in per.items():
            options[p] = {**options.get(p, {}), **o}
        return cls(**own, options=options)

    def protocol_options(self, name: str):
        return make_options(name, self.options.get(name))

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d["options"] = {p: _jsonable(dataclasses.asdict(self.protocol_options(p))) for p in self.protocols}
        return d


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class RunResult:
    out_dir: str
    images_done: int        # evaluated or skipped, this call and earlier ones
    images_new: int         # evaluated by this call
    images_skipped: int     # skipped by this call (no class of the model, unreadable)
    problems: list          # every problem the dataset reader reported (also in problems.jsonl)
    mapping: object
    images_evaluated: int = 0  # evaluated, this call and earlier ones

    def load(self) -> dict:
        return load_results(self.out_dir)

    def summary(self) -> dict:
        return summarize(self.out_dir)


# ---------------------------------------------------------------------------------------------
def _model_parts(model):
    m = getattr(model, "model", model)
    names = getattr(model, "class_names", None)
    pp = getattr(model, "preprocessing", None)
    if names is None or pp is None:
        raise ClrpError("model must be a clrp.models.LoadedModel (model, class_names, preprocessing)")
    return m, list(names), pp


def eval_preprocessing(pp, geometry: str):
    """The preprocessing an evaluation uses: ``"full"`` keeps the image size (no resize), ``"model"``
    the model's own."""
    if geometry == "full":
        return dataclasses.replace(pp, resize=None)
    if geometry == "model":
        return pp
    raise ClrpError(f"geometry must be 'full' or 'model', got {geometry!r}")


def default_ablation_layer(model, input_size=None) -> str:
    """The last feature map every path goes through (the engine's answer, shared with Grad-CAM)."""
    from .. import engine

    example = None if input_size is None else torch.zeros(1, 3, *input_size)
    return engine.last_feature_layer(model, example)


def sample_classes(sample) -> list:
    """The classes a sample is evaluated for: its non-difficult objects' classes (first-seen order),
    else its image-level labels."""
    if sample.objects:
        out = []
        for o in sample.objects:
            if not o.difficult and o.class_name not in out:
                out.append(o.class_name)
        return out
    return list(sample.labels)


# ---------------------------------------------------------------------------------------------
def run_evaluation(dataset, model, out_dir: str, config: Optional[RunConfig] = None, *,
                   resume: bool = True, progress: bool | Callable = False, provenance: Optional[dict] = None,
                   executor=None, device="auto", **overrides) -> RunResult:
    """Evaluate ``model`` (a ``LoadedModel``) on ``dataset`` (a ``clrp.datasets.Dataset``).

    Settings: a ``RunConfig`` and/or keyword overrides of its fields. ``resume=True`` continues a
    previous run in ``out_dir`` (same settings required; otherwise ``ClrpError``); ``False``
    refuses a non-empty ``out_dir``. ``progress``: True for a tqdm bar, or a callable
    ``(images_done, images_total)``. ``provenance``: what the caller knows about the run and wants
    in ``settings.json`` (the command line, a description of the dataset); its ``selection`` entry
    (e.g. the shard) must match on resume. ``executor``: where batches are evaluated (default
    in this process; :class:`~clrp.evaluation.distributed.RayExecutor` on a Ray cluster); the
    output folder is the same either way, so a run can be resumed with either. ``device``: where
    the model runs (``clrp.devices.place``: "auto", "cpu", "cuda:N"; the model is moved there once).
    """
    from ..devices import place
    from ..method_registry import check_options

    base = config or RunConfig()
    if overrides:
        merged = dict(base.to_json(), **overrides)
        merged["options"] = {p: dict(o) for p, o in base.options.items()}
        cfg = RunConfig.build(**merged)
    else:
        cfg = base
    for p in cfg.protocols:
        protocol(p)  # unknown protocols: a message listing the registry
    check_options({m: cfg.method_options.get(m) for m in cfg.methods})  # unknown methods, bad options
    net, class_names, pp0 = _model_parts(model)
    place(model, device)
    pp = eval_preprocessing(pp0, cfg.geometry)
    mapping = dataset.map_classes(class_names, cfg.mapping)
    mapping.require_some()
    options = {}
    for p in cfg.protocols:
        o = REGISTRY[p].resolve(cfg.protocol_options(p), net, pp, cfg)
        REGISTRY[p].validate(o, cfg)
        options[p] = o
    cfg = dataclasses.replace(cfg, options=options)  # what the run uses, as the settings record it
    folder = RunFolder(out_dir)
    with folder.lock():
        executor = executor or LocalExecutor()
        settings = _settings(cfg, model, net, class_names, pp, mapping, dataset, provenance or {})
        settings["executor"] = executor.describe()
        old = folder.read_settings()
        if old is None and (folder.read_progress().batches or os.path.exists(folder.file("config.json"))):
            raise ClrpError(f"{out_dir} holds results of an older clrp version; use another folder")
        if old is not None:
            if not resume:
                raise ClrpError(f"{out_dir} already holds results; use resume=True or another folder")
            if old.get("format") != SETTINGS_FORMAT:
                raise ClrpError(f"{out_dir} holds results of an older clrp version; use another folder")
            diff = _first_difference(run_identity(_with_option_defaults(old)), run_identity(settings))
            if diff:
                raise ClrpError(f"{out_dir} holds results of different settings ({diff}); use another folder")
            settings["started"] = old.get("started")
            settings["resumed"] = old.get("resumed", []) + [_now()]
        folder.write_settings(settings)
        prog = folder.read_progress(repair=True)
        prog = folder.drop_batches(prog, folder.verify(prog, cfg.protocols))
        folder.remove_orphans(prog)
        work = BatchWork(net, class_names, pp, dict(mapping.index), cfg, {p: REGISTRY[p] for p in cfg.protocols})
        result = _run_batches(folder, prog, dataset, work, executor, mapping, progress)
        settings["executor"] = executor.describe()
        settings.update({"finished": _now(), "images_done": result.images_done, "images_new": result.images_new,
                         "images_skipped": result.images_skipped, "problems": len(result.problems)})
        folder.write_settings(settings)
    return result


@dataclass
class BatchWork:
    """What evaluating one batch needs; picklable, so a Ray actor can hold it (model included)."""

    net: object
    class_names: list
    pp: object
    mapping: dict
    cfg: RunConfig
    protocols: dict

    def process(self, items):
        """``(rows per protocol, evaluated ids, skipped ids, problems [(file, reason)])``."""
        problems = []
        rows, ids, skipped = _process_batch(items, self.net, self.class_names, self.pp, self.mapping, self.cfg,
                                            lambda f, r: problems.append((f, r)), self.protocols)
        return rows, ids, skipped, problems

    def to(self, device) -> "BatchWork":
        return dataclasses.replace(self, net=self.net.to(device))


def _run_batches(folder, prog, dataset, work, executor, mapping, progress) -> RunResult:
    cfg = work.cfg
    done = prog.done
    batch_no = prog.next_batch
    n_done_before = len(done)
    logged = folder.logged_problems()

    def write_problems():
        for prob in dataset.problems:
            if (prob.file, prob.reason) not in logged:
                logged.add((prob.file, prob.reason))
                folder.log_problem(prob.file, prob.reason)

    total = None
    try:
        total = len(dataset)
    except Exception:
        pass
    if cfg.limit is not None:
        total = cfg.limit if total is None else min(total, cfg.limit)
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=min(n_done_before, total or n_done_before), unit="img")

    def samples():
        count = len(done)
        for s in dataset.samples():
            if s.image_id in done:
                continue
            if cfg.limit is not None and count >= cfg.limit:
                return
            count += 1
            yield s

    def chunks():
        buf = []
        for item in _iter_images(dataset, samples()):
            buf.append(item)
            if len(buf) >= max(1, cfg.batch_size):
                yield buf
                buf = []
        if buf:
            yield buf

    new = skipped_total = 0
    for rows, ids, skipped, problems in executor.run(chunks(), work):
        for f, r in problems:
            dataset.report(f, r)
        counts = {proto: folder.write_part(proto, batch_no, r) for proto, r in rows.items()}
        write_problems()
        folder.append_progress({"batch": batch_no, "image_ids": ids, "skipped": skipped, "rows": counts})
        done.update(ids)
        done.update(skipped)
        batch_no += 1
        new += len(ids)
        skipped_total += len(skipped)
        if bar is not None:
            bar.update(len(ids) + len(skipped))
        elif callable(progress):
            progress(len(done), total)
    write_problems()  # problems found after the last batch (e.g. broken trailing files)
    if bar is not None:
        bar.close()
    evaluated = sum(len(rec.get("image_ids", [])) for rec in folder.read_progress().batches.values())
    return RunResult(folder.path, len(done), new, skipped_total, list(dataset.problems), mapping, evaluated)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def versions() -> dict:
    import numpy
    import torchvision

    import clrp

    return {"clrp": clrp.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(), "platform": platform.platform()}


def methods_used(cfg: RunConfig, net, pp) -> dict:
    """Every method's options as the run uses them: defaults, the caller's options, the model's zB
    box and Grad-CAM's resolved layer."""
    from .. import engine
    from ..methods import REGISTRY

    out = {}
    for m in cfg.methods:
        opts = {**REGISTRY[m].defaults, **cfg.method_options.get(m, {})}
        if "box" in opts or REGISTRY[m].family == "relevance":
            box = pp.method_options(opts)["box"]
            opts["box"] = [[float(v) for v in torch.as_tensor(b, dtype=torch.float64).reshape(-1)] for b in box]
        if m == "gradcam" and opts.get("layer") is None:
            opts["layer"] = engine.last_feature_layer(net, pp.example_input())
        out[m] = {k: (v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else repr(v))
                  for k, v in opts.items()}
    return out


def _settings(cfg, model, net, class_names, pp, mapping, dataset, provenance) -> dict:
    import clrp

    config = cfg.to_json()
    digest = dataset_digest(dataset)
    whole = getattr(dataset, "unfiltered", None)  # a shard or subset: what it was taken from
    return {
        "format": SETTINGS_FORMAT,
        "command": provenance.get("command"),
        "dataset": {"format": getattr(dataset, "format", "?"), "root": getattr(dataset, "root", None),
                    **provenance.get("dataset", {}), "digest": digest,
                    "source_digest": digest if whole is None else dataset_digest(whole)},
        "selection": provenance.get("selection", {}),
        "model": {"name": getattr(model, "name", None), "architecture": getattr(model, "architecture", None),
                  "description": getattr(model, "description", None),
                  "weights_path": str(getattr(model, "weights_path", None) or "") or None,
                  "weights_fingerprint_sha1": model_fingerprint(net), "class_names": list(class_names),
                  "preprocessing": pp.to_dict() if hasattr(pp, "to_dict") else repr(pp)},
        "methods": list(cfg.methods), "protocols": list(cfg.protocols), "rules": cfg.rules,
        "rules_description": str(getattr(clrp.RULES.get(cfg.rules), "description", cfg.rules)),
        "method_options": methods_used(cfg, net, pp),
        "options": config.pop("options"),
        **_legacy_keys(cfg),
        "mapping": {"index": mapping.index, "unmapped": mapping.unmapped, "how": mapping.how,
                    "ambiguous": mapping.ambiguous},
        "config": config,
        "versions": versions(),
        "device": str(next(net.parameters()).device), "torch_threads": torch.get_num_threads(),
        **{k: v for k, v in provenance.items() if k not in ("command", "dataset", "selection")},
        "started": _now(),
    }


def _legacy_keys(cfg) -> dict:
    """Top-level keys earlier settings files had (readers and scripts use them)."""
    out = {}
    if "pointing" in cfg.options:
        t = cfg.options["pointing"].tolerance
        out["tolerance"] = t
        out["tolerance_note"] = "15 px per 224 px of the image's shorter side (per row)" if t == "scaled" else f"{t} px"
    if "ablation" in cfg.options:
        out["ablation_layer"] = cfg.options["ablation"].layer
    return out


def run_identity(s: dict) -> dict:
    """What must agree for a run to be continued."""
    return {"config": {k: v for k, v in (s.get("config") or {}).items() if k not in ("limit", "explain_batch")},
            "model weights": (s.get("model") or {}).get("weights_fingerprint_sha1"),
            "class names": (s.get("model") or {}).get("class_names"),
            "preprocessing": (s.get("model") or {}).get("preprocessing"),
            "dataset": (s.get("dataset") or {}).get("digest"),
            "selection": s.get("selection"), "method options": s.get("method_options"),
            "protocol options": s.get("options"), "clrp version": (s.get("versions") or {}).get("clrp")}


def _with_option_defaults(s: dict) -> dict:
    """Settings whose protocol options lack options added since (their defaults keep the old
    behaviour): filled in, so such a run can still be continued."""
    import dataclasses as dc

    from .protocol import field_default

    opts = {}
    for p, o in (s.get("options") or {}).items():
        if p in REGISTRY:
            defaults = {f.name: field_default(f) for f in dc.fields(REGISTRY[p].Options)}
            o = {**_jsonable(defaults), **o}
        opts[p] = o
    return dict(s, options=opts)


def _first_difference(a: dict, b: dict) -> str | None:
    import json

    for k in a:
        if json.loads(json.dumps(a[k], default=str)) != json.loads(json.dumps(b.get(k), default=str)):
            return k
    return None


def _iter_images(dataset, samples):
    """Like Dataset.iter_images but over a filtered sample iterator; unreadable images are
    reported and yielded as ``(sample, None)`` (recorded as skipped: a resumed run does not retry them)."""
    for s in samples:
        yield s, dataset.load_checked(s)


def _explain_pairs(net, x_rows, targets, method, cfg, pp):
    import clrp

    from .progress import tick

    from ..devices import explain_batched

    opts = pp.method_options(cfg.method_options.get(method))

    def run(xb, tb):  # batches sized to the device's memory, halved on out-of-memory
        r = clrp.explain(net, xb, tb, method, rules=cfg.rules, **opts).detach().to("cpu", torch.float32).sum(1)
        tick("explanations", len(tb))
        return r

    maps, a = [], 0
    while a < len(x_rows):  # runs of rows of one size (images of the full geometry differ)
        b = a + 1
        while b < len(x_rows) and x_rows[b].shape == x_rows[a].shape:
            b += 1
        maps.extend(explain_batched(run, torch.cat(x_rows[a:b], 0), torch.as_tensor(targets[a:b]),
                                    batch_size=cfg.explain_batch).numpy())
        a = b
    return maps


def _process_batch(items, net, class_names, pp, mapping, cfg, report=None, registry=None):
    """Rows of every protocol for one batch of ``(sample, image)`` items."""
    from ..errors import DatasetError

    registry = REGISTRY if registry is None else registry
    protocols = [(registry[p], cfg.options[p]) for p in cfg.protocols]
    ids, skipped, pairs, inputs = [], [], [], []
    gt = {p.name: {} for p, _ in protocols}
    for i, (s, img) in enumerate(items):
        classes = [c for c in sample_classes(s) if c in mapping] if img is not None else []
        for p, o in protocols if classes else ():
            try:
                gt[p.name][i] = p.ground_truth(s, classes, o)
            except DatasetError as e:  # e.g. an unreadable or mis-sized mask file: the image is skipped
                if report is not None:
                    report(s.path or s.image_id, f"ground truth: {e}")
                classes = []
                break
        if not classes:
            skipped.append(s.image_id)
            inputs.append(None)
            continue
        ids.append(s.image_id)
        param = next(net.parameters())
        inputs.append(pp.to_tensor(img).to(device=param.device, dtype=param.dtype))
        pairs.extend((i, c, mapping[c]) for c in classes)
    rows = {p.name: [] for p, _ in protocols}
    if not pairs:
        return rows, ids, skipped
    x_rows = [inputs[i] for i, _, _ in pairs]
    targets = [t for _, _, t in pairs]
    need_maps = any(p.needs_maps for p, _ in protocols)
    maps = {m: _explain_pairs(net, x_rows, targets, m, cfg, pp) for m in cfg.methods} if need_maps else {}
    batch = Batch([s for s, _ in items], inputs, pairs, maps, gt, net, pp, class_names, mapping, cfg)
    for p, o in protocols:
        rows[p.name] = p.rows(batch, o)
    return rows, ids, skipped


# ---------------------------------------------------------------------------------------------
def load_results(out_dir: str) -> dict:
    """``{protocol: DataFrame}`` of every recorded part (orphans of an interrupted batch excluded)."""
    return RunFolder(out_dir).load_results([p for p in REGISTRY])


def summarize(results) -> dict:
    """Summary tables per protocol from ``load_results`` output or an output folder."""
    if isinstance(results, (str, os.PathLike)):
        results = load_results(str(results))
    return {p: REGISTRY[p].summary(df) for p, df in results.items() if p in REGISTRY}


@dataclass(frozen=True)
class DurationEstimate:
    """What :func:`estimate_duration` measured: seconds per image on this machine, and the total."""

    seconds_per_image: float
    images_measured: int
    images_total: Optional[int]
    warmup_seconds: float   # the first image's extra cost (model tracing, caches)

    @property
    def seconds_total(self) -> Optional[float]:
        if self.images_total is None:
            return None
        return self.warmup_seconds + self.seconds_per_image * self.images_total

    def describe(self) -> str:
        per = f"{format_seconds(self.seconds_per_image)} per image (measured on {self.images_measured})"
        if self.seconds_total is None:
            return per
        return f"about {format_seconds(self.seconds_total)} for {self.images_total} images: {per}"


def format_seconds(s: float) -> str:
    s = float(s)
    if s < 10:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{int(s // 60)} min {int(round(s % 60)):02d} s"
    return f"{s / 3600:.1f} h"


def estimate_duration(dataset, model, config: Optional[RunConfig] = None, *, images: int = 2, device="auto",
                      **overrides) -> DurationEstimate:
    """Time a run of these settings on the first ``images`` images (one per batch, in a temporary
    folder that is removed) and extrapolate to the whole dataset (``config.limit`` respected).
    The first image also pays one-off costs (graph tracing, caches): it is reported apart as the
    warm-up, and the per-image cost comes from the later ones."""
    import shutil
    import tempfile
    import time

    base = config or RunConfig()
    settings = dict(base.to_json(), **overrides)
    settings["options"] = {p: dict(o) for p, o in base.options.items()} if not overrides.get("options") \
        else overrides["options"]
    total = None
    try:
        total = len(dataset)
    except Exception:
        pass
    if settings.get("limit") is not None:
        total = settings["limit"] if total is None else min(total, settings["limit"])
    settings.update(limit=max(1, int(images)), batch_size=1)
    stamps = []
    folder = tempfile.mkdtemp(prefix="clrp-estimate-")
    try:
        t0 = time.perf_counter()
        run_evaluation(dataset, model, folder, RunConfig.build(**settings), resume=False, device=device,
                       progress=lambda done, _total: stamps.append((done, time.perf_counter())))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not stamps:
        raise ClrpError("no image of the dataset could be evaluated, so nothing could be timed")
    times = [t0] + [t for _, t in stamps]
    costs = [b - a for a, b in zip(times, times[1:])]
    later = costs[1:] or costs
    per = sum(later) / len(later)
    return DurationEstimate(per, len(costs), total, max(0.0, costs[0] - per))
