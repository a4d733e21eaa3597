"""Architecture diagrams of an inferred graph: Mermaid and Graphviz DOT text, SVG through ``dot``.

Nodes are grouped by the first ``depth`` parts of their path, so a block instance, a repeat or a
residual/dense/parallel form becomes one box (``layer1 ×2 (basic)`` with its input and output
shapes and parameter count) and people can look rather than read. Edges carry the shape of the
tensor that flows along them. Pure Python: no torch import.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from specc.errors import UsageError
from specc.graph import Graph
from specc.graph.ir import Node
from specc.ops.base import TensorType
from specc.summary import human

Format = Literal["mermaid", "dot", "svg"]
FORMATS: tuple[str, ...] = ("mermaid", "dot", "svg")
_BLOCK = re.compile(r"blocks\.([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class Unit:
    """One box of the diagram: a single node, or every node under one path prefix."""

    key: str
    nodes: list[Node] = field(default_factory=list)
    kind: Literal["input", "node", "group", "output"] = "node"
    label: str = ""
    shape: TensorType | None = None  # inputs and outputs only


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    label: str


@dataclass
class Diagram:
    """Boxes in first-use order and the shape-labelled edges between them."""

    name: str
    units: list[Unit]
    edges: list[Edge]


def collapse(graph: Graph, depth: int = 1) -> Diagram:
    """Group the graph's nodes by the first ``depth`` parts of their paths (``depth >= 1``)."""
    if depth < 1:
        raise UsageError(f"--depth must be 1 or more, got {depth}")
    units: dict[str, Unit] = {}
    for name, t in graph.inputs.items():
        units[f"input:{name}"] = Unit(name, kind="input", label=f"{name}\n{t}", shape=t)
    owner: dict[str, str] = {name: f"input:{name}" for name in graph.inputs}
    for node in graph.nodes:
        key = ".".join(node.path.split(".")[:depth])
        unit = units.setdefault(key, Unit(key))
        unit.nodes.append(node)
        owner[node.path] = key
    for unit in units.values():
        if unit.kind != "input":
            unit.kind = "group" if len(unit.nodes) > 1 or unit.nodes[0].path != unit.key else "node"
            unit.label = _group_label(graph, unit) if unit.kind == "group" else _node_label(unit.nodes[0])
    edges: dict[tuple[str, str], Edge] = {}
    for node in graph.nodes:
        for ref in node.inputs:
            src, dst = owner[ref.node], owner[node.path]
            if src != dst:
                edges.setdefault((src, dst), Edge(src, dst, str(graph.type_of(ref))))
    for name, ref in graph.outputs.items():
        t = graph.type_of(ref)
        key = f"output:{name}"
        units[key] = Unit(name, kind="output", label=f"{name}\n{t}", shape=t)
        edges[(owner[ref.node], key)] = Edge(owner[ref.node], key, str(t))
    return Diagram(graph.name, list(units.values()), list(edges.values()))


def _node_label(node: Node) -> str:
    assert node.inferred is not None
    outs = ", ".join(str(t) for t in node.outputs)
    params = f"\n{human(node.inferred.params)} params" if node.inferred.params else ""
    return f"{node.path}: {node.op.op_name}\n{outs}{params}"


def _group_label(graph: Graph, unit: Unit) -> str:
    inside = {n.path for n in unit.nodes}
    entering = [r for n in unit.nodes for r in n.inputs if r.node not in inside]
    ins = list(dict.fromkeys(str(graph.type_of(r)) for r in entering))
    last = unit.nodes[-1]
    outs = ", ".join(str(t) for t in last.outputs)
    block = _block_name(last)
    repeats = _repeat_count(unit)
    title = unit.key + (f" ×{repeats}" if repeats > 1 else "") + (f" ({block})" if block else "")
    params = sum(n.inferred.params for n in unit.nodes if n.inferred)
    detail = f"{len(unit.nodes)} nodes" + (f", {human(params)} params" if params else "")
    return f"{title}\n{', '.join(ins) or '?'} → {outs}\n{detail}"


