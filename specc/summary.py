"""Human and JSON summaries of an inferred graph (used by check, build and render)."""

from __future__ import annotations

from typing import Any

import yaml

from specc.graph import Graph, Node
from specc.load.tree import to_plain


def human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def shape_text(shape: list[Any] | tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def table(rows: list[list[str]], header: list[str], right: set[int] | None = None) -> str:
    """A plain monospace table (no dependencies, so ``specc check`` stays fast)."""
    right = right or set()
    cols = [header, *rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    lines = [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]
    return "\n".join(line.rstrip() for line in lines)


def node_table(graph: Graph) -> str:
    rows = []
    for node in graph.nodes:
        inf = node.inferred
        assert inf is not None
        out = " ".join(shape_text(["B", *t.shape]) for t in inf.outputs)
        rows.append([node.path, node.op.op_name, out, f"{inf.params:,}", human(inf.macs)])
    totals = ["total", "", "", f"{graph.params:,}", human(graph.macs)]
    return table([*rows, totals], ["path", "op", "output", "params", "MACs"], right={3, 4})


def summary_line(graph: Graph) -> str:
    ins = ", ".join(f"{k} {shape_text(['B', *t.shape])}" for k, t in graph.inputs.items())
    outs = ", ".join(f"{k} {shape_text(['B', *t.shape])}" for k, t in graph.output_types().items())
    return f"{graph.name}: {graph.params:,} params, {human(graph.macs)} MACs/sample, {len(graph.nodes)} nodes; {ins} -> {outs}"


def graph_json(graph: Graph) -> dict[str, Any]:
    return {
        "name": graph.name,
        "params": graph.params,
        "macs": graph.macs,
        "inputs": {k: {"shape": t.with_batch(), "dtype": t.dtype} for k, t in graph.inputs.items()},
        "outputs": {k: t.with_batch() for k, t in graph.output_types().items()},
        "nodes": [
            {
                "path": n.path,
                "op": n.op.op_name,
                "inputs": [str(r) for r in n.inputs],
                "outputs": [t.with_batch() for t in n.outputs],
                "params": n.inferred.params if n.inferred else 0,
                "macs": n.inferred.macs if n.inferred else 0,
            }
            for n in graph.nodes
        ],
    }


def render(graph: Graph) -> str:
    """The fully expanded spec: every node with all its arguments (defaults and variables resolved),
    named by its path and fed by explicit ``from:`` references, its output shape as a comment.

    The text is itself a valid spec: ``specc check`` accepts it and gives the same graph (node paths,
    ops, arguments, shapes, parameters). ``specc train`` writes it as ``RUN/spec.yaml``.
    """

    doc = graph.document
    where = f" of {doc.path}" + (f" (scale {doc.scale})" if doc.scale else "") if doc else ""
    sets = f"  --set {' --set '.join(doc.overrides)}" if doc and doc.overrides else ""
    lines = [
        f"# specc render{where}{sets}",
        f"# {graph.params:,} parameters, {human(graph.macs)} MACs per sample, {len(graph.nodes)} nodes",
    ]
    head: dict[str, Any] = {"specc": 1, "name": graph.name}
    if doc is not None and doc.spec.description:
        head["description"] = doc.spec.description
    head["inputs"] = {k: {"shape": list(t.shape), "dtype": t.dtype} for k, t in graph.inputs.items()}
    if graph.dims:
        head["dims"] = dict(graph.dims)
    defaults = doc.spec.defaults.model_dump(mode="json") if doc is not None else {}
    if defaults:
        head["defaults"] = defaults
    if graph.vars:
        head["vars"] = dict(graph.vars)
    lines.append(yaml.safe_dump(head, sort_keys=False, default_flow_style=None, width=110).rstrip())
    lines.append("layers:")
    owners = {(t.node, t.param): t.owner for t in graph.ties}
    for n in graph.nodes:
        entry = {n.op.op_name: _node_args(n, defaults, owners)}
        text = yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=1 << 30).strip()
        shapes = " ".join(shape_text(["B", *t.shape]) for t in n.outputs)
        params = f", {n.inferred.params:,} params" if n.inferred and n.inferred.params else ""
        lines.append(f"  - {text}  # {shapes}{params}")
    tail: dict[str, Any] = {"outputs": {k: str(r) for k, r in graph.outputs.items()}}
    if graph.labels:
        tail["labels"] = graph.labels
    if doc is not None and doc.raw.get("train") is not None:
        tail["train"] = to_plain(doc.raw["train"])
    lines.append(yaml.safe_dump(tail, sort_keys=False, default_flow_style=None, width=110).rstrip())
    return "\n".join(lines) + "\n"


def _node_args(node: Node, defaults: dict[str, Any], owners: dict[tuple[str, str], str]) -> dict[str, Any]:
    """A node's arguments for render: its own, init where it matters, its path as name, its inputs."""
    args = node.op.args()
    for param, name in node.op.tied().items():  # a tie names a node: write the node's path
        for key, value in args.items():
            if value == name and (node.path, param) in owners:
                args[key] = owners[(node.path, param)]
    dumped = node.op.model_dump(mode="json", include={"init", "bias_init"})
    for key in ("init", "bias_init"):
        if (node.inferred and node.inferred.params) or dumped[key] != defaults.get(key):
            args[key] = dumped[key]
    args["name"] = node.path
    args["from"] = [str(r) for r in node.inputs]
    return args
