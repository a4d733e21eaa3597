"""Splits: sequences of (input, target) samples read in batches, in memory or lazily from files.

A :class:`Split` is read with :meth:`Split.take` (any indices, optionally augmented) or
:meth:`Split.batches` (in order). In-memory splits (:class:`ArraySplit`) also expose ``x`` and ``y``;
lazy splits (image files, tar shards, memory-mapped arrays, text windows) materialise them only
within the data budget. Splitting is reproducible (a pure function of the seed) and stratified by
class for classification data. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from specc.errors import DataError
from specc.limits import DEFAULT_MAX_DATA_BYTES, DEFAULT_MAX_IMAGE_PIXELS

if TYPE_CHECKING:
    from specc.data.augment import Augmenter

Array = npt.NDArray[Any]
Index = Sequence[int] | npt.NDArray[np.integer[Any]]


@dataclass(frozen=True)
class DataBudget:
    """Limits on what the data may make specc allocate, checked before allocating.

    Attributes:
        max_bytes: Any one array sized by the data (a split held in memory, a column, the text's
            token ids, a batch of samples, a split materialised through ``Split.x``).
        max_image_pixels: Pixels of one image file (width x height), checked from its header before
            it is decoded (decompression bombs).
    """

    max_bytes: int = DEFAULT_MAX_DATA_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def check(self, what: str, shape: Sequence[int], itemsize: int, hint: str = "") -> None:
        """Raise :class:`DataError` if an array of ``shape`` and ``itemsize`` would exceed ``max_bytes``."""
        nbytes = math.prod(int(d) for d in shape) * itemsize
        if nbytes > self.max_bytes:
            raise DataError(
                f"{what}: an array of shape {tuple(int(d) for d in shape)} needs {_size(nbytes)}, above "
                f"the data budget of {_size(self.max_bytes)} (train.max_data_bytes){hint}"
            )


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"  # pragma: no cover


class Split:
    """One split of a data set: ``len(split)`` samples, read by index.

    Subclasses implement :meth:`take`. ``x``/``y`` materialise the whole split (budget-checked);
    prefer :meth:`batches` or :meth:`take` for splits that may be large.
    """

    budget: DataBudget = DataBudget()

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        raise NotImplementedError

    @property
    def target_shape(self) -> tuple[int, ...]:
        """Shape of one target (``()`` for a class id)."""
        raise NotImplementedError

    @property
    def lazy(self) -> bool:
        """True when samples are read (decoded) on demand rather than held in memory."""
        return True

    def take(self, idx: Index, aug: Augmenter | None = None, epoch: int = 0) -> tuple[Array, Array]:
        """Inputs and targets of the samples ``idx`` (positions in this split), stacked.

        Args:
            idx: Positions in the split.
            aug: Training augmentation; its randomness is a pure function of (seed, epoch, position).
            epoch: The epoch (for the augmentation's randomness).
        """
        raise NotImplementedError

    def batches(self, n: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[Array, Array]]:
        """The samples ``start..stop`` in order, ``n`` at a time (the last batch may be smaller)."""
        end = len(self) if stop is None else min(stop, len(self))
        for i in range(start, end, n):
            yield self.take(np.arange(i, min(i + n, end)))

    def arrays(self, limit: int | None = None) -> tuple[Array, Array]:
        """The first ``limit`` samples (all by default) as two arrays, within the data budget."""
        n = len(self) if limit is None else min(limit, len(self))
        self.budget.check(f"{n} samples of the split", (n, *self.sample_shape), 4)
        if n == 0:
            return self.take(np.arange(0))
        parts = list(self.batches(256, 0, n))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    @property
    def x(self) -> Array:
        """All inputs (materialised for lazy splits; see :meth:`arrays`)."""
        return self.arrays()[0]

    @property
    def y(self) -> Array:
        """All targets (materialised for lazy splits; see :meth:`arrays`)."""
        return self.arrays()[1]


class ArraySplit(Split):
    """A split held in memory as two arrays (``x`` (N, ...) inputs, ``y`` (N, ...) targets)."""

    def __init__(self, x: Array, y: Array) -> None:
        self._x, self._y = x, y

    def __len__(self) -> int:
        return int(self._x.shape[0])

    @property
    def x(self) -> Array:
        return self._x

    @property
    def y(self) -> Array:
        return self._y

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._x.shape[1:])

    @property
    def target_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._y.shape[1:])

    @property
    def lazy(self) -> bool:
        return False

    def take(self, idx: Index, aug: Augmenter | None = None, epoch: int = 0) -> tuple[Array, Array]:
        ids = np.asarray(idx, dtype=np.int64)
        x, y = self._x[ids], self._y[ids]
        if aug is not None and x.ndim == 4:
            x = np.stack([aug.array(x[k], epoch, int(i)) for k, i in enumerate(ids)]) if len(ids) else x
        return x, y

    def arrays(self, limit: int | None = None) -> tuple[Array, Array]:
        return (self._x, self._y) if limit is None else (self._x[:limit], self._y[:limit])


# ---------------------------------------------------------------------------------- splitting


def split_sizes(n: int, vf: float, tf: float, source: str, unit: str = "samples") -> tuple[int, int, int]:
    """Sizes of the train/val/test parts of ``n`` samples (val and test at least 1 when asked)."""
    n_val = max(1, int(round(n * vf))) if vf > 0 else 0
    n_test = max(1, int(round(n * tf))) if tf > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DataError(
            f"data '{source}' has only {n} {unit}: too few for val_fraction={vf} and "
            f"test_fraction={tf} (each split needs at least one)"
        )
    return n_train, n_val, n_test


def split_indices(
    n: int,
    seed: int,
    vf: float,
    tf: float,
    source: str,
    labels: Array | None = None,
    cap: int | None = None,
) -> tuple[Array, Array, Array]:
    """Train/val/test positions of ``n`` samples: a pure function of its arguments.

    The samples are shuffled with ``seed`` (and capped at ``cap``). With ``labels`` (classification)
    the split is stratified: each class gives the val and test splits its share of their sizes
    (largest remainder), so every split keeps the class proportions. Each split lists its samples
    in the shuffled order.
    """
    perm = np.random.default_rng(seed).permutation(n)
    if cap is not None:
        perm = perm[:cap]
    n_train, n_val, n_test = split_sizes(len(perm), vf, tf, source)
    if labels is None:
        return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    lab = np.asarray(labels)[perm]
    classes, inverse, counts = np.unique(lab, return_inverse=True, return_counts=True)
    k_val = _apportion(n_val, counts)
    k_test = np.minimum(_apportion(n_test, counts), counts - k_val)
    part = np.zeros(len(perm), dtype=np.int8)  # 0 train, 1 val, 2 test
    rank = np.empty(len(perm), dtype=np.int64)  # position of each sample within its class
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank[order] = np.arange(len(perm)) - np.repeat(starts, counts)
    kv, kt = k_val[inverse], k_test[inverse]
    part[rank < kv] = 1
    part[(rank >= kv) & (rank < kv + kt)] = 2
    del classes
    return perm[part == 0], perm[part == 1], perm[part == 2]


def _apportion(total: int, counts: Array) -> Array:
    """Split ``total`` over groups in proportion to ``counts`` (largest remainder, ties by order)."""
    if total == 0:
        return np.zeros(len(counts), dtype=np.int64)
    quota = counts * (total / counts.sum())
    base = np.floor(quota).astype(np.int64)
    rest = total - int(base.sum())
    if rest > 0:
        order = np.argsort(-(quota - base), kind="stable")[:rest]
        base[order] += 1
    out: Array = np.minimum(base, counts)
    return out


def check_finite(x: Array, what: str, start: int = 0) -> None:
    """Refuse NaN/inf values, naming the first row (0-based sample index + ``start``) that holds one."""
    if x.dtype.kind != "f":
        return
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1) if x.ndim > 1 else ~np.isfinite(x)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{what}: row {row + start} holds NaN or infinite values ({int(bad.sum())} rows do)")
