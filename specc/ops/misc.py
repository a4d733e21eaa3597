"""Shape-only and regularisation ops: dropout, flatten, reshape."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field

from specc.ops.base import Dim, InferContext, Inferred, Op, ShapeMismatch, TensorType
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn


@register
class Dropout(Op):
    """Zero elements with probability ``p`` while training (identity in eval mode and in exports).

    Example::

        - dropout: 0.5
    """

    op_name = "dropout"
    shorthand = "p"
    category = "regularisation"
    p: float = Field(0.5, ge=0, lt=1)

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        return Inferred([inputs[0]])

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        import torch.nn as nn

        return nn.Dropout(self.p)


@register
class Flatten(Op):
    """Flatten the axes of one sample from ``start_dim`` on: ``(C, H, W)`` → ``(C·H·W,)``.

    Example::

        - flatten
        - flatten: {start_dim: 1}     # (C, H, W) -> (C, H·W)
    """

    op_name = "flatten"
    shorthand = "start_dim"
    category = "shape"
    start_dim: int = Field(0, ge=0, description="first axis of one sample to flatten (batch excluded)")

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        if self.start_dim >= max(x.rank, 1):
            raise ShapeMismatch(f"start_dim {self.start_dim} is out of range for {x.rank}-d input {x}")
        tail = x.shape[self.start_dim :]
        size: Dim = math.prod(tail) if all(isinstance(d, int) for d in tail) else "*".join(map(str, tail))  # type: ignore[arg-type,unused-ignore]
        return Inferred([TensorType((*x.shape[: self.start_dim], size), x.dtype)])

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        import torch.nn as nn

        return nn.Flatten(self.start_dim + 1)


@register
class Reshape(Op):
    """Reshape one sample (the batch axis is kept); one entry may be -1.

    Example::

        - reshape: [16, 5, 5]
    """

    op_name = "reshape"
    shorthand = "shape"
    category = "shape"
    shape: list[int] = Field(min_length=1)

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        sizes = [d for d in x.shape if isinstance(d, int)]
        if len(sizes) != x.rank:
            raise ShapeMismatch(f"reshape needs a fixed-size input, got {x}")
        total = math.prod(sizes)
        target = list(self.shape)
        if target.count(-1) > 1 or any(d == 0 or d < -1 for d in target):
            raise ShapeMismatch(f"shape {target} may hold positive sizes and at most one -1")
        known = math.prod(d for d in target if d != -1)
        if -1 in target:
            if total % known:
                raise ShapeMismatch(f"cannot reshape {x} ({total} values) to {self.shape}")
            target[target.index(-1)] = total // known
        elif known != total:
            raise ShapeMismatch(f"cannot reshape {x} ({total} values) to {self.shape} ({known} values)")
        return Inferred([TensorType(tuple(target), x.dtype)])

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.modules import Reshape as ReshapeModule

        return ReshapeModule(tuple(inferred.outputs[0].shape))  # type: ignore[arg-type]
