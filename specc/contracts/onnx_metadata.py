"""The ``specc.*`` metadata of an exported ONNX model: :class:`OnnxMetadata`.

ONNX stores ``metadata_props`` as string pairs. Field ``f`` of :class:`OnnxMetadata` is the key
``specc.f``; strings are stored as they are, lists and objects as JSON:

========================  =====================================================================
``specc.version``         specc version that exported the model
``specc.spec_name``       name of the spec
``specc.spec_hash``       SHA-256 hex digest of the spec text
``specc.inputs``          JSON ``[{"name", "shape": [dim, ...], "dtype"}]``; the shape includes the
                          batch axis, a dim is an int or a symbol (``["batch", 3, 32, 32]``)
``specc.outputs``         the same, for the outputs
``specc.labels``          JSON list of class names (optional)
``specc.preprocess``      JSON :mod:`specc.contracts.preprocess` record (optional)
``specc.task``            ``classification``, ``regression``, ``language_model`` or ``seq2seq``
``specc.variant``         ``opt``, ``int8`` or ``fp16`` for a derived file (optional)
``specc.generation``      JSON :mod:`specc.contracts.generation` record: how to generate with a
                          language or seq2seq model (optional)
``specc.tokenizer``       a Hugging Face ``tokenizer.json`` text, verbatim (optional, with
                          ``specc export --tokenizer``)
========================  =====================================================================

Writer: :mod:`specc.export.metadata`; reader: :mod:`specc.runtime`. Other keys (another tool's)
are left alone. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from specc.contracts.base import Contract, explain, loads
from specc.contracts.generation import GenerationInfo
from specc.contracts.preprocess import Preprocess
from specc.errors import UsageError

PREFIX = "specc."
#: Longest metadata value read (a JSON vocabulary of 1M characters stays below it).
MAX_VALUE_BYTES = 32 * 1024 * 1024

Task = Literal["classification", "regression", "language_model", "seq2seq"]
TASKS: tuple[str, ...] = ("classification", "regression", "language_model", "seq2seq")
Name = Annotated[str, Field(min_length=1, max_length=4096)]
Dim = Annotated[int, Field(ge=0)] | Annotated[str, Field(min_length=1, max_length=256)] | None


class TensorEntry(Contract):
    """Name, shape (batch axis included, a dim is an int, a symbol or unknown) and dtype of one tensor."""

    name: Name
    shape: Annotated[list[Dim], Field(max_length=64)]
    dtype: Annotated[str, Field(min_length=1, max_length=32)]


class OnnxMetadata(Contract):
    """Everything specc records in an exported model; every field is optional for a reader."""

    version: str | None = None
    spec_name: str | None = None
    spec_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    inputs: list[TensorEntry] | None = None
    outputs: list[TensorEntry] | None = None
    labels: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=1 << 20)] | None = None
    preprocess: Preprocess | None = None
    task: Task | None = None
    variant: Literal["opt", "int8", "fp16"] | None = None
    generation: GenerationInfo | None = None
    tokenizer: Annotated[str, Field(min_length=1)] | None = None

    def to_props(self) -> dict[str, str]:
        """``{"specc.<field>": text}`` for every field that is set, in field order."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json", exclude_none=True).items():
            out[key(name)] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        return out

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> OnnxMetadata:
        """Parse the ``specc.*`` entries of ``metadata_props`` (others are ignored); a bad value is a
        UsageError naming its key."""
        data: dict[str, Any] = {}
        for name in cls.model_fields:
            text = props.get(key(name))
            if text is None:
                continue
            where = f"model metadata '{key(name)}'"
            if len(text) > MAX_VALUE_BYTES:
                raise UsageError(
                    f"{where} is {len(text):,} characters, over the limit of {MAX_VALUE_BYTES:,}"
                )
            data[name] = text if name in JSON_FREE else loads(text, where)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = str(exc.errors()[0]["loc"][0]) if exc.errors() else ""
            raise UsageError(f"model metadata '{key(first)}' is invalid: {explain(exc)}") from None


#: Fields stored as plain strings (the others are JSON).
JSON_FREE = frozenset({"version", "spec_name", "spec_hash", "task", "variant", "tokenizer"})


def key(field: str) -> str:
    """The metadata key of a field: ``specc.<field>``."""
    return PREFIX + field


#: Every key specc writes, in order.
METADATA_KEYS: tuple[str, ...] = tuple(key(f) for f in OnnxMetadata.model_fields)
