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
    """Reshape every sample to ``shape`` (the batch axis is kept). ``take`` lists ``(position, axis)``
    pairs: the size at ``position`` is read from the input's sample axis ``axis`` at run time (a
    symbolic axis); a -1 in ``shape`` takes the rest."""

    def __init__(self, shape: tuple[int, ...], take: tuple[tuple[int, int], ...] = ()) -> None:
        super().__init__()
        self.shape, self.take = shape, take

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.take:
            return x.reshape(x.shape[0], *self.shape)
        sizes: list[int | torch.SymInt] = list(self.shape)
        for pos, axis in self.take:
            sizes[pos] = x.shape[axis + 1]
        return x.reshape(x.shape[0], *sizes)

    def extra_repr(self) -> str:
        return f"shape={self.shape}" + (f", take={self.take}" if self.take else "")


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


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` (same ``weight``, init and arguments) written with plain ops, so that the
    TorchScript ONNX exporter handles it (it has no symbolic for ``aten::rms_norm``). The math is
    Hugging Face's ``LlamaRMSNorm``: ``weight · x / sqrt(mean(x²) + eps)``, computed in float32 and
    cast back to the input dtype before the weight multiplies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(-len(self.normalized_shape), 0))
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        if x.dtype == torch.float32:  # no casts to trace or run: the common case
            y = x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
        else:
            xf = x.float()
            y = (xf * torch.rsqrt(xf.pow(2).mean(dims, keepdim=True) + eps)).to(x.dtype)
        return y * self.weight if self.weight is not None else y


class DropPath(nn.Module):
    """Stochastic depth, torchvision's ``StochasticDepth(p, mode="row")``: (B, ...) → (B, ...)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        noise = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        return x * noise.bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"
