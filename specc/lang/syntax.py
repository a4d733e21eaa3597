"""Stage 2 — parse: the top level of a spec file as strict, frozen pydantic models.

Layer items (``layers:`` and block bodies) are checked item by item while lowering, because their
arguments may hold expressions that only have values once variables and block parameters are known.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from specc.ops.activation import ActName
from specc.ops.base import DType, InitName, InitSpec
from specc.ops.norm import NORM_WORDS, check_norm_word

IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"

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
    init: InitName | InitSpec = "default"
    bias_init: InitName | InitSpec = "default"

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
    vars: dict[str, Any] = Field(default_factory=dict)
    scales: dict[str, dict[str, Any]] = Field(default_factory=dict, description="named sets of var values")
    blocks: dict[str, Any] = Field(default_factory=dict)
    layers: list[Any] = Field(min_length=1)
    train: dict[str, Any] | None = Field(None, description="training config (see `specc train`)")

    @field_validator("inputs", "vars", "blocks", "scales", "dims")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        import re

        for key in v:
            if not re.match(IDENT, key):
                raise ValueError(
                    f"{key!r} is not a valid name (letters, digits, _; not starting with a digit)"
                )
        return v


class BlockDef(Strict):
    """A reusable, parameterised block: ``params`` (``int``/``float``/``bool``/``str``/``list``/``any``
    for a required one, or a default value), ``inputs`` (names the body refers to), and ``layers``."""

    params: dict[str, Any] = Field(default_factory=dict)
    inputs: list[str] = Field(default_factory=lambda: ["x"], min_length=1)
    doc: str | None = None
    layers: list[Any] = Field(min_length=1)


class LibraryFile(Strict):
    """An included block-library file."""

    specc: Literal[1] = 1
    description: str | None = None
    include: list[str] = Field(default_factory=list)
    blocks: dict[str, Any] = Field(default_factory=dict)


PARAM_TYPES = {"int", "float", "bool", "str", "list", "any"}
