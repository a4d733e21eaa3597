"""Shape-only and regularisation ops: dropout, flatten, reshape."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field

from specc.ops.base import Dim, InferContext, Inferred, MemoryContext, Op, OpMemory, ShapeMismatch, TensorType
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn


@register
class Dropout(Op):
    """Zero elements with probability ``p`` while training (identity in eval mode and in exports).

    Example::

        - dropout: 0.5
    """

    op_name = "dropout"
    shorthand = "p"
    category = "regularisation"
    p: float = Field(0.5, ge=0, lt=1)

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        return Inferred([inputs[0]])

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        if self.p == 0:
            return OpMemory(view=True)  # torch returns its input
        numel = ctx.numel(inputs[0].shape)
        if ctx.device == "cuda":  # fused kernel: a bool mask
            return OpMemory(kept_bytes=numel)
        return OpMemory(kept=numel)  # CPU: input * (bernoulli / (1 - p)) keeps the scaled noise

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        import torch.nn as nn

        return nn.Dropout(self.p)


@register
class Flatten(Op):
    """Flatten the axes of one sample from ``start_dim`` on: ``(C, H, W)`` → ``(C·H·W,)``.

    Example::

        - flatten
        - flatten: {start_dim: 1}     # (C, H, W) -> (C, H·W)
    """

    op_name = "flatten"
    shorthand = "start_dim"
    category = "shape"
    start_dim: int = Field(0, ge=0, description="first axis of one sample to flatten (batch excluded)")

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        if self.start_dim >= max(x.rank, 1):
            raise ShapeMismatch(f"start_dim {self.start_dim} is out of range for {x.rank}-d input {x}")
        tail = x.shape[self.start_dim :]
        size: Dim = math.prod(tail) if all(isinstance(d, int) for d in tail) else "*".join(map(str, tail))  # type: ignore[arg-type,unused-ignore]
        return Inferred([TensorType((*x.shape[: self.start_dim], size), x.dtype)])

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        return OpMemory(view=True)

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        import torch.nn as nn

        return nn.Flatten(self.start_dim + 1)


@register
class Reshape(Op):
    """Reshape one sample (the batch axis is kept); one entry may be -1, and a symbolic axis of the
    input may be named to keep it: ``(seq, 2048)`` with ``[seq, 32, -1]`` → ``(seq, 32, 64)``.

    Each named axis stands for the same run-time size as in the input (it is read from the input
    when the model runs); -1 takes the rest, which may itself be a symbolic axis (``(seq, 32, 64)``
    with ``[-1, 2048]`` → ``(seq, 2048)``).

    Example::

        - reshape: [16, 5, 5]
        - reshape: [seq, $heads, -1]        # split features into heads, seq stays symbolic
    """

    op_name = "reshape"
    shorthand = "shape"
    category = "shape"
    shape: list[int | str] = Field(min_length=1)

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        return Inferred([TensorType(tuple(self.target(x)[0]), x.dtype)])

    def target(self, x: TensorType) -> tuple[list[Dim], list[tuple[int, int]]]:
        """The output shape, and ``(output position, input axis)`` of every named symbolic axis."""
        target = list(self.shape)
        if target.count(-1) > 1 or any(isinstance(d, int) and (d == 0 or d < -1) for d in target):
            raise ShapeMismatch(f"shape {target} may hold positive sizes, axis names and at most one -1")
        free = [i for i, d in enumerate(x.shape) if not isinstance(d, int)]
        taken: list[tuple[int, int]] = []
        for pos, d in enumerate(target):
            if isinstance(d, str):
                axis = next((i for i in free if x.shape[i] == d), None)
                if axis is None:
                    symbols = ", ".join(str(x.shape[i]) for i in free) or "none"
                    raise ShapeMismatch(
                        f"'{d}' in shape {target} is not a symbolic axis of the input {x} ({symbols})"
                    )
                free.remove(axis)
                taken.append((pos, axis))
        total = math.prod(d for d in x.shape if isinstance(d, int))
        known = math.prod(d for d in target if isinstance(d, int) and d != -1)
        rest = [str(x.shape[i]) for i in free]  # symbolic input axes that no name took
        if -1 not in target:
            if rest or known != total:
                raise ShapeMismatch(f"cannot reshape {x} to {self.shape}: the sizes differ")
            return target, taken
        if total % known:
            raise ShapeMismatch(f"cannot reshape {x} ({total} values per fixed part) to {self.shape}")
        size = total // known
        fill: Dim = size if not rest else "*".join(rest + ([str(size)] if size != 1 else []))
        target[target.index(-1)] = fill
        return target, taken

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        return OpMemory(view=True)

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.modules import Reshape as ReshapeModule

        shape, taken = self.target(inputs[0])
        # a size only known at run time is read from the input (named axes) or left to -1
        sizes = tuple(d if isinstance(d, int) else -1 for d in shape)
        sizes = tuple(0 if any(p == i for p, _ in taken) else d for i, d in enumerate(sizes))
        return ReshapeModule(sizes, tuple(taken))
