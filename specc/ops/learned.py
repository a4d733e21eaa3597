"""Learned tensors as graph values: ``parameter`` (class/register tokens, position tables, layer
scale as a tensor) and ``scale`` (multiply by a learned per-channel vector).

Both take ``init`` for their tensor at any rank (``apply_init``'s ``init_any_rank``), e.g.
``init: {kind: normal, std: 0.02}`` for a position table or ``init: {kind: constant, value: 1.0e-6}``
for ConvNeXt's layer scale. Their start is part of what they mean (zeros for a ``parameter``, ones -
the identity gain - for ``scale``), so a spec's ``defaults.init`` does not reach them
(``init_from_defaults = False``): only their own ``init:`` changes it, whatever the document-wide
weight init is. Fan-based kinds (xavier, kaiming) are refused: a token or a gain vector has no
fan-in or fan-out. ``requires_grad: false`` keeps the tensor fixed (still in the state_dict).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, PositiveInt, field_validator

from specc.ops.base import (
    InferContext,
    Inferred,
    InitSpec,
    MemoryContext,
    Op,
    OpMemory,
    TensorType,
    expect_int,
)
from specc.ops.dims import axis_index
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn


class LearnedOp(Op):
    """Base of ``parameter`` and ``scale``: ``init`` at any rank, never from ``defaults.init``."""

    category = "learned"
    init_any_rank = True
    init_from_defaults = False

    @field_validator("init")
    @classmethod
    def _no_fan_based_init(cls, v: str | InitSpec | None) -> str | InitSpec | None:
        kind = v.kind if isinstance(v, InitSpec) else v
        if kind is not None and kind.startswith(("xavier", "kaiming")):
            raise ValueError(
                f"init {kind} needs a layer's fan-in/fan-out, which a {cls.op_name} tensor does not have; "
                "use zeros, ones, normal, trunc_normal or {kind: constant, value: V}"
            )
        return v


@register
class Parameter(LearnedOp):
    """A learned tensor of ``shape`` (one sample's shape) as a graph value, the same for every sample.

    Its input (the previous item, or ``from:``) only gives the batch size, so the output
    ``(shape)`` per sample combines with others through ``concat``, ``add`` and ``mul`` (broadcasting
    over the batch). ``batched: true`` stores the tensor as ``(1, *shape)``, the layout of
    torchvision's and timm's ``class_token``/``pos_embedding``, so their checkpoints load unchanged.
    Starts at zeros; its own ``init`` chooses otherwise (at any rank), a spec's ``defaults.init`` does not.

    Example::

        - parameter: {shape: [1, 768], batched: true, name: class_token}          # ViT [CLS]
        - concat: {from: [class_token, patches], dim: 0}                           # (1+N, 768)
        - parameter: {shape: [197, 768], batched: true, init: {kind: normal, std: 0.02}, name: pos}
        - parameter: {shape: [96, 1, 1], init: {kind: constant, value: 1.0e-6}, name: gamma}
    """

    op_name = "parameter"
    shorthand = "shape"
    input_dtypes = ("float32", "int64", "bool")
    shape: list[PositiveInt] = Field(min_length=1, description="one sample's shape (no batch axis)")
    batched: bool = Field(False, description="store as (1, *shape), torchvision/timm's token layout")
    requires_grad: bool = Field(True, description="false: a fixed tensor (still saved)")

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        stored = (1, *self.shape) if self.batched else tuple(self.shape)
        return Inferred([TensorType(tuple(self.shape))], [stored], 0)

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        return OpMemory(param_view=True)  # weight.expand(batch, ...): no memory of its own

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.vision_modules import LearnedTensor

        return LearnedTensor(tuple(self.shape), self.batched, self.requires_grad)


@register
class Scale(LearnedOp):
    """Multiply by a learned vector along axis ``dim`` (layer scale; a per-channel gain).

    ``dim: 0`` (default) scales the channels of a ``(C, ...)`` map with a ``(C, 1, 1)`` tensor
    (``(C, 1)`` for ``(C, L)``; torchvision's ConvNeXt ``layer_scale`` layout); ``dim: -1`` scales the
    last axis of a sequence ``(T, D)`` with a ``(D,)`` tensor (timm's ViT ``LayerScale``). Starts at
    ones (a spec's ``defaults.init`` does not change that); ``init: {kind: constant, value: 1.0e-6}``
    gives CaiT/ConvNeXt's small start.

    Example::

        - scale: {init: {kind: constant, value: 1.0e-6}}              # (C, H, W): gamma (C, 1, 1)
        - scale: {dim: -1, init: {kind: constant, value: 1.0e-5}}     # (T, D): gamma (D,)
    """

    op_name = "scale"
    shorthand = "dim"
    dim: int = Field(0, description="the scaled axis of one sample: 0 = channels of (C, ...), -1 = last")
    requires_grad: bool = Field(True, description="false: a fixed (constant) scale")

    def weight_shape(self, x: TensorType) -> tuple[int, ...]:
        axis = axis_index(self.dim, x.rank)
        size = expect_int(x.shape[axis], "the scaled axis")
        return (size, *([1] * (x.rank - axis - 1)))

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        shape = self.weight_shape(x)
        return Inferred([x], [shape], ctx.numel(x.shape))

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.vision_modules import Scale as ScaleModule

        return ScaleModule(self.weight_shape(inputs[0]), self.requires_grad)
