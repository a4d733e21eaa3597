"""Attention: scaled dot-product, additive (Bahdanau) and multi-head.

Inputs are one to three float sequences and an optional bool key mask, in this order:

* ``[x]`` — self-attention (query = key = value = x);
* ``[query, key_value]`` — cross-attention (key = value, e.g. a decoder attending to ``memory``);
* ``[query, key, value]``;
* a final bool input ``(Tk,)`` is a key-padding mask: ``True`` = a real token to attend to,
  ``False`` = padding to ignore (Hugging Face's ``attention_mask`` convention; the opposite of
  ``nn.MultiheadAttention``'s ``key_padding_mask``).

``causal: true`` lets query position ``t`` see key positions ``<= t`` only. Masked scores are pushed
to a huge finite negative value (dot-product attention: half the most negative float added, an
additive mask as in Hugging Face's BERT), so their weight is exactly 0. A fully masked row stays
finite instead of giving NaN: in fp32/bf16 it averages all values; in fp16 the coarse grid near the
mask value makes that average rough.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field, PositiveInt

from specc.ops.base import InferContext, Inferred, Op, ShapeMismatch, TensorType, expect_int, expect_rank
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn


def split_inputs(inputs: list[TensorType]) -> tuple[TensorType, TensorType, TensorType, TensorType | None]:
    """(query, key, value, mask) from ``[x] | [q, kv] | [q, k, v]`` plus an optional trailing bool mask."""
    floats = [t for t in inputs if t.dtype == "float32"]
    masks = [t for t in inputs if t.dtype == "bool"]
    if not floats or len(floats) > 3 or len(masks) > 1 or inputs[: len(floats)] != floats:
        raise ShapeMismatch(
            "inputs must be [x], [query, key_value] or [query, key, value], then an optional bool mask"
        )
    for t in floats:
        expect_rank(t, (2,), "(seq, features)")
    q, k, v = (floats * 3)[:3] if len(floats) == 1 else (floats[0], floats[1], floats[-1])
    if k.shape[0] != v.shape[0]:
        raise ShapeMismatch(f"key {k} and value {v} need the same sequence length")
    mask = masks[0] if masks else None
    if mask is not None and mask.shape != (k.shape[0],):
        raise ShapeMismatch(f"the key mask must be ({k.shape[0]},) bool (one flag per key), got {mask}")
    return q, k, v, mask


def _arity(inputs: list[TensorType]) -> tuple[int, bool]:
    """How many float inputs come first, and whether a mask follows."""
    return sum(t.dtype == "float32" for t in inputs), inputs[-1].dtype == "bool"


class _Attention(Op):
    category = "attention"
    max_inputs = 4
    input_dtypes = ("float32", "bool")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the attention weights (training only)")


@register
class DotProductAttention(_Attention):
    """Scaled dot-product attention ``softmax(q kᵀ / sqrt(d)) v`` (no parameters).

    ``q (Tq, d)``, ``k (Tk, d)``, ``v (Tk, dv)`` → ``(Tq, dv)``; inputs and masks as in the module
    notes.

    Example::

        - dot_product_attention: {from: [queries, keys, values, mask]}
        - dot_product_attention: {causal: true}            # self-attention on the previous node
    """

    op_name = "dot_product_attention"
    causal: bool = False
    scale: float | None = Field(None, gt=0, description="score factor (default 1/sqrt(d))")

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        q, k, v, _ = split_inputs(inputs)
        d = expect_int(q.shape[1], "the query feature axis")
        if k.shape[1] != d:
            raise ShapeMismatch(f"query {q} and key {k} need the same feature size")
        dv = expect_int(v.shape[1], "the value feature axis")
        tq, tk = ctx.nominal(q.shape[0]), ctx.nominal(k.shape[0])
        return Inferred([TensorType((q.shape[0], dv))], [], tq * tk * (d + dv))

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.sequence_modules import DotProductAttention as Module

        d = expect_int(inputs[0].shape[1], "the query feature axis")
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(d)
        return Module(scale, self.causal, self.dropout, *_arity(inputs))


@register
class AdditiveAttention(_Attention):
    """Additive (Bahdanau) attention of d2l: ``score(q, k) = w_vᵀ tanh(W_q q + W_k k)``.

    ``q (Tq, dq)``, ``k (Tk, dk)``, ``v (Tk, dv)`` → ``(Tq, dv)``. Parameters (d2l's order):
    ``W_k (num_hiddens, dk)``, ``W_q (num_hiddens, dq)``, ``w_v (1, num_hiddens)``, no biases.

    Example::

        - additive_attention: {num_hiddens: 32, dropout: 0.1, from: [dec, enc:0, src_mask]}
    """

    op_name = "additive_attention"
    shorthand = "num_hiddens"
    num_hiddens: PositiveInt

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        q, k, v, _ = split_inputs(inputs)
        dq, dk = (
            expect_int(q.shape[1], "the query feature axis"),
            expect_int(k.shape[1], "the key feature axis"),
        )
        dv = expect_int(v.shape[1], "the value feature axis")
        h = self.num_hiddens
        tq, tk = ctx.nominal(q.shape[0]), ctx.nominal(k.shape[0])
        macs = tq * dq * h + tk * dk * h + tq * tk * (h + dv)
        return Inferred([TensorType((q.shape[0], dv))], [(h, dk), (h, dq), (1, h)], macs)

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.sequence_modules import AdditiveAttention as Module

        (h, dk), (_, dq) = inferred.param_shapes[:2]
        return Module(dk, dq, h, self.dropout, *_arity(inputs))


@register
class MultiheadAttention(_Attention):
    """Multi-head attention, self or cross: query ``(Tq, E)`` → ``(Tq, E)``.

    ``qkv: fused`` keeps ``nn.MultiheadAttention``'s parameters (``in_proj_weight (3E, E)``,
    ``in_proj_bias (3E,)``, ``out_proj``; GPT-2's ``c_attn``/``c_proj`` have the same shapes) and
    needs key/value of size E; ``qkv: separate`` has ``query``, ``key``, ``value`` linears
    (BERT's layout) and accepts other key/value sizes. Inputs and masks as in the module notes.

    Example::

        - multihead_attention: {num_heads: 8, dropout: 0.1, causal: true}
        - multihead_attention: {num_heads: 8, from: [x, memory]}            # cross-attention
        - multihead_attention: {num_heads: 12, qkv: separate, from: [x, attention_mask]}
    """

    op_name = "multihead_attention"
    shorthand = "num_heads"
    num_heads: PositiveInt
    causal: bool = False
    bias: bool = True
    qkv: Literal["fused", "separate"] = Field(
        "fused", description="parameter layout of the q/k/v projections"
    )

    def dims(self, inputs: list[TensorType]) -> tuple[int, int, int]:
        q, k, v, _ = split_inputs(inputs)
        e = expect_int(q.shape[1], "the query feature axis")
        kd, vd = (
            expect_int(k.shape[1], "the key feature axis"),
            expect_int(v.shape[1], "the value feature axis"),
        )
        if e % self.num_heads:
            raise ShapeMismatch(f"embed dim {e} is not divisible by num_heads {self.num_heads}")
        if self.qkv == "fused" and (kd != e or vd != e):
            raise ShapeMismatch(
                f"qkv: fused needs key/value features equal to the query's {e}, got {kd} and {vd}"
                " (use qkv: separate)"
            )
        return e, kd, vd

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        e, kd, vd = self.dims(inputs)
        q, k, _, _ = split_inputs(inputs)
        b = self.bias
        if self.qkv == "fused":
            shapes: list[tuple[int, ...]] = [(3 * e, e)] + ([(3 * e,)] if b else [])
        else:
            shapes = [s for fin in (e, kd, vd) for s in [(e, fin)] + ([(e,)] if b else [])]
        shapes += [(e, e)] + ([(e,)] if b else [])
        tq, tk = ctx.nominal(q.shape[0]), ctx.nominal(k.shape[0])
        macs = tq * e * e * 2 + tk * e * (kd + vd) + 2 * tq * tk * e
        return Inferred([TensorType((q.shape[0], e))], shapes, macs)

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.sequence_modules import MultiheadAttention as Module

        e, kd, vd = self.dims(inputs)
        num_float, has_mask = _arity(inputs)
        return Module(
            e,
            self.num_heads,
            kd,
            vd,
            bias=self.bias,
            fused=self.qkv == "fused",
            causal=self.causal,
            dropout=self.dropout,
            num_float=num_float,
            has_mask=has_mask,
        )
