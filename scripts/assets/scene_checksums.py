"""SHA-1s of generated scenes (images, boxes, masks) for every preset and world variant, and of
small VOC exports: a restructuring of the scene code must leave this output byte-identical.

    python scripts/assets/scene_checksums.py [--seeds 3] > before.txt   # ... change the code ...
    python scripts/assets/scene_checksums.py [--seeds 3] | diff before.txt -

tests/test_scene_checksums.py checks a few of these lines against a committed table.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tempfile
from contextlib import redirect_stdout

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def scene_lines(label: str, sc) -> list[str]:
    """One line per aspect of a scene: image, boxes (with classes), masks; for hard scenes also the
    full masks, depth and size class of each object, the distractors and the context bands."""
    objs = sc.objects
    out = [f"{label} image {sha1(np.ascontiguousarray(sc.image).tobytes())} {sc.image.shape}",
           f"{label} boxes {sha1(repr([(o.class_name, o.class_index, o.box) for o in objs]).encode())}",
           f"{label} masks {sha1(b''.join(np.ascontiguousarray(o.mask).tobytes() for o in objs))}"]
    if hasattr(sc, "distractors"):
        out += [f"{label} full_masks {sha1(b''.join(np.ascontiguousarray(o.full_mask).tobytes() for o in objs))}",
                f"{label} depth {sha1(repr([(o.depth, o.size_class) for o in objs]).encode())}",
                f"{label} extras {sha1(repr((sc.name, sc.distractors, sc.contexts)).encode())}"]
    return out


def folder_lines(label: str, root: str) -> list[str]:
    out = []
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out.append(f"{label} {os.path.relpath(p, root).replace(os.sep, '/')} {sha1(fh.read())}")
    return out


def stats_line(label: str, st: dict) -> str:
    data = st["class"].tobytes() + st["pair"].tobytes() + repr(sorted(st["n_objects"].items())).encode()
    return f"{label} class_statistics {sha1(data)}"


def checksums(n_seeds: int = 3) -> list[str]:
    from clrp.scenes import easy, export, hard, presets

    lines: list[str] = []
    easy_seeds = list(range(n_seeds)) + [presets.SAMPLE_SEED, presets.EVALUATION_SEED]
    for s in easy_seeds:
        lines += scene_lines(f"scenes seed={s}", easy.generate_scene(s))
    lines += scene_lines("scenes seed=5 n_objects=3", easy.generate_scene(5, n_objects=3))
    lines += scene_lines("scenes seed=5 size=96", easy.generate_scene(5, size=96))
    for name, world in hard.VARIANTS.items():
        lines.append(stats_line(f"scenes-hard variant={name}", hard.class_statistics(world)))
        for s in list(range(n_seeds)) + [30_000_000]:
            lines += scene_lines(f"scenes-hard variant={name} seed={s}", hard.generate_scene(s, world=world))
            lines.append(f"scenes-hard variant={name} seed={s} classes {hard.scene_classes(s, world)}")
    lines += scene_lines("scenes-hard seed=7 size=160", hard.generate_scene(7, size=160))

    class Identity:  # render_arrays's preprocessing: the scene image as it is
        @staticmethod
        def display_array(img):
            return img

    for preset in presets.PRESETS:
        x, y = presets.render_arrays(preset, 3, 11, Identity(), chunk=2)
        lines.append(f"render_arrays {preset} {sha1(x.tobytes())} {sha1(y.tobytes())}")

    with tempfile.TemporaryDirectory() as tmp:
        export.export_voc(easy.iter_scenes(2, 3), os.path.join(tmp, "easy"), "val")
        lines += folder_lines("export_voc scenes", os.path.join(tmp, "easy"))
        for preset in presets.PRESETS:
            root = presets.dataset_dir(f"{preset}:2:30000000", os.path.join(tmp, "cache"))
            lines += folder_lines(f"voc_cache {preset}", root)
        # the command line export of each world (labelled by its former entry point, python -m MODULE)
        for mod, preset in (("clrp.scenes", "scenes"), ("clrp.scenes_hard", "scenes-hard")):
            dest = os.path.join(tmp, mod)
            with redirect_stdout(io.StringIO()):
                cli_export([dest, "-n", "2", "--seed", "12", "--split", "train", "--preset", preset])
            lines += folder_lines(f"cli export {mod}", dest)
    return lines


def cli_export(argv: list[str]) -> None:
    """``python -m clrp scenes export ARGV``, in this process."""
    from clrp.cli import main

    if main(["scenes", "export", *argv]) != 0:
        raise SystemExit(f"python -m clrp scenes export {' '.join(argv)} failed")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 of each preset and variant (plus fixed ones)")
    a = ap.parse_args(argv)
    print("\n".join(checksums(a.seeds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
