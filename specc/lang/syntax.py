"""Stage 2 — parse: a spec file as strict, frozen pydantic models.

The whole document is validated here: the top level, every block definition and every layer item
(``specc/lang/items.py``: ops, block calls, structural forms). Values that are ``$expressions``
get checked once lowering has given them values (they may depend on block parameters, repeat
indices or ``$in``). The ``train:`` section is validated by :class:`specc.lang.train_config.TrainConfig`
(``specc.api`` does it, so the language package does not depend on training).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from specc.lang.items import IDENT, PARAM_TYPES, RESERVED_PARAMS, Item
from specc.ops.activation import ActName
from specc.ops.base import DType, InitChoice
from specc.ops.norm import NORM_WORDS, check_norm_word

__all__ = [
    "IDENT",
    "PARAM_TYPES",
    "RESERVED_NAMES",
    "BlockDef",
    "Defaults",
    "InputSpec",
    "LibraryFile",
    "Spec",
]

# Node names become torch module names: these clash with nn.Module attributes.
RESERVED_NAMES = frozenset(
    "forward training train eval to cuda cpu float half double type apply parameters buffers children "
    "modules state_dict register_buffer add_module zero_grad requires_grad_ extra_repr".split()
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class InputSpec(Strict):
    """One named input: per-sample ``shape`` (ints, or names for symbolic axes) and ``dtype``."""

    shape: list[PositiveInt | str] = Field(
        description="one sample's shape; the batch axis is implicit; a name is a symbolic axis, '$expr' a value"
    )
    dtype: DType = "float32"

    @field_validator("shape")
    @classmethod
    def _symbols(cls, v: list[int | str]) -> list[int | str]:
        for d in v:
            if isinstance(d, str) and not d.isidentifier() and "$" not in d:
                raise ValueError(f"symbolic axis {d!r} must be a name like 'seq' (or an expression with $)")
        return v


class Defaults(Strict):
    """Defaults applied to every node that does not set its own (all visible in ``specc render``)."""

    norm: str = Field("batch", description=NORM_WORDS)
    norm_eps: float | None = Field(None, gt=0, description="eps of every norm (None: torch's default)")
    activation: ActName = "relu"
    init: InitChoice = Field(
        "default",
        description="weight init of every op that sets none (the same choices as an op's `init`); "
        "`parameter` and `scale` keep their own start (zeros, ones) unless they set `init` themselves",
    )
    bias_init: InitChoice = Field("default", description="bias init of every op that sets none")

    @field_validator("norm")
    @classmethod
    def _norm(cls, v: str) -> str:
        return check_norm_word(v)


class Spec(Strict):
    """A spec file (format version 1)."""

    specc: Literal[1] = Field(description="format version")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    include: list[str] = Field(
        default_factory=list, description="block-library files (relative, or std:NAME)"
    )
    inputs: dict[str, InputSpec] = Field(min_length=1)
    outputs: list[str] | dict[str, str] | None = Field(
        None, description="output names (node names) or {output: node}; default: the last node"
    )
    labels: list[str] | None = Field(None, description="class names of a classifier's output")
    dims: dict[str, PositiveInt | str] = Field(
        default_factory=dict,
        description="nominal sizes of symbolic axes (MACs, limits such as max_len, default sequence length); "
        "ints or $expressions",
    )
    defaults: Defaults = Field(default_factory=Defaults)
    vars: dict[str, Any] = Field(
        default_factory=dict, description="variables ($name in expressions), in order"
    )
    scales: dict[str, dict[str, Any]] = Field(default_factory=dict, description="named sets of var values")
    blocks: dict[str, BlockDef] = Field(default_factory=dict, description="reusable, parameterised blocks")
    layers: list[Item] = Field(min_length=1, description="the network: ops, block calls, structural forms")
    train: dict[str, Any] | None = Field(None, description="training config (see `specc train`)")

    @field_validator("inputs", "vars", "blocks", "scales", "dims")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_names(v)

    @field_validator("vars")
    @classmethod
    def _var_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "in" in v:
            raise ValueError("'in' cannot be a variable: $in is the input's shape")
        return v


def _check_names(v: dict[str, Any]) -> dict[str, Any]:
    for key in v:
        if not re.match(IDENT, key):
            raise ValueError(f"{key!r} is not a valid name (letters, digits, _; not starting with a digit)")
    return v


class BlockDef(Strict):
    """A reusable, parameterised block: ``params`` (``int``/``float``/``bool``/``str``/``list``/``any``
    for a required one, or a default value, which may be a $expression), ``inputs`` (names the body
    refers to; ``$in`` is the first one's shape), and ``layers`` (or one structural form inline)."""

    params: dict[str, Any] = Field(
        default_factory=dict, description="name: type (int float bool str list any) = required, or a default"
    )
    inputs: list[str] = Field(default_factory=lambda: ["x"], min_length=1, description="input names")
    doc: str | None = None
    layers: list[Item] = Field(min_length=1)

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        _check_names(v)
        reserved = sorted(RESERVED_PARAMS & set(v))
        if reserved:
            raise ValueError(f"'{reserved[0]}' cannot be a parameter name (name, from, if and in are taken)")
        return v

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.match(IDENT, name):
                raise ValueError(f"input {name!r} is not a valid name")
        return v


class LibraryFile(Strict):
    """An included block-library file."""

    specc: Literal[1] = 1
    description: str | None = None
    include: list[str] = Field(default_factory=list)
    blocks: dict[str, BlockDef] = Field(default_factory=dict)

    @field_validator("blocks")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_names(v)


Spec.model_rebuild()
