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
import dataclasses
import functools
import math
import os
import sysconfig
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from specc.data.augment import resize_bilinear
from specc.data.images import (
    ImageDecoder,
    ImageSplit,
    ShardRefs,
    class_folder_files,
    compute_stats,
    image_size,
    index_shards,
    split_layout,
)
from specc.data.splits import (
    ArraySplit,
    DataBudget,
    Index,
    Split,
    check_finite,
    split_indices,
    split_sizes,
)
from specc.data.tables import TABLE_SUFFIXES, fit_encoding, read_table
from specc.data.text import TextWindows
from specc.data.text import byte_lut as text_byte_lut
from specc.data.text import compact_ids as text_compact_ids
from specc.data.text import ids_of_str as text_ids_of_str
from specc.data.text import memmap_bytes as text_memmap
from specc.data.text import scan as text_scan
from specc.errors import DataError, did_you_mean
from specc.limits import DEFAULT_MAX_DATA_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from specc.registry import Registry

if TYPE_CHECKING:
    from specc.data.augment import Augmenter

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
    "a named set ({names}), text:PATH, "
    "or a path to a .txt file, a .npz file (arrays x and y, or x_train/y_train [+ x_val/y_val, x_test/y_test]), "
    "a .npy file x.npy with its labels y.npy beside it, a .csv or .parquet table with a header row "
    "(--label COL), an image folder with one sub-folder per class (or train/ val/ test/ sub-folders "
    "of those), or tar shards in the WebDataset layout (a .tar file or a folder of them)"
)

