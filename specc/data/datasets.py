"""Data sets for ``specc train``: load, check, split and normalise (numpy only, no torch).

Every source gives a :class:`Dataset` with ``train``/``val``/``test`` :class:`Split` s. Splits are
reproducible: the same ``seed`` gives identical splits. Normalisation statistics are computed on the
training split only and recorded in ``Dataset.preprocess`` so that inference can repeat them.

Token conventions:

* Text (``text:stdlib``, ``text:PATH``, ``*.txt``) is character level. ``preprocess["vocab"]`` is a
  list where entry ``i`` is the character of token id ``i``; id 0 (:data:`PAD_ID`) is reserved for
  padding and unknown characters (its entry is ``""``), so real characters are ids ``1..V-1`` in
  sorted code-point order. ``x`` holds non-overlapping windows of ``seq_len`` ids and ``y`` the same
  windows shifted by one (the next character). ``num_classes`` is the vocabulary size ``V``.
* Synthetic seq2seq tasks (``copy``, ``reverse``, ``sort``) use 0 = pad, 1 = bos, 2 = eos and the
  symbols ``3..12`` (vocabulary size 13). ``x`` is ``(N, seq_len)``: the source symbols then padding;
  ``y`` is ``(N, seq_len + 1)``: the target symbols, one eos, then padding. ``y`` holds no bos: a
  decoder's input is ``[bos] + y[:-1]`` (teacher forcing).

Inputs are float32 for a float spec dtype (the trainer casts to half/bfloat16 where asked) and
int64 for an integer spec dtype (token ids).
"""

from __future__ import annotations

import ast
import codecs
import csv
import dataclasses
import functools
import math
import os
import sysconfig
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from specc.errors import DataError, did_you_mean

Array = npt.NDArray[Any]
Task = Literal["classification", "regression", "language_model", "seq2seq"]
TASKS: tuple[str, ...] = ("classification", "regression", "language_model", "seq2seq")

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
FIRST_SYMBOL_ID = 3
NUM_SYMBOLS = 10
SYNTHETIC_VOCAB_SIZE = FIRST_SYMBOL_ID + NUM_SYMBOLS

SKLEARN_SOURCES: tuple[str, ...] = ("digits", "iris", "wine", "breast_cancer")
SYNTHETIC_SOURCES: tuple[str, ...] = ("copy", "reverse", "sort")
NAMED_SOURCES: tuple[str, ...] = (*SKLEARN_SOURCES, "text:stdlib", *SYNTHETIC_SOURCES)
ACCEPTED_SOURCES = (
    "digits, iris, wine, breast_cancer, text:stdlib, text:PATH, copy, reverse, sort, "
    "or a path to a .txt file, a .npz file (arrays x and y, or x_train/y_train [+ x_val/y_val, x_test/y_test]), "
    "a .npy file x.npy with its labels y.npy beside it, a .csv file with a header row, "
    "or an image folder with one sub-folder per class"
)

DEFAULT_TEXT_SEQ_LEN = 128
DEFAULT_SYNTHETIC_SEQ_LEN = 16
DEFAULT_SYNTHETIC_SAMPLES = 5000
MIN_STDLIB_CHARS = 300_000

_FLOAT_DTYPES = {
    "float",
    "float16",
    "float32",
    "float64",
    "bfloat16",
    "half",
    "double",
    "f16",
    "f32",
    "f64",
    "bf16",
    "fp16",
    "fp32",
    "fp64",
}
_INT_DTYPES = {"int", "int8", "int16", "int32", "int64", "uint8", "long", "i32", "i64"}
_JUNK_FILES = {"thumbs.db", "desktop.ini"}
_LABEL_COLUMNS = ("label", "target", "y")

# Modules whose docstrings make the ``text:stdlib`` corpus, in this order (``a/b`` is ``a/b.py`` or
# the package ``a/b/__init__.py``). Files are parsed with ``ast``, never imported or executed.
_STDLIB_MODULES: tuple[str, ...] = (
    "_pydecimal",
    "typing",
    "inspect",
    "difflib",
    "doctest",
    "logging/__init__",
    "statistics",
    "threading",
    "ipaddress",
    "_pyio",
    "xml/etree/ElementTree",
    "email/message",
    "http/cookiejar",
    "unittest/case",
    "codecs",
    "smtplib",
    "configparser",
    "subprocess",
    "tarfile",
    "shutil",
    "os",
    "urllib/request",
    "imaplib",
    "optparse",
    "pdb",
    "argparse",
    "collections/__init__",
    "traceback",
    "ssl",
    "socket",
    "pydoc",
    "json/__init__",
    "http/server",
    "http/client",
    "textwrap",
    "random",
    "fractions",
    "functools",
    "enum",
    "contextlib",
    "calendar",
    "cmd",
    "bdb",
    "timeit",
    "queue",
    "platform",
    "fileinput",
    "uuid",
    "hmac",
    "numbers",
    "ast",
    "dis",
    "tokenize",
    "heapq",
    "datetime",
)


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a data set.

    Attributes:
        x: Inputs, shape ``(N, *sample_shape)``.
        y: Targets: ``(N,)`` int64 class ids, ``(N, ...)`` float32 regression targets, or int64
            token arrays for language-model and seq2seq tasks.
    """

    x: Array
    y: Array

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set with its three splits and what was done to it.

    Attributes:
        name: The source as given (a named set or a path).
        task: What the targets are.
        train: Training split (normalisation statistics come from it only).
        val: Validation split.
        test: Test split.
        num_classes: Number of classes, or the vocabulary size for token tasks; None for regression.
        class_names: Class names where known.
        preprocess: JSON-able record of the preprocessing (kind, mean/std, size, vocab, ...).
        notes: Human-readable log lines about conversions.
    """

    name: str
    task: Task
    train: Split
    val: Split
    test: Split
    num_classes: int | None
    class_names: list[str] | None
    preprocess: dict[str, object]
    notes: list[str] = field(default_factory=list)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        return tuple(int(d) for d in self.train.x.shape[1:])


