"""Attention: scaled dot-product, additive (Bahdanau) and multi-head (with grouped-query
attention, rotary position embeddings, causal and sliding-window masks).

Inputs are one to three float sequences, an optional bool key mask and (``multihead_attention``
with ``rope`` only) optional int64 positions, in this order:

* ``[x]`` — self-attention (query = key = value = x);
* ``[query, key_value]`` — cross-attention (key = value, e.g. a decoder attending to ``memory``);
* ``[query, key, value]``;
* then a bool ``(Tk,)`` key-padding mask: ``True`` = a real token to attend to, ``False`` = padding
  to ignore (Hugging Face's ``attention_mask`` convention; the opposite of
  ``nn.MultiheadAttention``'s ``key_padding_mask``);
* then an int64 ``(Tq,)`` position of every token, which rotary embeddings rotate by (default
  ``0 .. T-1``; Hugging Face's ``position_ids``).

``causal: true`` lets query position ``t`` see key positions ``<= t`` only; ``sliding_window: W``
(with ``causal``) also hides keys more than ``W - 1`` positions back (Mistral). Masked scores are
pushed to a huge finite negative value (half the most negative float added, an additive mask as in
Hugging Face's BERT), so their weight is exactly 0. A fully masked row stays finite instead of
giving NaN: in fp32/bf16 it averages all values; in fp16 the coarse grid near the mask value makes
that average rough.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

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
    float_inputs,
)
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn


def split_inputs(
    inputs: list[TensorType], leading: bool = False
) -> tuple[TensorType, TensorType, TensorType, TensorType | None]:
    """(query, key, value, mask) from ``[x] | [q, kv] | [q, k, v]``, an optional bool mask and an
    optional int64 positions input (checked by :func:`positions_input`).

    With ``leading``, the sequences may carry leading axes ``(..., seq, features)`` (windows, heads),
    the same for query, key and value; a key mask then needs plain ``(seq, features)`` inputs."""
    floats = [t for t in inputs if t.dtype == "float32"]
    masks = [t for t in inputs if t.dtype == "bool"]
    ints = [t for t in inputs if t.dtype == "int64"]
    if not floats or len(floats) > 3 or len(masks) > 1 or len(ints) > 1 or inputs != floats + masks + ints:
        raise ShapeMismatch(
            "inputs must be [x], [query, key_value] or [query, key, value], then an optional bool mask"
            + (", then optional int64 positions" if ints else "")
        )
    for t in floats:
        if leading and t.rank < 2:
            raise ShapeMismatch(f"expects (..., seq, features) inputs, got {t.rank}-d {t}")
        if not leading:
            expect_rank(t, (2,), "(seq, features)")
    q, k, v = (floats * 3)[:3] if len(floats) == 1 else (floats[0], floats[1], floats[-1])
    if not q.shape[:-2] == k.shape[:-2] == v.shape[:-2]:
        raise ShapeMismatch(f"query {q}, key {k} and value {v} need the same leading axes (before seq)")
    if k.shape[-2] != v.shape[-2]:
        raise ShapeMismatch(f"key {k} and value {v} need the same sequence length")
    mask = masks[0] if masks else None
    if mask is not None and q.rank > 2:
        raise ShapeMismatch(f"a key mask needs (seq, features) inputs; the query {q} has leading axes")
    if mask is not None and mask.shape != (k.shape[-2],):
        raise ShapeMismatch(f"the key mask must be ({k.shape[-2]},) bool (one flag per key), got {mask}")
    return q, k, v, mask


def _arity(inputs: list[TensorType]) -> tuple[int, bool]:
    """How many float inputs come first, and whether a mask follows."""
    return sum(t.dtype == "float32" for t in inputs), inputs[-1].dtype == "bool"


def probabilities_memory(scores: int, dropout: float, ctx: MemoryContext) -> tuple[int, int]:
    """(elements, bytes) kept for ``scores`` attention weights: the softmax result; with dropout
    also the dropped-out weights and the mask (CUDA: bool; CPU: the scaled noise itself).
    Under CUDA autocast the softmax runs in fp32 and the second matmul keeps a half copy."""
    kept, kept_bytes = scores, 0
    if dropout > 0:
        kept += scores
        if ctx.device == "cuda":
            kept_bytes += scores
        else:
            kept += scores
    if ctx.amp != "none" and ctx.device == "cuda":
        kept_bytes += scores * (6 if dropout > 0 else 4)
    return kept, kept_bytes


class _Attention(Op):
    category = "attention"
    max_inputs = 4
    input_dtypes: ClassVar[tuple[str, ...]] = ("float32", "bool")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the attention weights (training only)")


@register
class DotProductAttention(_Attention):
    """Scaled dot-product attention ``softmax(q kᵀ / sqrt(d)) v`` (no parameters).

    ``q (Tq, d)``, ``k (Tk, d)``, ``v (Tk, dv)`` → ``(Tq, dv)``; inputs and masks as in the module
    notes. Leading axes are kept, the same for q, k and v: ``(windows, heads, T, d)`` attends within
    each window and head (Swin-style window attention written by hand; no key mask then).

    Example::

        - dot_product_attention: {from: [queries, keys, values, mask]}
        - dot_product_attention: {causal: true}            # self-attention on the previous node
        - dot_product_attention: {from: [q, k, v]}         # (windows, heads, 49, 32) each
    """

    op_name = "dot_product_attention"
    causal: bool = False
    scale: float | None = Field(None, gt=0, description="score factor (default 1/sqrt(d))")

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        q, k, v, _ = split_inputs(inputs, leading=True)
        d = expect_int(q.shape[-1], "the query feature axis")
        if k.shape[-1] != d:
            raise ShapeMismatch(f"query {q} and key {k} need the same feature size")
        dv = expect_int(v.shape[-1], "the value feature axis")
        tq, tk = ctx.nominal(q.shape[-2]), ctx.nominal(k.shape[-2])
        groups = math.prod(ctx.nominal(n) for n in q.shape[:-2])
        return Inferred([TensorType((*q.shape[:-1], dv))], [], groups * tq * tk * (d + dv))

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        q, k, _, _ = split_inputs(inputs, leading=True)
        groups = math.prod(ctx.nominal(n) for n in q.shape[:-2])  # windows, heads
        scores = groups * ctx.nominal(q.shape[-2]) * ctx.nominal(k.shape[-2])
        kept, kept_bytes = probabilities_memory(scores, self.dropout, ctx)
        # the matmuls keep q, k and v themselves; the score buffers are temporaries
        return OpMemory(float_inputs(inputs), (), kept, kept_bytes, 2 * scores, 2 * scores, amp="low")

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.sequence_modules import DotProductAttention as Module

        d = expect_int(inputs[0].shape[-1], "the query feature axis")
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(d)
        # a step-by-step cache (B, past, d) only for (seq, features) inputs, not with leading axes
        features = d if inputs[0].rank == 2 else None
        return Module(scale, self.causal, self.dropout, *_arity(inputs), features=features)


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

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        q, k, _, _ = split_inputs(inputs)
        tq, tk, h = ctx.nominal(q.shape[0]), ctx.nominal(k.shape[0]), self.num_hiddens
        kept, kept_bytes = probabilities_memory(tq * tk, self.dropout, ctx)
        # tanh keeps its (Tq, Tk, h) result, which w_v reads; the sum before it is a temporary;
        # masked_fill keeps the negated key mask
        work = tq * tk * h + (tq + tk) * h
        kept_bytes += tk if inputs[-1].dtype == "bool" else 0
        return OpMemory(float_inputs(inputs), (), kept + tq * tk * h, kept_bytes, work, work, amp="low")

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.sequence_modules import AdditiveAttention as Module

        (h, dk), (_, dq) = inferred.param_shapes[:2]
        return Module(dk, dq, h, self.dropout, *_arity(inputs))


class Rope(BaseModel):
    """Rotary position embeddings (RoFormer; LLaMA's "rotate half" layout, as ``transformers``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    theta: float = Field(10000.0, gt=1, description="base of the rotation frequencies (rope_theta)")
    rotary_dim: PositiveInt | None = Field(
        None, description="rotate only the first rotary_dim features of each head (default: all)"
    )

    @model_validator(mode="before")
    @classmethod
    def _int_theta(cls, data: object) -> object:
        # `theta: 10000` is as natural as 10000.0; strict mode would refuse the int
        if (
            isinstance(data, dict)
            and isinstance(data.get("theta"), int)
            and not isinstance(data["theta"], bool)
        ):
            return {**data, "theta": float(data["theta"])}
        return data


Layout = Literal["fused", "separate", "llama"]


@register
class MultiheadAttention(_Attention):
    """Multi-head attention, self or cross: query ``(Tq, E)`` → ``(Tq, E)``; grouped-query attention,
    rotary embeddings, causal and sliding-window masks for today's decoders.

    Parameter layouts (``qkv``): ``fused`` keeps ``nn.MultiheadAttention``'s parameters
    (``in_proj_weight``, ``in_proj_bias``, ``out_proj``; GPT-2's ``c_attn``/``c_proj`` have the same
    shapes) and needs key/value of size E; ``separate`` has ``query``, ``key``, ``value``,
    ``out_proj`` linears (BERT's layout); ``llama`` has ``q_proj``, ``k_proj``, ``v_proj``,
    ``o_proj`` (LLaMA, Mistral, Qwen2). ``separate`` and ``llama`` accept other key/value sizes.

    ``num_kv_heads`` < ``num_heads`` is grouped-query attention (1: multi-query): the key and value
    projections have ``num_kv_heads · head_dim`` outputs and query head ``h`` reads key/value head
    ``h // (num_heads / num_kv_heads)``. ``head_dim`` defaults to ``E / num_heads``; the query
    projection has ``num_heads · head_dim`` outputs and the output projection maps them back to E.
    ``rope`` rotates q and k by their positions (self-attention; positions ``0..T-1`` or an int64
    input). Runs ``scaled_dot_product_attention`` when the attention dropout is off (eval, or
    ``dropout: 0``) and the matmul/softmax form otherwise and in ONNX exports (equal within 1e-5
    relative). Inputs (floats, then a bool key mask, then int64 positions) and masks: section
    "Attention inputs and masks" of docs/spec-language.md.

    Example::

        - multihead_attention: {num_heads: 8, dropout: 0.1, causal: true}
        - multihead_attention: {num_heads: 8, from: [x, memory]}            # cross-attention
        - multihead_attention: {num_heads: 12, qkv: separate, from: [x, attention_mask]}
        - multihead_attention: {num_heads: 32, num_kv_heads: 4, qkv: llama, bias: false,
                                causal: true, rope: {theta: 10000}, from: [x, attention_mask]}
    """

    op_name = "multihead_attention"
    shorthand = "num_heads"
    max_inputs = 5
    input_dtypes = ("float32", "bool", "int64")
    num_heads: PositiveInt
    num_kv_heads: PositiveInt | None = Field(
        None, description="key/value heads (grouped-query attention; 1 = multi-query; default num_heads)"
    )
    head_dim: PositiveInt | None = Field(None, description="features per head (default E / num_heads)")
    causal: bool = Field(False, description="query t sees keys <= t only")
    sliding_window: PositiveInt | None = Field(
        None, description="with causal: each query sees itself and the sliding_window - 1 keys before it"
    )
    bias: bool = Field(True, description="biases on the projections")
    qkv: Layout = Field("fused", description="parameter layout of the projections: fused | separate | llama")
    rope: Rope | None = Field(None, description="rotary position embeddings on q and k: {theta, rotary_dim}")

    @model_validator(mode="after")
    def _heads(self) -> MultiheadAttention:
        kv = self.kv_heads
        if self.num_heads % kv:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {kv}")
        if self.sliding_window is not None and not self.causal:
            raise ValueError("sliding_window needs causal: true")
        if self.rope is not None and self.head_dim is not None:
            check_rotary(self.rope, self.head_dim)
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def dims(self, inputs: list[TensorType]) -> tuple[int, int, int, int]:
        """``(E, kdim, vdim, head_dim)``, checked."""
        q, k, v, _ = split_inputs(inputs)
        floats = sum(t.dtype == "float32" for t in inputs)
        e = expect_int(q.shape[1], "the query feature axis")
        kd, vd = (
            expect_int(k.shape[1], "the key feature axis"),
            expect_int(v.shape[1], "the value feature axis"),
        )
        if self.head_dim is None and e % self.num_heads:
            raise ShapeMismatch(
                f"embed dim {e} is not divisible by num_heads {self.num_heads} (or set head_dim)"
            )
        hd = self.head_dim or e // self.num_heads
        if self.qkv == "fused" and (kd != e or vd != e):
            raise ShapeMismatch(
                f"qkv: fused needs key/value features equal to the query's {e}, got {kd} and {vd}"
                " (use qkv: separate or llama)"
            )
        if self.rope is not None:
            check_rotary(self.rope, hd)
            if floats != 1:
                raise ShapeMismatch("rope needs self-attention (one float input, then the optional mask)")
        if inputs[-1].dtype == "int64":
            if self.rope is None:
                raise ShapeMismatch("an int64 positions input is only used by rope; give rope or drop it")
            if inputs[-1].shape != (q.shape[0],):
                raise ShapeMismatch(
                    f"positions must be ({q.shape[0]},) int64 (one per token), got {inputs[-1]}"
                )
        return e, kd, vd, hd

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        e, kd, vd, hd = self.dims(inputs)
        q, k, _, _ = split_inputs(inputs)
        qo, kvo = self.num_heads * hd, self.kv_heads * hd
        b = self.bias
        if self.qkv == "fused":
            shapes: list[tuple[int, ...]] = [(qo + 2 * kvo, e)] + ([(qo + 2 * kvo,)] if b else [])
        else:
            shapes = [
                s
                for out, fin in ((qo, e), (kvo, kd), (kvo, vd))
                for s in [(out, fin)] + ([(out,)] if b else [])
            ]
        shapes += [(e, qo)] + ([(e,)] if b else [])
        tq, tk = ctx.nominal(q.shape[0]), ctx.nominal(k.shape[0])
        macs = 2 * tq * e * qo + tk * kvo * (kd + vd) + 2 * tq * tk * qo
        if self.rope is not None:
            macs += 2 * (tq * qo + tk * kvo)  # q·cos + rotate_half(q)·sin, and the same for k
        return Inferred([TensorType((q.shape[0], e))], shapes, macs)

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        """The projections keep their inputs and ``out_proj`` the merged heads; then either

        * dropout on (training, the matmul/softmax form): contiguous copies of q, kᵀ and v (k and v
          at the query heads' count: grouped heads are broadcast) and the attention weights
          (:func:`probabilities_memory`);
        * dropout off (``scaled_dot_product_attention``): q, k and v as projected (the whole fused
          projection when q/k/v are views of it; rotated copies with rope), the log-sum-exp per
          query and head (fp32), and the additive mask when one is built.
        """
        e, _, _, hd = self.dims(inputs)
        q, k, _, mask = split_inputs(inputs)
        tq, tk = ctx.nominal(q.shape[0]), ctx.nominal(k.shape[0])
        qo, kvo = self.num_heads * hd, self.kv_heads * hd
        scores = self.num_heads * tq * tk
        projected = tq * qo + 2 * tk * kvo
        if self.dropout > 0:
            kept, kept_bytes = probabilities_memory(scores, self.dropout, ctx)
            kept += 2 * tq * qo + 2 * tk * qo
            work = projected + tq * qo + scores  # projections, the merged heads, a score buffer
            back = projected + 2 * scores  # q/k/v gradients, two score-sized gradients
            return OpMemory(float_inputs(inputs), (), kept, kept_bytes, work, back, amp="low")
        kept = tq * qo + projected
        if self.rope is not None and self.qkv == "fused":
            kept += tq * qo + tk * kvo  # rotated q and k, next to the projection v is a view of
        if mask is not None:  # the additive mask: (B, 1, Tq, Tk) with causal, else (B, 1, 1, Tk)
            kept += tq * tk if self.causal else tk
        rope_work = projected if self.rope is not None else 0  # projections before the rotation
        return OpMemory(
            float_inputs(inputs),
            (),
            kept,
            4 * self.num_heads * tq,
            rope_work + tq * qo,
            projected + tq * qo,
            amp="low",
        )

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.sequence_modules import MultiheadAttention as Module
        from specc.nn.sequence_modules import Rotary

        e, kd, vd, hd = self.dims(inputs)
        rope = self.rope
        return Module(
            e,
            self.num_heads,
            kd,
            vd,
            num_kv_heads=self.kv_heads,
            head_dim=hd,
            bias=self.bias,
            layout=self.qkv,
            causal=self.causal,
            window=self.sliding_window,
            rotary=None if rope is None else Rotary(rope.rotary_dim or hd, rope.theta, hd),
            dropout=self.dropout,
            num_float=sum(t.dtype == "float32" for t in inputs),
            has_mask=any(t.dtype == "bool" for t in inputs),
            has_positions=inputs[-1].dtype == "int64",
        )


def check_rotary(rope: Rope, head_dim: int) -> None:
    """Rotary features come in pairs and fit in a head."""
    dim = rope.rotary_dim or head_dim
    if dim % 2 or dim > head_dim:
        raise ShapeMismatch(
            f"rope rotates pairs of features: rotary_dim {dim} must be even and <= head_dim {head_dim}"
        )
