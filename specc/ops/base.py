"""The op contract: one pydantic model per op holding its spec, shape rule and builder.

Every op subclasses :class:`Op`. Its fields are the YAML arguments (torch's names). It implements

* :meth:`Op.infer` — pure-Python shape rule: input types → output types, parameter count, MACs;
* :meth:`Op.build` — the torch module (torch is imported inside, so nothing before ``build`` pays
  for it).

Ops register themselves with :func:`specc.ops.registry.register`; parsing, inference, building,
``specc ops`` and the JSON schema all dispatch through the registry.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from specc.expr import ExprError, evaluate

if TYPE_CHECKING:
    import torch.nn as nn

Dim = int | str
"""A dimension: an int, or a symbol such as ``"seq"`` for an axis whose size is known at run time."""

DType = Literal["float32", "int64", "bool"]

NAME_PATTERN = r"^(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+)(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$"
"""A node name: an identifier, or a dotted path of identifiers and numbers (as ``specc render`` writes)."""


@dataclass(frozen=True)
class TensorType:
    """Shape of one sample (the batch axis is implicit) and dtype of a graph edge."""

    shape: tuple[Dim, ...]
    dtype: DType = "float32"

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        suffix = "" if self.dtype == "float32" else f" {self.dtype}"
        return f"({dims}){suffix}"

    def with_batch(self) -> list[Dim]:
        return ["batch", *self.shape]


@dataclass
class Inferred:
    """What a shape rule returns: output types, learnable parameters and multiply-accumulates."""

    outputs: list[TensorType]
    param_shapes: list[tuple[int, ...]] = field(default_factory=list)
    macs: int = 0
    notes: list[str] = field(default_factory=list)
    """Things a user should know that are not errors (``specc check`` prints them as notes)."""

    @property
    def params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes)


class ShapeMismatch(ValueError):
    """Raised by a shape rule; the inference driver adds the node's location and input shapes."""


@dataclass
class InferContext:
    """What a shape rule may know besides its inputs: nominal sizes of symbolic dims."""

    dims: dict[str, int] = field(default_factory=dict)

    def nominal(self, d: Dim) -> int:
        """A size to count MACs with: the int itself, or the nominal value of a symbolic dim."""
        if isinstance(d, int):
            return d
        try:
            value = evaluate("$" + d if d.isidentifier() else _dollarise(d), self.dims)
        except ExprError:
            return 1
        return max(1, int(value))

    def numel(self, shape: tuple[Dim, ...]) -> int:
        return math.prod(self.nominal(d) for d in shape)


@dataclass
class MemoryContext(InferContext):
    """What :meth:`Op.memory` may know: nominal dims, the device kind and the autocast dtype."""

    device: Literal["cpu", "cuda"] = "cuda"
    amp: Literal["none", "bf16", "fp16"] = "none"


@dataclass(frozen=True)
class OpMemory:
    """What one op holds while training, per sample (the batch multiplies it).

    Element counts are in the op's activation dtype (4 bytes in fp32, 2 under bf16/fp16 autocast);
    ``*_bytes`` fields have a fixed width (bool masks, int64 indices, fp32 statistics).
    Tensors an op keeps that are its own inputs or outputs are named by index, so a tensor kept by
    several ops (a residual input, a ReLU output read by the next conv) is counted once.
    """

    keeps_inputs: tuple[int, ...] = ()
    """Inputs kept for backward (e.g. linear/conv: the input, for the weight gradient)."""
    keeps_outputs: tuple[int, ...] = ()
    """Outputs kept for backward (ReLU, sigmoid, tanh and softmax differentiate through their result)."""
    kept: float = 0.0
    """Elements of new tensors kept for backward (attention probabilities, head-split copies)."""
    kept_bytes: float = 0.0
    """Bytes of new fixed-width tensors kept for backward (dropout masks, pooling indices, norm stats)."""
    workspace: float = 0.0
    """Elements alive only while the forward runs, besides the outputs (intermediate results)."""
    backward_workspace: float = 0.0
    """Elements alive only while the backward runs, besides the input and parameter gradients."""
    view: bool = False
    """Output 0 shares input 0's memory (reshape, select, identity); its gradient is passed through."""
    view_all: bool = False
    """With ``view``: every output shares input 0's memory (split, chunk)."""
    param_view: bool = False
    """Output 0 is a view of the op's own parameter (``parameter``'s expanded tensor): no new memory,
    and its input (read for the batch size only) gets no gradient."""
    amp: Literal["low", "fp32", "follow"] = "follow"
    """Under autocast: ``low`` computes in bf16/fp16 (matmul, conv; keeps low-precision copies of
    its inputs and weights), ``fp32`` in float32 on CUDA (layer/group/RMS norms, softmax),
    ``follow`` in its input's dtype."""


def _dollarise(expr: str) -> str:
    return re.sub(r"\b([A-Za-z_][A-Za-z0-9_]*)\b", r"$\1", expr)


InitName = Literal[
    "default",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "normal",
    "trunc_normal",
    "zeros",
    "ones",
]


