"""Human and JSON summaries of an inferred graph (used by check, build and render)."""

from __future__ import annotations

from typing import Any

from specc.graph import Graph


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
    """The fully expanded spec: every node with all arguments (defaults resolved) and its shape."""
    import yaml

    doc = graph.meta.get("document")
    layers = []
    for n in graph.nodes:
        args = {k: v for k, v in n.op.args().items()}
        if n.inferred and n.inferred.params:
            args["init"] = n.op.init if isinstance(n.op.init, str) else n.op.model_dump(mode="json")["init"]
            args["bias_init"] = (
                n.op.bias_init
                if isinstance(n.op.bias_init, str)
                else n.op.model_dump(mode="json")["bias_init"]
            )
        entry: dict[str, Any] = {"path": n.path, n.op.op_name: args, "from": [str(r) for r in n.inputs]}
        entry["shape"] = (
            [t.with_batch() for t in n.outputs] if len(n.outputs) > 1 else n.outputs[0].with_batch()
        )
        layers.append(entry)
    out: dict[str, Any] = {"specc": 1, "name": graph.name}
    if doc is not None:
        out["defaults"] = doc.spec.defaults.model_dump(mode="json")
        if graph.meta.get("vars"):
            out["vars"] = graph.meta["vars"]
        if doc.scale:
            out["scale"] = doc.scale
    out["inputs"] = {k: {"shape": list(t.shape), "dtype": t.dtype} for k, t in graph.inputs.items()}
    out["layers"] = layers
    out["outputs"] = {k: str(r) for k, r in graph.outputs.items()}
    if graph.labels:
        out["labels"] = graph.labels
    out["totals"] = {"params": graph.params, "macs": graph.macs}
    return yaml.safe_dump(out, sort_keys=False, default_flow_style=None, width=110)
