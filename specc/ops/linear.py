"""Fully connected layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import PositiveInt

from specc.ops.base import InferContext, Inferred, Op, ShapeMismatch, TensorType, expect_int
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn


@register
class Linear(Op):
    """Affine map over the last axis: ``y = x Wᵀ + b``. Input ``(..., in)`` → ``(..., out_features)``.

    Example::

        - linear: {out_features: 10, name: logits}
        - linear: 256          # shorthand for out_features
    """

    op_name = "linear"
    shorthand = "out_features"
    out_features: PositiveInt
    bias: bool = True

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        if x.rank == 0:
            raise ShapeMismatch("expects at least a 1-d input (features), got a scalar per sample")
        fin = expect_int(x.shape[-1], "the feature axis")
        shapes: list[tuple[int, ...]] = [(self.out_features, fin)] + ([(self.out_features,)] if self.bias else [])
        out = TensorType((*x.shape[:-1], self.out_features))
        macs = ctx.numel(x.shape[:-1]) * fin * self.out_features
        return Inferred([out], shapes, macs)

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        import torch.nn as nn

        return nn.Linear(inferred.param_shapes[0][1], self.out_features, bias=self.bias)