SourceLoader = Callable[["_Opts"], "Dataset"]
FileLoader = Callable[["_Opts", Path], "Dataset"]
SOURCES: Registry[SourceLoader] = Registry("data source")
"""Named data sets (``--data digits``): name → loader; registered below, next to each loader."""
FILE_TYPES: Registry[FileLoader] = Registry("data file type")
"""Data files by suffix (``--data x.npz``): lower-case suffix → loader; folders are read by
:func:`_load_folder` (image classes or tar shards)."""

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
        options: Every option of :func:`load_dataset` that rebuilds these splits (``source``,
            ``seed``, ``val_fraction``, ``test_fraction``, and ``seq_len``, ``num_samples``,
            ``label``, ``task`` where given): ``load_dataset(**options, input_shape=..., input_dtype=...)``
            gives the same splits.
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
    options: dict[str, object] = field(default_factory=dict)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        return self.train.sample_shape


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
    label: str | None = None
    budget: DataBudget = DataBudget()


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
    label: str | None = None,
    max_data_bytes: int = DEFAULT_MAX_DATA_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Dataset:
    """Load, check, split and normalise a data set so that it fits a spec's input.

    Small sets are held in memory (:class:`ArraySplit`); image folders, tar shards, large ``.npy``
    files and ASCII text files are read on demand (lazy :class:`Split` s). Read any split with
    ``len(split)``, ``split.take(indices)`` or ``split.batches(n)`` (numpy arrays).

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
        label: The label column of a table (.csv, .parquet); default: a column named label,
            target or y, else the last one.
        max_data_bytes: Budget of any one array sized by the data (see :class:`DataBudget`).
        max_image_pixels: Budget of pixels of one image file (decompression bombs).

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
    if max_data_bytes < 1 or max_image_pixels < 1:
        raise DataError(f"data '{source}': max_data_bytes and max_image_pixels must be at least 1")
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
        label,
        DataBudget(max_data_bytes, max_image_pixels),
    )
    if label is not None and not _is_table(source):
        raise DataError(
            f"data '{source}': --label names a column of a table (.csv, .parquet), not of this source"
        )
    ds = _dispatch(opts)
    for sp in (ds.train, ds.val, ds.test):
        sp.budget = opts.budget
    if task is not None and ds.task != task:
        raise DataError(f"data '{source}' is a {ds.task} data set but the spec asks for {task}")
    _final_check(ds, shape)
    if num_samples is not None and source not in SYNTHETIC_SOURCES:
        unit = "windows" if ds.task == "language_model" else "samples"
        ds.notes.append(f"capped at about {num_samples} {unit} (num_samples) before splitting")
    given = {"seq_len": seq_len, "num_samples": num_samples, "task": task, "label": label}
    ds.options.update(
        {"source": source, "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction}
    )
    ds.options.update({k: v for k, v in given.items() if v is not None})
    return ds


def _is_table(source: str) -> bool:
    return Path(source).suffix.lower() in TABLE_SUFFIXES


# --------------------------------------------------------------------------------------------------
# dispatch and common checks


def _dispatch(o: _Opts) -> Dataset:
    src = o.source
    if src in SOURCES:
        return SOURCES[src](o)
    if src.startswith("text:"):
        return _load_text_file(o, Path(src[len("text:") :]).expanduser())
    path = Path(src).expanduser()
    suffix = path.suffix.lower()
    if not path.exists():
        if suffix in FILE_TYPES or os.sep in src or "/" in src:
            raise DataError(f"data path '{src}' does not exist")
        raise DataError(f"unknown data source '{src}'{did_you_mean(src, SOURCES)}; accepted: {_accepted()}")
    if path.is_dir():
        return _load_folder(o, path)
    if suffix in FILE_TYPES:
        return FILE_TYPES[suffix](o, path)
    raise DataError(
        f"data file '{src}' has an unsupported type '{suffix or '(none)'}'; accepted: {_accepted()}"
    )


def _accepted() -> str:
    """What ``--data`` accepts, with the registered named sets."""
    return ACCEPTED_SOURCES.format(names=", ".join(SOURCES))


def _load_tar(o: _Opts, path: Path) -> Dataset:
    return _load_shards(o, {"train": [path]}, path)


FILE_TYPES.register(".tar", _load_tar)


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
        if not _matches(sp.sample_shape, shape):
            raise _shape_error(ds.name, sp.sample_shape, shape)
        if isinstance(sp, ArraySplit):
            if sp.x.shape[0] != sp.y.shape[0]:
                raise DataError(
                    f"data '{ds.name}': {split_name} split has {sp.x.shape[0]} inputs but {sp.y.shape[0]} targets"
                )
            check_finite(sp.x, f"data '{ds.name}': {split_name} inputs")
            check_finite(sp.y, f"data '{ds.name}': {split_name} targets")
    if len(ds.train) < 1:
        raise DataError(f"data '{ds.name}': the training split is empty")


# --------------------------------------------------------------------------------------------------
# splitting and normalisation


def _split_arrays(
    x: Array, y: Array, o: _Opts, stratify: bool, vf: float | None = None, tf: float | None = None
) -> tuple[ArraySplit, ArraySplit, ArraySplit]:
    """Split by a permutation seeded with ``o.seed`` (capped at ``o.num_samples``; stratified by class)."""
    parts = split_indices(
        x.shape[0],
        o.seed,
        o.val_fraction if vf is None else vf,
        o.test_fraction if tf is None else tf,
        o.source,
        labels=y if stratify else None,
        cap=o.num_samples,
    )
    tr, va, te = (ArraySplit(np.ascontiguousarray(x[p]), np.ascontiguousarray(y[p])) for p in parts)
    return tr, va, te


def _standardise(
    splits: tuple[ArraySplit, ArraySplit, ArraySplit], axis: int | None
) -> tuple[tuple[ArraySplit, ArraySplit, ArraySplit], list[float], list[float]]:
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
    out = tuple(ArraySplit(((sp.x - mean) / std).astype(np.float32), sp.y) for sp in splits)
    return (out[0], out[1], out[2]), [float(v) for v in mean.ravel()], [float(v) for v in std.ravel()]


def _flat(splits: tuple[ArraySplit, ArraySplit, ArraySplit]) -> tuple[ArraySplit, ArraySplit, ArraySplit]:
    a, b, c = (ArraySplit(sp.x.reshape(len(sp), -1), sp.y) for sp in splits)
    return a, b, c


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
        splits = _split_arrays(images, y, o, stratify=True)
        splits, mean, std = _standardise(splits, axis=1)
        c, h, w = (int(d) for d in images.shape[1:])
        if flatten:
            splits = _flat(splits)
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
        splits = _split_arrays(x, y, o, stratify=True)
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


for _name in SKLEARN_SOURCES:
    SOURCES.register(_name, _load_sklearn)


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


def _load_text_file(o: _Opts, path: Path) -> Dataset:
    """A text file: memory-mapped when plain ASCII, else converted to compact ids (module text)."""
    _require_kind(o, "int", "int64 token ids")
    vocab_chars, length, plain = text_scan(path)
    vocab = ["", *vocab_chars]
    if plain:
        note = f"text: {path} memory-mapped (plain ASCII), windows read on demand"
        return _text_dataset(o, text_memmap(path), vocab, text_byte_lut(vocab), [note])
    ids = text_compact_ids(path, vocab, length, o.budget)
    return _text_dataset(o, ids, vocab, None, [f"text: read {path}"])


FILE_TYPES.register(".txt", _load_text_file)


def _text_dataset(o: _Opts, ids: Array, vocab: list[str], lut: Array | None, notes: list[str]) -> Dataset:
    _require_kind(o, "int", "int64 token ids")
    seq_len = _resolve_seq_len(o, DEFAULT_TEXT_SEQ_LEN)
    n = int(ids.shape[0])
    if o.num_samples is not None:
        n = min(n, o.num_samples * seq_len + 1)
    n_train, n_val, n_test = split_sizes(n, o.val_fraction, o.test_fraction, o.source, unit="characters")
    bounds = ((0, n_train), (n_train, n_train + n_val), (n_train + n_val, n))
    splits: list[Split] = []
    for (start, stop), split_name in zip(bounds, ("train", "val", "test"), strict=True):
        k = max(0, (stop - start - 1) // seq_len)
        if k == 0 and stop > start:
            raise DataError(
                f"data '{o.source}' is too short: {n} characters leave {stop - start} for the "
                f"{split_name} split, fewer than one window of seq_len {seq_len} + 1"
            )
        splits.append(TextWindows(ids, start, k, seq_len, lut))
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


def _load_stdlib_text(o: _Opts) -> Dataset:
    text, nmods = _stdlib_text()
    ids, vocab = text_ids_of_str(text)
    note = f"text:stdlib: {len(text)} characters of docstrings from {nmods} standard-library modules"
    return _text_dataset(o, ids, vocab, None, [note])


SOURCES.register("text:stdlib", _load_stdlib_text)


# --------------------------------------------------------------------------------------------------
# synthetic seq2seq


def _load_synthetic(o: _Opts) -> Dataset:
    _require_kind(o, "int", "int64 token ids")
    seq_len = _resolve_seq_len(o, DEFAULT_SYNTHETIC_SEQ_LEN)
    n = o.num_samples if o.num_samples is not None else DEFAULT_SYNTHETIC_SAMPLES
    x, y = make_seq2seq(o.source, n, seq_len, o.seed)
    splits = _split_arrays(x, y, dataclasses.replace(o, num_samples=None), stratify=False)
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


for _name in SYNTHETIC_SOURCES:
    SOURCES.register(_name, _load_synthetic)


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


MMAP_BYTES = 256 << 20  # .npy inputs larger than this are memory-mapped and read on demand


def _load_array_file(path: Path, budget: DataBudget, mmap: bool = False) -> Array:
    _npy_header(path)  # a file that is not a .npy array is named as such, not as "pickled" data
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError as e:
        raise DataError(f"data file '{path}' does not exist") from e
    except (OSError, ValueError, EOFError) as e:
        raise DataError(
            f"cannot read '{path}' as a .npy array (pickled/object arrays are refused): {e}"
        ) from e
    if not isinstance(arr, np.ndarray):
        raise DataError(f"'{path}' is not a .npy array file")
    if not mmap:
        budget.check(f"array file '{path}'", arr.shape, arr.dtype.itemsize)
    return arr


def _read_header(f: Any) -> tuple[tuple[int, ...], np.dtype[Any]]:
    if f.read(6) != b"\x93NUMPY":
        raise ValueError("not a .npy array (it does not start with the NumPy magic bytes)")
    f.seek(0)
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    return tuple(int(d) for d in shape), np.dtype(dtype)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Shape and dtype of a .npy file from its header (nothing else is read)."""
    try:
        with path.open("rb") as f:
            shape, dtype = _read_header(f)
            available = os.fstat(f.fileno()).st_size - f.tell()
    except FileNotFoundError as e:
        raise DataError(f"data file '{path}' does not exist") from e
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read '{path}' as a .npy array: {e}") from e
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > available:  # before np.load allocates or maps what the header claims
        raise DataError(
            f"'{path}': the header claims shape {shape} {dtype} ({claimed:,} bytes) but the file holds "
            f"only {available:,} bytes of data (truncated or forged)"
        )
    return shape, dtype


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
    shape, dtype = _npy_header(path)
    big = math.prod(shape) * dtype.itemsize > MMAP_BYTES
    x = _load_array_file(path, o.budget, mmap=big and dtype.kind in "biuf")
    y = _load_array_file(y_path, o.budget)
    note = f"npy: inputs {path.name}, labels {y_path.name}"
    if isinstance(x, np.memmap):
        return _mapped_dataset(o, str(path), x, y, [note + " (memory-mapped, read on demand)"])
    return _array_dataset(o, str(path), {"train": (x, y)}, [note])


