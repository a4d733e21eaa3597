"""Input helpers of the deployment runtime: tensor specs, input checking and file loading.

Everything here is small and free of onnxruntime: :class:`TensorSpec` describes one model input or
output, :func:`check_input` turns a user value into the array the session gets (or refuses it with a
:class:`~specc.errors.UsageError` saying what the model expects), and the ``load_*`` / ``encode_text``
functions read ``.npy``/``.npz`` arrays, images and text files exactly as the metadata describes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from specc.errors import UsageError

Dim = int | str | None
"""One axis of a declared shape: a fixed size, a symbol (``"batch"``) or unknown (``None``)."""

ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TEXT_SUFFIXES = (".txt",)
SUPPORTED_SUFFIXES = ARRAY_SUFFIXES + IMAGE_SUFFIXES + TEXT_SUFFIXES

MAX_TEXT_BYTES = 16 * 1024 * 1024

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (batch axis included) and dtype of one model input or output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    def describe_shape(self) -> str:
        """``[batch, 1, 28, 28]``: symbols unquoted, unknown axes as ``?``."""
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"

    def describe(self) -> str:
        """``[batch, 1, 28, 28] float32``."""
        return f"{self.describe_shape()} {self.dtype}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, entry: object, key: str) -> TensorSpec:
        """Parse one entry of ``specc.inputs``/``specc.outputs``; bad entries are a UsageError."""
        if not isinstance(entry, Mapping):
            raise UsageError(f"model metadata '{key}' is invalid: expected an object, got {entry!r}")
        name, shape, dtype = entry.get("name"), entry.get("shape"), entry.get("dtype")
        if not isinstance(name, str) or not name:
            raise UsageError(f"model metadata '{key}' is invalid: entry without a name: {entry!r}")
        if not isinstance(shape, list) or not all(_valid_dim(d) for d in shape):
            raise UsageError(f"model metadata '{key}' is invalid: bad shape for '{name}': {shape!r}")
        if not isinstance(dtype, str) or not dtype:
            raise UsageError(f"model metadata '{key}' is invalid: bad dtype for '{name}': {dtype!r}")
        return cls(name, tuple(shape), dtype)

    @classmethod
    def from_ort(cls, name: str, shape: Sequence[object], ort_type: str) -> TensorSpec:
        """Build a spec from an onnxruntime ``NodeArg`` (name, shape, ``tensor(float)`` type)."""
        dims: list[Dim] = []
        for d in shape:
            if isinstance(d, int) and not isinstance(d, bool) and d >= 0:
                dims.append(d)
            elif isinstance(d, str) and d:
                dims.append(d)
            else:
                dims.append(None)
        return cls(name, tuple(dims), _ORT_TYPES.get(ort_type, ort_type))


def _valid_dim(d: object) -> bool:
    if d is None:
        return True
    if isinstance(d, bool):
        return False
    if isinstance(d, int):
        return d >= 0
    return isinstance(d, str) and bool(d)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# input checking


def _shape_str(shape: tuple[int, ...]) -> str:
    return str(tuple(int(d) for d in shape))


def _as_array(name: str, value: object, spec: TensorSpec) -> NDArray[Any]:
    if isinstance(value, np.ndarray):
        return value
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise UsageError(
            f"input '{name}': expected shape {spec.describe()}, got a value that is not an array ({e})"
        ) from e
    return arr


def _cast(name: str, arr: NDArray[Any], spec: TensorSpec, got: str) -> NDArray[Any]:
    """Cast ``arr`` to the spec's dtype where that is safe, else refuse.

    Floating and integer values become floats (float64 -> float32 included); integers of any
    width become int64 when they fit; floats are never used where integers are expected.
    """
    try:
        want = np.dtype(spec.dtype)
    except TypeError as e:
        raise UsageError(f"input '{name}': the model expects an unsupported type '{spec.dtype}'") from e
    if arr.dtype == want:
        return arr
    kind, want_kind = arr.dtype.kind, want.kind

    def refuse(why: str) -> UsageError:
        return UsageError(f"input '{name}': expected shape {spec.describe()}, got {got} ({why})")

    if want_kind == "f":
        if kind in "fiu":
            return arr.astype(want)
        raise refuse(f"{arr.dtype} values cannot be used as {want}")
    if want_kind in "iu":
        if kind in "iu":
            info = np.iinfo(want)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise refuse(f"values do not fit in {want}")
            return arr.astype(want)
        if kind == "f":
            raise refuse(f"float values cannot be used as {want} ids; pass integers")
        raise refuse(f"{arr.dtype} values cannot be used as {want}")
    if want_kind == "b":
        raise refuse(f"pass a bool array, not {arr.dtype}")
    raise refuse(f"cannot convert {arr.dtype} to {want}")


def check_input(
    name: str,
    value: object,
    spec: TensorSpec,
    symbols: dict[str, tuple[int, str]],
) -> tuple[NDArray[Any], bool]:
    """Check one input against its spec; return the array to feed and whether it was batched.

    ``symbols`` maps each symbolic axis seen so far to ``(size, input name)`` and is updated, so that
    the same symbol has the same size across all inputs. An array of rank one less than expected
    whose first declared axis is symbolic (or 1) is taken as a single sample and gets a batch axis.
    """
    arr = _as_array(name, value, spec)
    got = f"{_shape_str(arr.shape)} {arr.dtype}"

    def refuse(why: str) -> UsageError:
        return UsageError(f"input '{name}': expected shape {spec.describe()}, got {got} ({why})")

    if arr.dtype.kind not in "biuf":
        raise refuse(f"{arr.dtype} is not a numeric array")
    batched = False
    rank = len(spec.shape)
    if (
        arr.ndim == rank - 1
        and rank >= 1
        and (spec.shape[0] is None or isinstance(spec.shape[0], str) or spec.shape[0] == 1)
    ):
        arr = arr[np.newaxis, ...]
        batched = True
    elif arr.ndim != rank:
        raise refuse(f"rank {arr.ndim}, expected rank {rank}")
    arr = _cast(name, arr, spec, got)
    for axis, (want, have) in enumerate(zip(spec.shape, arr.shape, strict=True)):
        if want is None:
            continue
        if isinstance(want, int):
            if have != want:
                raise refuse(f"axis {axis} must be {want}, is {have}")
            continue
        if want in symbols:
            size, other = symbols[want]
            if size != have:
                where = "an earlier axis of this input" if other == name else f"input '{other}'"
                raise refuse(f"axis {axis} ('{want}') is {have} but {where} has {want} = {size}")
        else:
            symbols[want] = (int(have), name)
    return np.ascontiguousarray(arr), batched


# ----------------------------------------------------------------------------------------------
# files


def check_file(path: Path) -> Path:
    if not path.exists():
        raise UsageError(f"file not found: {path}")
    if not path.is_file():
        raise UsageError(f"not a file: {path}")
    return path


def unsupported_file(path: Path) -> UsageError:
    return UsageError(
        f"cannot predict from '{path.name}': unsupported file kind '{path.suffix or '(none)'}'; "
        f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
    )


def load_arrays(path: Path, input_names: Sequence[str]) -> dict[str, NDArray[Any]]:
    """Read a ``.npy`` (the single input) or ``.npz`` (arrays by input name, or one array).

    Files are read with ``allow_pickle=False``: object arrays are refused.
    """
    check_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if len(input_names) != 1:
                raise UsageError(
                    f"'{path.name}' holds one array but the model takes {len(input_names)} inputs "
                    f"({', '.join(input_names)}); pass a .npz with one array per input name"
                )
            return {input_names[0]: np.asarray(arr)}
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            if all(n in keys for n in input_names):
                return {n: np.asarray(npz[n]) for n in input_names}
            if len(keys) == 1 and len(input_names) == 1:
                return {input_names[0]: np.asarray(npz[keys[0]])}
    except UsageError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(f"cannot read arrays from '{path}': {e}") from e
    raise UsageError(
        f"'{path.name}' holds arrays {', '.join(keys) or '(none)'} but the model's inputs are "
        f"{', '.join(input_names)}; name the arrays after the inputs"
    )


def _float_list(pre: Mapping[str, Any], key: str, n: int) -> NDArray[np.float32]:
    values = pre.get(key)
    if values is None:
        return np.full(n, 0.0 if key == "mean" else 1.0, dtype=np.float32)
    if isinstance(values, int | float) and not isinstance(values, bool):
        values = [values]
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    ):
        raise UsageError(f"model metadata 'specc.preprocess' is invalid: '{key}' must be a list of numbers")
    if len(values) not in (1, n):
        raise UsageError(
            f"model metadata 'specc.preprocess' is invalid: '{key}' has {len(values)} values for {n} channels"
        )
    out = np.asarray(values * (n // len(values)), dtype=np.float32)
    if key == "std" and np.any(out == 0):
        raise UsageError("model metadata 'specc.preprocess' is invalid: 'std' contains 0")
    return out


def image_settings(pre: Mapping[str, Any], spec: TensorSpec | None) -> tuple[int, int, int]:
    """``(channels, height, width)`` from the image preprocess metadata (or the input's shape)."""
    channels = pre.get("channels")
    size = pre.get("size")
    if channels is None and spec is not None and len(spec.shape) == 4 and isinstance(spec.shape[1], int):
        channels = spec.shape[1]
    if size is None and spec is not None and len(spec.shape) == 4:
        size = list(spec.shape[2:])
    if channels not in (1, 3):
        raise UsageError(
            f"model metadata 'specc.preprocess' is invalid: 'channels' must be 1 or 3, got {channels!r}"
        )
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise UsageError(f"model metadata 'specc.preprocess' is invalid: 'size' must be [H, W], got {size!r}")
    assert isinstance(channels, int)
    return channels, int(size[0]), int(size[1])


def load_image(path: Path, pre: Mapping[str, Any], spec: TensorSpec | None = None) -> NDArray[np.float32]:
    """Read an image as the model was trained on it; returns ``(1, C, H, W)`` float32.

    Steps: open, convert to ``L`` (1 channel) or ``RGB`` (3), resize to ``size`` ``[H, W]`` with
    bilinear filtering, scale to ``[0, 1]``, ``(x - mean) / std`` per channel, HWC -> CHW.
    """
    from PIL import Image, UnidentifiedImageError

    check_file(path)
    channels, height, width = image_settings(pre, spec)
    mean = _float_list(pre, "mean", channels)
    std = _float_list(pre, "std", channels)
    try:
        with Image.open(path) as raw:
            img = raw.convert("L" if channels == 1 else "RGB")
        img = img.resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise UsageError(f"cannot read image '{path}': {e}") from e
    arr = arr / np.float32(255.0)
    if arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
    arr = (arr - mean) / std
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[np.newaxis], dtype=np.float32)


def text_vocab(pre: Mapping[str, Any]) -> list[str]:
    vocab = pre.get("vocab")
    if not isinstance(vocab, list) or not vocab or not all(isinstance(c, str) for c in vocab):
        raise UsageError("model metadata 'specc.preprocess' is invalid: 'vocab' must be a list of strings")
    return vocab


def encode_text(text: str, vocab: Sequence[str]) -> NDArray[np.int64]:
    """Characters -> ids (index in ``vocab``; unknown characters map to 0), shape ``(1, T)`` int64."""
    index: dict[str, int] = {}
    for i, ch in enumerate(vocab):
        index.setdefault(ch, i)
    return np.asarray([[index.get(ch, 0) for ch in text]], dtype=np.int64)


def read_text(path: Path) -> str:
    """Read a UTF-8 text file; one trailing newline (editors add it) is dropped."""
    check_file(path)
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise UsageError(f"text file '{path}' is larger than {MAX_TEXT_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"text file '{path}' is not valid UTF-8: {e}") from e
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise UsageError(f"text file '{path}' is empty")
    return text