@dataclass(frozen=True)
class _Opts:
    source: str
    shape: tuple[int | str, ...] | None
    dtype_kind: Literal["float", "int"]
    input_dtype: str
    seed: int
    val_fraction: float
    test_fraction: float
    seq_len: int | None
    num_samples: int | None
    task: Task | None


def load_dataset(
    source: str,
    *,
    input_shape: tuple[int | str, ...] | None,
    input_dtype: str,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seq_len: int | None = None,
    num_samples: int | None = None,
    task: Task | None = None,
) -> Dataset:
    """Load, check, split and normalise a data set so that it fits a spec's input.

    Args:
        source: A named set, ``text:PATH`` or a path (see :data:`ACCEPTED_SOURCES`).
        input_shape: The spec's input shape without the batch axis; string entries are symbolic
            dimensions that match any size. None accepts the data's own shape.
        input_dtype: The spec's input dtype (``float32``, ``bfloat16``, ``int64``, ...).
        seed: Seed of the split permutation and of synthetic data.
        val_fraction: Fraction of the samples in the validation split.
        test_fraction: Fraction of the samples in the test split.
        seq_len: Sequence length of text windows and synthetic sequences (default: the spec's
            input length, else 128 for text and 16 for synthetic tasks).
        num_samples: Number of synthetic samples (default 5000); for other sources a cap on the
            number of samples (text: about this many windows) taken before splitting.
        task: Optional override of the task inferred for .npz/.npy/.csv data (integer labels give
            classification, float labels regression); for other sources it must match.

    Returns:
        The data set.

    Raises:
        DataError: The source is unknown, unreadable or does not fit the spec.
    """
    shape = _check_input_shape(input_shape, source)
    _check_fractions(val_fraction, test_fraction)
    if num_samples is not None and num_samples < 1:
        raise DataError(f"data '{source}': num_samples must be at least 1, got {num_samples}")
    if seq_len is not None and seq_len < 1:
        raise DataError(f"data '{source}': seq_len must be at least 1, got {seq_len}")
    if task is not None and task not in TASKS:
        raise DataError(f"data '{source}': unknown task '{task}'; expected one of {', '.join(TASKS)}")
    opts = _Opts(
        source,
        shape,
        _dtype_kind(input_dtype, source),
        input_dtype,
        seed,
        val_fraction,
        test_fraction,
        seq_len,
        num_samples,
        task,
    )
    ds = _dispatch(opts)
    if task is not None and ds.task != task:
        raise DataError(f"data '{source}' is a {ds.task} data set but the spec asks for {task}")
    _final_check(ds, shape)
    if num_samples is not None and source not in SYNTHETIC_SOURCES:
        unit = "windows" if ds.task == "language_model" else "samples"
        ds.notes.append(f"capped at about {num_samples} {unit} (num_samples) before splitting")
    return ds


# --------------------------------------------------------------------------------------------------
# dispatch and common checks


def _dispatch(o: _Opts) -> Dataset:
    src = o.source
    if src in SKLEARN_SOURCES:
        return _load_sklearn(o)
    if src in SYNTHETIC_SOURCES:
        return _load_synthetic(o)
    if src == "text:stdlib":
        text, nmods = _stdlib_text()
        return _text_dataset(
            o,
            text,
            [f"text:stdlib: {len(text)} characters of docstrings from {nmods} standard-library modules"],
        )
    if src.startswith("text:"):
        path = Path(src[len("text:") :]).expanduser()
        return _text_dataset(o, _read_text_file(path), [f"text: read {path}"])
    path = Path(src).expanduser()
    suffix = path.suffix.lower()
    if not path.exists():
        if suffix in (".txt", ".npz", ".npy", ".csv") or os.sep in src or "/" in src:
            raise DataError(f"data path '{src}' does not exist")
        raise DataError(
            f"unknown data source '{src}'{did_you_mean(src, NAMED_SOURCES)}; accepted: {ACCEPTED_SOURCES}"
        )
    if path.is_dir():
        return _load_image_folder(o, path)
    if suffix == ".txt":
        return _text_dataset(o, _read_text_file(path), [f"text: read {path}"])
    if suffix == ".npz":
        return _load_npz(o, path)
    if suffix == ".npy":
        return _load_npy(o, path)
    if suffix == ".csv":
        return _load_csv(o, path)
    raise DataError(
        f"data file '{src}' has an unsupported type '{suffix or '(none)'}'; accepted: {ACCEPTED_SOURCES}"
    )