FILE_TYPES.register(".npy", _load_npy)


def _load_npz(o: _Opts, path: Path) -> Dataset:
    if path.is_file() and not zipfile.is_zipfile(path):
        raise DataError(f"'{path}' is not a .npz archive (not a zip file)")
    try:
        with np.load(path, allow_pickle=False) as z:
            for k in z.files:  # budget from each member's header before it is decompressed
                with z.zip.open(f"{k}.npy") as member:
                    shape, dtype = _read_header(member)
                o.budget.check(f"array '{k}' of '{path}'", shape, np.dtype(dtype).itemsize)
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
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


FILE_TYPES.register(".npz", _load_npz)


def _load_table(o: _Opts, path: Path) -> Dataset:
    """A CSV/Parquet table (module tables): split, then encode with training statistics."""
    _require_kind(o, "float", "float features")
    table = read_table(path, o.label, o.budget)
    y, task, num_classes, class_names, label_notes = _labels(o, str(path), table.label)
    parts = split_indices(
        table.rows,
        o.seed,
        o.val_fraction,
        o.test_fraction,
        o.source,
        labels=y if task == "classification" else None,
        cap=o.num_samples,
    )
    encoding, enc_notes = fit_encoding(table, parts[0])
    x = encoding.transform(table, o.budget)
    sample = (x.shape[1],)
    if not _matches(sample, o.shape):
        raise _shape_error(
            str(path),
            sample,
            o.shape,
            f" ({len(encoding.numeric)} numeric columns + {x.shape[1] - len(encoding.numeric)} one-hot "
            "category columns)",
        )
    tr, va, te = (ArraySplit(np.ascontiguousarray(x[p]), np.ascontiguousarray(y[p])) for p in parts)
    notes = [
        f"table: {table.rows} rows, {len(table.columns) - 1} columns -> {x.shape[1]} features, "
        f"label column '{table.label_name}'",
        *label_notes,
        *enc_notes,
        "standardised numeric columns with train mean/std",
    ]
    pre: dict[str, object] = {
        "kind": "features",
        "mean": encoding.mean,
        "std": encoding.std,
        "feature_names": encoding.feature_names,
        "columns": encoding.numeric,
        "label_column": table.label_name,
        "impute": encoding.impute,
        "categories": encoding.categories,
    }
    return Dataset(
        str(path),
        task,
        tr,
        va,
        te,
        num_classes=num_classes,
        class_names=class_names,
        preprocess=pre,
        notes=notes,
    )


