"""A run folder: settings, progress, result parts, resume, shard selection and merge, in one place.

Layout::

    settings.json       what was run and with what: the run configuration, the model (weights
                        fingerprint, class names, preprocessing), the dataset (description, a
                        digest of its ground truth, and of the whole dataset for a shard or
                        subset), the class mapping, what each method actually used (zB box,
                        Grad-CAM layer), versions, timestamps (checked on resume)
    progress.jsonl      {"batch": i, "image_ids": [...], "skipped": [...], "rows": {protocol: n}}
                        per finished batch, appended after the batch's parts are on disk
    problems.jsonl      files the dataset reader skipped, and why
    <protocol>/part-000001.parquet ...   result rows, one file per batch and protocol
    .lock               held by the run writing the folder

Guarantees: one writer at a time (a second run refuses with a message; the OS releases the lock
of a run that dies); a torn last progress line (a crash while writing it) is cut off before
anything is appended; on resume every recorded part is read in full and checked against its row
count, and a batch with a missing, truncated or corrupt part (its footer or its data) is dropped
and its images redone; parts of a
batch that never reached the progress file are removed; filesystem errors are one-line messages.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field

from ..errors import ClrpError
from ..fileio import file_lock, makedirs, os_error, write_atomic, write_json_atomic

SETTINGS, PROGRESS, PROBLEMS, LOCK = "settings.json", "progress.jsonl", "problems.jsonl", ".lock"
_PART = re.compile(r"part-(\d{6})\.parquet$")


@dataclass
class Progress:
    done: set = field(default_factory=set)  # image ids evaluated or skipped
    batches: dict = field(default_factory=dict)  # batch number -> record

    @property
    def next_batch(self) -> int:
        return max(self.batches, default=0) + 1


class RunFolder:
    """One evaluation output folder. Writing methods need :meth:`lock` held."""

    def __init__(self, path: str):
        self.path = str(path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def part_path(self, protocol: str, batch: int) -> str:
        return os.path.join(self.path, protocol, f"part-{batch:06d}.parquet")

    def exists(self) -> bool:
        return os.path.isfile(self.file(SETTINGS)) or os.path.isfile(self.file(PROGRESS))

    # -- the writer's lock ------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self):
        makedirs(self.path, f"create the output folder {self.path}")
        with file_lock(self.file(LOCK), blocking=False, busy="is in use by another run"):
            yield self

    # -- settings -------------------------------------------------------------------------------------
    def read_settings(self) -> dict | None:
        try:
            with open(self.file(SETTINGS), encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ClrpError(f"cannot read {self.file(SETTINGS)}: {exc}") from None

    def write_settings(self, settings: dict) -> None:
        write_json_atomic(self.file(SETTINGS), settings, indent=2, default=str)

    # -- progress -------------------------------------------------------------------------------------
    def read_progress(self, repair: bool = False) -> Progress:
        """Finished batches. ``repair`` (lock held): cut a torn last line off the file."""
        path = self.file(PROGRESS)
        prog = Progress()
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return prog
        except OSError as exc:
            raise os_error(exc, f"read {path}") from None
        good = 0
        for line in data.splitlines(keepends=True):
            try:
                rec = json.loads(line) if line.endswith(b"\n") else None
            except ValueError:
                rec = None
            if rec is None:
                if line.strip():
                    break  # a torn record: everything from here on is a crash's leftover
                good += len(line)
                continue
            good += len(line)
            prog.batches[int(rec["batch"])] = rec
            prog.done.update(rec.get("image_ids", []))
            prog.done.update(rec.get("skipped", []))
        if repair and good < len(data):
            with open(path, "r+b") as f:
                f.truncate(good)
        return prog

    def append_progress(self, rec: dict) -> None:
        _append_jsonl(self.file(PROGRESS), rec)

    def rewrite_progress(self, records) -> None:
        tmp = self.file(PROGRESS) + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for rec in records:
                    f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.file(PROGRESS))
        except OSError as exc:
            raise os_error(exc, f"write {self.file(PROGRESS)}") from None

    # -- parts ------------------------------------------------------------------------------------------
    def write_part(self, protocol: str, batch: int, rows: list) -> int:
        import pandas as pd

        if not rows:
            return 0
        path = self.part_path(protocol, batch)
        makedirs(os.path.dirname(path))
        write_atomic(path, lambda tmp: pd.DataFrame(rows).to_parquet(tmp, index=False))
        return len(rows)

    def _part_rows(self, path: str) -> int | None:
        """Rows of a readable part file, None if it is missing or damaged. The rows are read, not
        only the footer's count: a damaged data page under an intact footer must be redone too."""
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).read(use_pandas_metadata=False).num_rows  # 5x cheaper than read_table
        except Exception:  # pyarrow raises OSError, ArrowInvalid (a ValueError) and others
            return None

    def verify(self, prog: Progress, protocols) -> list[int]:
        """Batches whose recorded parts are missing, unreadable or short (records without row
        counts, written by older versions, are checked for readability only)."""
        bad = []
        for b, rec in sorted(prog.batches.items()):
            counts = rec.get("rows")
            for proto in protocols:
                path = self.part_path(proto, b)
                expected = None if counts is None else counts.get(proto, 0)
                if expected == 0:
                    continue
                if expected is None and not os.path.exists(path):
                    continue
                got = self._part_rows(path)
                if got is None or (expected is not None and got != expected):
                    bad.append(b)
                    break
        return bad

    def drop_batches(self, prog: Progress, bad) -> Progress:
        """Forget batches (their images are redone) and delete their parts."""
        if not bad:
            return prog
        keep = [rec for b, rec in sorted(prog.batches.items()) if b not in set(bad)]
        self.rewrite_progress(keep)
        for b in bad:
            for proto in self.protocol_dirs():
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.part_path(proto, b))
        return self.read_progress()

    def protocol_dirs(self) -> list[str]:
        """Subfolders holding part files (not a scenes cache or the exported tables)."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        out = []
        for d in names:
            full = os.path.join(self.path, d)
            if os.path.isdir(full) and any(_PART.match(f) or ".parquet.tmp" in f for f in os.listdir(full)):
                out.append(d)
        return sorted(out)

    def remove_orphans(self, prog: Progress) -> None:
        """Parts of batches that never reached the progress file (a crash between the two)."""
        for proto in self.protocol_dirs():
            d = os.path.join(self.path, proto)
            for fn in os.listdir(d):
                m = _PART.match(fn)
                if (m and int(m.group(1)) not in prog.batches) or ".parquet.tmp" in fn:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(d, fn))

    def load_results(self, protocols=None) -> dict:
        """``{protocol: DataFrame}`` of every recorded part."""
        import pandas as pd

        prog = self.read_progress()
        out = {}
        for proto in protocols or self.protocol_dirs():
            d = os.path.join(self.path, proto)
            if not os.path.isdir(d):
                continue
            parts = sorted(fn for fn in os.listdir(d) if _PART.match(fn) and int(_PART.match(fn).group(1)) in prog.batches)
            frames = []
            for fn in parts:
                try:
                    frames.append(pd.read_parquet(os.path.join(d, fn)))
                except Exception as exc:  # a damaged part: say which, the run's resume redoes it
                    raise ClrpError(f"{os.path.join(d, fn)} is damaged ({type(exc).__name__}); resume the run "
                                    "to redo its images") from None
            if frames:
                out[proto] = pd.concat(frames, ignore_index=True)
        return out

    # -- problems ---------------------------------------------------------------------------------
    def logged_problems(self) -> set:
        seen = set()
        try:
            with open(self.file(PROBLEMS), encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        seen.add((rec["file"], rec["reason"]))
                    except (ValueError, KeyError):
                        pass
        except FileNotFoundError:
            pass
        return seen

    def log_problem(self, file: str, reason: str) -> None:
        _append_jsonl(self.file(PROBLEMS), {"file": file, "reason": reason})


def _append_jsonl(path: str, rec: dict) -> None:
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise os_error(exc, f"write {path}") from None


# ---------------------------------------------------------------------------------------------
# Provenance

def dataset_digest(dataset) -> str:
    """SHA-1 of the dataset's ground truth (ids, sizes, labels, objects with boxes and
    difficult flags): two folders with the same annotations have the same digest."""
    h = hashlib.sha1()
    for s in dataset.samples():
        objs = [(o.class_name, [round(float(v), 3) for v in o.box] if o.box is not None else None, bool(o.difficult))
                for o in (s.objects or [])]
        h.update(json.dumps([s.image_id, s.width, s.height, sorted(s.labels or []), objs]).encode())
    return h.hexdigest()


def model_fingerprint(model) -> str:
    """SHA-1 of the model's parameters and buffers (names, shapes, bytes)."""
    import torch

    h = hashlib.sha1()
    for name, t in list(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Merge

def merge(inputs, out: str, *, comparable) -> dict:
    """Join the results of several runs (e.g. shards) into ``out``: parts are copied and
    renumbered, the progress lists every image once, ``settings.json`` records the inputs.
    ``comparable(settings) -> dict`` is what must agree between the inputs."""
    target = RunFolder(out)
    if target.exists():
        raise ClrpError(f"{out} already holds results; choose another --out")
    folders = [RunFolder(d) for d in inputs]
    settings = []
    for f in folders:
        s = f.read_settings()
        if s is None:
            raise ClrpError(f"{f.path}: no {SETTINGS} (not an evaluation output folder)")
        settings.append(s)
    source = [(s.get("dataset") or {}).get("source_digest") for s in settings]
    for f, digest in zip(folders[1:], source[1:]):
        if digest != source[0]:  # (runs of versions before the source digest have None: not checked)
            raise ClrpError(f"{f.path} was run on another dataset than {folders[0].path} (dataset digest {digest} vs "
                            f"{source[0]}); merge runs of one dataset")
    ref = comparable(settings[0])
    for f, s in zip(folders[1:], settings[1:]):
        if comparable(s) != ref:
            raise ClrpError(f"{f.path} was run with other settings than {folders[0].path}; merge runs of one evaluation")
    with target.lock():
        seen, batch, records = set(), 0, []
        for f in folders:
            prog = f.read_progress()
            bad = f.verify(prog, f.protocol_dirs())
            if bad:
                raise ClrpError(f"{f.path} has damaged or missing parts (batches {bad[:5]}); resume it first")
            for b, rec in sorted(prog.batches.items()):
                ids = set(rec.get("image_ids", [])) | set(rec.get("skipped", []))
                if ids & seen:
                    raise ClrpError(f"{f.path} repeats images of another input ({sorted(ids & seen)[:3]}): merge "
                                    "disjoint shards only")
                seen |= ids
                batch += 1
                for proto in f.protocol_dirs():
                    src = f.part_path(proto, b)
                    if os.path.exists(src):
                        makedirs(os.path.join(out, proto))
                        shutil.copyfile(src, target.part_path(proto, batch))
                records.append(dict(rec, batch=batch))
            for prob in sorted(f.logged_problems()):
                target.log_problem(*prob)
        target.rewrite_progress(records)
        merged = dict(settings[0])
        merged.update({"merged_from": [os.path.abspath(f.path) for f in folders],
                       "shards": [s.get("selection", {}).get("shard") for s in settings]})
        merged.setdefault("selection", {})
        merged["selection"] = dict(merged["selection"], shard=None)
        target.write_settings(merged)
    return merged


def flat_for_csv(df):
    """A copy of a results table whose list/array cells (curves, boxes) are JSON strings, so a
    CSV holds them losslessly (the CLI's results/*.csv and the dashboard's downloads)."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object and len(out) and any(isinstance(v, (list, tuple, dict)) or hasattr(v, "tolist")
                                                        for v in out[c]):
            out[c] = [json.dumps(v.tolist() if hasattr(v, "tolist") else v) if not isinstance(v, str) else v
                      for v in out[c]]
    return out


def rows_csv(df) -> bytes:
    """One protocol's rows as UTF-8 CSV bytes (see :func:`flat_for_csv`), formula cells
    neutralised (:func:`clrp.fileio.csv_bytes`)."""
    from ..fileio import csv_bytes

    return csv_bytes(flat_for_csv(df))
