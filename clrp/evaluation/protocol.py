"""Evaluation protocols as plug-ins.

A protocol is one class (in one module) implementing :class:`Protocol`: its options (a dataclass
with defaults, checked by ``validate``), the ground truth it needs per image, the rows it computes
per batch, the summary of its rows and the charts the dashboard draws. ``@register_protocol``
adds it to :data:`REGISTRY`; the runner, the command line (``--protocols``, ``--set
protocol.option=value``) and the dashboard iterate the registry, so adding a metric is one module
plus its tests::

    @register_protocol
    class MyMetric(Protocol):
        name, title = "mymetric", "My metric"

        @dataclass
        class Options:
            threshold: float = 0.5

        def rows(self, batch, options):
            return [{"image_id": batch.samples[i].image_id, "method": m, "value": ...}
                    for i, ... in ...]

        def summary(self, df, options):
            return df.groupby("method")[["value"]].mean()
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ClrpError

__all__ = ["Protocol", "Batch", "Chart", "REGISTRY", "register_protocol", "protocol", "split_options",
           "built_in_protocols", "image_seed"]

REGISTRY: dict[str, "Protocol"] = {}


@dataclass
class Chart:
    """A chart the dashboard draws from a summary: ``kind`` "bar" (grouped by ``series``), "line"
    (one line per ``series``, dashed by ``dash``), "heatmap" (``x`` columns, ``y`` rows, values
    ``value``) or "table"; ``data`` is a long-form DataFrame."""

    kind: str
    title: str
    data: Any
    x: Optional[str] = None
    y: Optional[str] = None
    series: Optional[str] = None
    dash: Optional[str] = None
    value: Optional[str] = None
    y_title: Optional[str] = None
    x_title: Optional[str] = None
    y_range: Optional[tuple] = None
    caption: Optional[str] = None


def image_seed(seed: int, image_id) -> int:
    """The seed of one image's random draws (region order, tie order, noise baseline): SHA-1 of
    ``"<run seed>:<image id>"``, 62 bits. Each image gets its own draws, the same in any batch, shard
    or resume, on any machine."""
    import hashlib

    return int.from_bytes(hashlib.sha1(f"{int(seed)}:{image_id}".encode("utf-8")).digest()[:8], "big") >> 2


@dataclass
class Batch:
    """What one batch of images gives the protocols.

    ``samples[i]``/``inputs[i]``: the evaluated images and their model inputs ([1, C, H, W]);
    ``pairs``: (item index, class name, model output index) for every class evaluated;
    ``maps[method][k]``: the 2-D map (channel sum, at the model's input size) of pair k;
    ``ground_truth[protocol][i]``: what the protocol's ``ground_truth`` returned for image i."""

    samples: list
    inputs: list
    pairs: list
    maps: dict
    ground_truth: dict
    model: Any
    preprocessing: Any
    class_names: list
    mapping: Any
    run: Any  # the RunConfig

    def forward(self, x):
        from .. import engine

        return engine.forward(self.model, x)

    def pairs_of(self) -> dict:
        """{item index: [(pair index, class name, target), ...]}"""
        out: dict = {}
        for k, (i, c, t) in enumerate(self.pairs):
            out.setdefault(i, []).append((k, c, t))
        return out

    def crop_box(self, sample):
        """The region of the original image the model input covers (None: all of it)."""
        if self.run.geometry == "full":
            return None
        g = self.preprocessing.geometry(sample.width, sample.height)
        rw, rh = g["resized"]
        left, top, right, bottom = g["crop"]
        sx, sy = sample.width / rw, sample.height / rh
        return (left * sx, top * sy, right * sx, bottom * sy)

    def image_seed(self, i: int) -> int:
        """:func:`image_seed` of item ``i`` under the run's seed."""
        return image_seed(self.run.seed, self.samples[i].image_id)

    def method_options(self, method: str) -> dict:
        return self.preprocessing.method_options(self.run.method_options.get(method))


class Protocol:
    name: str = ""
    title: str = ""
    description: str = ""
    needs_maps: bool = True  # the methods' maps of every pair
    needs_objects: bool = False  # boxes or masks (image labels are not enough)
    page: str = "pointing"  # the dashboard page that offers it: "pointing" or "ablation"
    built_in: bool = False  # shipped with clrp (the dashboard gives these hand-made option widgets)

    @dataclass
    class Options:
        pass

    def validate(self, options, run) -> None:
        """Raise ``ClrpError`` for options that make no sense."""

    def resolve(self, options, model, preprocessing, run):
        """Options with defaults that depend on the model filled in (recorded in the settings)."""
        return options

    def ground_truth(self, sample, classes, options):
        """Per-image data the protocol needs (e.g. Pointing Game targets); raise
        ``DatasetError`` to skip the image as broken."""
        return None

    def rows(self, batch: Batch, options) -> list:  # pragma: no cover - interface
        raise NotImplementedError

    def summary(self, df, options=None):
        return df

    def charts(self, summary, rows=None) -> list:
        return [Chart("table", self.title, summary)]


def register_protocol(cls):
    """Class decorator: add a protocol (an instance of ``cls``) to the registry."""
    inst = cls()
    if not inst.name:
        raise ClrpError(f"protocol {cls.__name__} has no name")
    REGISTRY[inst.name] = inst
    return cls


def built_in_protocols() -> tuple:
    """Names of the protocols shipped with clrp, in registration order."""
    return tuple(n for n, p in REGISTRY.items() if p.built_in)


def protocol(name: str) -> Protocol:
    if name not in REGISTRY:
        raise ClrpError(f"unknown protocol {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name]


def option_fields(name: str) -> dict:
    return {f.name: f for f in dataclasses.fields(protocol(name).Options)}


def make_options(name: str, given=None):
    """The protocol's Options from an instance, a dict, or None (defaults)."""
    p = protocol(name)
    if isinstance(given, p.Options):
        return given
    given = dict(given or {})
    fields = option_fields(name)
    unknown = set(given) - set(fields)
    if unknown:
        raise ClrpError(f"protocol {name!r} has no option {', '.join(sorted(unknown))}; its options: "
                        f"{', '.join(fields) or 'none'}")
    return p.Options(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in given.items()})


def split_options(overrides: dict, protocols) -> tuple[dict, dict]:
    """Route flat keyword settings (``tolerance=15``, ``steps=4``) to the protocols whose options
    have them: returns ``(rest, {protocol: {option: value}})``; a setting no protocol of the
    registry knows stays in ``rest``."""
    per: dict = {}
    rest = {}
    for key, value in overrides.items():
        owners = [p for p in REGISTRY if key in option_fields(p)]
        if not owners:
            rest[key] = value
            continue
        for p in owners:
            per.setdefault(p, {})[key] = value
    return rest, per


def field_default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None