for _suffix in TABLE_SUFFIXES:
    FILE_TYPES.register(_suffix, _load_table)


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
        check_finite(x, f"data '{name}': {k} inputs")
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
    o.budget.check(f"data '{name}'", x_all.shape, max(4, x_all.dtype.itemsize))
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
        k: ArraySplit(x_all[bounds[i] : bounds[i + 1]], y_all[bounds[i] : bounds[i + 1]])
        for i, k in enumerate(order)
    }
    train_x, train_y = given["train"].x, given["train"].y
    vf = 0.0 if "val" in given else o.val_fraction
    tf = 0.0 if "test" in given else o.test_fraction
    tr, va, te = _split_arrays(train_x, train_y, o, task == "classification", vf=vf, tf=tf)
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


class MappedSplit(Split):
    """Rows of a memory-mapped array, converted, reshaped and standardised when read."""

    def __init__(self, x: Array, y: Array, rows: Array, convert: _Convert) -> None:
        self.xm, self.labels, self.rows, self.convert = x, y, rows, convert

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.convert.sample_shape

    @property
    def target_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.labels.shape[1:])

    def take(self, idx: Index, aug: Augmenter | None = None, epoch: int = 0) -> tuple[Array, Array]:
        rows = self.rows[np.asarray(idx, dtype=np.int64)]
        x = self.convert(np.asarray(self.xm[rows]))
        if aug is not None and x.ndim == 4:
            x = np.stack([aug.array(x[k], epoch, int(r)) for k, r in enumerate(rows)]) if len(rows) else x
        return x, self.labels[rows]


