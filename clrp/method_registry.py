"""The explanation methods' records: one :class:`Method` per method, with its :class:`Option` s.

Everything that is said about a method lives in its record: its label, family, kind of map,
options (default, allowed values, check, help, dashboard control) and the function that computes
it. ``explain()`` (:mod:`clrp.methods`), the command line (``python -m clrp methods``, ``--option``)
and the dashboard (its method list, labels, option controls and colour scales) all read
:data:`REGISTRY`; :func:`register_method` adds a plug-in method to all of them at once.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable

import numpy as np

from .errors import ClrpError

__all__ = ["Option", "Method", "REGISTRY", "register_method", "METHODS", "METHOD_LABELS", "MAP_KINDS", "map_kind",
           "FAMILIES", "family", "with_layer_relevance", "lookup", "built_in", "reference", "register_reference", "check_options", "resolve_options"]

#: The families: ``relevance`` needs a relevance rule at every node (the LRP family; rule presets
#: and the zB box apply), ``gradient`` and ``cam`` need only autograd on the traced graph.
FAMILIES = ("relevance", "gradient", "cam")

#: What the values of a map measure. Maps compare on one colour scale only within a kind: an LRP
#: map (logit units, ~1e-3 per pixel) next to a gradient (per input unit, ~0.1-1) would be white.
MAP_KINDS = MappingProxyType({
    "relevance": "LRP-family relevance (logit units)",
    "normalised relevance": "CLRP reference output (maps normalised before subtracting)",
    "softmax relevance": "SGLRP relevance (softmax-gradient units)",
    "sensitivity": "gradient-type signal (per unit of input)",
    "attribution": "gradient × input attribution (logit units)",
    "cam": "Grad-CAM (feature-map units)",
    "neuron relevance": "relevance of a hidden unit (activation units)",
})


def _alternatives(values) -> str:
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _is_choice(value, choices) -> bool:
    return any(value is c or (type(value) is type(c) and value == c) for c in choices)


@dataclass(frozen=True)
class Option:
    """One option of a method (a keyword argument of ``explain``)."""

    name: str
    default: Any
    help: str = ""
    #: the allowed values (empty: any value ``check`` accepts); a dashboard control offers them
    choices: tuple = ()
    #: ``check(name, value) -> value to use``, raising ClrpError (e.g. :func:`integer`)
    check: Callable[[str, Any], Any] | None = None
    #: the label of the dashboard control that sets it (options with one label share the control);
    #: None: set from code or the command line only
    control: str | None = None
    #: the map's kind when the option has one of these values (else the method's kind)
    kinds: Mapping = field(default_factory=dict, hash=False)

    def resolve(self, value):
        """The value to use, or a ClrpError saying what is allowed."""
        if self.choices and not _is_choice(value, self.choices):
            raise ClrpError(f"{self.name} must be {_alternatives(self.choices)}")
        return value if self.check is None else self.check(self.name, value)


def integer(low: int, *, optional: bool = False):
    """An Option check: an integer >= ``low`` (None allowed when ``optional``)."""
    def check(name, v):
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ClrpError(f"{name} must be an integer >= {low}, got {v!r}")
        return int(v)
    return check


def non_negative(name, v):
    """An Option check: a number >= 0."""
    if not (isinstance(v, (int, float)) and v >= 0):
        raise ClrpError(f"{name} must be a number >= 0, got {v!r}")
    return v


@dataclass(frozen=True)
class Method:
    """One explanation method: what it is called, what its maps measure and how it is computed.

    ``run(ctx)`` returns the map [N, C, H, W] for the context :mod:`clrp.methods` builds: ``ctx.x``
    (the inputs, one row per target), ``ctx.targets`` (class indices), ``ctx.opts`` (the resolved
    options), ``ctx.plan`` (the traced graph; None for an untraceable model, which only
    ``autograd_only`` methods accept), ``ctx.model``, ``ctx.rules`` and ``ctx.box`` (LRP family).
    """

    name: str
    label: str  # how tables, charts and the dashboard name it
    description: str
    family: str  # one of FAMILIES
    kind: str  # a MAP_KINDS key (another string: a kind of its own)
    run: Callable
    options: tuple = ()  # Option records, in the order they are listed
    autograd_only: bool = False  # needs nothing but autograd: runs on the model itself when it cannot be traced
    #: ``layer(ctx, index)``: the relevance at hidden node ``index`` (``clrp.layer_relevance``, the
    #: ablation protocol's ranking, the Neuron contrast page); None: the method has none
    layer: Callable | None = None

    @property
    def defaults(self) -> dict:
        return {o.name: o.default for o in self.options}


#: Every method by name, in the order they were registered (built-ins first).
REGISTRY: dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add a method (e.g. a plug-in) to the registry that explain(), the command line and the
    dashboard read. A name already taken is refused unless ``replace``."""
    if not isinstance(method, Method):
        raise ClrpError(f"register_method needs a clrp.method_registry.Method, got {type(method).__name__}")
    if not method.name or not isinstance(method.name, str):
        raise ClrpError("a method needs a non-empty name")
    if method.family not in FAMILIES:
        raise ClrpError(f"method {method.name!r}: family must be {_alternatives(FAMILIES)}, not {method.family!r}")
    if method.layer is not None and method.family != "relevance":
        raise ClrpError(f"method {method.name!r}: only an LRP-family method (family 'relevance') has layer relevance")
    if method.name in REGISTRY and not replace:
        raise ClrpError(f"a method named {method.name!r} is already registered (pass replace=True to replace it)")
    names = [o.name for o in method.options]
    if len(set(names)) != len(names) or not all(isinstance(o, Option) for o in method.options):
        raise ClrpError(f"method {method.name!r}: options must be Option records with distinct names")
    for o in method.options:
        try:
            o.resolve(o.default)
        except ClrpError as e:
            raise ClrpError(f"method {method.name!r}: the default of option {o.name!r} is not allowed ({e})") from None
    REGISTRY[method.name] = method
    return method


