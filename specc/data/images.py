"""Image data decoded lazily: image folders and tar shards in the WebDataset layout (torch-free).

Only the file list (or the shard index) and the labels are held in memory; each sample is decoded
with Pillow when it is read (in a DataLoader worker during training), resized to the sample size,
augmented and standardised. Every file's header is read once when the data set is loaded, so
non-image files and images above the pixel budget (decompression bombs) are refused before training
starts, naming the file; a file that fails to decode later (truncated) is named the same way.
"""

from __future__ import annotations

import io
import os
import tarfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from specc.data.splits import Array, DataBudget, Index, Split
from specc.errors import DataError

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from specc.data.augment import Augmenter

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
STATS_SAMPLES = 1000  # training images whose pixels give the standardisation statistics
_JUNK_FILES = {"thumbs.db", "desktop.ini"}
_SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_LABEL_EXTS = ("cls",)


@dataclass(frozen=True)
class ImageDecoder:
    """Turns an image file into a (C, H, W) float32 sample (or (C*H*W,) when ``flatten``)."""

    channels: int
    height: int
    width: int
    max_pixels: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    flatten: bool = False

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        shape = (self.channels, self.height, self.width)
        return (self.channels * self.height * self.width,) if self.flatten else shape

    def decode(
        self, data: str | bytes, name: str, aug: Augmenter | None = None, epoch: int = 0, key: int = 0
    ) -> Array:
        """Decode, resize (with ``aug``'s resized crop), augment and standardise one image."""
        rng = aug.rng(epoch, key) if aug is not None else None
        im = open_image(data, name, self.max_pixels, self.mode, (self.width, self.height))
        box = None
        if aug is not None and rng is not None and "resized_crop" in aug.kinds:
            box = aug.resized_box(rng, *im.size)
        if box is not None or im.size != (self.width, self.height):
            from PIL import Image

            im = im.resize((self.width, self.height), Image.Resampling.BILINEAR, box=box)
        arr = np.asarray(im, dtype=np.float32) / np.float32(255.0)
        x = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if aug is not None and rng is not None:
            x = aug.rest(x, rng, box_done=True)
        if self.mean is not None and self.std is not None:
            x = (x - np.asarray(self.mean, np.float32)[:, None, None]) / np.asarray(self.std, np.float32)[
                :, None, None
            ]
        x = np.ascontiguousarray(x, dtype=np.float32)
        return x.reshape(-1) if self.flatten else x


def open_image(
    data: str | bytes, name: str, max_pixels: int, mode: str | None, draft: tuple[int, int] | None = None
) -> PILImage.Image:
    """Open and decode an image as ``mode`` (None: L or RGB), refusing one above ``max_pixels``."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own budget applies
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
                _check_pixels(im.size, name, max_pixels)
                target = mode or ("L" if im.mode in ("L", "1", "I;16", "I", "F") else "RGB")
                if draft is not None and im.format == "JPEG":
                    im.draft(target, draft)  # decode a JPEG at a reduced scale when that is enough
                im.load()
                return im.convert(target)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"image '{name}' is refused as a decompression bomb: {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise DataError(f"cannot read image '{name}': {e}") from None


def image_size(data: str | bytes, name: str, max_pixels: int) -> tuple[int, int, str]:
    """``(width, height, mode)`` of an image from its header, refusing non-images and pixel bombs."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
                _check_pixels(im.size, name, max_pixels)
                return int(im.size[0]), int(im.size[1]), str(im.mode)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"image '{name}' is refused as a decompression bomb: {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"cannot read image '{name}': {e}") from None


