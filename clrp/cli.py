"""Command line: ``python -m clrp evaluate|merge|explain|methods|models``.

``python -m clrp evaluate --dataset PATH|scenes:N[:SEED]|scenes-hard:N[:SEED] --model bundled --methods lrp,clrp1,clrp2
--protocols pointing,discriminativeness --out DIR`` runs :func:`clrp.evaluation.runner.run_evaluation`
with a progress bar, writes the runner's per-batch Parquet parts plus ``results/<protocol>.csv``
and ``.parquet`` (all rows), ``summary/<protocol>.csv`` and ``settings.json`` (the exact settings:
model, weights fingerprint, rules, method options, tolerance, subset, shard, versions), and prints
the summary tables. ``--resume`` continues an interrupted run (the runner records every finished
batch). ``--shard i/n`` evaluates only the images whose id hashes to ``i`` modulo ``n``
(SHA-1 of the id, stable across machines and runs); ``python -m clrp merge OUT1 OUT2 ... --out
MERGED`` joins the shards' results and recomputes the summary.

User errors (:class:`clrp.errors.ClrpError`) print one line to stderr and exit with status 2; an
evaluation that could evaluate no image at all (no class of the model, unreadable files) says why
and exits with status 1. Ctrl-C stops after saying how to resume (exit status 130). This module
never imports Streamlit.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Optional, Sequence

from .errors import ClrpError

#: Default first seed of ``scenes:N``: disjoint from the bundled model's training scenes
#: (seeds 0 .. 9,999,999), its held-out/monitor sets (10,000,000+) and ``bundled_metrics``
#: (20,000,000+).
from .scenes.presets import EVALUATION_SEED as SCENES_DEFAULT_SEED  # noqa: E402
from .scenes import cli as scenes_cli  # noqa: E402
from .datasets import FORMATS as DATASET_FORMATS  # noqa: E402
# shard selection, merging and the results tables live next to the runner; public here too
from .evaluation.cli_support import (FilteredDataset, merge_dirs, parse_shard, print_summaries,  # noqa: E402,F401
                                     shard_of, write_tables)
EXIT_USAGE = 2
EXIT_NOTHING = 1  # the run finished but evaluated no image
EXIT_INTERRUPTED = 130


# ---------------------------------------------------------------------------------------------
# helpers
def _split_list(text: str) -> list:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def _parse_scenes(spec: str):
    """``scenes:N[:SEED]`` / ``scenes-hard:N[:SEED]`` -> :class:`clrp.scenes.presets.SceneSpec`."""
    from .scenes.presets import parse_spec

    try:
        return parse_spec(spec, SCENES_DEFAULT_SEED)
    except ClrpError as e:
        raise ClrpError(f"--dataset {e}") from None


def scenes_dataset_dir(n: int, seed: int, folder: str, progress: bool = False, preset: str = "scenes") -> str:
    """Generated scenes as a cached VOC folder (see :func:`clrp.scenes.presets.voc_cache`)."""
    from .scenes import presets

    return presets.voc_cache(n, seed, folder, progress=progress, preset=preset)


def _is_scenes_spec(text: str) -> bool:
    from .scenes.presets import is_spec

    return is_spec(text)


def _read_mapping(text: Optional[str]):
    if not text:
        return None
    src = text
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            src = f.read()
    try:
        m = json.loads(src)
    except ValueError as e:
        raise ClrpError(f"--mapping: not valid JSON (or a JSON file): {e}") from None
    if not isinstance(m, dict):
        raise ClrpError("--mapping must be a JSON object {dataset class: model class name or index}")
    return m


def _parse_value(v: str):
    try:
        return json.loads(v)
    except ValueError:
        return v


def _dotted(items, flag: str, form: str, example: str) -> dict:
    """``OWNER.KEY=VALUE`` arguments -> {owner: {key: value}} (values parsed as JSON)."""
    out: dict = {}
    for it in items or []:
        if "=" not in it or "." not in it.split("=", 1)[0]:
            raise ClrpError(f"{flag} {it!r}: expected {form}, e.g. {example}")
        key, val = it.split("=", 1)
        owner, k = key.split(".", 1)
        out.setdefault(owner, {})[k] = _parse_value(val)
    return out


def _method_options(items: Sequence[str]) -> dict:
    """``--option clrp1.dual=abs_logits`` -> {"clrp1": {"dual": "abs_logits"}}."""
    return _dotted(items, "--option", "METHOD.KEY=VALUE", "clrp1.dual=abs_logits")


def _protocol_of(option: str, protocols) -> bool:
    """Whether one of the run's protocols has this option (flags of other protocols are ignored)."""
    from .evaluation.protocol import option_fields

    return any(option in option_fields(p) for p in protocols)


