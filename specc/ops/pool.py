"""Pooling: windowed max/avg (1-d, 2-d), adaptive and global."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import NonNegativeInt, PositiveInt

from specc.ops.base import (
    InferContext,
    Inferred,
    MemoryContext,
    Op,
    OpMemory,
    ShapeMismatch,
    TensorType,
    expect_rank,
)
from specc.ops.registry import register
from specc.ops.shapes import tuple_n, window_dim

if TYPE_CHECKING:
    import torch.nn as nn

IntOrList = PositiveInt | list[PositiveInt]


def _pool_memory(kind: str, out: TensorType, ctx: MemoryContext) -> OpMemory:
    """Pooling keeps its input; max pooling also the int64 index of every maximum."""
    return OpMemory(keeps_inputs=(0,), kept_bytes=8 * ctx.numel(out.shape) if kind == "max" else 0)


class _Pool(Op):
    nd: ClassVar[int] = 2
    kind: ClassVar[str] = "max"
    shorthand = "kernel_size"
    kernel_size: IntOrList
    stride: IntOrList | None = None
    padding: NonNegativeInt | list[NonNegativeInt] = 0
    ceil_mode: bool = False

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        expect_rank(x, (self.nd + 1,), "(C, H, W)" if self.nd == 2 else "(C, L)")
        k = tuple_n(self.kernel_size, self.nd, "kernel_size")
        s = tuple_n(self.stride if self.stride is not None else self.kernel_size, self.nd, "stride")
        p = tuple_n(self.padding, self.nd, "padding")
        if any(pi > ki // 2 for pi, ki in zip(p, k, strict=True)):
            raise ShapeMismatch(
                f"padding {self.padding} must be at most half of kernel_size {self.kernel_size}"
            )
        spatial = tuple(
            window_dim(x.shape[1 + i], k[i], s[i], p[i], ceil=self.ceil_mode) for i in range(self.nd)
        )
        out = TensorType((x.shape[0], *spatial))
        return Inferred([out], [], 0)

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        return _pool_memory(self.kind, outputs[0], ctx)

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        import torch.nn as nn

        cls = {
            ("max", 1): nn.MaxPool1d,
            ("max", 2): nn.MaxPool2d,
            ("avg", 1): nn.AvgPool1d,
            ("avg", 2): nn.AvgPool2d,
        }
        stride = self.stride if self.stride is not None else self.kernel_size
        args = [tuple_n(v, self.nd, "") for v in (self.kernel_size, stride, self.padding)]
        module: nn.Module = cls[(self.kind, self.nd)](*args, ceil_mode=self.ceil_mode)
        return module


@register
class MaxPool2d(_Pool):
    """Max pooling over ``(C, H, W)``; ``stride`` defaults to ``kernel_size``.

    Example::

        - maxpool2d: {kernel_size: 3, stride: 2, padding: 1}
    """

    op_name = "maxpool2d"


@register
class AvgPool2d(_Pool):
    """Average pooling over ``(C, H, W)``; ``stride`` defaults to ``kernel_size``.

    Example::

        - avgpool2d: {kernel_size: 2, stride: 2}
    """

    op_name = "avgpool2d"
    kind = "avg"


@register
class MaxPool1d(_Pool):
    """Max pooling over ``(C, L)``.

    Example::

        - maxpool1d: 2
    """

    op_name = "maxpool1d"
    nd = 1


@register
class AvgPool1d(_Pool):
    """Average pooling over ``(C, L)``.

    Example::

        - avgpool1d: {kernel_size: 2}
    """

    op_name = "avgpool1d"
    kind = "avg"
    nd = 1


class _Adaptive(Op):
    nd: ClassVar[int] = 2
    kind: ClassVar[str] = "avg"
    shorthand = "output_size"
    output_size: IntOrList

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        expect_rank(x, (self.nd + 1,), "(C, H, W)" if self.nd == 2 else "(C, L)")
        size = tuple_n(self.output_size, self.nd, "output_size")
        out = TensorType((x.shape[0], *size))
        return Inferred([out], [], 0)

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        if self.kind == "avg" and all(d == 1 for d in tuple_n(self.output_size, self.nd, "")):
            return OpMemory()  # a mean: the backward needs sizes only
        return _pool_memory(self.kind, outputs[0], ctx)

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        import torch.nn as nn

        cls = {
            ("avg", 1): nn.AdaptiveAvgPool1d,
            ("avg", 2): nn.AdaptiveAvgPool2d,
            ("max", 1): nn.AdaptiveMaxPool1d,
            ("max", 2): nn.AdaptiveMaxPool2d,
        }
        module: nn.Module = cls[(self.kind, self.nd)](tuple_n(self.output_size, self.nd, ""))
        return module


@register
class AdaptiveAvgPool2d(_Adaptive):
    """Average pooling to a fixed ``output_size`` over ``(C, H, W)``.

    Example::

        - adaptive_avgpool2d: {output_size: [6, 6]}
    """

    op_name = "adaptive_avgpool2d"


@register
class AdaptiveMaxPool2d(_Adaptive):
    """Max pooling to a fixed ``output_size`` over ``(C, H, W)``.

    Example::

        - adaptive_maxpool2d: 1
    """

    op_name = "adaptive_maxpool2d"
    kind = "max"


@register
class AdaptiveAvgPool1d(_Adaptive):
    """Average pooling to a fixed ``output_size`` over ``(C, L)``.

    Example::

        - adaptive_avgpool1d: 1
    """

    op_name = "adaptive_avgpool1d"
    nd = 1


class _Global(Op):
    kind: ClassVar[str] = "avg"

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        if x.rank < 2:
            raise ShapeMismatch(f"expects a (C, ...) input with spatial axes, got {x}")
        return Inferred([TensorType((x.shape[0],))], [], 0)

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        if self.kind == "avg":
            return OpMemory()  # a mean: the backward needs sizes only
        return OpMemory(keeps_inputs=(0,), keeps_outputs=(0,))  # amax: where the maxima were

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.modules import GlobalPool

        return GlobalPool(self.kind, inputs[0].rank)


@register
class GlobalAvgPool(_Global):
    """Mean over every spatial axis: ``(C, H, W)`` or ``(C, L)`` → ``(C,)`` (pools and flattens).

    Example::

        - global_avgpool
    """

    op_name = "global_avgpool"


@register
class GlobalMaxPool(_Global):
    """Max over every spatial axis: ``(C, ...)`` → ``(C,)``.

    Example::

        - global_maxpool
    """

    op_name = "global_maxpool"
    kind = "max"