def _fmt_shape(shape: tuple[int | str, ...] | None) -> str:
    if shape is None:
        return "(any)"
    inner = ", ".join(str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _check_input_shape(shape: tuple[int | str, ...] | None, source: str) -> tuple[int | str, ...] | None:
    if shape is None:
        return None
    out: list[int | str] = []
    for d in tuple(shape):
        if isinstance(d, bool) or not isinstance(d, (int, str)) or (isinstance(d, int) and d < 1) or d == "":
            raise DataError(
                f"data '{source}': spec input shape {tuple(shape)!r} has an invalid dimension {d!r}"
            )
        out.append(d)
    return tuple(out)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not (0.0 <= v < 1.0):
            raise DataError(f"{name} must be in [0, 1), got {v}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}")


def _dtype_kind(dtype: str, source: str) -> Literal["float", "int"]:
    d = dtype.strip().lower().removeprefix("torch.")
    if d in _FLOAT_DTYPES:
        return "float"
    if d in _INT_DTYPES:
        return "int"
    raise DataError(
        f"data '{source}': unsupported spec input dtype '{dtype}'; expected a float dtype "
        f"({', '.join(sorted(_FLOAT_DTYPES))}) or an integer dtype ({', '.join(sorted(_INT_DTYPES))})"
    )


def _require_kind(o: _Opts, kind: Literal["float", "int"], what: str) -> None:
    if o.dtype_kind != kind:
        want = "a float dtype such as float32" if kind == "float" else "an integer dtype such as int64"
        raise DataError(
            f"data '{o.source}' gives {what} but the spec input dtype is '{o.input_dtype}'; use {want}"
        )


def _matches(sample: tuple[int, ...], shape: tuple[int | str, ...] | None) -> bool:
    if shape is None:
        return True
    if len(sample) != len(shape):
        return False
    return all(isinstance(s, str) or s == d for d, s in zip(sample, shape, strict=True))


def _shape_error(
    name: str, sample: tuple[int, ...], shape: tuple[int | str, ...] | None, hint: str = ""
) -> DataError:
    return DataError(
        f"data '{name}' has samples of shape {_fmt_shape(sample)} but the spec input shape is "
        f"{_fmt_shape(shape)}{hint}"
    )


def _final_check(ds: Dataset, shape: tuple[int | str, ...] | None) -> None:
    for split_name, sp in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
        sample = tuple(int(d) for d in sp.x.shape[1:])
        if not _matches(sample, shape):
            raise _shape_error(ds.name, sample, shape)
        if sp.x.shape[0] != sp.y.shape[0]:
            raise DataError(
                f"data '{ds.name}': {split_name} split has {sp.x.shape[0]} inputs but {sp.y.shape[0]} targets"
            )
        for arr, what in ((sp.x, "inputs"), (sp.y, "targets")):
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise DataError(f"data '{ds.name}': {split_name} {what} contain NaN or infinite values")
    if len(ds.train) < 1:
        raise DataError(f"data '{ds.name}': the training split is empty")


# --------------------------------------------------------------------------------------------------
# splitting and normalisation


def _split_sizes(
    n: int, o: _Opts, unit: str = "samples", vf: float | None = None, tf: float | None = None
) -> tuple[int, int, int]:
    vf = o.val_fraction if vf is None else vf
    tf = o.test_fraction if tf is None else tf
    n_val = max(1, int(round(n * vf))) if vf > 0 else 0
    n_test = max(1, int(round(n * tf))) if tf > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DataError(
            f"data '{o.source}' has only {n} {unit}: too few for val_fraction={vf} and "
            f"test_fraction={tf} (each split needs at least one)"
        )
    return n_train, n_val, n_test


def _random_split(
    x: Array, y: Array, o: _Opts, vf: float | None = None, tf: float | None = None
) -> tuple[Split, Split, Split]:
    """Split by a permutation seeded with ``o.seed`` (capped at ``o.num_samples``)."""
    perm = np.random.default_rng(o.seed).permutation(x.shape[0])
    if o.num_samples is not None:
        perm = perm[: o.num_samples]
    n_train, n_val, _ = _split_sizes(len(perm), o, vf=vf, tf=tf)
    parts = (perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :])
    tr, va, te = (Split(np.ascontiguousarray(x[p]), np.ascontiguousarray(y[p])) for p in parts)
    return tr, va, te


def _standardise(
    splits: tuple[Split, Split, Split], axis: int | None
) -> tuple[tuple[Split, Split, Split], list[float], list[float]]:
    """Standardise float inputs with train statistics, per index of ``axis`` (None: per element)."""
    train_x = splits[0].x.astype(np.float64)
    ndim = train_x.ndim
    if axis is None:
        reduce: tuple[int, ...] = (0,)
    else:
        reduce = tuple(a for a in range(ndim) if a != axis)
    mean = train_x.mean(axis=reduce, keepdims=True)
    std = train_x.std(axis=reduce, keepdims=True)
    std = np.where(std > 1e-8, std, 1.0)
    out = tuple(Split(((sp.x - mean) / std).astype(np.float32), sp.y) for sp in splits)
    return (out[0], out[1], out[2]), [float(v) for v in mean.ravel()], [float(v) for v in std.ravel()]


# --------------------------------------------------------------------------------------------------
# scikit-learn sets