def _check_pixels(size: tuple[int, int], name: str, max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise DataError(
            f"image '{name}' has {w}x{h} = {w * h:,} pixels, above the budget of {max_pixels:,} "
            "(train.max_image_pixels): a decompression bomb, or an image to downscale first"
        )


class ImageSplit(Split):
    """Image samples read on demand: from files (``paths``) or from tar shard members (``refs``)."""

    def __init__(
        self, items: list[str] | ShardRefs, labels: Array, decoder: ImageDecoder, keys: Array | None = None
    ) -> None:
        self.items, self.labels, self.decoder = items, np.asarray(labels, dtype=np.int64), decoder
        # a stable identity per sample (its position in the whole folder or shard set): the key of
        # its augmentation, which therefore does not depend on how the samples were split
        self.keys = np.arange(len(self.labels), dtype=np.int64) if keys is None else keys

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.decoder.sample_shape

    @property
    def target_shape(self) -> tuple[int, ...]:
        return ()

    def subset(self, idx: Array) -> ImageSplit:
        items = self.items.subset(idx) if isinstance(self.items, ShardRefs) else [self.items[i] for i in idx]
        return ImageSplit(items, self.labels[idx], self.decoder, self.keys[idx])

    def with_decoder(self, decoder: ImageDecoder) -> ImageSplit:
        return ImageSplit(self.items, self.labels, decoder, self.keys)

    def read(self, i: int) -> tuple[str | bytes, str]:
        """The encoded image of sample ``i`` and its name (for messages)."""
        if isinstance(self.items, ShardRefs):
            return self.items.read(i), self.items.name(i)
        return self.items[i], self.items[i]

    def take(self, idx: Index, aug: Augmenter | None = None, epoch: int = 0) -> tuple[Array, Array]:
        ids = np.asarray(idx, dtype=np.int64)
        if len(ids) == 0:
            return np.zeros((0, *self.sample_shape), np.float32), self.labels[ids]
        xs = []
        for i in ids:
            data, name = self.read(int(i))
            xs.append(self.decoder.decode(data, name, aug, epoch, int(self.keys[i])))
        return np.stack(xs), self.labels[ids]


# ------------------------------------------------------------------------------------- tar shards


class ShardRefs:
    """Where each sample's image lies inside the tar shards: (shard, offset, size) per sample."""

    def __init__(self, shards: list[str], shard: Array, offset: Array, size: Array, names: list[str]) -> None:
        self.shards, self.shard, self.offset, self.size, self.names = shards, shard, offset, size, names
        self._fds: dict[str, int] = {}
        self._pid = -1

    def __len__(self) -> int:
        return int(self.shard.shape[0])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}, "_pid": -1}

    def subset(self, idx: Array) -> ShardRefs:
        return ShardRefs(
            self.shards,
            self.shard[idx],
            self.offset[idx],
            self.size[idx],
            [self.names[i] for i in idx],
        )

    def name(self, i: int) -> str:
        return f"{self.shards[int(self.shard[i])]}:{self.names[i]}"

    def read(self, i: int) -> bytes:
        # os.pread: no shared file offset, so forked workers can read the same descriptors safely
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        path = self.shards[int(self.shard[i])]
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise DataError(f"cannot read tar shard '{path}': {e.strerror or e}") from None
        data = os.pread(fd, int(self.size[i]), int(self.offset[i]))
        if len(data) != int(self.size[i]):
            raise DataError(f"tar shard '{path}' is truncated: member '{self.names[i]}' is cut short")
        return data


