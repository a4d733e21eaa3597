"""Token embeddings and positional encodings."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

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

if TYPE_CHECKING:
    import torch.nn as nn


@register
class Embedding(Op):
    """Look up a learned vector per token id: int64 ``(T,)`` → ``(T, embedding_dim)`` (any shape of ids).

    ``scale: true`` multiplies by ``sqrt(embedding_dim)`` (the Transformer paper). The table is the
    parameter ``weight`` ``(num_embeddings, embedding_dim)``, which a ``linear`` can share (``tie``).

    Example::

        - embedding: {num_embeddings: $vocab, embedding_dim: 512, name: tok_emb}
        - embedding: {num_embeddings: 30522, embedding_dim: 768, padding_idx: 0}
    """

    op_name = "embedding"
    category = "sequence"
    input_dtypes = ("int64",)
    num_embeddings: PositiveInt
    embedding_dim: PositiveInt
    padding_idx: int | None = Field(None, description="id whose vector stays zero (no gradient)")
    scale: bool = Field(False, description="multiply by sqrt(embedding_dim)")

    @model_validator(mode="after")
    def _padding(self) -> Embedding:
        if (
            self.padding_idx is not None
            and not -self.num_embeddings <= self.padding_idx < self.num_embeddings
        ):
            raise ValueError(f"padding_idx {self.padding_idx} is outside 0..{self.num_embeddings - 1}")
        return self

    def index_bound(self) -> int:
        return self.num_embeddings

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (ids,) = inputs
        out = TensorType((*ids.shape, self.embedding_dim))
        return Inferred([out], [(self.num_embeddings, self.embedding_dim)], 0)

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        # keeps its ids (the data); with a scale the lookup is a temporary before the product
        return OpMemory(keeps_inputs=(0,), workspace=ctx.numel(outputs[0].shape) if self.scale else 0)

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.sequence_modules import Embedding as EmbeddingModule

        factor = math.sqrt(self.embedding_dim) if self.scale else 1.0
        return EmbeddingModule(self.num_embeddings, self.embedding_dim, self.padding_idx, factor)


@register
class PositionalEncoding(Op):
    """Add position information to a sequence ``(T, D)`` → ``(T, D)``.

    ``sinusoidal``: the fixed sin/cos table of "Attention Is All You Need" (d2l's
    ``PositionalEncoding`` without its dropout), held as a non-persistent buffer: no parameters,
    nothing in the state_dict. ``learned``: a trained table ``weight`` ``(max_len, D)`` (BERT,
    GPT-2). ``T`` may be at most ``max_len``.

    Example::

        - positional_encoding                                  # sinusoidal
        - positional_encoding: {kind: learned, max_len: 1024, name: wpe}
    """

    op_name = "positional_encoding"
    shorthand = "kind"
    category = "sequence"
    kind: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_len: PositiveInt = Field(5000, description="longest sequence supported")

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        expect_rank(x, (2,), "(seq, features)")
        dim = expect_int(x.shape[1], "the feature axis")
        if isinstance(x.shape[0], int) and x.shape[0] > self.max_len:
            raise ShapeMismatch(f"sequence length {x.shape[0]} is longer than max_len {self.max_len}")
        if isinstance(x.shape[0], str) and ctx.dims.get(x.shape[0], 0) > self.max_len:
            raise ShapeMismatch(
                f"the sequence axis '{x.shape[0]}' is {ctx.dims[x.shape[0]]} long (dims or data) "
                f"but max_len is {self.max_len}"
            )
        shapes: list[tuple[int, ...]] = [(self.max_len, dim)] if self.kind == "learned" else []
        return Inferred([x], shapes, ctx.numel(x.shape))

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        return OpMemory()  # x + table[:T]: a sum keeps nothing (the table lookup is one sample's size)

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.sequence_modules import LearnedPositions, SinusoidalPositions

        dim = expect_int(inputs[0].shape[1], "the feature axis")
        if self.kind == "learned":
            return LearnedPositions(self.max_len, dim)
        return SinusoidalPositions(self.max_len, dim)
