"""1-d and 2-d convolutions."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, PositiveInt, model_validator

from specc.ops.base import (
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
from specc.ops.registry import register
from specc.ops.shapes import tuple_n, window_dim

if TYPE_CHECKING:
    import torch.nn as nn

IntOrList = PositiveInt | list[PositiveInt]


class _ConvNd(Op):
    nd: ClassVar[int] = 2
    out_channels: PositiveInt
    kernel_size: IntOrList
    stride: IntOrList = 1
    padding: int | list[int] | Literal["same", "valid"] = Field(0, description='int, list, "same" or "valid"')
    dilation: IntOrList = 1
    groups: PositiveInt = 1
    bias: bool = True

    @model_validator(mode="after")
    def _check(self) -> _ConvNd:
        if self.padding == "same" and any(s != 1 for s in tuple_n(self.stride, self.nd, "stride")):
            raise ValueError('padding "same" needs stride 1 (as in torch)')
        if self.out_channels % self.groups:
            raise ValueError(f"out_channels {self.out_channels} is not divisible by groups {self.groups}")
        if isinstance(self.padding, int) and self.padding < 0:
            raise ValueError("padding must be >= 0")
        return self

    def _pads(self, k: tuple[int, ...], d: tuple[int, ...]) -> tuple[int, ...]:
        if self.padding == "valid":
            return (0,) * self.nd
        if self.padding == "same":
            spans = [di * (ki - 1) for ki, di in zip(k, d, strict=True)]
            if any(s % 2 for s in spans):
                raise ShapeMismatch(
                    'padding "same" with an even kernel span is asymmetric; give padding explicitly'
                )
            return tuple(s // 2 for s in spans)
        return tuple_n(self.padding, self.nd, "padding")

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        expect_rank(x, (self.nd + 1,), "(C, " + ", ".join("HW"[-self.nd :] if self.nd == 2 else "L") + ")")
        cin = expect_int(x.shape[0], "the channel axis")
        if cin % self.groups:
            raise ShapeMismatch(f"input channels {cin} are not divisible by groups {self.groups}")
        k = tuple_n(self.kernel_size, self.nd, "kernel_size")
        s = tuple_n(self.stride, self.nd, "stride")
        d = tuple_n(self.dilation, self.nd, "dilation")
        p = self._pads(k, d)
        spatial = tuple(window_dim(x.shape[1 + i], k[i], s[i], p[i], d[i]) for i in range(self.nd))
        out = TensorType((self.out_channels, *spatial))
        w = (self.out_channels, cin // self.groups, *k)
        shapes = [w] + ([(self.out_channels,)] if self.bias else [])
        macs = ctx.numel(out.shape) * (cin // self.groups) * math.prod(k)
        return Inferred([out], shapes, macs)

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        return OpMemory(keeps_inputs=(0,), amp="low")  # the input, for the weight gradient

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        import torch.nn as nn

        cls = nn.Conv1d if self.nd == 1 else nn.Conv2d
        _, cin_g, *k = inferred.param_shapes[0]
        pad = self.padding if isinstance(self.padding, str) else tuple_n(self.padding, self.nd, "padding")
        stride, dilation = (
            tuple_n(self.stride, self.nd, "stride"),
            tuple_n(self.dilation, self.nd, "dilation"),
        )
        module: nn.Module = cls(
            cin_g * self.groups,
            self.out_channels,
            tuple(k),  # type: ignore[arg-type]
            stride=stride,  # type: ignore[arg-type]
            padding=pad,  # type: ignore[arg-type]
            dilation=dilation,  # type: ignore[arg-type]
            groups=self.groups,
            bias=self.bias,
        )
        return module


@register
class Conv2d(_ConvNd):
    """2-d convolution over ``(C, H, W)`` → ``(out_channels, H', W')``.

    Example::

        - conv2d: {out_channels: 64, kernel_size: 3, stride: 1, padding: 1, bias: false}
        - conv2d: {out_channels: 32, kernel_size: 3, padding: same, groups: 32}
    """

    op_name = "conv2d"
    nd = 2


@register
class Conv1d(_ConvNd):
    """1-d convolution over ``(C, L)`` → ``(out_channels, L')``.

    Example::

        - conv1d: {out_channels: 128, kernel_size: 5, padding: same}
    """

    op_name = "conv1d"
    nd = 1
