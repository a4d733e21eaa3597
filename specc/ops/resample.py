"""Spatial resampling without parameters: upsample (nearest, linear, bilinear) and pixel (un)shuffle."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

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
    expect_rank,
)
from specc.ops.dims import div_dim, mul_dim
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn

_MODES_BY_RANK = {"linear": 2, "bilinear": 3}
_MACS_PER_OUTPUT = {"nearest": 0, "linear": 2, "bilinear": 4}


@register
class Upsample(Op):
    """Resize the spatial axes of ``(C, L)`` or ``(C, H, W)`` (``torch.nn.Upsample``): to a fixed
    ``size``, or by ``scale_factor`` (output = floor(input · scale_factor), as in torch).

    ``mode``: ``nearest`` (1-d or 2-d), ``linear`` (1-d), ``bilinear`` (2-d); ``align_corners`` applies
    to linear/bilinear only (torch's default ``false``: half-pixel centres). On a symbolic axis
    ``scale_factor`` must be a whole number (``seq`` → ``seq*2``).

    Example::

        - upsample: 2                                         # nearest, x2 on every spatial axis
        - upsample: {scale_factor: 2, mode: bilinear, align_corners: true}
        - upsample: {size: [56, 56], mode: bilinear}
        - upsample: {scale_factor: [1, 2]}                    # only the width
    """

    op_name = "upsample"
    shorthand = "scale_factor"
    category = "resample"
    size: PositiveInt | list[PositiveInt] | None = Field(None, description="output size of the spatial axes")
    scale_factor: PositiveFloat | list[PositiveFloat] | None = Field(
        None, description="multiplier of the spatial axes"
    )
    mode: Literal["nearest", "linear", "bilinear"] = "nearest"
    align_corners: bool | None = Field(None, description="linear/bilinear: align the corner pixels (false)")

    @model_validator(mode="after")
    def _one_way(self) -> Upsample:
        if (self.size is None) == (self.scale_factor is None):
            raise ValueError("give exactly one of size and scale_factor")
        if self.align_corners is not None and self.mode == "nearest":
            raise ValueError("align_corners applies to mode linear or bilinear, not nearest")
        return self

    def _n(self, x: TensorType) -> int:
        expect_rank(x, (2, 3), "(C, L) or (C, H, W)")
        want = _MODES_BY_RANK.get(self.mode)
        if want is not None and x.rank != want:
            other = "bilinear" if self.mode == "linear" else "linear"
            raise ShapeMismatch(f"mode {self.mode} needs a {want - 1}-d map, got {x} (use {other})")
        return x.rank - 1

    def _per_axis(self, value: float | int | list[float] | list[int], n: int, what: str) -> list[float]:
        values = value if isinstance(value, list) else [value] * n
        if len(values) != n:
            raise ShapeMismatch(f"{what} needs {n} values for a {n}-d map, got {value}")
        return [float(v) for v in values]

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        n = self._n(x)
        if self.size is not None:
            spatial: list[Dim] = [int(s) for s in self._per_axis(self.size, n, "size")]
        else:
            assert self.scale_factor is not None
            spatial = []
            for d, s in zip(x.shape[1:], self._per_axis(self.scale_factor, n, "scale_factor"), strict=True):
                if isinstance(d, str):
                    if not s.is_integer():
                        raise ShapeMismatch(
                            f"scale_factor {s:g} on the symbolic axis '{d}' must be a whole number"
                        )
                    spatial.append(mul_dim(d, int(s)))
                elif math.floor(d * s) < 1:
                    raise ShapeMismatch(f"scale_factor {s:g} shrinks an axis of {d} to nothing")
                else:
                    spatial.append(math.floor(d * s))
        out = TensorType((x.shape[0], *spatial))
        return Inferred([out], [], ctx.numel(out.shape) * _MACS_PER_OUTPUT[self.mode])

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        return OpMemory()  # a new output; the backward needs the sizes only

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.vision_modules import Upsample as UpsampleModule

        n = self._n(inputs[0])
        size = tuple(int(s) for s in self._per_axis(self.size, n, "size")) if self.size is not None else None
        scale = tuple(self._per_axis(self.scale_factor, n, "")) if self.scale_factor is not None else None
        align = None if self.mode == "nearest" else bool(self.align_corners)
        return UpsampleModule(size, scale, self.mode, align)


@register
class PixelShuffle(Op):
    """Move channels into space (``torch.nn.PixelShuffle``): ``(C·r², H, W)`` → ``(C, H·r, W·r)``
    with ``r = upscale_factor`` (sub-pixel convolution upsampling, ESPCN).

    Example::

        - pixel_shuffle: 2             # (64, 16, 16) -> (16, 32, 32)
    """

    op_name = "pixel_shuffle"
    shorthand = "upscale_factor"
    category = "resample"
    upscale_factor: PositiveInt

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        expect_rank(x, (3,), "(C, H, W)")
        r = self.upscale_factor
        c = div_dim(expect_int(x.shape[0], "the channel axis"), r * r, "channels")
        return Inferred([TensorType((c, mul_dim(x.shape[1], r), mul_dim(x.shape[2], r)), x.dtype)])

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        return OpMemory()  # a new output; the backward needs the sizes only

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        import torch.nn as nn

        return nn.PixelShuffle(self.upscale_factor)


@register
class PixelUnshuffle(Op):
    """Move space into channels (``torch.nn.PixelUnshuffle``): ``(C, H·r, W·r)`` → ``(C·r², H, W)``
    with ``r = downscale_factor``; H and W must be divisible by r.

    Example::

        - pixel_unshuffle: 4           # (3, 224, 224) -> (48, 56, 56), a patchify stem
    """

    op_name = "pixel_unshuffle"
    shorthand = "downscale_factor"
    category = "resample"
    downscale_factor: PositiveInt

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        expect_rank(x, (3,), "(C, H, W)")
        r = self.downscale_factor
        c = expect_int(x.shape[0], "the channel axis") * r * r
        h, w = (div_dim(d, r, "spatial size") for d in x.shape[1:])
        return Inferred([TensorType((c, h, w), x.dtype)])

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        return OpMemory()  # a new output; the backward needs the sizes only

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        import torch.nn as nn

        return nn.PixelUnshuffle(self.downscale_factor)
