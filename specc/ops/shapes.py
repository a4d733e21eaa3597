"""Dimension arithmetic shared by shape rules; symbolic dims pass through as expressions."""

from __future__ import annotations

from collections.abc import Sequence

from specc.ops.base import Dim, ShapeMismatch


def tuple_n(value: int | Sequence[int], n: int, what: str) -> tuple[int, ...]:
    """Expand ``3`` to ``(3, 3)``; check a list has ``n`` items."""
    if isinstance(value, int):
        return (value,) * n
    if len(value) != n:
        raise ShapeMismatch(f"{what} needs {n} values, got {list(value)}")
    return tuple(value)


def window_dim(size: Dim, kernel: int, stride: int, pad: int, dilation: int = 1, ceil: bool = False) -> Dim:
    """Output length of a convolution/pooling window along one axis (torch's formula)."""
    span = dilation * (kernel - 1) + 1
    if isinstance(size, str):
        if stride == 1 and 2 * pad == span - 1:
            return size
        if stride == 1:
            delta = 2 * pad - span + 1
            return f"{size}{delta:+d}"
        return f"({size}{2 * pad - span:+d})//{stride}+1"
    if size + 2 * pad < span:
        raise ShapeMismatch(
            f"window of size {span} (kernel {kernel}, dilation {dilation}) does not fit an axis of {size}"
            f" with padding {pad}"
        )
    num = size + 2 * pad - span
    out = (-(-num // stride) if ceil else num // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1  # torch: the last window must start inside the input or left padding
    return out
