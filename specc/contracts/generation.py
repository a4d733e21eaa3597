"""How to generate with an exported language model: :class:`GenerationInfo`, the ``specc.generation``
field of :class:`~specc.contracts.onnx_metadata.OnnxMetadata`.

Written by :mod:`specc.export.generation` (through :func:`specc.export.metadata.build_metadata`, the
one writer of the metadata) into every export of a causal language model or a seq2seq model; read by
:mod:`specc.runtime.generate` through :attr:`specc.runtime.model.Model.info`. Torch-free. Stored as
JSON under ``specc.generation``:

    ``{"format": 1, "kind": "causal_lm" | "seq2seq", "tokens": input, "logits": output,
    "vocab_size": V, "attention_mask": input | null, "positions": input | null,
    "source": input | null, "source_mask": input | null, "cache": [entry, ...],
    "max_positions": N | null, "max_new_tokens": N | null, "source_length": N | null, "tokenizer": {...},
    "bos_id": id | null, "eos_id": id | null, "pad_id": id | null}``.

    ``tokens`` is the token-id input (a seq2seq model's decoder input), ``logits`` the output of
    shape ``[batch, seq, V]`` whose last position predicts the next token. A causal LM's optional
    ``attention_mask`` (bool, True = a real token) and ``positions`` (int64) inputs are fed by the
    runtime. ``cache`` is empty for a model exported without ``--kv-cache`` (each new token re-runs the
    prefix); otherwise each entry ``{"input": "past_key.0", "output": "present_key.0", "node": spec
    path, "kind": "key" | "value" | "hidden" | "cell", "shape": [...], "dtype": "float32"}`` is a
    tensor carried from one step to the next: its shape holds ``"batch"`` and, for a growing
    key/value cache, ``"past_seq"`` (0 before the first step); the matching output has
    ``"total_seq"`` there. With a cache, an ``attention_mask`` input spans the past and the new
    tokens (``[batch, total_seq]``). ``max_positions`` bounds prompt + generated tokens (a position
    table's length). A seq2seq model's ``max_new_tokens`` is the longest target it was trained on
    (eos included) and ``source_length`` the length its sources were padded to in training (the
    runtime pads a shorter source with ``pad_id`` the same way). ``tokenizer`` is
    ``{"kind": "chars", "vocab": [...]}`` (a character's index is its id),
    ``{"kind": "huggingface", "sha256": hex}`` (the ``tokenizer.json`` text is the metadata's
    ``specc.tokenizer`` field, verbatim) or ``{"kind": "ids"}`` (prompts are token ids).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from specc.contracts.base import Contract

MAX_VOCAB = 1 << 21
Name = Annotated[str, Field(min_length=1, max_length=256)]


class CacheEntry(Contract):
    """One tensor carried between decoding steps."""

    input: Name
    output: Name
    node: Annotated[str, Field(max_length=4096)]
    kind: Literal["key", "value", "hidden", "cell"]
    shape: Annotated[list[Annotated[int, Field(ge=0)] | Name], Field(min_length=1, max_length=8)]
    dtype: Literal["float32"] = "float32"

    @property
    def past_axis(self) -> int | None:
        return self.shape.index("past_seq") if "past_seq" in self.shape else None


class CharVocab(Contract):
    """Character-level: ``vocab[i]`` is the character of id ``i`` (``""`` for padding/unknown)."""

    kind: Literal["chars"]
    vocab: Annotated[list[Annotated[str, Field(max_length=16)]], Field(min_length=1, max_length=MAX_VOCAB)]


class HuggingFaceTokenizer(Contract):
    """A ``tokenizers`` ``tokenizer.json``, stored under :data:`KEY_TOKENIZER`."""

    kind: Literal["huggingface"]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class TokenIds(Contract):
    """No text: prompts and outputs are token ids."""

    kind: Literal["ids"]


Tokenizer = Annotated[CharVocab | HuggingFaceTokenizer | TokenIds, Field(discriminator="kind")]


class GenerationInfo(Contract):
    """How to generate with an exported model (see the module notes)."""

    format: Literal[1] = 1
    kind: Literal["causal_lm", "seq2seq"]
    tokens: Name
    logits: Name
    vocab_size: PositiveInt
    attention_mask: Name | None = None
    positions: Name | None = None
    source: Name | None = None
    source_mask: Name | None = None
    cache: Annotated[list[CacheEntry], Field(max_length=4096)] = []
    max_positions: PositiveInt | None = None
    max_new_tokens: PositiveInt | None = None
    source_length: PositiveInt | None = None
    tokenizer: Tokenizer = TokenIds(kind="ids")
    bos_id: NonNegativeInt | None = None
    eos_id: NonNegativeInt | None = None
    pad_id: NonNegativeInt | None = None

    @model_validator(mode="after")
    def _consistent(self) -> GenerationInfo:
        if self.kind == "seq2seq" and (self.source is None or self.cache):
            raise ValueError("a seq2seq model names its source input and carries no cache")
        if self.kind == "causal_lm" and (self.source is not None or self.source_mask is not None):
            raise ValueError("a causal language model has no source input")
        names = [e.input for e in self.cache] + [e.output for e in self.cache]
        if len(set(names)) != len(names):
            raise ValueError("cache inputs and outputs must have distinct names")
        for i in (self.bos_id, self.eos_id, self.pad_id):
            if i is not None and i >= self.vocab_size:
                raise ValueError(f"special token id {i} is outside the vocabulary of {self.vocab_size}")
        return self
