"""Stochastic depth: drop a residual branch for whole samples while training."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from specc.ops.base import InferContext, Inferred, MemoryContext, Op, OpMemory, TensorType
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn


@register
class DropPath(Op):
    """Stochastic depth (drop path): while training, zero each sample's input with probability ``p``
    and scale the kept ones by ``1 / (1 - p)``; identity in eval mode and in exports.

    Per-sample ("row") dropping as ``torchvision.ops.StochasticDepth(p, mode="row")``: meant for the
    body of a residual connection, so a dropped sample passes through the shortcut alone. The
    ``residual`` form applies it for you with ``drop_path: p``.

    Example::

        - drop_path: 0.1
    """

    op_name = "drop_path"
    shorthand = "p"
    category = "regularisation"
    p: float = Field(0.1, ge=0, lt=1, description="probability of dropping a sample's branch")

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        return Inferred([inputs[0]])

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        if self.p == 0:
            return OpMemory(view=True)  # the module returns its input
        return OpMemory(kept=1)  # x * mask: the scaled per-sample mask (one element per sample)

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.modules import DropPath as DropPathModule

        return DropPathModule(self.p)
