"""Stage 4 — infer: shape and dtype of every edge, parameters and MACs of every node (no torch).

Lowering infers each node as it creates it (so ``$in`` expressions can read shapes); :func:`infer`
re-runs the same rule over a whole graph, e.g. after the nominal sizes of symbolic axes changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from specc.errors import Diagnostic, Location, ShapeError
from specc.graph.ir import Graph, Node, Ref
from specc.ops.base import InferContext, ShapeMismatch, TensorType


def _describe(refs: list[Ref], types: list[TensorType]) -> str:
    return ", ".join(f"{t} from '{r}'" for r, t in zip(refs, types, strict=True))


def _arity(node: Node, n: int) -> str | None:
    op = type(node.op)
    if n < op.min_inputs or (op.max_inputs is not None and n > op.max_inputs):
        want = str(op.min_inputs) if op.max_inputs == op.min_inputs else f"{op.min_inputs}+"
        return f"{op.op_name} takes {want} input(s), got {n}"
    return None


def input_types(node: Node, known: dict[str, list[TensorType]]) -> list[TensorType] | str | None:
    """The node's input types; None when an input is unknown (an earlier node failed), or the
    message when a reference names an output its node does not have."""
    if any(r.node not in known for r in node.inputs):
        return None
    bad = next((r for r in node.inputs if r.index >= len(known[r.node])), None)
    if bad is not None:
        return f"'{bad.node}' has {len(known[bad.node])} output(s); there is no output {bad.index}"
    return [known[r.node][r.index] for r in node.inputs]


MAX_SAMPLE_ELEMENTS = 2**50
"""No tensor may hold more elements per sample (4 PiB in fp32): bigger is a mistake or an attack, and
the integers of its shape arithmetic would grow without bound (a concat doubling channels 10,000 times)."""


def check_node(node: Node, ins: list[TensorType], ctx: InferContext) -> str | None:
    """Run the node's shape rule on ``ins``: sets ``node.inferred``, or returns why it cannot."""
    message = _arity(node, len(ins)) or _dtype_problem(node, node.inputs, ins)
    if message is not None:
        return message
    try:
        inferred = node.op.infer(ins, ctx)
    except ShapeMismatch as exc:
        return f"{node.op.op_name} '{node.path}' cannot accept input {_describe(node.inputs, ins)}: {exc}"
    for t in inferred.outputs:
        if math.prod(d for d in t.shape if isinstance(d, int)) > MAX_SAMPLE_ELEMENTS:
            return f"{node.op.op_name} '{node.path}' would output {t}: more than 2**50 elements per sample"
    node.inferred = inferred
    return None


def via_text(via: Sequence[Location], where: Location | None) -> str:
    """`` (in block used at line 12, lib.yaml:4)``: the block calls an error sits in."""
    if not via:
        return ""
    lines = [f"line {v.line}" if where is None or v.file == where.file else f"{v.file}:{v.line}" for v in via]
    return " (in block used at " + ", ".join(lines) + ")"


def infer(graph: Graph) -> Graph:
    """Annotate every node in place. Raises :class:`ShapeError` listing every node that fails.

    A node whose input could not be inferred is skipped silently, so one mistake gives one error.
    """
    ctx = InferContext(dict(graph.dims))
    known: dict[str, list[TensorType]] = {name: [t] for name, t in graph.inputs.items()}
    diags: list[Diagnostic] = []
    for node in graph.nodes:
        ins = input_types(node, known)
        if ins is None:
            continue
        message = ins if isinstance(ins, str) else check_node(node, ins, ctx)
        if message is not None:
            diags.append(Diagnostic(message + via_text(node.via, node.loc), node.loc, node.src))
            continue
        assert node.inferred is not None
        known[node.path] = node.inferred.outputs
    if diags:
        raise ShapeError(diags)
    return graph


def _dtype_problem(node: Node, refs: list[Ref], ins: list[TensorType]) -> str | None:
    allowed = type(node.op).input_dtypes
    for ref, t in zip(refs, ins, strict=True):
        if t.dtype not in allowed:
            return f"{node.op.op_name} '{node.path}' expects {' or '.join(allowed)} input, got {t.dtype} {t} from '{ref}'"
    return None