def _load_sklearn(o: _Opts) -> Dataset:
    _require_kind(o, "float", "float features")
    try:
        from sklearn import datasets as skd
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise DataError(f"data '{o.source}' needs scikit-learn, which is not installed") from e
    loaders = {
        "digits": skd.load_digits,
        "iris": skd.load_iris,
        "wine": skd.load_wine,
        "breast_cancer": skd.load_breast_cancer,
    }
    bunch = loaders[o.source]()
    y = np.asarray(bunch.target, dtype=np.int64)
    class_names = [str(c) for c in bunch.target_names]
    notes: list[str] = []
    if o.source == "digits":
        images = np.asarray(bunch.images, dtype=np.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
        images, flatten = _fit_digits(images, o, notes)
        splits = _random_split(images, y, o)
        splits, mean, std = _standardise(splits, axis=1)
        c, h, w = (int(d) for d in images.shape[1:])
        if flatten:
            splits = (
                Split(splits[0].x.reshape(len(splits[0]), -1), splits[0].y),
                Split(splits[1].x.reshape(len(splits[1]), -1), splits[1].y),
                Split(splits[2].x.reshape(len(splits[2]), -1), splits[2].y),
            )
        pre: dict[str, object] = {
            "kind": "image",
            "mean": mean,
            "std": std,
            "size": [h, w],
            "channels": c,
            "scale": 1.0 / 16.0,
            "flatten": flatten,
        }
        notes.append("digits: standardised per channel with train mean/std (scale 1/16 first)")
    else:
        x = np.asarray(bunch.data, dtype=np.float32)
        sample = (int(x.shape[1]),)
        if not _matches(sample, o.shape):
            raise _shape_error(o.source, sample, o.shape)
        splits = _random_split(x, y, o)
        splits, mean, std = _standardise(splits, axis=None)
        pre = {
            "kind": "features",
            "mean": mean,
            "std": std,
            "feature_names": [str(n) for n in bunch.feature_names],
        }
        notes.append(f"{o.source}: standardised {sample[0]} features with train mean/std")
    return Dataset(
        o.source,
        "classification",
        *splits,
        num_classes=len(class_names),
        class_names=class_names,
        preprocess=pre,
        notes=notes,
    )


def _fit_digits(images: Array, o: _Opts, notes: list[str]) -> tuple[Array, bool]:
    """Bring (N, 1, 8, 8) digits to the spec shape; returns images (N, C, H, W) and whether to flatten."""
    shape = o.shape
    if shape is None or _matches((1, 8, 8), shape):
        return images, False
    hint = "; digits can be resized to (C, H, W) with C 1 or 3, or flattened to (L,) with L = 64 or a square"
    if len(shape) == 3:
        c, h, w = shape
        c = 1 if isinstance(c, str) else c
        h = 8 if isinstance(h, str) else h
        w = 8 if isinstance(w, str) else w
        if c not in (1, 3):
            raise _shape_error(o.source, (1, 8, 8), shape, hint)
        out = images if (h, w) == (8, 8) else resize_bilinear(images, h, w)
        if c == 3:
            out = np.repeat(out, 3, axis=1)
        notes.append(f"digits: resized 1x8x8 -> {c}x{h}x{w}")
        return out, False
    if len(shape) == 1:
        length = 64 if isinstance(shape[0], str) else shape[0]
        side = math.isqrt(length)
        if side * side != length:
            raise _shape_error(o.source, (1, 8, 8), shape, hint)
        if side != 8:
            images = resize_bilinear(images, side, side)
            notes.append(f"digits: resized 1x8x8 -> 1x{side}x{side}")
        notes.append(f"digits: flattened to {length} features")
        return images, True
    raise _shape_error(o.source, (1, 8, 8), shape, hint)


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


# --------------------------------------------------------------------------------------------------
# text


def _resolve_seq_len(o: _Opts, default: int) -> int:
    shape = o.shape
    if shape is not None and len(shape) != 1:
        raise DataError(
            f"data '{o.source}' gives token sequences of shape (seq_len,) but the spec input "
            f"shape is {_fmt_shape(shape)}"
        )
    spec_len = shape[0] if shape is not None and isinstance(shape[0], int) else None
    if o.seq_len is not None and spec_len is not None and o.seq_len != spec_len:
        raise DataError(
            f"data '{o.source}': seq_len {o.seq_len} differs from the spec input shape {_fmt_shape(shape)}"
        )
    if o.seq_len is not None:
        return o.seq_len
    return spec_len if spec_len is not None else default


def _read_text_file(path: Path) -> str:
    if not path.exists():
        raise DataError(f"text file '{path}' does not exist")
    if not path.is_file():
        raise DataError(f"text file '{path}' is not a file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read text file '{path}': {e.strerror or e}") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"text file '{path}' is not UTF-8 text (bad byte at offset {e.start})") from e
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise DataError(f"text file '{path}' is empty")
    return text


