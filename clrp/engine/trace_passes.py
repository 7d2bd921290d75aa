"""The canonicalisation passes :mod:`.trace` runs on an exported graph, and the user's names.

In-place activations become functional, identities (dropout, clone) disappear, ``split``/``chunk``
become slices, BatchNorm is folded into the conv/dense layer next to it; each node gets a
torchvision feature-extraction style name and its module paths as aliases.
"""
from __future__ import annotations

import operator

import torch
from torch import nn

from .ops import bind

aten = torch.ops.aten

_LINEAR = {"conv1d", "conv2d", "conv3d", "linear", "convolution"}
# Value-preserving ops the canonical graph drops (contiguous stays: a later view may need it).
_IDENTITIES = {"alias", "clone", "detach", "lift_fresh_copy", "dropout", "feature_dropout", "alpha_dropout",
               "feature_alpha_dropout", "dropout_", "feature_dropout_", "alpha_dropout_", "feature_alpha_dropout_"}
_VIEWS = {"slice", "select", "view", "_unsafe_view", "reshape", "transpose", "permute", "expand", "narrow",
          "unsqueeze", "squeeze", "as_strided", "diagonal", "t", "alias", "unflatten", "flatten", "split",
          "chunk", "unbind", "split_with_sizes", "view_as", "expand_as", "movedim", "swapaxes"}


def _name(target) -> str:
    packet = getattr(target, "overloadpacket", None)
    return packet.__name__ if packet is not None else getattr(target, "__name__", str(target))


# ---------------------------------------------------------------------------------------------
# Names


def _module_of(n: torch.fx.Node):
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return "", 0
    key, (path, _) = list(stack.items())[-1]
    call = int(key.rsplit("@", 1)[1]) if "@" in key else 0
    return path, call


def _name_nodes(model: nn.Module, fnodes: list) -> None:
    """torchvision feature-extraction style names, plus module-output aliases (see graph.py)."""
    calls: dict = {}
    computing = [n for n in fnodes if n.op == "call_function"]
    for n in computing:
        path, call = _module_of(n)
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            mod = None
        n.meta["clrp_module"] = (path, type(mod) if mod is not None else None)
        n.meta["clrp_call"] = (path, call)
        if isinstance(n.meta.get("val"), torch.Tensor):
            calls.setdefault((path, call), []).append(n)
    used: dict = {}

    def unique(base):
        k = used.get(base, 0)
        used[base] = k + 1
        return base if k == 0 else f"{base}_{k}"

    for n in computing:
        path, call = n.meta["clrp_call"]
        mod_type = n.meta["clrp_module"][1]
        mod = None
        if mod_type is not None:
            mod = model.get_submodule(path)
        leaf = path and mod is not None and next(mod.children(), None) is None
        if leaf and len(calls.get((path, call), [])) == 1:
            n.meta["clrp_name"] = unique(path)
        else:
            n.meta["clrp_name"] = unique(f"{path}.{_name(n.target).rstrip('_')}" if path else _name(n.target).rstrip("_"))
    # every module call's output node gets the module path as an alias
    position = {n: i for i, n in enumerate(fnodes)}
    scopes: dict = {}
    for n in computing:
        stack = n.meta.get("nn_module_stack") or {}
        for key, (path, _) in stack.items():
            if path:
                call = int(key.rsplit("@", 1)[1]) if "@" in key else 0
                scopes.setdefault((path, call), []).append(n)
    for (path, call), members in scopes.items():
        inside = set(members)
        outs = [m for m in members if isinstance(m.meta.get("val"), torch.Tensor)
                and any(u not in inside for u in m.users)]
        if outs:
            last = max(outs, key=position.__getitem__)
            last.meta.setdefault("clrp_aliases", []).append(path if call == 0 else f"{path}_{call}")


def _carry_names(src: torch.fx.Node, dst: torch.fx.Node) -> None:
    names = [src.meta.get("clrp_name"), *src.meta.get("clrp_aliases", [])]
    dst.meta.setdefault("clrp_aliases", []).extend(n for n in names if n)


# ---------------------------------------------------------------------------------------------
# Canonicalisation passes


def _functionalize(fx, fnodes, depends) -> None:
    """In-place ops on input-dependent values become functional (the engine keeps every value);
    later readers of the overwritten value read the op's result instead."""
    position = {n: i for i, n in enumerate(fnodes)}
    for n in fnodes:
        if n.op != "call_function" or not depends.get(n):
            continue
        name = _name(n.target)
        if not name.endswith("_") or name.startswith("_") or not n.args:
            continue
        functional = getattr(aten, name[:-1], None)
        overload = getattr(functional, n.target._overloadname, None) if functional is not None else None
        base = n.args[0]
        if overload is None or not isinstance(base, torch.fx.Node):
            continue
        here = position[n]
        if any(position.get(u, -1) > here for a in _aliases(base) if a is not base for u in a.users):
            n.meta["clrp_inplace_view"] = True  # another view of the same memory is read later
            continue
        n.target = overload
        base.replace_all_uses_with(n, delete_user_cb=lambda u: u is not n and position.get(u, 1 << 30) > here)