def index_shards(paths: list[Path], budget: DataBudget) -> tuple[ShardRefs, Array]:
    """Index tar shards in the WebDataset layout: members ``KEY.EXT`` grouped by key, each sample
    an image (``.png``, ``.jpg``, ...) and its class id (``.cls``, an integer as text)."""
    shard_ids: list[int] = []
    offsets: list[int] = []
    sizes: list[int] = []
    names: list[str] = []
    labels: list[int] = []
    for s, path in enumerate(paths):
        if path.suffix.lower() != ".tar":
            raise DataError(
                f"shard '{path}' is not an uncompressed .tar file (compressed shards cannot be read "
                "at random; unpack them with gunzip first)"
            )
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            with tarfile.open(path, "r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    base = m.name.rsplit("/", 1)[-1]
                    if base.startswith(".") or "." not in base:
                        continue
                    key = m.name[: len(m.name) - len(base)] + base.split(".", 1)[0]
                    samples.setdefault(key, {})[base.split(".", 1)[1].lower()] = m
                for key, parts in samples.items():
                    image = next((parts[e[1:]] for e in IMAGE_EXTENSIONS if e[1:] in parts), None)
                    label = next((parts[e] for e in _LABEL_EXTS if e in parts), None)
                    if image is None or label is None:
                        raise DataError(
                            f"tar shard '{path}': sample '{key}' needs an image member ({key}.png, "
                            f"{key}.jpg, ...) and a class member ({key}.cls); found "
                            f"{', '.join(sorted(parts)) or 'nothing'}"
                        )
                    raw = tf.extractfile(label)
                    text = raw.read(64).decode("utf-8", "replace").strip() if raw is not None else ""
                    if not text.lstrip("-").isdigit() or int(text) < 0:
                        raise DataError(
                            f"tar shard '{path}': '{label.name}' must hold a class id (an integer >= 0), "
                            f"found {text[:20]!r}"
                        )
                    shard_ids.append(s)
                    offsets.append(image.offset_data)
                    sizes.append(image.size)
                    names.append(image.name)
                    labels.append(int(text))
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"cannot read tar shard '{path}': {e}") from None
        budget.check(f"the index of shards under '{paths[0].parent}'", (len(names), 4), 8)
    refs = ShardRefs(
        [str(p) for p in paths],
        np.asarray(shard_ids, np.int32),
        np.asarray(offsets, np.int64),
        np.asarray(sizes, np.int64),
        names,
    )
    return refs, np.asarray(labels, np.int64)


# ------------------------------------------------------------------------------------ folders


def image_files(folder: Path) -> list[str]:
    """The files under ``folder`` (recursively, sorted), skipping hidden and junk files."""
    files = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or p.name.lower() in _JUNK_FILES:
            continue
        if p.is_file():
            files.append(str(p))
    return files


def split_layout(folder: Path) -> dict[str, Path] | None:
    """``{"train": ..., "val": ..., "test": ...}`` sub-folders of a split layout, or None."""
    subdirs = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
    names = {d.name.lower(): d for d in subdirs}
    if "train" not in names or not all(n in _SPLIT_DIRS for n in names):
        return None
    out: dict[str, Path] = {}
    for n, d in names.items():
        if _SPLIT_DIRS[n] in out:
            raise DataError(
                f"image folder '{folder}' has two {_SPLIT_DIRS[n]} folders ({out[_SPLIT_DIRS[n]]}, {d})"
            )
        out[_SPLIT_DIRS[n]] = d
    return out


def class_folder_files(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[str], Array]:
    """Class names, files and labels of a folder holding one sub-folder per class.

    ``classes``: the class names of the training folder (a val/test folder must use only those).
    """
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"image folder '{folder}' has no class sub-folders (expected one sub-folder per class)"
        )
    names = [d.name for d in class_dirs]
    if classes is None:
        if len(class_dirs) < 2:
            raise DataError(
                f"image folder '{folder}' has only one class sub-folder '{class_dirs[0].name}'; "
                "classification needs at least two"
            )
        classes = names
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise DataError(
            f"image folder '{folder}' has class folders the training folder lacks: {', '.join(unknown)}"
        )
    files: list[str] = []
    labels: list[int] = []
    for d in class_dirs:
        found = image_files(d)
        if not found:
            raise DataError(f"class folder '{d}' holds no images")
        files += found
        labels += [classes.index(d.name)] * len(found)
    return classes, files, np.asarray(labels, np.int64)


def compute_stats(split: ImageSplit, seed: int) -> tuple[list[float], list[float], int]:
    """Per-channel mean/std of (at most :data:`STATS_SAMPLES`, seeded) training images' pixels."""
    n = len(split)
    pick = np.sort(np.random.default_rng(seed).permutation(n)[:STATS_SAMPLES]) if n > STATS_SAMPLES else None
    raw = split.with_decoder(replace(split.decoder, mean=None, std=None, flatten=False))
    c = raw.decoder.channels
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    ids = np.arange(n) if pick is None else pick
    for start in range(0, len(ids), 64):
        x, _ = raw.take(ids[start : start + 64])
        x64 = x.astype(np.float64)
        total += x64.sum(axis=(0, 2, 3))
        total_sq += (x64 * x64).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.where(std > 1e-8, std, 1.0)
    return [float(v) for v in mean], [float(v) for v in std], len(ids)
