"""The graph's node index: O(1) lookups that stay right however the node list changes."""

from __future__ import annotations

import pytest

from specc.api import check_text
from specc.graph.ir import Graph, Node, Ref
from specc.ops import OPS
from specc.ops.base import TensorType

SPEC = """specc: 1
name: chain
inputs: {x: {shape: [4]}}
layers:
  - repeat: 5
    body: [linear: 3, relu]
"""


def _node(path: str) -> Node:
    return Node(path, OPS["relu"](), [Ref("x")])


def test_lookup_finds_every_node_and_types_follow_outputs() -> None:
    graph = check_text(SPEC)
    for node in graph.nodes:
        assert graph.node(node.path) is node
    assert graph.type_of(Ref("x")) == TensorType((4,))
    assert graph.type_of(Ref("0.4.1")) == TensorType((3,))
    with pytest.raises(KeyError):
        graph.node("nope")


def test_index_follows_appends_replacements_and_reorders() -> None:
    graph = Graph("g", {"x": TensorType((4,))}, [], {})
    a, b = _node("a"), _node("b")
    graph.add_node(a)
    assert graph.node("a") is a
    graph.nodes.append(b)  # a plain append (what lowering does) is picked up too
    assert graph.node("b") is b
    b2 = _node("b")
    graph.nodes[1] = b2  # same path, new object
    assert graph.node("b") is b2
    graph.nodes.reverse()
    assert graph.node("a") is a and graph.node("b") is b2
    c = _node("c")
    graph.nodes[0] = c  # path 'b' is gone
    assert graph.node("c") is c
    with pytest.raises(KeyError):
        graph.node("b")
    graph.nodes.pop()
    with pytest.raises(KeyError):
        graph.node("a")
    graph.nodes = [a]
    assert graph.node("a") is a
