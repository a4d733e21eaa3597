"""Sequence-axis ops: pick one step (``select``) and repeat a vector over steps (``broadcast``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from specc.ops.base import InferContext, Inferred, MemoryContext, Op, OpMemory, ShapeMismatch, TensorType
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn


def _axis(dim: int, rank: int) -> int:
    if not -rank <= dim < rank:
        raise ShapeMismatch(f"dim {dim} is out of range for a {rank}-d input")
    return dim % rank


@register
class Select(Op):
    """Take one index along an axis of one sample, dropping the axis: ``(T, D)`` → ``(D,)``.

    ``index: 0`` is BERT's [CLS] token, ``index: -1`` the last time step; on a recurrent state
    ``(layers, H)`` it picks a layer.

    Example::

        - select: 0                          # first step
        - select: {index: -1, from: enc:1}   # top layer of a recurrent state
    """

    op_name = "select"
    shorthand = "index"
    category = "shape"
    input_dtypes = ("float32", "int64", "bool")
    index: int
    dim: int = Field(0, description="axis of one sample (0 = the sequence axis)")

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        axis = _axis(self.dim, x.rank)
        size = x.shape[axis]
        if isinstance(size, int) and not -size <= self.index < size:
            raise ShapeMismatch(f"index {self.index} is out of range for axis {axis} of size {size}")
        return Inferred([TensorType(x.shape[:axis] + x.shape[axis + 1 :], x.dtype)])

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        return OpMemory(view=True)  # a view of its input; the backward needs sizes only

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.sequence_modules import Select as SelectModule

        return SelectModule(_axis(self.dim, inputs[0].rank) + 1, self.index)


@register
class Broadcast(Op):
    """Repeat input 0 along a new axis ``dim`` as long as that axis of input 1: ``(H,)`` and
    ``(T, E)`` → ``(T, H)`` (d2l's Seq2Seq decoder feeds the context to every step this way).

    Example::

        - broadcast: {from: [context, tgt_emb], dim: 0}
    """

    op_name = "broadcast"
    shorthand = "dim"
    category = "shape"
    min_inputs = 2
    max_inputs = 2
    input_dtypes = ("float32", "int64", "bool")
    dim: int = Field(0, description="where the new axis goes in the output (an axis of input 1)")

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        x, like = inputs
        axis = _axis(self.dim, x.rank + 1)
        if axis >= like.rank:
            raise ShapeMismatch(f"input 1 {like} has no axis {axis} to take the length from")
        return Inferred([TensorType((*x.shape[:axis], like.shape[axis], *x.shape[axis:]), x.dtype)])

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        return OpMemory(view=True)  # a view of its input; the backward needs sizes only

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.sequence_modules import Broadcast as BroadcastModule

        return BroadcastModule(_axis(self.dim, inputs[0].rank + 1) + 1)
