"""Input helpers of the deployment runtime: tensor specs, input checking and file loading.

Everything here is small and free of onnxruntime: :class:`TensorSpec` describes one model input or
output, :func:`check_input` turns a user value into the array the session gets (or refuses it with a
:class:`~specc.errors.UsageError` saying what the model expects; NaN/inf included), and the readers
take ``.npy`` (memory-mapped), ``.npz``, image, text and CSV files, checking every size a header
claims before allocating it. The preprocessing itself is :mod:`specc.contracts.preprocess`'s.
"""

from __future__ import annotations

import csv
import hashlib
import math
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npformat
from numpy.typing import NDArray

from specc.contracts.onnx_metadata import TensorEntry
from specc.contracts.preprocess import ImagePreprocess, Table, parse_preprocess
from specc.errors import UsageError

Dim = int | str | None
"""One axis of a declared shape: a fixed size, a symbol (``"batch"``) or unknown (``None``)."""

ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TEXT_SUFFIXES = (".txt",)
CSV_SUFFIXES = (".csv",)
SUPPORTED_SUFFIXES = ARRAY_SUFFIXES + IMAGE_SUFFIXES + TEXT_SUFFIXES + CSV_SUFFIXES
#: Array names of a ``.npz`` that hold labels, not model inputs.
LABEL_ARRAYS = ("y", "labels")

MAX_TEXT_BYTES = 16 * 1024 * 1024
#: Largest array read whole (a ``.npz`` member); ``.npy`` files are memory-mapped instead.
MAX_ARRAY_BYTES = 2 * 1024 * 1024 * 1024

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
    def from_entry(cls, entry: TensorEntry) -> TensorSpec:
        """From a typed metadata entry (:class:`specc.contracts.onnx_metadata.TensorEntry`)."""
        return cls(entry.name, tuple(entry.shape), entry.dtype)

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
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            first = [int(i) for i in np.argwhere(bad)[0]]
            raise refuse(
                f"{int(bad.sum())} NaN/infinite value(s), the first at index {first}; the model takes finite numbers"
            )
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
        f"supported: {', '.join(SUPPORTED_SUFFIXES)} or a folder of images"
    )


def _array_header(fh: BinaryIO, where: str, available: int) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """``(shape, dtype, data offset)`` of a ``.npy`` stream, checked before any data is read: no
    object dtype, and the data the header claims must be in the file and within the budget."""

    start = fh.tell()
    try:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = npformat.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError) as e:
        raise UsageError(f"cannot read arrays from '{where}': not a valid .npy array ({e})") from None
    if dtype.hasobject:
        raise UsageError(f"cannot read arrays from '{where}': object (pickled) arrays are refused")
    offset = fh.tell() - start
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > available - offset:
        raise UsageError(
            f"'{where}': the header claims {nbytes:,} bytes of {dtype} {tuple(shape)} but the file holds "
            f"{max(available - offset, 0):,}; the file is truncated or forged"
        )
    del fortran  # numpy reads either order
    return tuple(int(d) for d in shape), dtype, offset


def load_npy(path: Path) -> NDArray[Any]:
    """A ``.npy`` array, memory-mapped (read batch by batch later) after its header was checked."""
    check_file(path)
    try:
        with path.open("rb") as fh:
            shape, _, _ = _array_header(fh, str(path), path.stat().st_size)
        arr: NDArray[Any] = np.load(path, mmap_mode="r" if math.prod(shape) else None, allow_pickle=False)
        return arr
    except UsageError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(f"cannot read arrays from '{path}': {e}") from e