def _is_view(n) -> bool:
    return isinstance(n, torch.fx.Node) and n.op == "call_function" and _name(n.target) in _VIEWS


def _aliases(n: torch.fx.Node) -> set:
    """Every value sharing memory with ``n`` through view ops (its base and the base's views)."""
    root = n
    while _is_view(root) and isinstance(root.args[0], torch.fx.Node):
        root = root.args[0]
    out, stack = {root}, [root]
    while stack:
        for u in stack.pop().users:
            if _is_view(u) and u.args and u.args[0] in out and u not in out:
                out.add(u)
                stack.append(u)
    return out


def _remove_identities(fx, depends) -> None:
    for n in list(fx.nodes):
        if n.op != "call_function" or not depends.get(n) or _name(n.target) not in _IDENTITIES:
            continue
        name = _name(n.target)
        b = bind(_Shim(n))
        if "dropout" in name and b.get("train"):
            continue  # a dropout that is active (never in an eval copy)
        src = n.args[0]
        if not isinstance(src, torch.fx.Node):
            continue
        _carry_names(n, src)
        n.replace_all_uses_with(src)
        fx.erase_node(n)


class _Shim:
    """What ops.bind needs of a node: target, args, kwargs."""

    def __init__(self, n, args=None):
        self.target, self.args, self.kwargs = n.target, n.args if args is None else args, n.kwargs


def _splits_to_slices(fx) -> None:
    """``split``/``chunk``/``unbind`` followed by ``getitem`` become slices/selects of the input."""
    for n in list(fx.nodes):
        if n.op != "call_function" or _name(n.target) not in ("split", "split_with_sizes", "chunk", "unbind"):
            continue
        if not all(u.op == "call_function" and u.target is operator.getitem for u in n.users):
            continue
        b = bind(_Shim(n))
        x = b["self"]
        dim = b.get("dim", 0)
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if val is None or not isinstance(val.shape[dim], int):  # a symbolic size is the batch
            continue
        size = val.shape[dim]
        name = _name(n.target)
        if name == "unbind":
            for u in list(n.users):
                u.target, u.args, u.kwargs = aten.select.int, (x, dim, u.args[1]), {}
            fx.erase_node(n)
            continue
        if name == "split_with_sizes":
            sizes = list(b["split_sizes"])
        else:
            step = b["split_size"] if name == "split" else -(-size // b["chunks"])
            sizes = [min(step, size - s) for s in range(0, size, step)]
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        for u in list(n.users):
            k = u.args[1]
            u.target, u.args, u.kwargs = aten.slice.Tensor, (x, dim, starts[k], starts[k] + sizes[k]), {}
        fx.erase_node(n)


def _fold_batchnorm(fx, depends) -> None:
    """Fold each eval BatchNorm into the conv/dense layer right before it (or right after it when
    that layer does not pad); what remains is an affine layer with its own rule."""
    for n in list(fx.nodes):
        if n.op != "call_function" or _name(n.target) != "batch_norm" or not depends.get(n):
            continue
        b = bind(_Shim(n))
        if b["training"] or b["running_mean"] is None or b["running_var"] is None:
            continue
        bn = {k: b[k] for k in ("weight", "bias", "running_mean", "running_var", "eps")}
        prev = b["input"]
        if (isinstance(prev, torch.fx.Node) and prev.op == "call_function" and _name(prev.target) in _LINEAR
                and len(prev.users) == 1 and "bn_after" not in prev.meta.get("clrp_extra", {})
                and "bn_before" not in prev.meta.get("clrp_extra", {}) and _not_transposed(prev)
                and _channels_on_dim1(prev)):
            prev.meta.setdefault("clrp_extra", {})["bn_after"] = bn
            _carry_names(n, prev)
            n.replace_all_uses_with(prev)
            fx.erase_node(n)
            continue
        users = list(n.users)
        if len(users) == 1 and users[0].op == "call_function" and _name(users[0].target) in _LINEAR:
            nxt = users[0]
            nb = bind(_Shim(nxt))
            pad = nb.get("padding", 0)
            no_pad = pad == "valid" or (not isinstance(pad, str) and all(p == 0 for p in (pad if isinstance(pad, (list, tuple)) else [pad])))
            if (nb["input"] is n and no_pad and nb.get("groups", 1) == 1 and _not_transposed(nxt)
                    and not nxt.meta.get("clrp_extra") and _channels_on_dim1(nxt)):
                nxt.meta.setdefault("clrp_extra", {})["bn_before"] = bn
                nxt.args = (prev,) + tuple(nxt.args[1:])
                fx.erase_node(n)


def _channels_on_dim1(n) -> bool:
    """A conv's channels are dim 1; a dense layer's features are its last dim, which is BatchNorm's
    dim 1 only on [N, F] (on [N, L, F] BatchNorm1d normalises L: no fold)."""
    if _name(n.target) != "linear":
        return True
    val = n.meta.get("val")
    return val is not None and val.ndim == 2


def _not_transposed(n) -> bool:
    return _name(n.target) != "convolution" or not bind(_Shim(n)).get("transposed")
