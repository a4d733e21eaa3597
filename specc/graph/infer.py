"""Stage 4 — infer: shape and dtype of every edge, parameters and MACs of every node (no torch)."""

from __future__ import annotations

from specc.errors import Diagnostic, ShapeError
from specc.graph.ir import Graph, Node, Ref
from specc.ops.base import InferContext, ShapeMismatch, TensorType


def _describe(graph: Graph, refs: list[Ref], types: list[TensorType]) -> str:
    return ", ".join(f"{t} from '{r}'" for r, t in zip(refs, types, strict=True))


def _arity(node: Node, n: int) -> str | None:
    op = type(node.op)
    if n < op.min_inputs or (op.max_inputs is not None and n > op.max_inputs):
        want = str(op.min_inputs) if op.max_inputs == op.min_inputs else f"{op.min_inputs}+"
        return f"{op.op_name} takes {want} input(s), got {n}"
    return None


def infer(graph: Graph) -> Graph:
    """Annotate every node in place. Raises :class:`ShapeError` listing every node that fails.

    A node whose input could not be inferred is skipped silently, so one mistake gives one error.
    """
    ctx = InferContext(dict(graph.dims))
    known: dict[str, list[TensorType]] = {name: [t] for name, t in graph.inputs.items()}
    diags: list[Diagnostic] = []
    for node in graph.nodes:
        if any(r.node not in known for r in node.inputs):
            continue
        bad_index = next((r for r in node.inputs if r.index >= len(known[r.node])), None)
        if bad_index is not None:
            diags.append(
                Diagnostic(
                    f"'{bad_index.node}' has {len(known[bad_index.node])} output(s); "
                    f"there is no output {bad_index.index}",
                    node.loc,
                    node.src,
                )
            )
            continue
        ins = [known[r.node][r.index] for r in node.inputs]
        message = _arity(node, len(ins)) or _dtype_problem(node, node.inputs, ins)
        if message is None:
            try:
                node.inferred = node.op.infer(ins, ctx)
            except ShapeMismatch as exc:
                message = (
                    f"{node.op.op_name} '{node.path}' cannot accept input "
                    f"{_describe(graph, node.inputs, ins)}: {exc}"
                )
        if message is not None:
            if node.via:
                message += " (in block used at " + ", ".join(f"line {v.line}" for v in node.via) + ")"
            diags.append(Diagnostic(message, node.loc, node.src))
            continue
        assert node.inferred is not None
        known[node.path] = node.inferred.outputs
    diags += _growth_problems(graph, known)
    if diags:
        raise ShapeError(diags)
    return graph


def _dtype_problem(node: Node, refs: list[Ref], ins: list[TensorType]) -> str | None:
    allowed = type(node.op).input_dtypes
    for ref, t in zip(refs, ins, strict=True):
        if t.dtype not in allowed:
            return f"{node.op.op_name} '{node.path}' expects {' or '.join(allowed)} input, got {t.dtype} {t} from '{ref}'"
    return None


def _growth_problems(graph: Graph, known: dict[str, list[TensorType]]) -> list[Diagnostic]:
    out = []
    for ref, growth, src, loc in graph.meta.get("growth_checks", []):
        if ref.node in known:
            channels = known[ref.node][ref.index].shape[0]
            if channels != growth:
                out.append(
                    Diagnostic(
                        f"dense layer body produces {channels} channels but growth_rate is {growth}", loc, src
                    )
                )
    return out
