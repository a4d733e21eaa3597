"""Arithmetic on dims that may be symbolic: a symbolic result is an expression string over the axis
names (``"seq*2"``, ``"seq-1"``), which :meth:`InferContext.nominal` evaluates for MACs and the ONNX
exporter uses as the name of a dynamic axis."""

from __future__ import annotations

from specc.ops.base import Dim, ShapeMismatch


def _term(d: str) -> str:
    """``d`` ready to be an operand: names stay bare, compound expressions get parentheses."""
    return d if d.isidentifier() else f"({d})"


def add_dim(d: Dim, delta: int) -> Dim:
    if isinstance(d, int):
        return d + delta
    return d if delta == 0 else f"{_term(d)}{delta:+d}"


def mul_dim(d: Dim, factor: int) -> Dim:
    if isinstance(d, int):
        return d * factor
    return d if factor == 1 else f"{_term(d)}*{factor}"


def div_dim(d: Dim, divisor: int, what: str) -> Dim:
    """``d / divisor`` where ``d`` must divide evenly (checked when ``d`` is known)."""
    if isinstance(d, int):
        if d % divisor:
            raise ShapeMismatch(f"{what} {d} is not divisible by {divisor}")
        return d // divisor
    return d if divisor == 1 else f"{_term(d)}//{divisor}"


def ceil_div_dim(d: Dim, divisor: int) -> Dim:
    if isinstance(d, int):
        return -(-d // divisor)
    return d if divisor == 1 else f"({_term(d)}+{divisor - 1})//{divisor}"


def axis_index(dim: int, rank: int) -> int:
    """A (possibly negative) axis of one sample as a non-negative index."""
    if not -rank <= dim < rank:
        raise ShapeMismatch(f"dim {dim} is out of range for a {rank}-d input")
    return dim % rank