def load_npz(path: Path) -> dict[str, NDArray[Any]]:
    """Every array of a ``.npz``; each member's header is checked against :data:`MAX_ARRAY_BYTES`
    before it is decompressed."""
    check_file(path)
    out: dict[str, NDArray[Any]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = info.filename.removesuffix(".npy")
                where = f"{path}:{info.filename}"
                with zf.open(info) as fh:
                    shape, dtype, _ = _array_header(fh, where, info.file_size)  # type: ignore[arg-type]
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > MAX_ARRAY_BYTES:
                    raise UsageError(
                        f"'{where}' holds {nbytes:,} bytes, over the budget of {MAX_ARRAY_BYTES:,} for "
                        "an array read whole; pass large batches as .npy (read in batches)"
                    )
                with zf.open(info) as fh:
                    out[name] = np.lib.format.read_array(fh, allow_pickle=False)
    except UsageError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"cannot read arrays from '{path}': {e}") from e
    return out


def load_arrays(path: Path, input_names: Sequence[str]) -> dict[str, NDArray[Any]]:
    """Read a ``.npy`` (the single input) or ``.npz`` (arrays by input name, or one array).

    Object (pickled) arrays are refused; a header is checked before its data are read.
    """
    check_file(path)
    if path.suffix.lower() == ".npy":
        if len(input_names) != 1:
            raise UsageError(
                f"'{path.name}' holds one array but the model takes {len(input_names)} inputs "
                f"({', '.join(input_names)}); pass a .npz with one array per input name"
            )
        return {input_names[0]: load_npy(path)}
    arrays = load_npz(path)
    keys = list(arrays)
    if all(n in keys for n in input_names):
        return {n: arrays[n] for n in input_names}
    if len(input_names) == 1 and len([k for k in keys if k not in LABEL_ARRAYS]) == 1:
        return {input_names[0]: next(v for k, v in arrays.items() if k not in LABEL_ARRAYS)}
    raise UsageError(
        f"'{path.name}' holds arrays {', '.join(keys) or '(none)'} but the model's inputs are "
        f"{', '.join(input_names)}; name the arrays after the inputs"
    )


def load_image(
    path: Path, pre: Mapping[str, Any] | Any, spec: TensorSpec | None = None
) -> NDArray[np.float32]:
    """Read an image as the model was trained on it (``pre``: an image preprocessing record or its
    dict); returns ``(1, C, H, W)`` float32 (``(1, C*H*W)`` for a flattened model)."""

    check_file(path)
    record = parse_preprocess(pre, "model metadata 'specc.preprocess'")
    if not isinstance(record, ImagePreprocess):
        raise UsageError(
            f"cannot read image '{path.name}': the preprocessing is kind '{record.kind}', not image"
        )
    return record.from_image(path, spec.shape[1:] if spec is not None else ())


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


def read_csv(path: Path, rows_per_chunk: int) -> Iterator[Table]:
    """A CSV file with a header row, streamed in chunks of ``rows_per_chunk`` rows (blank lines skipped)."""
    check_file(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header: list[str] | None = None
            rows: list[list[str]] = []
            first = 2
            any_rows = False
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if header is None:
                    header = [c.strip() for c in row]
                    if all(_is_number(c) for c in header):
                        raise UsageError(
                            f"{path}:{reader.line_num}: the first row must be a header of column names, "
                            "found only numbers"
                        )
                    continue
                if len(row) != len(header):
                    raise UsageError(
                        f"{path}:{reader.line_num}: expected {len(header)} fields, found {len(row)}"
                    )
                if not rows:
                    first = reader.line_num
                rows.append(row)
                any_rows = True
                if len(rows) == rows_per_chunk:
                    yield Table(header, rows, str(path), first)
                    rows = []
            if header is None:
                raise UsageError(f"CSV file '{path}' is empty")
            if rows:
                yield Table(header, rows, str(path), first)
            elif not any_rows:
                raise UsageError(f"CSV file '{path}' has a header but no data rows")
    except UnicodeDecodeError as e:
        raise UsageError(f"CSV file '{path}' is not UTF-8 text (bad byte at offset {e.start})") from None
    except csv.Error as e:
        raise UsageError(f"{path}: malformed CSV: {e}") from None
    except OSError as e:
        raise UsageError(f"cannot read CSV file '{path}': {e.strerror or e}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (sub-folders included, hidden entries skipped), sorted."""
    found = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or p.is_symlink():
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            found.append(p)
    return found
