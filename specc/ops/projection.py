"""The shortcut of a residual connection: identity when shapes match, else a projection."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from specc.ops.base import (
    InferContext,
    Inferred,
    MemoryContext,
    Op,
    OpMemory,
    ShapeMismatch,
    TensorType,
    expect_int,
)
from specc.ops.norm import NORM_WORDS, check_norm_word, make_norm, norm_memory, norm_param_shapes
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn


@register
class Projection(Op):
    """Map input 0 to the shape of input 1 (which it only reads for its shape).

    Identity when the shapes match; for ``(C, H, W)`` a bias-free 1×1 convolution with the stride
    that reaches the target size followed by the norm (torchvision's ResNet ``downsample``); for
    feature vectors a linear layer. ``residual`` inserts one automatically as its shortcut.

    Example::

        - projection: {from: [x, body]}
    """

    op_name = "projection"
    from_defaults = {"norm": "norm"}
    category = "merge"
    min_inputs = 2
    max_inputs = 2
    norm: str | None = Field(None, description=NORM_WORDS)
    bias: bool = False

    @field_validator("norm")
    @classmethod
    def _word(cls, v: str | None) -> str | None:
        return None if v is None else check_norm_word(v)

    def _stride(self, x: TensorType, target: TensorType) -> int:
        h, w = (expect_int(d, "spatial axis") for d in x.shape[1:])
        th, tw = (expect_int(d, "spatial axis") for d in target.shape[1:])
        stride = -(-h // th)
        if -(-w // tw) != stride or (h - 1) // stride + 1 != th or (w - 1) // stride + 1 != tw:
            raise ShapeMismatch(f"no 1x1 strided projection maps {x} to {target}")
        return stride

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        x, target = inputs
        if x.shape == target.shape:
            return Inferred([x])
        if x.rank == 3 and target.rank == 3:
            self._stride(x, target)
            cin, cout = expect_int(x.shape[0], "channels"), expect_int(target.shape[0], "channels")
            shapes: list[tuple[int, ...]] = [(cout, cin, 1, 1)] + ([(cout,)] if self.bias else [])
            shapes += norm_param_shapes(self.norm or "batch", target.shape)
            return Inferred([target], shapes, ctx.numel(target.shape) * cin)
        if x.shape[:-1] == target.shape[:-1]:
            fin, fout = expect_int(x.shape[-1], "features"), expect_int(target.shape[-1], "features")
            return Inferred([target], [(fout, fin), (fout,)], ctx.numel(target.shape) * fin)
        raise ShapeMismatch(f"cannot project {x} to {target}: give the residual an explicit shortcut")

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        x, target = inputs
        if x.shape == target.shape:
            return OpMemory(view=True)
        if x.rank == 3:  # conv keeps x, the norm keeps the conv's output (a new tensor) and its stats
            stats = norm_memory(self.norm or "batch", target, ctx).kept_bytes
            return OpMemory(keeps_inputs=(0,), kept=ctx.numel(target.shape), kept_bytes=stats, amp="low")
        return OpMemory(keeps_inputs=(0,), amp="low")

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        import torch.nn as nn

        from specc.nn.modules import Shortcut

        x, target = inputs
        if x.shape == target.shape:
            return Shortcut()
        if x.rank == 3:
            conv = nn.Conv2d(x.shape[0], target.shape[0], 1, stride=self._stride(x, target), bias=self.bias)  # type: ignore[arg-type]
            return Shortcut(conv, make_norm(self.norm or "batch", target.shape))
        return Shortcut(nn.Linear(x.shape[-1], target.shape[-1]))  # type: ignore[arg-type]
