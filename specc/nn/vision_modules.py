"""Torch modules behind the axis, resampling and learned-tensor ops (permute, slice, split, upsample,
parameter, scale) and the channel-axis norms. Each takes batched tensors; shapes below include the
batch axis ``B``."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from specc.nn.modules import RMSNorm


class Permute(nn.Module):
    """``x.permute(0, *dims)``: reorder the axes of every sample (the batch axis stays first)."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = (0, *dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class Slice(nn.Module):
    """``x[..., start:stop:step]`` on one axis of the batched tensor."""

    def __init__(self, dim: int, start: int | None, stop: int | None, step: int) -> None:
        super().__init__()
        self.index = (slice(None),) * dim + (slice(start, stop, step),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.index]

    def extra_repr(self) -> str:
        return f"index={self.index}"


class Split(nn.Module):
    """``torch.split(x, sizes, dim)``: a tuple of consecutive pieces."""

    def __init__(self, sizes: list[int], dim: int) -> None:
        super().__init__()
        self.sizes = sizes
        self.dim = dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.split(x, self.sizes, dim=self.dim))

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, dim={self.dim}"


class Upsample(nn.Module):
    """``F.interpolate`` to a fixed ``size`` or by ``scale_factor`` (torch's ``nn.Upsample``)."""

    def __init__(
        self,
        size: tuple[int, ...] | None,
        scale_factor: tuple[float, ...] | None,
        mode: str,
        align_corners: bool | None,
    ) -> None:
        super().__init__()
        self.size = size
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(
            x,
            size=self.size,
            scale_factor=self.scale_factor,
            mode=self.mode,
            align_corners=self.align_corners,
        )

    def extra_repr(self) -> str:
        how = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{how}, mode={self.mode!r}, align_corners={self.align_corners}"


class LearnedTensor(nn.Module):
    """A learned tensor ``weight`` handed to every sample: ``(B, *shape)`` (an expanded view).

    The input only gives the batch size. ``batched`` stores ``weight`` as ``(1, *shape)`` (the layout
    of torchvision's and timm's class tokens and position tables).
    """

    def __init__(self, shape: tuple[int, ...], batched: bool, requires_grad: bool) -> None:
        super().__init__()
        self.shape = shape
        stored = (1, *shape) if batched else shape
        self.weight = nn.Parameter(torch.zeros(stored), requires_grad=requires_grad)

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        return self.weight.expand(like.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}"


class Scale(nn.Module):
    """Multiply by a learned vector ``weight`` along one axis (layer scale).

    ``weight`` has the shape that broadcasts over one sample: ``(C, 1, 1)`` for the channels of a
    ``(B, C, H, W)`` map (torchvision's ConvNeXt ``layer_scale``), ``(D,)`` for the last axis.
    """

    def __init__(self, shape: tuple[int, ...], requires_grad: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(shape), requires_grad=requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}"


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of ``(B, C, ...)`` at each position (ConvNeXt's ``LayerNorm2d``;
    parameters ``weight``/``bias`` of shape ``(C,)``, like torchvision's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last, back = _channels_last(x.dim())
        x = x.permute(last)  # (B, ..., C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(back)


def _channels_last(rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Permutations (B, C, ...) -> (B, ..., C) and back, with non-negative axes (the torchscript
    exporter writes ``movedim(1, -1)`` as an invalid ONNX ``perm`` holding -1)."""
    return (0, *range(2, rank), 1), (0, rank - 1, *range(1, rank - 1))


class ChannelRMSNorm(RMSNorm):
    """RMSNorm over the channel axis of ``(B, C, ...)`` at each position: ``x / rms_C(x) · weight``
    (``weight`` ``(C,)``; the exportable :class:`specc.nn.modules.RMSNorm` on channels-last data)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last, back = _channels_last(x.dim())
        return super().forward(x.permute(last)).permute(back)
