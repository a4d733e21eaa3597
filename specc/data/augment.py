"""Batch augmentations for image training (torch; the only module of :mod:`specc.data` that imports it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator, padding: int = 2, flip: bool = True
) -> torch.Tensor:
    """Randomly crop each image after zero padding and randomly flip it horizontally.

    All randomness comes from ``generator`` (drawn on its own device, in a fixed order: row offsets,
    column offsets, then flips), so the same generator state reproduces the same batch exactly, e.g.
    after resuming a run. One gather does crop and flip for the whole batch (no Python loop).

    Args:
        x: Batch of shape (B, C, H, W).
        generator: Source of randomness.
        padding: Zero padding on each side; offsets are uniform in ``0..2*padding``.
        flip: Whether to flip each image with probability 1/2.

    Returns:
        The augmented batch, same shape, dtype and device as ``x``.
    """
    if x.dim() != 4:
        raise ValueError(f"random_crop_flip expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, _, h, w = x.shape
    if b == 0 or (padding == 0 and not flip):
        return x
    gen_device = generator.device
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(x.device)
    cols = torch.arange(w, device=x.device).expand(b, w)
    if flip:
        flipped = torch.rand((b,), generator=generator, device=gen_device).to(x.device) < 0.5
        cols = torch.where(flipped[:, None], (w - 1) - cols, cols)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = ox[:, None] + cols  # (B, W)
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