@dataclass(frozen=True)
class _Convert:
    """Raw rows -> model inputs: dtype, scale, the reshape :func:`_fit_array` chose, standardisation."""

    o: _Opts
    name: str
    int_inputs: bool
    scale: float | None
    sample_shape: tuple[int, ...]
    mean: Array | None = None
    std: Array | None = None

    def __call__(self, raw: Array) -> Array:
        if self.int_inputs:
            return raw.astype(np.int64).reshape(len(raw), *self.sample_shape)
        x = raw.astype(np.float32)
        if self.scale is not None:
            x = x * np.float32(self.scale)
        x = _fit_array(
            self.o, self.name, x.reshape(len(raw), *raw.shape[1:]) if raw.ndim > 1 else x[:, None], []
        )
        if self.mean is not None and self.std is not None:
            x = ((x - self.mean) / self.std).astype(np.float32)
        return x


def _mapped_dataset(o: _Opts, name: str, xm: Array, y_raw: Array, notes: list[str]) -> Dataset:
    """A memory-mapped .npy: labels in memory, inputs read (and standardised) on demand."""
    if y_raw.shape[0] != xm.shape[0]:
        raise DataError(f"data '{name}': inputs have {xm.shape[0]} samples but labels have {y_raw.shape[0]}")
    y, task, num_classes, class_names, label_notes = _labels(o, name, y_raw)
    notes.extend(label_notes)
    int_inputs = o.dtype_kind == "int"
    if int_inputs and xm.dtype.kind == "f":
        raise DataError(f"data '{name}' has float inputs but the spec input dtype is '{o.input_dtype}'")
    scale = 1.0 / 255.0 if (not int_inputs and xm.dtype == np.uint8) else None
    first = np.asarray(xm[:1]).astype(np.int64 if int_inputs else np.float32)
    fitted = first if int_inputs else _fit_array(o, name, first if first.ndim > 1 else first[:, None], notes)
    conv = _Convert(o, name, int_inputs, scale, tuple(int(d) for d in fitted.shape[1:]))
    parts = split_indices(
        len(y),
        o.seed,
        o.val_fraction,
        o.test_fraction,
        o.source,
        y if task == "classification" else None,
        o.num_samples,
    )
    pre: dict[str, object] = {"kind": "raw"}
    if not int_inputs:
        rank = len(conv.sample_shape)
        axis = None if rank <= 1 else (rank if rank == 2 else 1)
        mean, std = _streamed_stats(xm, parts, conv, axis, name)
        conv = dataclasses.replace(conv, mean=mean, std=std)
        kind = "features" if rank <= 1 else ("sequence" if rank == 2 else "image")
        pre = {"kind": kind, "mean": [float(v) for v in mean.ravel()], "std": [float(v) for v in std.ravel()]}
        if scale is not None:
            pre["scale"] = scale
        notes.append(f"standardised inputs ({kind}) with train mean/std")
    tr, va, te = (MappedSplit(xm, y, p, conv) for p in parts)
    return Dataset(
        name, task, tr, va, te, num_classes=num_classes, class_names=class_names, preprocess=pre, notes=notes
    )


