"""Ops joining several inputs: add, mul (broadcasting) and concat."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from specc.ops.base import Dim, InferContext, Inferred, MemoryContext, Op, OpMemory, ShapeMismatch, TensorType
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn


def broadcast(shapes: list[tuple[Dim, ...]]) -> tuple[Dim, ...]:
    """Numpy broadcasting of per-sample shapes (the batch axis lines up on the left)."""
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    out: list[Dim] = []
    for axis in range(rank):
        sizes = {s[axis] for s in padded} - {1}
        if len(sizes) > 1:
            shown = " and ".join(str(TensorType(s)) for s in shapes)
            raise ShapeMismatch(f"inputs {shown} do not match (axis {axis}: sizes {sorted(map(str, sizes))})")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


class _Elementwise(Op):
    fn: ClassVar[str] = "add"
    category = "merge"
    min_inputs = 2
    max_inputs = None

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        shape = broadcast([t.shape for t in inputs])
        return Inferred([TensorType(shape, inputs[0].dtype)], [], ctx.numel(shape) * (len(inputs) - 1))

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        if self.fn == "add":
            return OpMemory()  # a sum's gradient needs no operand
        return super().memory(inputs, outputs, ctx)  # a product keeps every factor

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.modules import Elementwise

        return Elementwise(self.fn)


@register
class Add(_Elementwise):
    """Sum of two or more inputs (numpy broadcasting of one sample's shape).

    Example::

        - add: {from: [body, shortcut]}
    """

    op_name = "add"


@register
class Mul(_Elementwise):
    """Elementwise product of two or more inputs (broadcasting, e.g. ``(C,H,W) * (C,1,1)``).

    Example::

        - mul: {from: [features, gate]}
    """

    op_name = "mul"
    fn = "mul"


@register
class Concat(Op):
    """Concatenate inputs along an axis of one sample (``dim: 0`` = channels for images).

    Example::

        - concat: {from: [b1, b2, b3], dim: 0}
    """

    op_name = "concat"
    shorthand = "dim"
    category = "merge"
    min_inputs = 2
    max_inputs = None
    input_dtypes = ("float32", "int64", "bool")
    dim: int = Field(0, description="axis of one sample (negative counts from the end)")

    def axis(self, rank: int) -> int:
        if not -rank <= self.dim < rank:
            raise ShapeMismatch(f"dim {self.dim} is out of range for {rank}-d inputs")
        return self.dim % rank

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        ranks = {t.rank for t in inputs}
        if len(ranks) > 1:
            raise ShapeMismatch("inputs have different ranks: " + ", ".join(map(str, inputs)))
        axis = self.axis(inputs[0].rank)
        for t in inputs[1:]:
            for i, (a, b) in enumerate(zip(inputs[0].shape, t.shape, strict=True)):
                if i != axis and a != b:
                    raise ShapeMismatch(
                        f"inputs {inputs[0]} and {t} differ on axis {i}, not only on dim {axis}"
                    )
        sizes = [t.shape[axis] for t in inputs]
        total: Dim = sum(sizes) if all(isinstance(s, int) for s in sizes) else "+".join(map(str, sizes))  # type: ignore[arg-type]
        shape = (*inputs[0].shape[:axis], total, *inputs[0].shape[axis + 1 :])
        return Inferred([TensorType(shape, inputs[0].dtype)])

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        return OpMemory()  # the gradient is split by sizes only

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.modules import Concat as ConcatModule

        return ConcatModule(self.axis(inputs[0].rank) + 1)
