"""Fully connected layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, PositiveInt

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
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn


@register
class Linear(Op):
    """Affine map over the last axis: ``y = x Wᵀ + b``. Input ``(..., in)`` → ``(..., out_features)``.

    Example::

        - linear: {out_features: 10, name: logits}
        - linear: 256          # shorthand for out_features
        - linear: {out_features: $vocab, bias: false, tie: tok_emb}   # weight shared with node tok_emb

    ``tie`` names a node whose ``weight`` (shape ``(out_features, in)``, e.g. an embedding's
    ``(vocab, dim)``) this layer uses instead of its own; the shared tensor is counted once.
    """

    op_name = "linear"
    shorthand = "out_features"
    out_features: PositiveInt
    bias: bool = True
    tie: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$", description="node whose weight to share"
    )

    def tied(self) -> dict[str, str]:
        return {"weight": self.tie} if self.tie else {}

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        if x.rank == 0:
            raise ShapeMismatch("expects at least a 1-d input (features), got a scalar per sample")
        fin = expect_int(x.shape[-1], "the feature axis")
        weight = [] if self.tie else [(self.out_features, fin)]  # a tied weight is counted by its owner
        shapes: list[tuple[int, ...]] = weight + ([(self.out_features,)] if self.bias else [])
        out = TensorType((*x.shape[:-1], self.out_features))
        macs = ctx.numel(x.shape[:-1]) * fin * self.out_features
        return Inferred([out], shapes, macs)

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        return OpMemory(keeps_inputs=(0,), amp="low")  # the input, for the weight gradient

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        import torch.nn as nn

        return nn.Linear(
            expect_int(inputs[0].shape[-1], "the feature axis"), self.out_features, bias=self.bias
        )