def built_in(name: str) -> bool:
    """Whether ``name`` is one of clrp's own methods (not a plug-in)."""
    return name in REGISTRY and REGISTRY[name].run.__module__ == "clrp.methods"


def reference(name: str) -> str:
    """``module:variable`` of a plug-in method's record, from which another process (a dashboard
    worker) registers it again (:func:`register_reference`); refused when the record is not a
    module-level variable of the module that defines its ``run``."""
    method = lookup(name)
    module = sys.modules.get(method.run.__module__)
    for variable, value in vars(module).items() if module else ():
        if value is method:
            return f"{module.__name__}:{variable}"
    raise ClrpError(f"method {name!r} cannot run in a worker process: its Method record must be a module-level "
                    f"variable of {method.run.__module__}, the module of its run function")


def register_reference(ref: str) -> Method:
    """Register the method record a :func:`reference` names (again), unless it is registered."""
    module, _, variable = ref.partition(":")
    method = getattr(importlib.import_module(module), variable)
    return REGISTRY.get(method.name) or register_method(method)


def lookup(name: str) -> Method:
    """The record of method ``name``, or a ClrpError listing the registered methods."""
    if name not in REGISTRY:
        raise ClrpError(f"unknown method {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name]


def check_options(options_by_method: dict) -> None:
    """Refuse unknown methods and bad options ({method: {option: value}}) before any work starts."""
    for name, given in options_by_method.items():
        resolve_options(lookup(name), dict(given or {}))


def family(name: str) -> list:
    """The registered methods of one family."""
    return [n for n, m in REGISTRY.items() if m.family == name]


def with_layer_relevance() -> list:
    """The registered methods that give relevance at a hidden layer (``Method.layer``)."""
    return [n for n, m in REGISTRY.items() if m.layer is not None]


def resolve_options(method: Method, given: dict) -> dict:
    """The method's options: its defaults updated by ``given``, each checked. ``box`` (the zB
    bounds) is accepted by every method and used by the LRP family."""
    unknown = set(given) - set(method.defaults) - {"box"}
    if unknown:
        allowed = ", ".join(sorted(method.defaults)) or "none"
        raise ClrpError(f"method {method.name!r} has no option {', '.join(sorted(unknown))}; its options: {allowed}")
    opts = {**method.defaults, **given}
    for o in method.options:
        opts[o.name] = o.resolve(opts[o.name])
    return opts


def map_kind(method: str, options: dict | None = None) -> str:
    """The :data:`MAP_KINDS` key of ``method``'s maps under ``options`` (unknown methods: their own kind)."""
    spec = REGISTRY.get(method)
    if spec is None:
        return method
    for o in spec.options:
        value = (options or {}).get(o.name, o.default)
        if o.kinds and isinstance(value, Hashable) and value in o.kinds:
            return o.kinds[value]
    return spec.kind


class _RegistryView(Mapping):
    """A read-only view of one field of every registered method (plug-ins included, when they
    are registered), plus fixed ``extra`` entries after them."""

    def __init__(self, attribute: str, extra: Mapping | None = None):
        self._attribute = attribute
        self._extra = dict(extra or {})

    def __getitem__(self, name):
        if name in REGISTRY:
            return getattr(REGISTRY[name], self._attribute)
        return self._extra[name]

    def __iter__(self):
        yield from REGISTRY
        yield from (k for k in self._extra if k not in REGISTRY)

    def __len__(self):
        return len(REGISTRY) + sum(1 for k in self._extra if k not in REGISTRY)

    def __repr__(self):
        return f"{type(self).__name__}({dict(self)!r})"


#: Method name -> description, for every registered method.
METHODS = _RegistryView("description")
#: How each method is named in tables, charts and the dashboard (one spelling everywhere); also
#: the Pointing Game's centre baseline, which appears next to the methods in its tables.
METHOD_LABELS = _RegistryView("label", {"center": "Centre baseline"})
