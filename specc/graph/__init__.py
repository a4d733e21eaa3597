"""Stages 3 and 4 — lower (structure → flat graph) and infer (shapes, params, MACs); no torch."""

from specc.graph.infer import infer
from specc.graph.ir import Graph, Node, Ref
from specc.graph.lower import lower

__all__ = ["Graph", "Node", "Ref", "infer", "lower"]