def _streamed_stats(
    xm: Array, parts: tuple[Array, Array, Array], conv: _Convert, axis: int | None, name: str
) -> tuple[Array, Array]:
    """Mean/std of the training rows (per ``axis`` index), in chunks; every row is checked finite."""
    total: Array | None = None
    total_sq: Array | None = None
    count = 0
    train = np.zeros(xm.shape[0], dtype=bool)
    train[parts[0]] = True
    step = max(1, (64 << 20) // max(1, int(np.prod(xm.shape[1:])) * 8))
    for start in range(0, xm.shape[0], step):
        x = conv(np.asarray(xm[start : start + step])).astype(np.float64)
        check_finite(x, f"data '{name}'", start)
        x = x[train[start : start + step]]
        reduce = (0,) if axis is None else tuple(a for a in range(x.ndim) if a != axis)
        s, sq = x.sum(axis=reduce, keepdims=True), (x * x).sum(axis=reduce, keepdims=True)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += int(np.prod([x.shape[a] for a in reduce]))
    assert total is not None and total_sq is not None
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean * mean, 0.0))
    return mean.astype(np.float64), np.where(std > 1e-8, std, 1.0)


# --------------------------------------------------------------------------------------------------
# images: folders and tar shards (decoded on demand, module images)


def _load_folder(o: _Opts, folder: Path) -> Dataset:
    """An image folder (one sub-folder per class, or train/ val/ test/ sub-folders of those), or a
    folder of tar shards (``*.tar``, or train/ val/ test/ sub-folders of them)."""
    layout = split_layout(folder)
    roots = layout or {"train": folder}
    shards = {k: sorted(p for p in d.iterdir() if p.suffix.lower() == ".tar") for k, d in roots.items()}
    if shards["train"]:
        return _load_shards(o, shards, folder)
    _require_kind(o, "float", "float images")
    classes, files, labels = class_folder_files(roots["train"])
    parts: dict[str, ImageSplit] = {}
    decoder = ImageDecoder(1, 1, 1, o.budget.max_image_pixels)
    parts["train"] = ImageSplit(files, labels, decoder)
    for k in ("val", "test"):
        if k in roots:
            _, f, lab = class_folder_files(roots[k], classes)
            parts[k] = ImageSplit(f, lab, decoder)
    what = f"images: {len(files)} files in {len(classes)} classes" + (
        f" (+ {', '.join(f'{k} {len(v)}' for k, v in parts.items() if k != 'train')} in {'/'.join(k for k in roots if k != 'train')}/)"
        if len(parts) > 1
        else ""
    )
    return _image_dataset(o, str(folder), classes, parts, what)


def _load_shards(o: _Opts, shards: dict[str, list[Path]], where: Path) -> Dataset:
    _require_kind(o, "float", "float images")
    decoder = ImageDecoder(1, 1, 1, o.budget.max_image_pixels)
    parts: dict[str, ImageSplit] = {}
    for k, paths in shards.items():
        if not paths:
            raise DataError(f"tar shard folder '{where}': the {k} folder holds no .tar shards")
        refs, labels = index_shards(paths, o.budget)
        if len(labels) == 0:
            raise DataError(f"tar shards under '{where}' hold no samples")
        parts[k] = ImageSplit(refs, labels, decoder)
    n = int(max(int(p.labels.max()) for p in parts.values())) + 1
    classes = [str(i) for i in range(n)]
    what = f"tar shards: {len(parts['train'])} samples in {len(shards['train'])} shards, {n} classes"
    return _image_dataset(o, str(where), classes, parts, what)


