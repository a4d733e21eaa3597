"""The flat graph that lowering produces and inference annotates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from specc.errors import Diagnostic, Location
from specc.ops.base import Inferred, Op, TensorType

if TYPE_CHECKING:
    from specc.lang.document import SpecDocument


@dataclass(frozen=True)
class Ref:
    """An edge source: a graph input or a node, and which of its outputs."""

    node: str
    index: int = 0

    def __str__(self) -> str:
        return self.node if self.index == 0 else f"{self.node}:{self.index}"


@dataclass
class Node:
    """One op instance. ``path`` is unique and becomes its torch module name (dots = nesting)."""

    path: str
    op: Op
    inputs: list[Ref]
    loc: Location | None = None
    src: str = ""
    via: tuple[Location, ...] = ()
    inferred: Inferred | None = None

    @property
    def outputs(self) -> list[TensorType]:
        return self.inferred.outputs if self.inferred else []


@dataclass(frozen=True)
class Tie:
    """Parameter ``param`` of node ``node`` is the same tensor as that of node ``owner``."""

    node: str
    param: str
    owner: str


@dataclass
class Graph:
    """Inputs, nodes in topological order, and named outputs; ``vars`` are the spec's variables with
    their values, ``ties`` the shared parameters, ``document`` the parsed spec it came from."""

    name: str
    inputs: dict[str, TensorType]
    nodes: list[Node]
    outputs: dict[str, Ref]
    labels: list[str] | None = None
    dims: dict[str, int] = field(default_factory=dict)
    spec_sha256: str = ""
    vars: dict[str, Any] = field(default_factory=dict)
    ties: list[Tie] = field(default_factory=list)
    document: SpecDocument | None = None
    _position: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def node(self, path: str) -> Node:
        """The node at ``path`` (``KeyError`` if none) in O(1), through a position index that
        follows ``nodes``: appended nodes are added to it; a node list changed any other way
        (shrunk, reordered, an entry replaced by one with another path) is re-indexed."""
        nodes = self.nodes
        if len(self._position) != len(nodes):
            self._extend()
        i = self._position.get(path)
        if i is None or i >= len(nodes) or nodes[i].path != path:
            self._position = {}
            self._extend()
            i = self._position[path]
        return nodes[i]

    def add_node(self, node: Node) -> None:
        """Append ``node``; the index follows without a rebuild."""
        self.nodes.append(node)
        self._extend()

    def _extend(self) -> None:
        if len(self._position) > len(self.nodes):
            self._position = {}
        for i in range(len(self._position), len(self.nodes)):
            self._position[self.nodes[i].path] = i

    def type_of(self, ref: Ref) -> TensorType:
        if ref.node in self.inputs:
            return self.inputs[ref.node]
        return self.node(ref.node).outputs[ref.index]

    @property
    def params(self) -> int:
        return sum(n.inferred.params for n in self.nodes if n.inferred)

    @property
    def macs(self) -> int:
        return sum(n.inferred.macs for n in self.nodes if n.inferred)

    def index_bound(self, input_name: str) -> int | None:
        """The tightest bound on the values of an int64 input over the ops reading it (None if none)."""
        bounds = [
            b
            for n in self.nodes
            if any(r.node == input_name for r in n.inputs)
            if (b := n.op.index_bound()) is not None
        ]
        return min(bounds) if bounds else None

    def output_types(self) -> dict[str, TensorType]:
        return {name: self.type_of(ref) for name, ref in self.outputs.items()}

    def notes(self) -> list[Diagnostic]:
        """The shape rules' notes (not errors), one per spec location; a location that many nodes share
        (a block used many times) says how many."""
        found: dict[tuple[str, str], list[tuple[Node, str]]] = {}
        for n in self.nodes:
            for text in n.inferred.notes if n.inferred else []:
                found.setdefault((str(n.loc), n.src), []).append((n, text))
        out = []
        for hits in found.values():
            node, text = hits[0]
            more = f" (and {len(hits) - 1} more node(s) from this line)" if len(hits) > 1 else ""
            out.append(Diagnostic(f"{node.path}: {text}{more}", node.loc, node.src))
        return out

    def param_shapes(self) -> list[tuple[int, ...]]:
        return [s for n in self.nodes if n.inferred for s in n.inferred.param_shapes]
