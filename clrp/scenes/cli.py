"""``python -m clrp scenes export DEST [-n N] [--seed S] [--split SPLIT] [--preset P] [--variant V]``:
N scenes from seed S of a preset (:mod:`clrp.scenes.presets`) exported as VOC to a folder or .zip.

:func:`add_parser` adds the ``scenes`` command to the ``python -m clrp`` parser; :func:`run` runs it.
"""
from __future__ import annotations

import argparse

from ..errors import ClrpError
from .export import export_voc
from .presets import PRESETS, get_preset


def _add_export_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("dest", help="output folder or .zip")
    ap.add_argument("-n", type=int, default=100, help="number of scenes (default 100)")
    ap.add_argument("--seed", type=int, default=9_000_000, help="seed of the first scene, the others follow (default 9000000)")
    ap.add_argument("--split", default="test", help="VOC split name: ImageSets/Main/<split>.txt (default test)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``scenes`` command (its ``export`` subcommand) on ``python -m clrp``'s subparsers."""
    from .hard import VARIANTS

    p = subparsers.add_parser("scenes", help="procedural scene worlds: export generated scenes as VOC")
    sub = p.add_subparsers(dest="scenes_command", required=True)
    e = sub.add_parser("export", help="generate procedural scenes and export them as VOC (folder or .zip)",
                       description="Generate procedural scenes and export them as VOC")
    _add_export_arguments(e)
    e.add_argument("--preset", default="scenes", choices=list(PRESETS),
                   help="; ".join(f"{n}: {pr.description}" for n, pr in PRESETS.items()))
    e.add_argument("--variant", choices=list(VARIANTS),
                   help="a world variant of scenes-hard, for experiments (clrp.scenes.hard.VARIANTS)")
    return p


def run(a, argv=None) -> int:
    """Run a parsed ``scenes`` command (``export``, its only subcommand); prints the path written."""
    from .hard import world_variant

    p = get_preset(a.preset)
    if a.variant and p.name != "scenes-hard":
        raise ClrpError(f"--variant: the {p.name} preset has no world variants (scenes-hard has)")
    world = world_variant(a.variant) if a.variant else None
    print(export_voc(p.iter_scenes(a.n, a.seed, world), a.dest, a.split, folder_name=p.folder_name))
    return 0


def export_main(argv=None, *, scenes_from=None, folder_name: str | None = None,
                description: str = "Generate procedural scenes and export them as VOC") -> None:
    """Kept for one release (use ``python -m clrp scenes export``): ``DEST [-n N] [--seed S]
    [--split SPLIT]`` exported with ``scenes_from(n, seed)`` (default: the easy world)."""
    from .easy import iter_scenes

    ap = argparse.ArgumentParser(description=description)
    _add_export_arguments(ap)
    a = ap.parse_args(argv)
    extra = {"folder_name": folder_name} if folder_name else {}
    print(export_voc((scenes_from or iter_scenes)(a.n, a.seed), a.dest, a.split, **extra))
