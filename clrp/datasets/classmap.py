"""Mapping a dataset's class names to a model's output indices.

Automatic matching is by name, insensitive to case, whitespace, ``_`` and ``-`` (so VOC
``tvmonitor`` matches ``TV monitor`` and ``pottedplant`` matches ``potted_plant``). A model class
name with commas (ImageNet style ``"tench, Tinca tinca"``) matches any of its comma-separated
synonyms. An explicit ``mapping`` (dataset name -> model class name or index) takes precedence;
an explicit entry that names no model class is an error. Dataset classes that match nothing
are *reported* in ``ClassMapping.unmapped`` (never silently dropped); evaluation code skips
them and says so.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import DatasetError


def normalize_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


@dataclass
class ClassMapping:
    index: dict = field(default_factory=dict)        # dataset class -> model output index
    unmapped: list = field(default_factory=list)     # dataset classes with no model output
    how: dict = field(default_factory=dict)          # dataset class -> "explicit" | "name" | "synonym"
    ambiguous: dict = field(default_factory=dict)    # dataset class -> candidate indices (first used)
    model_class_names: list = field(default_factory=list)
    refused: dict = field(default_factory=dict)      # annotation file -> why it was refused
    annotation_files: Optional[int] = None           # how many annotation files the dataset has

    def __contains__(self, name):
        return name in self.index

    def __getitem__(self, name):
        return self.index[name]

    def get(self, name, default=None):
        return self.index.get(name, default)

    def report(self) -> str:
        total = len(self.index) + len(self.unmapped)
        lines = [f"class mapping: {len(self.index)} of {total} dataset classes mapped to model outputs"]
        if self.refused:
            lines.append(refused_summary(self.refused, self.annotation_files, "their classes are not counted"))
        if self.unmapped:
            lines.append("no model output for (skipped in evaluation): " + ", ".join(self.unmapped))
        for k, v in self.ambiguous.items():
            lines.append(f"ambiguous: {k!r} matches outputs {v}; using {v[0]}")
        return "\n".join(lines)

    def require_some(self) -> None:
        """Raise ``NoClassMapped`` when no dataset class maps to a model output."""
        if self.index:
            return
        model = ", ".join(self.model_class_names[:12]) + (", ..." if len(self.model_class_names) > 12 else "")
        parts = [f"no dataset class maps to an output of the model (dataset classes: "
                 f"{', '.join(self.unmapped[:12]) or 'none'}{', ...' if len(self.unmapped) > 12 else ''}; "
                 f"model classes: {model})"]
        if self.refused:
            head, *files = refused_summary(self.refused, self.annotation_files,
                                           "their classes are not counted").splitlines()
            parts.append(f"{head.rstrip(':')} ({' | '.join(f.strip() for f in files)})")
        parts.append(RENAME_ADVICE)
        raise NoClassMapped("; ".join(parts))


#: Advice that fits every front end (the dashboard has no mapping control); the command line adds
#: its ``--mapping`` option, Python callers have ``mapping=`` (see ``NoClassMapped``).
RENAME_ADVICE = ("rename the dataset's classes to the model's class names (matching ignores case, spaces, "
                 "_ and -; an ImageNet name matches any of its comma-separated synonyms)")


class NoClassMapped(DatasetError):
    """No class of the dataset is one of the model's: nothing to evaluate. Besides renaming the
    classes, Python callers can pass ``mapping={dataset class: model class or index}`` to
    ``run_evaluation``; the command line's ``--mapping`` takes the same as JSON."""


def refused_summary(refused: dict, total: Optional[int] = None, consequence: str = "", limit: int = 5) -> str:
    """``"2 of 3 annotation files were refused, <consequence>:"`` and one line per file (the first
    ``limit``, then ``"... and N more"``)."""
    n = len(refused)
    many = (total if total is not None else n) != 1
    head = f"{n} of {total}" if total is not None else f"{n}"
    head += f" annotation file{'s' if many else ''} {'were' if n != 1 or many else 'was'} refused"
    if consequence:
        head += f", {consequence}"
    lines = [head + ":"]
    for f, why in list(refused.items())[:limit]:
        lines.append(f"  {f}: {why}")
    if n > limit:
        lines.append(f"  ... and {n - limit} more")
    return "\n".join(lines)


def map_classes(dataset_classes: Sequence[str], model_class_names: Sequence[str],
                mapping: Optional[dict] = None) -> ClassMapping:
    model_class_names = [str(c) for c in model_class_names]
    exact: dict = {}
    synonyms: dict = {}
    for i, c in enumerate(model_class_names):
        exact.setdefault(normalize_name(c), []).append(i)
        if "," in c:
            for part in c.split(","):
                if part.strip():
                    synonyms.setdefault(normalize_name(part), []).append(i)
    explicit = dict(mapping or {})
    out = ClassMapping(model_class_names=model_class_names)
    for name in dataset_classes:
        if name in out.index or name in out.unmapped:
            continue
        if name in explicit:
            target = explicit[name]
            if isinstance(target, bool) or not isinstance(target, (int, str)):
                raise DatasetError(f"mapping for {name!r} must be a model class name or index, got {target!r}")
            if isinstance(target, int):
                if not 0 <= target < len(model_class_names):
                    raise DatasetError(f"mapping {name!r} -> {target}: index out of range "
                                       f"(model has {len(model_class_names)} classes)")
                idx = target
            else:
                if target in model_class_names:
                    idx = model_class_names.index(target)
                else:
                    cands = exact.get(normalize_name(target))
                    if not cands:
                        raise DatasetError(f"mapping {name!r} -> {target!r}: no such model class")
                    idx = cands[0]
            out.index[name] = idx
            out.how[name] = "explicit"
            continue
        key = normalize_name(name)
        cands = exact.get(key)
        how = "name"
        if not cands:
            cands = synonyms.get(key)
            how = "synonym"
        if not cands:
            out.unmapped.append(name)
            continue
        if len(cands) > 1:
            out.ambiguous[name] = list(cands)
        out.index[name] = cands[0]
        out.how[name] = how
    return out
