"""Activations: ``act`` (kind from ``defaults.activation``) and one op per function (``relu``, ...).

``gelu`` is the exact (erf) GELU; ``gelu_tanh`` is its tanh approximation (GPT-2's "gelu_new", Hugging
Face's "gelu_pytorch_tanh"), the same as ``gelu: {approximate: tanh}``. ``silu`` is swish
(EfficientNet), ``relu6`` and ``hardswish``/``hardsigmoid`` are MobileNet's, ``mish`` is
``x·tanh(softplus(x))``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from specc.ops.base import InferContext, Inferred, MemoryContext, Op, OpMemory, ShapeMismatch, TensorType
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn

ActName = Literal[
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "gelu",
    "gelu_tanh",
    "silu",
    "mish",
    "hardswish",
    "hardsigmoid",
    "sigmoid",
    "tanh",
    "softmax",
    "identity",
]
ACTIVATIONS: tuple[str, ...] = ActName.__args__  # type: ignore[attr-defined]

_KEEPS_RESULT = frozenset({"relu", "sigmoid", "tanh", "softmax"})

# which extra argument each function takes (all others are rejected)
_ARGS: dict[str, str] = {
    "leaky_relu": "negative_slope",
    "elu": "alpha",
    "gelu": "approximate",
    "softmax": "dim",
}


class _Activation(Op):
    fixed: ClassVar[str | None] = None
    category = "activations"
    negative_slope: float | None = Field(None, description="leaky_relu slope (0.01)")
    alpha: float | None = Field(None, description="elu alpha (1.0)")
    approximate: Literal["none", "tanh"] | None = Field(None, description='gelu: "none" (erf) or "tanh"')
    dim: int | None = Field(None, description="softmax axis of one sample (-1)")

    @property
    def function(self) -> str:
        return self.fixed or getattr(self, "fn", None) or "relu"

    @model_validator(mode="after")
    def _only_its_args(self) -> _Activation:
        fn = self.fixed or getattr(self, "fn", None)
        for arg in ("negative_slope", "alpha", "approximate", "dim"):
            if getattr(self, arg) is not None and fn is not None and _ARGS.get(fn) != arg:
                raise ValueError(f"{arg} does not apply to {fn}")
        return self

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        if self.function == "softmax" and self.dim is not None and not -x.rank <= self.dim < x.rank:
            raise ShapeMismatch(f"softmax dim {self.dim} is out of range for a {x.rank}-d input {x}")
        return Inferred([x], [], 0)

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        fn = self.function
        if fn == "identity":
            return OpMemory(view=True)
        if fn in _KEEPS_RESULT:  # their derivative is a function of the result
            return OpMemory(keeps_outputs=(0,), amp="fp32" if fn == "softmax" else "follow")
        return OpMemory(keeps_inputs=(0,))

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        import torch.nn as nn

        fn = self.function
        if fn == "softmax":
            d = -1 if self.dim is None else self.dim
            return nn.Softmax(dim=d if d < 0 else d + 1)
        kwargs: dict[str, Any] = {}
        arg = _ARGS.get(fn)
        if arg and getattr(self, arg) is not None:
            kwargs[arg] = getattr(self, arg)
        if fn == "gelu_tanh":
            fn, kwargs = "gelu", {"approximate": "tanh"}
        cls = {
            "relu": nn.ReLU,
            "relu6": nn.ReLU6,
            "leaky_relu": nn.LeakyReLU,
            "elu": nn.ELU,
            "gelu": nn.GELU,
            "silu": nn.SiLU,
            "mish": nn.Mish,
            "hardswish": nn.Hardswish,
            "hardsigmoid": nn.Hardsigmoid,
            "sigmoid": nn.Sigmoid,
            "tanh": nn.Tanh,
            "identity": nn.Identity,
        }[fn]
        module: nn.Module = cls(**kwargs)
        return module


@register
class Act(_Activation):
    """Activation whose function comes from ``defaults.activation`` unless given.

    Example::

        - act                 # defaults.activation
        - act: gelu
        - act: gelu_tanh            # = gelu: {approximate: tanh}
        - act: {fn: leaky_relu, negative_slope: 0.2}
    """

    op_name = "act"
    shorthand = "fn"
    from_defaults = {"fn": "activation"}
    fn: ActName | None = None


_FORMULAS: dict[str, str] = {
    "relu": "max(x, 0)",
    "relu6": "min(max(x, 0), 6) (MobileNetV2)",
    "leaky_relu": "x if x > 0 else negative_slope·x",
    "elu": "x if x > 0 else alpha·(exp(x) - 1)",
    "gelu": "x·Φ(x), exact (erf); approximate: tanh gives the tanh form",
    "gelu_tanh": "0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))), the tanh GELU (GPT-2)",
    "silu": "x·sigmoid(x), a.k.a. swish (EfficientNet)",
    "mish": "x·tanh(softplus(x))",
    "hardswish": "x·relu6(x + 3)/6 (MobileNetV3)",
    "hardsigmoid": "relu6(x + 3)/6 (MobileNetV3's squeeze-excitation gate)",
    "sigmoid": "1/(1 + exp(-x))",
    "tanh": "tanh(x)",
    "softmax": "exp(x)/sum(exp(x)) along dim",
    "identity": "x",
}


def _make(fn: str) -> type[_Activation]:
    arg = _ARGS.get(fn)
    doc = f"The {fn} activation: {_FORMULAS[fn]}; shape preserving.\n\n    Example::\n\n        - {fn}\n"
    if arg:
        doc += f"        - {fn}: {{{arg}: ...}}\n"
    namespace = {"__doc__": doc, "__module__": __name__, "op_name": fn, "fixed": fn, "shorthand": arg}
    return register(type(fn.title().replace("_", ""), (_Activation,), namespace))


for _fn in ACTIVATIONS:
    _make(_fn)