def _image_dataset(
    o: _Opts, name: str, classes: list[str], parts: dict[str, ImageSplit], what: str
) -> Dataset:
    """Size, split (stratified) and standardise lazily decoded image splits."""
    notes = [what]
    train = parts["train"]
    sizes = _scan_headers(parts, o.budget.max_image_pixels)
    first_w, first_h, first_mode = sizes[0]
    shape = o.shape
    flatten = False
    if shape is None or len(shape) == 3:
        c_dim, h_dim, w_dim = shape if shape is not None else ("C", "H", "W")
        channels = (
            c_dim if isinstance(c_dim, int) else (1 if first_mode in ("L", "1", "I;16", "I", "F") else 3)
        )
        height = h_dim if isinstance(h_dim, int) else first_h
        width = w_dim if isinstance(w_dim, int) else first_w
        if isinstance(h_dim, str) or isinstance(w_dim, str):
            first = train.read(0)[1]
            o.budget.check(
                f"images of '{name}': the spec's symbolic axes take the size {height}x{width} of the first "
                f"image '{first}', and one sample",
                (channels, height, width),
                4,
                "; give the spec fixed H and W",
            )
            notes.append(
                f"images: sized {height}x{width} from the first image (the spec's axes are symbolic)"
            )
    elif len(shape) == 1 and isinstance(shape[0], int) and math.isqrt(shape[0]) ** 2 == shape[0]:
        channels, height, width, flatten = 1, math.isqrt(shape[0]), math.isqrt(shape[0]), True
    else:
        raise DataError(
            f"image folder '{name}' gives images of shape (C, H, W) but the spec input shape is "
            f"{_fmt_shape(shape)}; use (C, H, W) with C 1 or 3, or (L,) with L a square"
        )
    if channels not in (1, 3):
        raise DataError(
            f"image folder '{name}': the spec input shape {_fmt_shape(shape)} has {channels} "
            "channels; images can be loaded with 1 (grey) or 3 (RGB)"
        )
    decoder = ImageDecoder(channels, height, width, o.budget.max_image_pixels)
    resized = sum(1 for w, h, _ in sizes if (w, h) != (width, height))
    notes.append(f"images: decoded on demand as {decoder.mode} {height}x{width}")
    if resized:
        notes.append(f"images: resizing {resized} of {len(sizes)} to {height}x{width} (bilinear)")
    vf = 0.0 if "val" in parts else o.val_fraction
    tf = 0.0 if "test" in parts else o.test_fraction
    idx = split_indices(len(train), o.seed, vf, tf, o.source, labels=train.labels, cap=o.num_samples)
    tr, va, te = (train.subset(i) for i in idx)
    va, te = parts.get("val", va), parts.get("test", te)
    tr = tr.with_decoder(decoder)
    mean, std, used = compute_stats(tr, o.seed)
    notes.append(
        f"images: standardised per channel with the mean/std of {used} training images"
        + (f" (a seeded sample of {len(tr)})" if used < len(tr) else "")
    )
    final = dataclasses.replace(decoder, mean=tuple(mean), std=tuple(std), flatten=flatten)
    if flatten:
        notes.append(f"images: flattened to {height * width} features")
    pre: dict[str, object] = {
        "kind": "image",
        "mean": mean,
        "std": std,
        "size": [height, width],
        "channels": channels,
        "scale": 1.0 / 255.0,
        "flatten": flatten,
    }
    tr, va, te = (sp.with_decoder(final) for sp in (tr, va, te))
    return Dataset(
        name,
        "classification",
        tr,
        va,
        te,
        num_classes=len(classes),
        class_names=classes,
        preprocess=pre,
        notes=notes,
    )


def _scan_headers(parts: dict[str, ImageSplit], max_pixels: int) -> list[tuple[int, int, str]]:
    """Every image's (width, height, mode) from its header: non-images and pixel bombs are refused
    now, naming the file (shards: the first 64 KiB of each image member)."""
    out = []
    for sp in parts.values():
        for i in range(len(sp)):
            if isinstance(sp.items, ShardRefs):
                data: str | bytes = sp.items.read(i)
                name = sp.items.name(i)
            else:
                data = name = sp.items[i]
            out.append(image_size(data, name, max_pixels))
    return out