def _set_options(items, protocols) -> dict:
    """``--set perturbation.steps=50`` -> {"perturbation": {"steps": 50}}, checked against the
    registry."""
    from .evaluation.protocol import option_fields, protocol

    out = _dotted(items, "--set", "PROTOCOL.OPTION=VALUE", "perturbation.steps=50")
    for p, opts in out.items():
        protocol(p)
        if p not in protocols:
            raise ClrpError(f"--set for {p!r}, which is not among --protocols")
        for k in opts:
            if k not in option_fields(p):
                raise ClrpError(f"protocol {p!r} has no option {k!r}; its options: {', '.join(option_fields(p))}")
    return out


def _load_model(a):
    from . import models

    kw = {}
    if a.architecture:
        if not a.weights or not a.class_names:
            raise ClrpError("--architecture needs --weights and --class-names")
        kw = {"architecture": a.architecture, "class_names": a.class_names}
        if a.input_size:
            kw["input_size"] = a.input_size
        return models.load(a.model if a.model != "bundled" else "finetuned", weights=a.weights, **kw)
    return models.load(a.model, weights=a.weights, config=a.models_config,
                       download=False if getattr(a, "offline", False) else None, progress=True)


def _to_device(loaded, device: str):
    from .devices import place

    place(loaded, device)  # the one policy (clrp.devices): --device, the model's setting, $CLRP_DEVICE, auto
    return loaded


def _tolerance(text: str):
    if str(text) == "scaled":
        return "scaled"
    try:
        t = float(text)
    except ValueError:
        raise ClrpError(f"--tolerance must be a number of pixels or 'scaled', got {text!r}") from None
    if t < 0:
        raise ClrpError("--tolerance must be >= 0")
    return int(t) if t == int(t) else t


def _resume_command(argv) -> str:
    args = list(argv)
    if "--resume" not in args:
        args.append("--resume")
    return "python -m clrp " + " ".join(shlex.quote(x) for x in args)


