"""Image augmentations for training, per sample, in numpy and Pillow (torch-free).

The randomness of a sample is a pure function of ``(seed, epoch, sample index)``
(:meth:`Augmenter.rng`), so worker processes, their number, the process count and resuming a run
never change what a sample becomes. Draws happen in a fixed order: resized-crop box, crop offsets,
flip, colour jitter.

Augmentations (``train.augment``, a list or a preset):

* ``resized_crop`` — torchvision's ``RandomResizedCrop``: a box of ``resized_crop_scale`` (default
  0.08..1) of the area and aspect ratio 3/4..4/3 (ten tries, else the centred largest box), resized
  to the sample size (bilinear). Image files are cropped and resized in one Pillow call, before
  decoding to floats.
* ``crop`` — zero-pad ``crop_padding`` pixels on each side, then take a random window of the
  original size (the CIFAR recipe; zero is the mean after standardisation).
* ``flip`` — horizontal flip with probability 1/2.
* ``color_jitter`` — brightness, contrast and (RGB) saturation factors uniform in ``1 ± jitter``,
  applied to pixel values in [0, 1] (clipped), as torchvision's ``ColorJitter`` without hue.

Presets: ``none``, ``crop`` (= [crop]), ``crop_flip`` (= [crop, flip]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
AUGMENTATIONS: tuple[str, ...] = ("resized_crop", "crop", "flip", "color_jitter")
PRESETS: dict[str, tuple[str, ...]] = {"none": (), "crop": ("crop",), "crop_flip": ("crop", "flip")}
_SALT = 0x5EC_A06


@dataclass(frozen=True)
class Augmenter:
    """Per-sample image augmentation (see the module docstring).

    Attributes:
        kinds: The augmentations, applied in the order of :data:`AUGMENTATIONS`.
        seed: The run's seed.
        crop_padding: Zero padding of ``crop``.
        scale: Area range of ``resized_crop``.
        jitter: Strength of ``color_jitter``.
        mean: Per-channel mean the arrays were standardised with (None: they hold pixel values).
        std: Per-channel std of the standardisation.
        clip: Whether pixel values lie in [0, 1] (clipped after colour jitter).
    """

    kinds: tuple[str, ...]
    seed: int
    crop_padding: int = 2
    scale: tuple[float, float] = (0.08, 1.0)
    jitter: float = 0.4
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    clip: bool = True

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        """The random stream of sample ``index`` in epoch ``epoch``."""
        return np.random.default_rng([_SALT, self.seed, epoch, index])

    def resized_box(self, rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
        """A ``resized_crop`` box ``(left, top, right, bottom)`` of a ``width`` x ``height`` image."""
        area = width * height
        log_ratio = (math.log(3 / 4), math.log(4 / 3))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            ratio = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target * ratio)))
            h = int(round(math.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return left, top, left + w, top + h
        side = min(width, height)  # fallback: the centred largest square (torchvision: by ratio bounds)
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    def array(self, x: Array, epoch: int, index: int, box_done: bool = False) -> Array:
        """Augment one (C, H, W) float sample; ``box_done``: the resized crop was applied at decoding
        (:meth:`rng` must then have been consumed by :meth:`resized_box` the same way)."""
        return self.rest(x, self.rng(epoch, index), box_done)

    def rest(self, x: Array, rng: np.random.Generator, box_done: bool = False) -> Array:
        """Apply the augmentations to (C, H, W) float ``x`` with the sample's ``rng``."""
        _, h, w = x.shape
        if "resized_crop" in self.kinds and not box_done:
            left, top, right, bottom = self.resized_box(rng, w, h)
            x = resize_bilinear(x[None, :, top:bottom, left:right], h, w)[0]
        if "crop" in self.kinds and self.crop_padding > 0:
            p = self.crop_padding
            oy, ox = int(rng.integers(0, 2 * p + 1)), int(rng.integers(0, 2 * p + 1))
            padded = np.pad(x, ((0, 0), (p, p), (p, p)))
            x = padded[:, oy : oy + h, ox : ox + w]
        if "flip" in self.kinds and rng.random() < 0.5:
            x = x[:, :, ::-1]
        if "color_jitter" in self.kinds and self.jitter > 0:
            x = self._jitter(x, rng)
        return np.ascontiguousarray(x, dtype=np.float32)

    def _jitter(self, x: Array, rng: np.random.Generator) -> Array:
        j = self.jitter
        b, c, s = (float(v) for v in rng.uniform(1 - j, 1 + j, size=3))
        mean = std = None
        if self.mean is not None and self.std is not None:
            mean = np.asarray(self.mean, np.float32)[:, None, None]
            std = np.asarray(self.std, np.float32)[:, None, None]
            x = x * std + mean  # back to pixel values
        x = x * b
        grey = _grey(x)
        x = (x - grey.mean()) * c + grey.mean()
        if x.shape[0] == 3:
            grey = _grey(x)
            x = grey + (x - grey) * s
        if self.clip:
            x = np.clip(x, 0.0, 1.0)
        if mean is not None and std is not None:
            x = (x - mean) / std
        return x.astype(np.float32)


def _grey(x: Array) -> Array:
    if x.shape[0] != 3:
        return x
    out: Array = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    return out


def make_augmenter(
    augment: str | Sequence[str],
    seed: int,
    *,
    crop_padding: int = 2,
    scale: tuple[float, float] = (0.08, 1.0),
    jitter: float = 0.4,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    clip: bool = True,
) -> Augmenter | None:
    """The augmenter of a config (None when nothing is asked).

    ``mean``/``std``: the standardisation the augmented arrays already carry (colour jitter undoes it
    first); None when they hold pixel values. ``clip``: pixel values lie in [0, 1].
    """
    kinds = PRESETS[augment] if isinstance(augment, str) else tuple(augment)
    if not kinds:
        return None
    return Augmenter(
        tuple(k for k in AUGMENTATIONS if k in kinds),
        seed,
        crop_padding,
        (float(scale[0]), float(scale[1])),
        jitter,
        tuple(float(v) for v in mean) if mean is not None else None,
        tuple(float(v) for v in std) if std is not None else None,
        clip,
    )


def resize_bilinear(images: Array, height: int, width: int) -> Array:
    """Resize a (N, C, H, W) float batch with bilinear interpolation (half-pixel centres, no antialias).

    Args:
        images: Batch to resize.
        height: Output height.
        width: Output width.

    Returns:
        The resized batch as float32, shape (N, C, height, width).
    """
    src_h, src_w = int(images.shape[2]), int(images.shape[3])

    def coords(n_out: int, n_in: int) -> tuple[Array, Array, Array]:
        pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        pos = np.clip(pos, 0.0, n_in - 1)
        i0 = np.floor(pos).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (pos - i0).astype(np.float32)

    y0, y1, wy = coords(height, src_h)
    x0, x1, wx = coords(width, src_w)
    img = images.astype(np.float32)
    top = img[:, :, y0, :] * (1 - wy)[:, None] + img[:, :, y1, :] * wy[:, None]
    out: Array = (top[:, :, :, x0] * (1 - wx) + top[:, :, :, x1] * wx).astype(np.float32)
    return out