def _block_name(node: Node) -> str | None:
    """The innermost library/spec block the node was written in (its ``src`` names it)."""
    found = _BLOCK.findall(node.src)
    return found[-1] if found else None


def _repeat_count(unit: Unit) -> int:
    """How many identical numbered children the group has (a repeat or a dense block), else 1."""
    depth = unit.key.count(".") + 1
    children: dict[str, list[tuple[str, str]]] = {}
    for node in unit.nodes:
        parts = node.path.split(".")
        if len(parts) > depth and parts[depth].isdigit():
            children.setdefault(parts[depth], []).append((".".join(parts[depth + 1 :]), node.op.op_name))
    if len(children) < 2:
        return 1
    shapes = Counter(tuple(c) for c in children.values())
    return len(children) if len(shapes) == 1 else 1


# ---- text formats ----------------------------------------------------------------------------


def _key_to_id(diagram: Diagram) -> dict[str, str]:
    out = {}
    for i, u in enumerate(diagram.units):
        key = f"{u.kind}:{u.key}" if u.kind in ("input", "output") else u.key
        out[key] = f"n{i}"
    return out


def to_mermaid(diagram: Diagram) -> str:
    """A Mermaid ``flowchart`` (renders in GitHub/GitLab Markdown inside a ```mermaid fence)."""

    def text(s: str) -> str:
        return s.replace('"', "#quot;").replace("\n", "<br/>")

    ids = _key_to_id(diagram)
    lines = ["flowchart TD", f"  %% {diagram.name}"]
    for i, u in enumerate(diagram.units):
        label = text(u.label)
        shapes = {"input": f'(["{label}"])', "output": f'(["{label}"])', "group": f'[["{label}"]]'}
        lines.append(f"  n{i}" + shapes.get(u.kind, f'["{label}"]'))
    for e in diagram.edges:
        lines.append(f'  {ids[e.src]} -->|"{text(e.label)}"| {ids[e.dst]}')
    return "\n".join(lines) + "\n"


def to_dot(diagram: Diagram) -> str:
    """Graphviz DOT text (``dot -Tsvg`` renders it)."""

    def text(s: str) -> str:
        return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    ids = _key_to_id(diagram)
    style = {
        "input": 'shape=parallelogram, style=filled, fillcolor="#e8f0fe"',
        "output": 'shape=parallelogram, style=filled, fillcolor="#e6f4ea"',
        "group": 'shape=box3d, style=filled, fillcolor="#fef7e0"',
        "node": "shape=box, style=rounded",
    }
    lines = [
        f'digraph "{text(diagram.name)}" {{',
        "  rankdir=TB;",
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for i, u in enumerate(diagram.units):
        lines.append(f'  n{i} [label="{text(u.label)}", {style[u.kind]}];')
    for e in diagram.edges:
        lines.append(f'  {ids[e.src]} -> {ids[e.dst]} [label="{text(e.label)}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_svg(dot_text: str) -> str:
    """Render DOT with the Graphviz ``dot`` binary; a clear error when it is not installed."""
    exe = shutil.which("dot")
    if exe is None:
        raise UsageError(
            "SVG output needs Graphviz's `dot` program, which is not installed "
            "(apt install graphviz / brew install graphviz); use --format dot or mermaid instead"
        )
    done = subprocess.run(
        [exe, "-Tsvg"], input=dot_text, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise UsageError(f"dot failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def render_graph(graph: Graph, fmt: str = "mermaid", depth: int = 1) -> str:
    """The diagram of ``graph`` as text in ``fmt`` (mermaid, dot or svg)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format '{fmt}' (choose {', '.join(FORMATS)})")
    diagram = collapse(graph, depth)
    if fmt == "mermaid":
        return to_mermaid(diagram)
    dot = to_dot(diagram)
    return to_svg(dot) if fmt == "svg" else dot


__all__ = ["FORMATS", "Diagram", "Edge", "Unit", "collapse", "render_graph", "to_dot", "to_mermaid", "to_svg"]