# ---------------------------------------------------------------------------------------------
# commands
def cmd_evaluate(a, argv) -> int:
    from .datasets import NoClassMapped, open_dataset
    from .evaluation.runner import RunConfig, run_evaluation
    from .method_registry import check_options, lookup
    import clrp

    out = a.out
    methods = list(clrp.METHODS) if a.methods == "all" else _split_list(a.methods)
    for m in methods:
        lookup(m)
    protocols = _split_list(a.protocols)
    if a.rules not in clrp.RULES:
        raise ClrpError(f"unknown rule preset {a.rules!r}; choose from {', '.join(clrp.RULES)}")
    shard = parse_shard(a.shard)
    tolerance = _tolerance(a.tolerance)
    options = _method_options(a.option)
    for m in options:
        if m not in methods:
            raise ClrpError(f"--option for {m!r}, which is not among --methods")
    check_options(options)  # bad values before the model is loaded
    mapping = _read_mapping(a.mapping)

    from .evaluation.runs import RunFolder

    if RunFolder(out).exists() and not a.resume:
        raise ClrpError(f"{out} already holds results; pass --resume to continue them, or choose another --out")

    if _is_scenes_spec(a.dataset):
        _parse_scenes(a.dataset)
    elif not os.path.exists(a.dataset):
        raise ClrpError(f"--dataset {a.dataset}: no such file or folder")
    loaded = _to_device(_load_model(a), a.device)   # model errors before any scene is generated
    # dataset
    if _is_scenes_spec(a.dataset):
        spec = _parse_scenes(a.dataset)
        n, seed = spec.n, spec.seed
        root = scenes_dataset_dir(n, seed, a.cache_dir or out, progress=not a.quiet, preset=spec.preset)
        dataset_desc = {"spec": a.dataset, "generator": spec.generator, "n": n, "seeds": [seed, seed + n - 1],
                        "voc_folder": os.path.abspath(root)}
        ds = open_dataset(root, "voc", split="test")
    else:
        if not os.path.exists(a.dataset):
            raise ClrpError(f"--dataset {a.dataset}: no such file or folder")
        dataset_desc = {"spec": a.dataset, "path": os.path.abspath(a.dataset), "format": a.format}
        ds = None
    subset_ids = None
    split = None
    if a.subset:
        if os.path.isfile(a.subset):
            with open(a.subset, encoding="utf-8") as f:
                subset_ids = [ln.split()[0] for ln in f if ln.strip()]
            if not subset_ids:
                raise ClrpError(f"--subset {a.subset}: the file lists no image ids")
        else:
            split = a.subset
    if ds is None:
        ds = open_dataset(a.dataset, a.format, split=split)
    elif split is not None:
        ds.close()
        ds = open_dataset(dataset_desc["voc_folder"], "voc", split=split)
    try:
        view = FilteredDataset(ds, shard, subset_ids) if (shard or subset_ids is not None) else ds
        flat = dict(tolerance=tolerance, patch=a.patch, steps=a.steps, baseline=a.baseline, layer=a.layer,
                    perturbation_batch=a.perturbation_batch)
        cfg = RunConfig.build(methods=tuple(methods), protocols=tuple(protocols), rules=a.rules,
                              method_options=options, mapping=mapping, geometry=a.geometry,
                              batch_size=a.batch_size, limit=a.limit, seed=a.seed,
                              **{k: v for k, v in flat.items() if _protocol_of(k, protocols)},
                              options=_set_options(a.set, protocols))
        provenance = {"command": "python -m clrp " + " ".join(shlex.quote(x) for x in argv),
                      "dataset": dataset_desc,
                      "selection": {"subset": a.subset, "shard": list(shard) if shard else None,
                                    "shard_rule": "sha1(image_id) mod n" if shard else None},
                      "subset": a.subset, "shard": list(shard) if shard else None}
        import time

        if a.estimate:
            from .evaluation.runner import estimate_duration

            est = estimate_duration(view, loaded, cfg, images=a.estimate, device=a.device)
            print(f"estimated duration: {est.describe()}; one-off warm-up {est.warmup_seconds:.1f} s "
                  f"(on this machine, {loaded.name}, {', '.join(methods)})")
            return 0
        t0 = time.perf_counter()
        try:
            executor = None
            if a.ray:
                from .evaluation.distributed import RayExecutor
                executor = RayExecutor(None if a.ray == "local" else a.ray, workers=a.ray_workers)
            result = run_evaluation(view, loaded, out, cfg, resume=True, progress=not a.quiet,
                                    provenance=provenance, executor=executor, device=a.device)
        except KeyboardInterrupt:
            print(f"\ninterrupted: finished batches are saved in {out}; continue with:\n  {_resume_command(argv)}",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        elapsed = time.perf_counter() - t0
        print(f"{result.images_new} images evaluated now, {result.images_done} in {out} "
              f"({result.images_skipped} skipped, {len(result.problems)} problems; {elapsed:.1f} s)")
        if result.problems:
            print(f"problems are listed in {os.path.join(out, 'problems.jsonl')}", file=sys.stderr)
        if result.images_evaluated == 0:
            unmapped = list(getattr(result.mapping, "unmapped", []) or [])
            why = (f"{result.images_done} image(s) skipped: none has an object of a class the model knows"
                   + (f" (unmapped dataset classes: {', '.join(unmapped[:8])}; pass --mapping)" if unmapped else "")
                   + (f", {len(result.problems)} file(s) unreadable" if result.problems else ""))
            print(f"error: no image could be evaluated: {why}", file=sys.stderr)
            return EXIT_NOTHING
        write_tables(out, print_summary=True)
    except NoClassMapped as e:
        raise ClrpError(f"{e}; or map them with --mapping '{{\"dataset class\": \"model class\"}}' "
                        "(JSON, or a JSON file)") from None
    finally:
        ds.close()
    return 0


def cmd_merge(a, argv) -> int:
    for d in a.inputs:
        if not os.path.isdir(d):
            raise ClrpError(f"{d}: no such folder")
    info = merge_dirs(a.inputs, a.out)
    print(f"merged {len(a.inputs)} folders, {info['images']} images, into {a.out}")
    write_tables(a.out, print_summary=not a.quiet)
    return 0


def cmd_methods(a, argv) -> int:
    import clrp
    from .method_registry import REGISTRY

    print("Methods (--methods):")
    w = max(len(m) for m in clrp.METHODS)
    for m, d in clrp.METHODS.items():
        o = ", ".join(f"{k}={v!r}" for k, v in REGISTRY[m].defaults.items())
        print(f"  {m:<{w}}  {d}" + (f"  [options: {o}]" if o else ""))
    print("\nRule presets (--rules):")
    w = max(len(r) for r in clrp.RULES)
    for r, p in clrp.RULES.items():
        print(f"  {r:<{w}}  {getattr(p, 'description', p)}")
    return 0


def cmd_models(a, argv) -> int:
    from .models.sources import available_models, grouped

    infos = available_models(a.models_config, timm=_split_list(a.timm or ""))
    if a.available:
        infos = [i for i in infos if i.available or i.downloadable]
    if not infos:
        print("no model is available")
        return 0
    w = max(len(i.name) for i in infos)
    for heading, rows in grouped(infos):  # one group per source heading (clrp.models.sources)
        print(f"{heading}:")
        for i, reason in rows:
            if i.available:
                status = "available"
            elif i.downloadable:
                status = "downloadable"
            else:
                status = "NOT available"
            print(f"  {i.name:<{w}}  {status:<13}  {i.description}")
            if reason:
                print(f"  {'':<{w}}  {'':<13}  {reason}")
    return 0


def _resolve_target(text, loaded, x):
    if text is None:
        return loaded.top_classes(x, 1)[0][0]
    try:
        return loaded.class_index(text)
    except ClrpError as e:
        raise ClrpError(f"--target {text!r}: {e}") from None


def cmd_explain(a, argv) -> int:
    import numpy as np

    import clrp
    from . import viz
    from .method_registry import check_options

    options = _method_options(a.option).get(a.method, {})
    check_options({a.method: options})  # an unknown method or a bad option before the model is loaded
    if a.rules not in clrp.RULES:
        raise ClrpError(f"unknown rule preset {a.rules!r}; choose from {', '.join(clrp.RULES)}")
    if not os.path.exists(a.image):
        raise ClrpError(f"{a.image}: no such file")
    loaded = _to_device(_load_model(a), a.device)
    img = loaded.load_image(a.image)
    from .notices import input_warnings

    for warning in input_warnings(loaded, img.original_size):  # the dashboard shows the same text
        print(f"warning: {warning}", file=sys.stderr)
    x = loaded.on_model_device(img.tensor, dtype=False)  # float32 inputs: a half-precision model is explained in float32
    target = _resolve_target(a.target, loaded, x)
    r = loaded.explain(x, [target], a.method, a.rules, **options)
    m = viz.channel_sum(r.detach().cpu())
    print("top classes: " + ", ".join(f"{n} ({i}) {s:.3f}" for i, n, s in loaded.top_classes(x, 5)))
    print(f"{a.method} ({a.rules}) for class {loaded.class_names[target]!r} ({target}): map {m.shape[0]}x{m.shape[1]}, "
          f"sum {float(np.nansum(m)):.4g}, min {float(np.nanmin(m)):.4g}, max {float(np.nanmax(m)):.4g}")
    if a.out:
        np.save(a.out, m.astype(np.float32))
        print(f"map (channel sum, model input geometry, float32) saved to {a.out}")
    if a.png:
        cmap = viz.default_colormap([m])
        lim = viz.color_limits([m], cmap=cmap)[0]
        rgb = viz.overlay(img.display, m, cmap, lim.vmin, lim.vmax) if a.overlay else \
            viz.colorize(m, cmap, lim.vmin, lim.vmax)
        with open(a.png, "wb") as f:
            f.write(viz.to_png(rgb, scale=a.scale))
        print(f"heatmap saved to {a.png}")
    return 0


# ---------------------------------------------------------------------------------------------
#: The --model synopsis, as docs/EVALUATION.md shows it (a test keeps the two equal).
MODEL_CHOICES = "bundled|bundled-hard|TORCHVISION_NAME[.WEIGHTS]|timm:NAME|LAB_MODEL"


def _add_model_args(p):
    p.add_argument("--model", default="bundled", metavar=MODEL_CHOICES,
                   help="bundled | bundled-hard | any torchvision classifier (resnet50, densenet121, ...; resnet50.IMAGENET1K_V1 "
                        "for other weights) | timm:<name> | a lab model name (see `python -m clrp models`)")
    p.add_argument("--weights", help="weights file (a state_dict) instead of the cached/downloaded ImageNet "
                                     "weights, or the fine-tuned weights with --architecture")
    p.add_argument("--offline", action="store_true",
                   help="never download weights (also: CLRP_OFFLINE=1); only the caches and --weights")
    p.add_argument("--architecture", help="fine-tuned model: any torchvision classifier, timm:<name> or scene_vgg")
    p.add_argument("--class-names", help="fine-tuned model: class names file (one per line, or JSON)")
    p.add_argument("--input-size", type=int, help="fine-tuned model: input size")
    p.add_argument("--models-config", help="lab models TOML (default $CLRP_MODELS_CONFIG)")
    p.add_argument("--device", default="auto",
                   help="auto | cpu | cuda | cuda:N (auto: the lab model's device setting, else $CLRP_DEVICE, "
                        "else cuda when available, else cpu)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's choice; on a machine whose cores are busy with "
                        "other jobs, 1 can be several times faster)")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method option, e.g. clrp1.dual=abs_logits (repeatable; VALUE parsed as JSON)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m clrp", description="LRP / Contrastive LRP explanations and their evaluation")
    sub = ap.add_subparsers(dest="command", required=True)

    e = sub.add_parser("evaluate", help="evaluate explanation methods over a dataset (resumable)")
    e.add_argument("--dataset", required=True,
                   help=f"dataset folder/archive/annotation file, or scenes:N[:SEED] (bundled scenes) or "
                        f"scenes-hard:N[:SEED] (the hard preset; model bundled-hard); "
                        f"default SEED {SCENES_DEFAULT_SEED}, disjoint from training)")
    _add_model_args(e)
    e.add_argument("--methods", default="lrp,clrp1,clrp2", help="comma-separated, or 'all' (see `methods`)")
    e.add_argument("--protocols", default="pointing,discriminativeness",
                   help=f"comma-separated: {','.join(_protocol_names())} (see `protocols`)")
    e.add_argument("--set", action="append", default=[], metavar="PROTOCOL.OPTION=VALUE",
                   help="protocol option, e.g. perturbation.orders=[\"morf\"] (repeatable; VALUE parsed as JSON)")
    e.add_argument("--rules", default="paper", help="LRP rule preset")
    e.add_argument("--tolerance", default="15", help="Pointing Game tolerance in pixels, or 'scaled' "
                                                      "(15 px per 224 px of the shorter side)")
    e.add_argument("--subset", help="VOC split name (ImageSets/Main/<name>.txt) or a text file of image ids")
    e.add_argument("--shard", help="i/n: evaluate only images with sha1(id) mod n == i")
    e.add_argument("--batch-size", type=int, default=8, help="images per batch (and per part file)")
    e.add_argument("--limit", type=int, help="at most this many images")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--resume", action="store_true", help="continue the results already in --out")
    e.add_argument("--estimate", type=int, nargs="?", const=2, default=0, metavar="IMAGES",
                   help="time the first IMAGES images (default 2) with these settings, print the estimated "
                        "duration of the whole run and exit (no results are written)")
    e.add_argument("--format", default="auto", choices=["auto", *DATASET_FORMATS, "folder"],
                   help="dataset format (default: detected; 'folder' = 'folders')")
    e.add_argument("--mapping", help="JSON (or a JSON file) {dataset class: model class name or index}")
    e.add_argument("--cache-dir", help="where scenes:N are generated (default: --out)")
    e.add_argument("--geometry", default="full", choices=["full", "model"])
    e.add_argument("--patch", type=int, default=8, help="perturbation region size (px of the model input)")
    e.add_argument("--steps", type=int, default=100, help="perturbation steps")
    e.add_argument("--baseline", default="mean", choices=["mean", "blur", "zeros", "noise"], help="perturbation baseline")
    e.add_argument("--perturbation-batch", type=int, help="perturbed copies per forward call")
    e.add_argument("--layer", help="ablation layer, by module path (default: the last feature map every path "
                                   "goes through, e.g. layer4 of a ResNet)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="evaluate on Ray: a cluster address (auto, ray://head:10001, host:6379) or none for a local "
                        "Ray instance; results, resume and shards are the same as without it (docs/EVALUATION.md)")
    e.add_argument("--ray-workers", type=int, help="Ray actors (default: one per CPU, or per GPU, of the cluster)")
    e.add_argument("--quiet", action="store_true", help="no progress bar, no summary printout")

    m = sub.add_parser("merge", help="join the results of several evaluate runs (shards)")
    m.add_argument("inputs", nargs="+")
    m.add_argument("--out", required=True)
    m.add_argument("--quiet", action="store_true")

    sub.add_parser("methods", help="list explanation methods and LRP rule presets")
    sub.add_parser("protocols", help="list evaluation protocols and their options")
    mo = sub.add_parser("models", help="list the model zoo with availability (no network access)")
    mo.add_argument("--models-config", help="lab models TOML (default $CLRP_MODELS_CONFIG)")
    mo.add_argument("--timm", help="comma-separated timm model names to list too")
    mo.add_argument("--available", action="store_true", help="only models available now or downloadable")

    x = sub.add_parser("explain", help="explain one image")
    x.add_argument("image")
    _add_model_args(x)
    x.add_argument("--method", default="clrp2")
    x.add_argument("--rules", default="paper")
    x.add_argument("--target", help="class name or index (default: the top class)")
    x.add_argument("--out", help="save the map (channel sum, float32 .npy)")
    x.add_argument("--png", help="save a heatmap PNG")
    x.add_argument("--overlay", action="store_true", help="PNG: heatmap over the image")
    x.add_argument("--scale", type=int, default=1, help="PNG: enlarge by this factor")
    scenes_cli.add_parser(sub)
    return ap


def _protocol_names() -> list:
    from .evaluation.protocol import REGISTRY

    return list(REGISTRY)


def cmd_protocols(a, argv) -> int:
    import dataclasses

    from .evaluation.protocol import REGISTRY, field_default

    for name, p in REGISTRY.items():
        print(f"{name}: {p.title} - {p.description}")
        for f in dataclasses.fields(p.Options):
            print(f"    {name}.{f.name} = {json.dumps(field_default(f), default=str)}")
    print("\nSet an option with --set PROTOCOL.OPTION=VALUE (VALUE parsed as JSON).")
    return 0


COMMANDS = {"evaluate": cmd_evaluate, "merge": cmd_merge, "methods": cmd_methods, "models": cmd_models,
            "explain": cmd_explain, "protocols": cmd_protocols}
COMMANDS["scenes"] = scenes_cli.run


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    if getattr(a, "format", None) == "folder":
        a.format = "folders"
    try:
        if getattr(a, "threads", 0):
            if a.threads < 0:
                raise ClrpError("--threads must be >= 1")
            import torch

            torch.set_num_threads(a.threads)
        return COMMANDS[a.command](a, argv)
    except ClrpError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `python -m clrp methods | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
