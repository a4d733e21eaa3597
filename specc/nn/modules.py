"""Small parameter-free torch modules used by op builders (shape ops and merges)."""

from __future__ import annotations

import torch
import torch.nn as nn


class Elementwise(nn.Module):
    """Sum or product of all inputs (broadcasting)."""

    def __init__(self, fn: str) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x if self.fn == "add" else out * x
        return out

    def extra_repr(self) -> str:
        return self.fn


class Concat(nn.Module):
    """``torch.cat`` along a fixed axis of the batched tensor."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Reshape(nn.Module):
    """Reshape every sample to ``shape`` (the batch axis is kept)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class GlobalPool(nn.Module):
    """Mean or max over every axis after the channel axis: ``(B, C, ...)`` → ``(B, C)``."""

    def __init__(self, kind: str, sample_rank: int) -> None:
        super().__init__()
        self.kind = kind
        self.dims = tuple(range(2, sample_rank + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "avg":
            return x.mean(dim=self.dims)
        return x.amax(dim=self.dims)

    def extra_repr(self) -> str:
        return self.kind


class Shortcut(nn.Sequential):
    """A residual shortcut: runs its layers on input 0; input 1 (the body output) only gave the shape."""

    @property
    def passthrough(self) -> bool:
        """An empty shortcut is the identity: the plan aliases its input instead of calling it."""
        return len(self) == 0

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        for module in self:
            x = module(x)
        return x
