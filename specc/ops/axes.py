"""Axis ops on one sample (the batch axis stays first): permute, transpose, slice, split, chunk.

Axes count from 0 = the first axis of one sample (channels of ``(C, H, W)``, steps of ``(T, D)``);
negative axes count from the end. Symbolic axes (``seq``) move through permute/transpose unchanged
and can be sliced; ``split``/``chunk`` need a fixed-size axis to cut.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field, PositiveInt, model_validator

from specc.ops.base import (
    Dim,
    InferContext,
    Inferred,
    MemoryContext,
    Op,
    OpMemory,
    ShapeMismatch,
    TensorType,
    expect_int,
)
from specc.ops.dims import add_dim, axis_index, ceil_div_dim
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn

ANY_DTYPE = ("float32", "int64", "bool")
MAX_PIECES = 1024


class _AxisOp(Op):
    category = "shape"
    input_dtypes = ANY_DTYPE

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        # views of the input (strides changed); their backward needs the sizes only
        return OpMemory(view=True, view_all=len(outputs) > 1)


@register
class Permute(_AxisOp):
    """Reorder the axes of one sample: ``dims`` lists, for each output axis, the input axis it takes.

    ``(C, H, W)`` with ``dims: [1, 2, 0]`` → ``(H, W, C)`` (channels last, as before ConvNeXt's
    LayerNorm and Linear layers); ``[2, 0, 1]`` goes back. The batch axis is never named: it stays first.

    Example::

        - permute: [1, 2, 0]            # (C, H, W) -> (H, W, C)
        - permute: {dims: [1, 0]}       # (C, L) -> (L, C)
    """

    op_name = "permute"
    shorthand = "dims"
    dims: list[int] = Field(min_length=1, description="a permutation of the sample's axes (batch excluded)")

    def axes(self, rank: int) -> tuple[int, ...]:
        if len(self.dims) != rank:
            raise ShapeMismatch(f"dims {self.dims} name {len(self.dims)} axes, the input has {rank}")
        axes = tuple(axis_index(d, rank) for d in self.dims)
        if sorted(axes) != list(range(rank)):
            raise ShapeMismatch(f"dims {self.dims} is not a permutation of the axes 0..{rank - 1}")
        return axes

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        return Inferred([TensorType(tuple(x.shape[a] for a in self.axes(x.rank)), x.dtype)])

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.vision_modules import Permute as PermuteModule

        return PermuteModule(tuple(a + 1 for a in self.axes(inputs[0].rank)))


@register
class Transpose(_AxisOp):
    """Swap two axes of one sample: ``(D, T)`` → ``(T, D)`` (ViT's patch map to tokens).

    Example::

        - transpose: {dim0: 0, dim1: 1}     # (768, 196) -> (196, 768)
        - transpose: {dim0: -2, dim1: -1}
    """

    op_name = "transpose"
    dim0: int = 0
    dim1: int = 1

    def axes(self, rank: int) -> tuple[int, ...]:
        a, b = axis_index(self.dim0, rank), axis_index(self.dim1, rank)
        order = list(range(rank))
        order[a], order[b] = b, a
        return tuple(order)

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        return Inferred([TensorType(tuple(x.shape[a] for a in self.axes(x.rank)), x.dtype)])

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.vision_modules import Permute as PermuteModule

        return PermuteModule(tuple(a + 1 for a in self.axes(inputs[0].rank)))


def _slice_length(size: Dim, start: int | None, stop: int | None, step: int, ctx: InferContext) -> Dim:
    """Length of ``range(size)[start:stop:step]``; on a symbolic axis an expression or an int."""
    if isinstance(size, int):
        n = len(range(*slice(start, stop, step).indices(size)))
        if n == 0:
            raise ShapeMismatch(f"slice [{_show(start, stop, step)}] of an axis of {size} is empty")
        return n
    begin = 0 if start is None else start
    if begin >= 0 and (stop is None or stop < 0):
        # counts from both ends: the length follows the axis
        return ceil_div_dim(add_dim(size, -(begin - (stop or 0))), step)
    if begin < 0 and stop is not None and stop >= 0:
        raise ShapeMismatch(
            f"slice [{_show(start, stop, step)}] of the symbolic axis '{size}' has no fixed length "
            "(start counts from the end, stop from the start)"
        )
    end = 0 if stop is None else stop
    reach = end if begin >= 0 else -begin  # the axis must be at least this long
    nominal = ctx.dims.get(size)
    if nominal is not None and nominal < reach:
        raise ShapeMismatch(
            f"slice [{_show(start, stop, step)}] needs '{size}' >= {reach}, its size is {nominal}"
        )
    n = math.ceil((end - begin) / step)
    if n <= 0:
        raise ShapeMismatch(f"slice [{_show(start, stop, step)}] is empty")
    return n


def _show(start: int | None, stop: int | None, step: int) -> str:
    text = f"{'' if start is None else start}:{'' if stop is None else stop}"
    return text if step == 1 else f"{text}:{step}"


@register
class Slice(_AxisOp):
    """Take ``start:stop:step`` along axis ``dim`` of one sample (Python's slicing; negative = from
    the end; ``null`` = to the edge).

    On a symbolic axis the output length is an expression when the slice follows the axis
    (``seq`` with ``start: 1`` → ``seq-1``) and a fixed number when it counts from one end only
    (``start: -4`` → 4; ``stop: 3`` → 3; these need the axis to be at least that long at run time).

    Example::

        - slice: {dim: 0, start: 1}                # drop the class token: (197, D) -> (196, D)
        - slice: {dim: 0, start: 0, stop: 1}       # keep it: (1, D)
        - slice: {dim: -1, start: 0, stop: null, step: 2}
    """

    op_name = "slice"
    dim: int = Field(0, description="axis of one sample (negative counts from the end)")
    start: int | None = Field(None, description="first index (negative counts from the end); null = 0")
    stop: int | None = Field(
        None, description="end, exclusive (negative counts from the end); null = the end"
    )
    step: PositiveInt = 1

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        axis = axis_index(self.dim, x.rank)
        size = _slice_length(x.shape[axis], self.start, self.stop, self.step, ctx)
        return Inferred([TensorType((*x.shape[:axis], size, *x.shape[axis + 1 :]), x.dtype)])

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.vision_modules import Slice as SliceModule

        return SliceModule(axis_index(self.dim, inputs[0].rank) + 1, self.start, self.stop, self.step)


class _Pieces(_AxisOp):
    """Ops that cut one fixed-size axis into consecutive pieces: one output per piece."""

    dim: int = Field(0, description="axis of one sample to cut (negative counts from the end)")

    def sizes(self, n: int) -> list[int]:
        raise NotImplementedError

    def _cut(self, x: TensorType) -> tuple[int, list[int]]:
        axis = axis_index(self.dim, x.rank)
        n = expect_int(x.shape[axis], f"the {self.op_name} axis")
        sizes = self.sizes(n)
        if len(sizes) > MAX_PIECES:
            raise ShapeMismatch(f"{len(sizes)} pieces is more than {MAX_PIECES}")
        return axis, sizes

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        axis, sizes = self._cut(x)
        shapes = [(*x.shape[:axis], s, *x.shape[axis + 1 :]) for s in sizes]
        return Inferred([TensorType(s, x.dtype) for s in shapes])

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.vision_modules import Split as SplitModule

        axis, sizes = self._cut(inputs[0])
        return SplitModule(sizes, axis + 1)


@register
class Split(_Pieces):
    """Cut axis ``dim`` into pieces (``torch.split``): several outputs, read as ``NAME:0``, ``NAME:1``...

    ``split_size_or_sections`` is one size (every piece that long, the last one shorter if needed) or
    the list of sizes (which must add up to the axis). The next item in a list reads output 0.

    Example::

        - split: {split_size_or_sections: [32, 32], dim: 0, name: halves}
        - mul: {from: ["halves:0", "halves:1"]}          # a gated unit
        - split: {split_size_or_sections: 64, dim: -1, name: heads}
    """

    op_name = "split"
    shorthand = "split_size_or_sections"
    split_size_or_sections: PositiveInt | list[PositiveInt]

    @model_validator(mode="after")
    def _sections(self) -> Split:
        if isinstance(self.split_size_or_sections, list) and not self.split_size_or_sections:
            raise ValueError("split_size_or_sections needs at least one size")
        return self

    def sizes(self, n: int) -> list[int]:
        arg = self.split_size_or_sections
        if isinstance(arg, list):
            if sum(arg) != n:
                raise ShapeMismatch(f"sections {arg} add up to {sum(arg)}, the axis has {n}")
            return list(arg)
        return [arg] * (n // arg) + ([n % arg] if n % arg else [])


@register
class Chunk(_Pieces):
    """Cut axis ``dim`` into ``chunks`` near-equal pieces (``torch.chunk``): outputs ``NAME:0``...

    As in torch, every piece has ``ceil(n / chunks)`` elements except a shorter last one, so an axis
    that does not divide evenly may give fewer than ``chunks`` pieces (``specc check`` shows how many).

    Example::

        - chunk: {chunks: 3, dim: -1, name: qkv}        # (T, 3D) -> three (T, D)
        - chunk: {chunks: 2, name: ab}                   # GLU halves of the channels
    """

    op_name = "chunk"
    shorthand = "chunks"
    chunks: PositiveInt

    def sizes(self, n: int) -> list[int]:
        size = -(-n // self.chunks)
        return [size] * (n // size) + ([n % size] if n % size else [])