def _text_dataset(o: _Opts, text: str, notes: list[str]) -> Dataset:
    _require_kind(o, "int", "int64 token ids")
    seq_len = _resolve_seq_len(o, DEFAULT_TEXT_SEQ_LEN)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    chars = np.unique(codes)
    ids = (np.searchsorted(chars, codes) + 1).astype(np.int64)  # 0 is pad/unknown
    vocab = [""] + [chr(int(c)) for c in chars]
    if o.num_samples is not None:
        ids = ids[: o.num_samples * seq_len + 1]
    n = int(ids.shape[0])
    n_train, n_val, n_test = _split_sizes(n, o, unit="characters")
    bounds = ((0, n_train), (n_train, n_train + n_val), (n_train + n_val, n))
    splits: list[Split] = []
    for (start, stop), split_name in zip(bounds, ("train", "val", "test"), strict=True):
        chunk = ids[start:stop]
        k = max(0, (len(chunk) - 1) // seq_len)
        if k == 0 and len(chunk) > 0:
            raise DataError(
                f"data '{o.source}' is too short: {n} characters leave {len(chunk)} for the "
                f"{split_name} split, fewer than one window of seq_len {seq_len} + 1"
            )
        x = chunk[: k * seq_len].reshape(k, seq_len)
        y = chunk[1 : k * seq_len + 1].reshape(k, seq_len)
        splits.append(Split(np.ascontiguousarray(x), np.ascontiguousarray(y)))
    notes.append(
        f"text: {n} characters, vocab {len(vocab)} (id 0 = pad/unknown), "
        f"{sum(len(s) for s in splits)} windows of {seq_len}; contiguous train/val/test chunks"
    )
    pre: dict[str, object] = {
        "kind": "text",
        "vocab": vocab,
        "vocab_size": len(vocab),
        "pad": PAD_ID,
        "unk": PAD_ID,
        "seq_len": seq_len,
    }
    return Dataset(
        o.source,
        "language_model",
        splits[0],
        splits[1],
        splits[2],
        num_classes=len(vocab),
        class_names=None,
        preprocess=pre,
        notes=notes,
    )


def _module_file(root: Path, name: str) -> Path | None:
    for cand in (root / f"{name}.py", root / name / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _docstrings(file: Path) -> list[str]:
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                out.append(doc)
    return out


def _zen(root: Path) -> list[str]:
    """The Zen of Python, decoded from ``this.py``'s rot13 string literal without running it."""
    file = root / "this.py"
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return [codecs.decode(node.value.value, "rot13")]
    return []


_KEEP_ASCII = {i: None for i in (*range(0, 10), *range(11, 32), 127)}


@functools.lru_cache(maxsize=1)
def _stdlib_text() -> tuple[str, int]:
    """Docstrings of a fixed list of stdlib modules (then more, sorted, if short); printable ASCII."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataError(f"data 'text:stdlib': the standard-library folder '{root}' does not exist")
    parts = _zen(root)
    used = 0
    size = sum(len(p) for p in parts)
    listed: set[Path] = set()
    for name in _STDLIB_MODULES:
        file = _module_file(root, name)
        if file is None:
            continue
        listed.add(file)
        docs = _docstrings(file)
        parts.extend(docs)
        size += sum(len(d) for d in docs)
        used += 1
    if size < MIN_STDLIB_CHARS:  # an unusual install: take more modules in sorted order
        for file in sorted(root.glob("*.py")):
            if size >= MIN_STDLIB_CHARS:
                break
            if file in listed:
                continue
            docs = _docstrings(file)
            parts.extend(docs)
            size += sum(len(d) for d in docs)
            used += 1
    text = "\n\n".join(parts).replace("\t", "    ")
    text = text.encode("ascii", "ignore").decode("ascii").translate(_KEEP_ASCII)
    if len(text) < 10_000:
        raise DataError(f"data 'text:stdlib': found only {len(text)} characters of text under '{root}'")
    return text, used


# --------------------------------------------------------------------------------------------------
# synthetic seq2seq


def _load_synthetic(o: _Opts) -> Dataset:
    _require_kind(o, "int", "int64 token ids")
    seq_len = _resolve_seq_len(o, DEFAULT_SYNTHETIC_SEQ_LEN)
    n = o.num_samples if o.num_samples is not None else DEFAULT_SYNTHETIC_SAMPLES
    x, y = make_seq2seq(o.source, n, seq_len, o.seed)
    splits = _random_split(x, y, dataclasses.replace(o, num_samples=None))
    pre: dict[str, object] = {
        "kind": "tokens",
        "pad": PAD_ID,
        "bos": BOS_ID,
        "eos": EOS_ID,
        "vocab_size": SYNTHETIC_VOCAB_SIZE,
        "seq_len": seq_len,
        "symbols": [FIRST_SYMBOL_ID, SYNTHETIC_VOCAB_SIZE - 1],
    }
    notes = [
        f"{o.source}: {n} synthetic sequences of length 1..{seq_len} over symbols "
        f"{FIRST_SYMBOL_ID}..{SYNTHETIC_VOCAB_SIZE - 1} (0 pad, 1 bos, 2 eos), seed {o.seed}"
    ]
    return Dataset(
        o.source,
        "seq2seq",
        *splits,
        num_classes=SYNTHETIC_VOCAB_SIZE,
        class_names=None,
        preprocess=pre,
        notes=notes,
    )


def make_seq2seq(kind: str, num_samples: int, seq_len: int, seed: int) -> tuple[Array, Array]:
    """Generate a synthetic seq2seq task.

    Args:
        kind: ``copy``, ``reverse`` or ``sort``.
        num_samples: Number of pairs.
        seq_len: Maximum source length; lengths are uniform in ``1..seq_len``.
        seed: Seed of ``np.random.default_rng``.

    Returns:
        ``x`` int64 (N, seq_len): symbols then :data:`PAD_ID`; ``y`` int64 (N, seq_len + 1): target
        symbols, one :data:`EOS_ID`, then padding.
    """
    if kind not in SYNTHETIC_SOURCES:
        raise DataError(f"unknown synthetic task '{kind}'; expected one of {', '.join(SYNTHETIC_SOURCES)}")
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, seq_len + 1, size=num_samples)
    symbols = rng.integers(FIRST_SYMBOL_ID, SYNTHETIC_VOCAB_SIZE, size=(num_samples, seq_len))
    pos = np.arange(seq_len)
    mask = pos[None, :] < lengths[:, None]
    x = np.where(mask, symbols, PAD_ID).astype(np.int64)
    if kind == "copy":
        core = x
    elif kind == "reverse":
        idx = np.clip(lengths[:, None] - 1 - pos[None, :], 0, seq_len - 1)
        core = np.where(mask, np.take_along_axis(x, idx, axis=1), PAD_ID)
    else:
        big = np.where(mask, x, np.iinfo(np.int64).max)
        core = np.where(mask, np.sort(big, axis=1), PAD_ID)
    y = np.full((num_samples, seq_len + 1), PAD_ID, dtype=np.int64)
    y[:, :seq_len] = core
    y[np.arange(num_samples), lengths] = EOS_ID
    return x, y


# --------------------------------------------------------------------------------------------------
# arrays: .npz, .npy, .csv


def _load_array_file(path: Path) -> Array:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError as e:
        raise DataError(f"data file '{path}' does not exist") from e
    except (OSError, ValueError, EOFError) as e:
        raise DataError(
            f"cannot read '{path}' as a .npy array (pickled/object arrays are refused): {e}"
        ) from e
    if not isinstance(arr, np.ndarray):
        raise DataError(f"'{path}' is not a .npy array file")
    return arr


def _load_npy(o: _Opts, path: Path) -> Dataset:
    stem = path.stem
    hint = (
        "a .npy file holds one array: pass the inputs file x.npy (or x_NAME.npy) with its labels in "
        "y.npy (or y_NAME.npy) beside it, or one .npz file with arrays 'x' and 'y'"
    )
    if stem[:1] not in ("x", "X"):
        raise DataError(f"'{path}': {hint}")
    candidates = [path.with_name("y" + stem[1:] + path.suffix), path.with_name("Y" + stem[1:] + path.suffix)]
    y_path = next((c for c in candidates if c.is_file()), None)
    if y_path is None:
        raise DataError(f"'{path}' needs its labels in '{candidates[0]}', which does not exist; {hint}")
    x = _load_array_file(path)
    y = _load_array_file(y_path)
    return _array_dataset(o, str(path), {"train": (x, y)}, [f"npy: inputs {path.name}, labels {y_path.name}"])


def _load_npz(o: _Opts, path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(
            f"cannot read '{path}' as a .npz archive (pickled/object arrays are refused): {e}"
        ) from e
    keys = sorted(arrays)
    if "x" in arrays and "y" in arrays:
        return _array_dataset(o, str(path), {"train": (arrays["x"], arrays["y"])}, ["npz: arrays x, y"])
    if "x_train" in arrays and "y_train" in arrays:
        parts: dict[str, tuple[Array, Array]] = {}
        for split_name in ("train", "val", "test"):
            xk, yk = f"x_{split_name}", f"y_{split_name}"
            if (xk in arrays) != (yk in arrays):
                raise DataError(
                    f"'{path}' has '{xk if xk in arrays else yk}' without '{yk if xk in arrays else xk}'"
                )
            if xk in arrays:
                parts[split_name] = (arrays[xk], arrays[yk])
        return _array_dataset(o, str(path), parts, [f"npz: arrays {', '.join(keys)}"])
    raise DataError(
        f"'{path}' must hold arrays 'x' and 'y', or 'x_train' and 'y_train' (optionally "
        f"x_val/y_val, x_test/y_test); found {', '.join(keys) or 'no arrays'}"
    )


def _load_csv(o: _Opts, path: Path) -> Dataset:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"CSV file '{path}' is not UTF-8 text (bad byte at offset {e.start})") from e
    except OSError as e:
        raise DataError(f"cannot read CSV file '{path}': {e.strerror or e}") from e
    rows = csv.reader(text.splitlines())
    header: list[str] | None = None
    features: list[list[float]] = []
    labels: list[str] = []
    label_col = -1
    try:
        for row in rows:
            line = rows.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if header is None:
                header = [c.strip() for c in row]
                if all(_is_number(c) for c in header):
                    raise DataError(
                        f"{path}:{line}: the first row must be a header of column names, found only numbers"
                    )
                lowered = [h.lower() for h in header]
                found = [lowered.index(n) for n in _LABEL_COLUMNS if n in lowered]
                label_col = found[0] if found else len(header) - 1
                if len(header) < 2:
                    raise DataError(f"{path}:{line}: need at least one feature column and one label column")
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{line}: expected {len(header)} fields, found {len(row)}")
            values: list[float] = []
            for i, cell in enumerate(row):
                if i == label_col:
                    continue
                try:
                    v = float(cell)
                except ValueError:
                    raise DataError(
                        f"{path}:{line}: column '{header[i]}' value {cell.strip()!r} is not a number"
                    ) from None
                if not math.isfinite(v):
                    raise DataError(
                        f"{path}:{line}: column '{header[i]}' value {cell.strip()!r} is not finite"
                    )
                values.append(v)
            features.append(values)
            labels.append(row[label_col].strip())
    except csv.Error as e:
        raise DataError(f"{path}:{rows.line_num}: malformed CSV: {e}") from e
    if header is None:
        raise DataError(f"CSV file '{path}' is empty")
    if not features:
        raise DataError(f"CSV file '{path}' has a header but no data rows")
    if any(lab == "" for lab in labels):
        raise DataError(f"CSV file '{path}': label column '{header[label_col]}' has empty values")
    x = np.asarray(features, dtype=np.float64)
    y: Array
    if all(_is_int(v) for v in labels):
        y = np.asarray([int(v) for v in labels], dtype=np.int64)
    elif all(_is_number(v) for v in labels):
        y = np.asarray([float(v) for v in labels], dtype=np.float64)
    else:
        y = np.asarray(labels, dtype=np.str_)
    note = f"csv: {len(features)} rows, {x.shape[1]} features, label column '{header[label_col]}'"
    feature_names = [h for i, h in enumerate(header) if i != label_col]
    return _array_dataset(o, str(path), {"train": (x, y)}, [note], feature_names=feature_names)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _is_int(s: str) -> bool:
    try:
        int(s.strip())
    except ValueError:
        return False
    return True


def _labels(o: _Opts, name: str, y: Array) -> tuple[Array, Task, int | None, list[str] | None, list[str]]:
    """Turn raw labels into int64 class ids or float32 targets; infer the task."""
    notes: list[str] = []
    if y.ndim == 0:
        raise DataError(f"data '{name}': labels must be an array with one entry per sample, got a scalar")
    if y.dtype.kind in "USO":
        if o.task == "regression":
            raise DataError(f"data '{name}': the spec asks for regression but the labels are not numbers")
        if y.ndim != 1:
            raise DataError(f"data '{name}': class labels must have shape (N,), got {y.shape}")
        names, ids = np.unique(y.astype(np.str_), return_inverse=True)
        class_names = [str(n) for n in names]
        notes.append(
            f"{len(class_names)} named classes: {', '.join(class_names[:10])}"
            + (", ..." if len(class_names) > 10 else "")
        )
        return ids.astype(np.int64).reshape(-1), "classification", len(class_names), class_names, notes
    if y.dtype.kind not in "biuf":
        raise DataError(f"data '{name}': labels have unsupported dtype {y.dtype}")
    if o.task not in (None, "classification", "regression"):
        raise DataError(
            f"data '{name}' holds labels for classification or regression, but the spec asks for {o.task}"
        )
    as_class = y.dtype.kind in "biu" if o.task is None else o.task == "classification"
    if not as_class:
        t = y.astype(np.float32)
        if not np.isfinite(t).all():
            raise DataError(f"data '{name}': regression targets contain NaN or infinite values")
        return t, "regression", None, None, notes
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"data '{name}': class labels must have shape (N,), got {y.shape}")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.all(y == np.round(y)):
            raise DataError(
                f"data '{name}': the spec asks for classification but the labels are not integers"
            )
    yi = y.astype(np.int64)
    if yi.size and yi.min() >= 0:
        return yi, "classification", int(yi.max()) + 1, None, notes
    values, ids = np.unique(yi, return_inverse=True)
    notes.append(f"labels {', '.join(str(v) for v in values[:10])} mapped to 0..{len(values) - 1}")
    return ids.astype(np.int64).reshape(-1), "classification", len(values), [str(v) for v in values], notes


def _fit_array(o: _Opts, name: str, x: Array, notes: list[str]) -> Array:
    """Reshape a batch to the spec input shape where that is unambiguous (flatten, add/move channels)."""
    sample = tuple(int(d) for d in x.shape[1:])
    shape = o.shape
    if _matches(sample, shape):
        return x
    assert shape is not None
    n = x.shape[0]
    if len(shape) == 1 and len(sample) > 1 and _matches((math.prod(sample),), shape):
        notes.append(f"flattened {'x'.join(map(str, sample))} -> {math.prod(sample)}")
        return x.reshape(n, -1)
    if len(sample) == 2 and len(shape) == 3 and _matches((1, *sample), shape):
        notes.append(f"added a channel axis: {'x'.join(map(str, sample))} -> 1x{sample[0]}x{sample[1]}")
        return x[:, None]
    if len(sample) == 3 and len(shape) == 3 and _matches((sample[2], sample[0], sample[1]), shape):
        notes.append(
            f"moved channels first: {'x'.join(map(str, sample))} -> {sample[2]}x{sample[0]}x{sample[1]}"
        )
        return np.ascontiguousarray(np.moveaxis(x, 3, 1))
    raise _shape_error(name, sample, shape)


def _array_dataset(
    o: _Opts,
    name: str,
    parts: dict[str, tuple[Array, Array]],
    notes: list[str],
    feature_names: list[str] | None = None,
) -> Dataset:
    """Check, label, reshape, split and normalise in-memory arrays (train plus optional val/test)."""
    order = [k for k in ("train", "val", "test") if k in parts]
    xs, ys = [], []
    for k in order:
        x, y = parts[k]
        if x.ndim < 1 or x.shape[0] == 0:
            raise DataError(f"data '{name}': {k} inputs are empty")
        if x.ndim == 1:
            x = x[:, None]
        if y.ndim < 1 or x.shape[0] != y.shape[0]:
            raise DataError(
                f"data '{name}': {k} inputs have {x.shape[0]} samples but labels "
                f"have {y.shape[0] if y.ndim else 'none (a scalar)'}"
            )
        if x.dtype.kind not in "biuf":
            raise DataError(f"data '{name}': inputs have non-numeric dtype {x.dtype}")
        if k != "train" and x.shape[1:] != parts["train"][0].shape[1:]:
            raise DataError(
                f"data '{name}': {k} inputs have sample shape {x.shape[1:]} but train "
                f"inputs {parts['train'][0].shape[1:]}"
            )
        xs.append(x)
        ys.append(y)
    counts = [len(x) for x in xs]
    y_all, task, num_classes, class_names, label_notes = _labels(o, name, np.concatenate(ys))
    notes.extend(label_notes)
    x_all = np.concatenate(xs)
    scale: float | None = None
    if o.dtype_kind == "int":
        if x_all.dtype.kind == "f":
            raise DataError(f"data '{name}' has float inputs but the spec input dtype is '{o.input_dtype}'")
        x_all = x_all.astype(np.int64)
    else:
        if x_all.dtype == np.uint8:
            scale = 1.0 / 255.0
            notes.append("uint8 inputs scaled by 1/255")
            x_all = x_all.astype(np.float32) * np.float32(scale)
        else:
            x_all = x_all.astype(np.float32)
        if not np.isfinite(x_all).all():
            raise DataError(
                f"data '{name}': inputs contain NaN or infinite values (or values too large for float32)"
            )
    x_all = _fit_array(o, name, x_all, notes)
    bounds = np.cumsum([0, *counts])
    given = {
        k: Split(x_all[bounds[i] : bounds[i + 1]], y_all[bounds[i] : bounds[i + 1]])
        for i, k in enumerate(order)
    }
    train_x, train_y = given["train"].x, given["train"].y
    vf = 0.0 if "val" in given else o.val_fraction
    tf = 0.0 if "test" in given else o.test_fraction
    tr, va, te = _random_split(train_x, train_y, o, vf=vf, tf=tf)
    if "val" in given:
        va = given["val"]
        notes.append("used the file's own validation split")
    if "test" in given:
        te = given["test"]
        notes.append("used the file's own test split")
    splits = (tr, va, te)
    pre: dict[str, object]
    if o.dtype_kind == "int":
        pre = {"kind": "raw"}
    else:
        rank = x_all.ndim - 1
        axis = None if rank <= 1 else (x_all.ndim - 1 if rank == 2 else 1)
        splits, mean, std = _standardise(splits, axis)
        kind = "features" if rank <= 1 else ("sequence" if rank == 2 else "image")
        pre = {"kind": kind, "mean": mean, "std": std}
        if scale is not None:
            pre["scale"] = scale
        if feature_names is not None:
            pre["feature_names"] = feature_names
        notes.append(f"standardised inputs ({kind}) with train mean/std")
    return Dataset(
        name, task, *splits, num_classes=num_classes, class_names=class_names, preprocess=pre, notes=notes
    )


# --------------------------------------------------------------------------------------------------
# image folders


def _image_files(folder: Path) -> list[Path]:
    files = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or p.name.lower() in _JUNK_FILES:
            continue
        if p.is_file():
            files.append(p)
    return files


def _load_image_folder(o: _Opts, folder: Path) -> Dataset:
    _require_kind(o, "float", "float images")
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is a dependency
        raise DataError(f"image folder '{folder}' needs Pillow, which is not installed") from e
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"image folder '{folder}' has no class sub-folders (expected one sub-folder per class)"
        )
    if len(class_dirs) < 2:
        raise DataError(
            f"image folder '{folder}' has only one class sub-folder '{class_dirs[0].name}'; "
            "classification needs at least two"
        )
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        found = _image_files(d)
        if not found:
            raise DataError(f"class folder '{d}' holds no images")
        files.extend((f, label) for f in found)

    def open_rgb_or_l(f: Path, mode: str | None) -> Image.Image:
        try:
            with Image.open(f) as im:
                im.load()
                return im.convert(mode or ("L" if im.mode in ("L", "1", "I;16", "I", "F") else "RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image '{f}': {e}") from e

    shape = o.shape
    flatten = False
    if shape is None or len(shape) == 3:
        first = open_rgb_or_l(files[0][0], None)
        c_dim, h_dim, w_dim = shape if shape is not None else ("C", "H", "W")
        channels = c_dim if isinstance(c_dim, int) else (1 if first.mode == "L" else 3)
        height = h_dim if isinstance(h_dim, int) else first.height
        width = w_dim if isinstance(w_dim, int) else first.width
    elif len(shape) == 1 and isinstance(shape[0], int) and math.isqrt(shape[0]) ** 2 == shape[0]:
        channels, height, width, flatten = 1, math.isqrt(shape[0]), math.isqrt(shape[0]), True
    else:
        raise DataError(
            f"image folder '{folder}' gives images of shape (C, H, W) but the spec input shape is "
            f"{_fmt_shape(shape)}; use (C, H, W) with C 1 or 3, or (L,) with L a square"
        )
    if channels not in (1, 3):
        raise DataError(
            f"image folder '{folder}': the spec input shape {_fmt_shape(shape)} has {channels} "
            "channels; images can be loaded with 1 (grey) or 3 (RGB)"
        )
    mode = "L" if channels == 1 else "RGB"
    x = np.empty((len(files), channels, height, width), dtype=np.float32)
    resized = 0
    for i, (f, _) in enumerate(files):
        im = open_rgb_or_l(f, mode)
        if im.size != (width, height):
            im = im.resize((width, height), Image.Resampling.BILINEAR)
            resized += 1
        arr = np.asarray(im, dtype=np.float32) / 255.0
        x[i] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    y = np.asarray([lab for _, lab in files], dtype=np.int64)
    notes = [f"images: {len(files)} files in {len(class_dirs)} classes, loaded as {mode} {height}x{width}"]
    if resized:
        notes.append(f"images: resized {resized} of {len(files)} to {height}x{width} (bilinear)")
    splits = _random_split(x, y, o)
    splits, mean, std = _standardise(splits, axis=1)
    if flatten:
        splits = (
            Split(splits[0].x.reshape(len(splits[0]), -1), splits[0].y),
            Split(splits[1].x.reshape(len(splits[1]), -1), splits[1].y),
            Split(splits[2].x.reshape(len(splits[2]), -1), splits[2].y),
        )
        notes.append(f"images: flattened to {height * width} features")
    class_names = [d.name for d in class_dirs]
    pre: dict[str, object] = {
        "kind": "image",
        "mean": mean,
        "std": std,
        "size": [height, width],
        "channels": channels,
        "scale": 1.0 / 255.0,
        "flatten": flatten,
    }
    return Dataset(
        str(folder),
        "classification",
        *splits,
        num_classes=len(class_names),
        class_names=class_names,
        preprocess=pre,
        notes=notes,
    )