class InitSpec(BaseModel):
    """Parameter initialisation: ``kaiming_normal``, ``{kind: normal, std: 0.02}`` or
    ``{kind: constant, value: 1.0e-6}`` (every element set to ``value``, e.g. ConvNeXt's layer scale)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    kind: InitName | Literal["constant"] = "default"
    mode: Literal["fan_in", "fan_out"] = "fan_in"
    nonlinearity: Literal["relu", "leaky_relu", "linear", "tanh", "sigmoid", "selu"] = "relu"
    gain: float = Field(1.0, gt=0)
    std: float = Field(0.02, gt=0)
    mean: float = 0.0
    value: float | None = Field(None, description="the value of kind: constant")

    @model_validator(mode="after")
    def _constant_value(self) -> InitSpec:
        if self.kind == "constant" and self.value is None:
            raise ValueError("kind: constant needs a value, e.g. {kind: constant, value: 1.0e-6}")
        if self.kind != "constant" and self.value is not None:
            raise ValueError(f"value applies to kind: constant only, not {self.kind}")
        return self


def _init_tag(value: Any) -> str:
    return "spec" if isinstance(value, (dict, InitSpec)) else "name"


InitChoice = Annotated[
    Annotated[InitName, Tag("name")] | Annotated[InitSpec, Tag("spec")], Discriminator(_init_tag)
]
"""A name (``kaiming_normal``) or a mapping (``{kind: constant, value: 0.1}``); the discriminator keeps a
mapping's own error (``kind: constant needs a value``) instead of a list of every name it is not."""


class Op(BaseModel):
    """Base of every op spec. Common fields: ``name``, ``from``, ``init``, ``bias_init``."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False, populate_by_name=True
    )

    op_name: ClassVar[str] = ""
    """The YAML key of the op (``conv2d``)."""
    shorthand: ClassVar[str | None] = None
    """Field filled by a scalar argument: ``dropout: 0.5`` → ``p: 0.5``."""
    from_defaults: ClassVar[dict[str, str]] = {}
    """Fields filled from the spec's ``defaults`` when left unset: ``{"kind": "norm"}``."""
    category: ClassVar[str] = "layers"
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1
    num_outputs: ClassVar[int] = 1
    input_dtypes: ClassVar[tuple[str, ...]] = ("float32",)
    """Dtypes accepted on every input (checked by the driver before :meth:`infer`)."""
    init_any_rank: ClassVar[bool] = False
    """``init`` sets this op's ``weight`` tensors of every rank, not only matrices and kernels (rank >= 2)
    as for other ops, whose 1-d weights (norm scales) keep torch's init."""
    init_from_defaults: ClassVar[bool] = True
    """An unset ``init`` is taken from the spec's ``defaults.init``. False for ops whose tensor has a
    meaningful start of its own (``parameter``: zeros, ``scale``: ones): only their own ``init`` changes
    it, since a document-wide weight init (kaiming, trunc_normal) is about layers' weights."""

    name: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="node name for `from:` references; a dotted path (layer1.0.conv1) names the node's exact path",
    )
    from_: str | list[str] | None = Field(
        None, alias="from", description="input node(s): a name, an input, or -1/-2 for earlier nodes"
    )
    init: InitChoice | None = Field(None, description="weight init (default from `defaults.init`)")
    bias_init: InitChoice | None = Field(None, description="bias init (default from `defaults.bias_init`)")

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        """Shape rule: raise :class:`ShapeMismatch` with a plain message when inputs do not fit."""
        raise NotImplementedError

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        """The torch module computing this op; ``forward`` takes the inputs positionally."""
        raise NotImplementedError

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        """What the op keeps for backward and needs while it runs (see :class:`OpMemory`).

        The default keeps every float input, what most ops need (the input of a weighted op for
        its weight gradient, the argument of a nonlinear function for its derivative), so an op
        without its own rule is estimated on the safe side of ops like ``add`` that keep nothing.
        Ops that keep their output, less, or intermediate tensors override it.
        """
        return OpMemory(keeps_inputs=float_inputs(inputs))

    def tied(self) -> dict[str, str]:
        """Parameters shared with another node: ``{parameter name: node name}``.

        Lowering resolves each node name to its path; the builder replaces this module's parameter
        by the other node's, after every module exists. Shape rules leave tied parameters out of
        ``param_shapes``, so a shared tensor is counted once (as torch's ``parameters()`` does).
        """
        return {}

    def index_bound(self) -> int | None:
        """For ops that index with an int64 input (embeddings): values must be below this bound."""
        return None

    def args(self) -> dict[str, Any]:
        """The op's own arguments (without the common node fields), for render and tables."""
        common = {"name", "from_", "init", "bias_init"}
        # unset optional arguments (None: "not used by this function" or "torch's default") are left out
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in common and v is not None}


def float_inputs(inputs: list[TensorType]) -> tuple[int, ...]:
    """Indices of the float inputs (the ones that carry gradients)."""
    return tuple(i for i, t in enumerate(inputs) if t.dtype == "float32")


def expect_rank(t: TensorType, ranks: tuple[int, ...], what: str) -> None:
    if t.rank not in ranks:
        names = " or ".join(f"{r}-d" for r in ranks)
        raise ShapeMismatch(f"expects a {names} input {what}, got {t.rank}-d {t}")


def expect_int(d: Dim, what: str) -> int:
    if not isinstance(d, int):
        raise ShapeMismatch(f"{what} must have a fixed size, but it is the symbolic axis '{d}'")
    return d
