"""Transposed (fractionally strided) 1-d and 2-d convolutions: the learned upsampling of U-Nets,
decoders and GAN generators."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from specc.ops.base import Dim, InferContext, Inferred, Op, ShapeMismatch, TensorType, expect_int, expect_rank
from specc.ops.dims import add_dim, mul_dim
from specc.ops.registry import register
from specc.ops.shapes import tuple_n

if TYPE_CHECKING:
    import torch.nn as nn

IntOrList = PositiveInt | list[PositiveInt]
NonNegOrList = NonNegativeInt | list[NonNegativeInt]


def transposed_dim(size: Dim, k: int, s: int, p: int, d: int, op: int) -> Dim:
    """torch's output length: ``(size - 1)·stride - 2·padding + dilation·(k - 1) + output_padding + 1``."""
    out = add_dim(mul_dim(size, s), -s - 2 * p + d * (k - 1) + op + 1)
    if isinstance(out, int) and out < 1:
        raise ShapeMismatch(f"an axis of {size} gives an output of {out} (padding {p} is too large)")
    return out


class _ConvTransposeNd(Op):
    nd: ClassVar[int] = 2
    out_channels: PositiveInt
    kernel_size: IntOrList
    stride: IntOrList = 1
    padding: NonNegOrList = Field(0, description="removed from both ends of the output (torch's meaning)")
    output_padding: NonNegOrList = Field(
        0, description="added to one end of the output; < stride or dilation"
    )
    groups: PositiveInt = 1
    bias: bool = True
    dilation: IntOrList = 1

    @model_validator(mode="after")
    def _check(self) -> _ConvTransposeNd:
        if self.out_channels % self.groups:
            raise ValueError(f"out_channels {self.out_channels} is not divisible by groups {self.groups}")
        s = tuple_n(self.stride, self.nd, "stride")
        d = tuple_n(self.dilation, self.nd, "dilation")
        op = tuple_n(self.output_padding, self.nd, "output_padding")
        for si, di, oi in zip(s, d, op, strict=True):
            if oi >= si and oi >= di:
                raise ValueError(f"output_padding {oi} must be smaller than stride {si} or dilation {di}")
        return self

    def _args(self) -> tuple[tuple[int, ...], ...]:
        names = ("kernel_size", "stride", "padding", "output_padding", "dilation")
        return tuple(tuple_n(getattr(self, n), self.nd, n) for n in names)

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        expect_rank(x, (self.nd + 1,), "(C, H, W)" if self.nd == 2 else "(C, L)")
        cin = expect_int(x.shape[0], "the channel axis")
        if cin % self.groups:
            raise ShapeMismatch(f"input channels {cin} are not divisible by groups {self.groups}")
        k, s, p, op, d = self._args()
        spatial = tuple(transposed_dim(x.shape[1 + i], k[i], s[i], p[i], d[i], op[i]) for i in range(self.nd))
        w = (cin, self.out_channels // self.groups, *k)
        shapes = [w] + ([(self.out_channels,)] if self.bias else [])
        macs = ctx.numel(x.shape) * (self.out_channels // self.groups) * math.prod(k)
        return Inferred([TensorType((self.out_channels, *spatial))], shapes, macs)

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        import torch.nn as nn

        cls = nn.ConvTranspose1d if self.nd == 1 else nn.ConvTranspose2d
        k, s, p, op, d = self._args()
        module: nn.Module = cls(
            expect_int(inputs[0].shape[0], "the channel axis"),
            self.out_channels,
            k,  # type: ignore[arg-type]
            stride=s,  # type: ignore[arg-type]
            padding=p,  # type: ignore[arg-type]
            output_padding=op,  # type: ignore[arg-type]
            groups=self.groups,
            bias=self.bias,
            dilation=d,  # type: ignore[arg-type]
        )
        return module


@register
class ConvTranspose2d(_ConvTransposeNd):
    """Transposed 2-d convolution (``torch.nn.ConvTranspose2d``): ``(C, H, W)`` → ``(out_channels, H', W')``
    with ``H' = (H - 1)·stride - 2·padding + dilation·(kernel_size - 1) + output_padding + 1``.
    Weight ``(C, out_channels / groups, kH, kW)`` (torch's layout: input channels first).

    Example::

        - conv_transpose2d: {out_channels: 512, kernel_size: 2, stride: 2}     # U-Net up: 2x
        - conv_transpose2d: {out_channels: 64, kernel_size: 3, stride: 2, padding: 1, output_padding: 1}
    """

    op_name = "conv_transpose2d"
    nd = 2


@register
class ConvTranspose1d(_ConvTransposeNd):
    """Transposed 1-d convolution (``torch.nn.ConvTranspose1d``): ``(C, L)`` → ``(out_channels, L')``,
    ``L' = (L - 1)·stride - 2·padding + dilation·(kernel_size - 1) + output_padding + 1``.

    Example::

        - conv_transpose1d: {out_channels: 32, kernel_size: 4, stride: 2, padding: 1}   # L -> 2L
    """

    op_name = "conv_transpose1d"
    nd = 1
