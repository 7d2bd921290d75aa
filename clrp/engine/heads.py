"""The output layers of a model: the one conv/dense layer every path to the logits goes through, or
several heads whose outputs the logits sum or average (DeiT's class and distillation heads). CLRP
forms its dual at each of them; see ``clrp.methods``."""
from __future__ import annotations

from numbers import Real

from .ops import Add, Identity, Linear, Mul, Reshape, bind, first_ref


def output_heads(plan) -> tuple[list[int], str | None]:
    """``(heads, problem)``: the conv/dense layers the paths to the logits end in (walking back from
    the output), in forward order, and ``None`` when the logits are a sum of their outputs with
    constant positive weights (one head: the layer every path goes through), else why they are not."""
    g = plan.graph
    if plan.output_layer is not None and not any(
            isinstance(n.op, Linear) and g.carries[n.index] for n in g.nodes[plan.output_layer + 1:]):
        return [plan.output_layer], None
    heads, problems, seen, stack = set(), [], set(), [g.output]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        node = g.nodes[i]
        if isinstance(node.op, Linear):
            heads.add(i)
            continue
        problem = _not_a_positive_sum(node, g)
        if problem:
            problems.append(f"{node.describe()} {problem}")
        stack.extend(g.carried_inputs(i))
    heads = sorted(heads)
    for h in heads:
        below = set(heads) & g.ancestors(first_ref(g.nodes[h])) - {h}
        if below:
            problems.append(f"{g.preferred_name(h)} is computed from {', '.join(g.preferred_name(j) for j in below)}")
        if g.nodes[h].shape != g.nodes[g.output].shape:
            problems.append(f"{g.preferred_name(h)} has shape {g.nodes[h].shape}, not the logits' shape")
    return heads, ("; ".join(problems[:3]) or None) if heads else "no conv or dense layer computes the logits"


def _not_a_positive_sum(node, g) -> str | None:
    """Why ``node`` is not a step of a sum with constant positive weights (None when it is)."""
    op = node.op
    if isinstance(op, Add):
        if node.op_name != "add" or len(node.extra["terms"]) != 2 or any(c <= 0 for _, c in node.extra["terms"]):
            return "is not a sum of the heads with positive weights"
        return None
    if isinstance(op, Mul):
        b = bind(node)
        signal = node.extra.get("signal")
        factor = b["other"] if getattr(b["self"], "index", None) == signal else b["self"]
        if signal is not None and len(g.carried_inputs(node.index)) == 1 and isinstance(factor, Real) and \
                not isinstance(factor, bool) and factor > 0:
            return None
        return "is not a multiplication by a positive constant"
    if type(op) in (Identity, Reshape) and node.shape == g.nodes[first_ref(node)].shape:
        return None
    return f"({node.op_name}) is not part of a sum with constant positive weights"
