"""Prediction over files: every input route applies the model's recorded preprocessing, in batches.

Routes (:func:`read_inputs`), each giving :class:`Chunk` s of model inputs with an id per sample:

=====================  ===========================================================================
a folder               its images (sub-folders included; a sub-folder's name is the class label)
an image file          one sample
``.npy``               one sample or a batch (batch axis first), memory-mapped, read in batches
``.npz``               one array per input name (labels in ``y``/``labels``)
``.csv``               rows with a header; the feature columns the model records (by name)
``.txt``               one text (characters → ids)
=====================  ===========================================================================

Arrays and CSV rows are **raw** data in the units of the training data (the recorded
standardisation is applied); pass ``preprocessed=True`` for arrays that already are model inputs.
A route the model's preprocessing kind cannot take is refused with the reason.

:func:`results` turns outputs into JSON-ready per-sample rows (top-k classes for classifiers, the
next token for language models, the values otherwise), never holding NaN (JSON has none): a
non-finite output becomes ``null`` and is flagged. :func:`write_predictions` streams rows into a CSV
or JSONL file, written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from specc.atomic import atomic_path
from specc.contracts.preprocess import (
    Dim,
    FeaturesPreprocess,
    ImagePreprocess,
    Preprocess,
    Table,
    TextPreprocess,
)
from specc.errors import UsageError
from specc.runtime.inputs import (
    ARRAY_SUFFIXES,
    CSV_SUFFIXES,
    IMAGE_SUFFIXES,
    LABEL_ARRAYS,
    TEXT_SUFFIXES,
    check_file,
    check_input,
    image_files,
    load_arrays,
    load_npy,
    load_npz,
    read_csv,
    read_text,
    unsupported_file,
)

if TYPE_CHECKING:
    from specc.contracts.onnx_metadata import OnnxMetadata
    from specc.runtime.inputs import TensorSpec
    from specc.runtime.model import Model


class Source(Protocol):
    """What reading inputs needs of a model: its inputs and its metadata (a runtime :class:`Model`,
    or ``specc eval``'s torch model of a run folder)."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def info(self) -> OnnxMetadata: ...

    def expects(self) -> str: ...


#: Bytes of model input one batch may hold (batches of large images shrink to fit).
MAX_BATCH_BYTES = 512 * 1024 * 1024
#: CSV columns taken as the label when none is named (as the training data layer does).
LABEL_COLUMNS = ("label", "target", "y")


@dataclass
class Chunk:
    """Model inputs for some samples, their ids, and their labels where the source has them."""

    feeds: dict[str, NDArray[Any]]
    ids: list[str]
    labels: list[Any] | None = None
    text: str | None = None


@dataclass
class Options:
    """How to read inputs: batch size, whether arrays are already model inputs, labels for eval."""

    batch_size: int = 256
    preprocessed: bool = False
    labels: bool = False
    label_column: str | None = None


def read_inputs(model: Source, path: Path, opts: Options | None = None) -> Iterator[Chunk]:
    """The samples of ``path`` as batches of checked-ready model inputs (see the module docstring)."""
    opts = opts or Options()
    if not isinstance(opts.batch_size, int) or opts.batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {opts.batch_size!r}")
    if path.is_dir():
        yield from _images(model, path, image_files(path), opts, path)
        return
    check_file(path)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        yield from _images(model, path, [path], opts, path.parent)
    elif suffix in ARRAY_SUFFIXES:
        yield from _arrays(model, path, opts)
    elif suffix in CSV_SUFFIXES:
        yield from _csv(model, path, opts)
    elif suffix in TEXT_SUFFIXES:
        pre = _single_input_route(model, TextPreprocess, "text", path)
        text = read_text(path)
        yield Chunk({model.inputs[0].name: pre.from_text(text, _sample(model))}, [path.name], None, text)
    else:
        raise unsupported_file(path)


def _sample(model: Source) -> tuple[Dim, ...]:
    return tuple(model.inputs[0].shape[1:])


def _single_input_route(model: Source, kind: type[Any], what: str, path: Path) -> Any:
    """The model's preprocessing if it is of ``kind`` and fits its single input, else a refusal."""
    pre = model.info.preprocess
    if not isinstance(pre, kind):
        recorded = f"kind '{pre.kind}'" if pre is not None else "none"
        raise UsageError(
            f"cannot predict from {what} '{path.name}': the model has no {what} preprocessing metadata "
            f"(specc.preprocess is {recorded}); pass the input as .npy or .npz"
        )
    _one_input(model, what)
    _fits(model, pre)
    return pre


def _one_input(model: Source, what: str) -> None:
    if len(model.inputs) != 1:
        raise UsageError(f"{what} gives one input but the model takes {len(model.inputs)}: {model.expects()}")


def _fits(model: Source, pre: Preprocess) -> None:
    problem = pre.fits(_sample(model))
    if problem:
        raise UsageError(
            f"model metadata 'specc.preprocess' does not fit input '{model.inputs[0].name}': {problem}"
        )


def _images(model: Source, where: Path, files: list[Path], opts: Options, root: Path) -> Iterator[Chunk]:
    pre: ImagePreprocess = _single_input_route(model, ImagePreprocess, "image", where)
    if not files:
        raise UsageError(f"folder '{where}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
    c, h, w = pre.geometry(_sample(model))
    per_batch = max(1, min(opts.batch_size, MAX_BATCH_BYTES // (4 * c * h * w)))
    name = model.inputs[0].name
    for start in range(0, len(files), per_batch):
        part = files[start : start + per_batch]
        rel = [p.relative_to(root) for p in part]
        labels = None
        if opts.labels:
            if any(len(r.parts) < 2 for r in rel):
                raise UsageError(
                    f"'{root / rel[0]}' is not in a class sub-folder: labelled images go in one "
                    "sub-folder per class (the sub-folder's name is the label)"
                )
            labels = [r.parts[0] for r in rel]
        batch = np.concatenate([pre.from_image(p, _sample(model)) for p in part])
        yield Chunk({name: batch}, [r.as_posix() for r in rel], labels)


def _arrays(model: Source, path: Path, opts: Options) -> Iterator[Chunk]:
    names = [s.name for s in model.inputs]
    arrays = load_arrays(path, names)
    labels = _array_labels(path) if opts.labels else None
    pre = model.info.preprocess
    first = names[0]
    raw = not opts.preprocessed and pre is not None
    if raw:
        assert pre is not None
        _fits(model, pre)
    counts = {n: _count(model, n, a, pre if raw and n == first else None) for n, a in arrays.items()}
    sizes = {n for n, _ in counts.values()}
    if len(sizes) != 1:
        raise UsageError(
            f"'{path.name}': every input needs the same number of samples, got "
            + ", ".join(f"{k} {v[0]}" for k, v in counts.items())
        )
    (n,) = sizes
    if labels is not None and len(labels) != n:
        raise UsageError(f"'{path.name}': {n} samples but {len(labels)} labels")
    for start in range(0, n, opts.batch_size):
        feeds = {}
        for name, arr in arrays.items():
            part = arr[start : start + opts.batch_size] if counts[name][1] else arr[np.newaxis]
            part = np.asarray(part)
            _finite(part, f"'{path.name}' ({name})", start)
            feeds[name] = pre.from_array(part, _sample(model)) if raw and name == first and pre else part
        ids = [str(i) for i in range(start, min(start + opts.batch_size, n))]
        yield Chunk(feeds, ids, labels[start : start + opts.batch_size] if labels is not None else None)


def _count(model: Source, name: str, arr: NDArray[Any], pre: Preprocess | None) -> tuple[int, bool]:
    """``(samples, batched)`` of an array given for input ``name`` (raw when ``pre`` is given)."""
    spec = next(s for s in model.inputs if s.name == name)
    rank = len(spec.shape) - 1
    if pre is not None:
        rank = pre.raw_rank(arr.shape, spec.shape[1:])
    if arr.ndim in (rank, rank + 1):
        if rank == len(spec.shape) - 1:  # raw samples have the model's sample shape: check it now
            check_input(name, np.asarray(arr[:1] if arr.ndim > rank else arr), spec, {})
        return (1, False) if arr.ndim == rank else (int(arr.shape[0]), True)
    unit = "raw samples" if pre is not None else "samples"
    raise UsageError(
        f"input '{name}': expected shape {spec.describe()}, got {tuple(arr.shape)} {arr.dtype} "
        f"({unit} have rank {rank}: pass one sample or a batch of them)"
    )


def _array_labels(path: Path) -> list[Any]:
    """Labels beside arrays: ``y`` in a ``.npz``; for ``xNAME.npy`` the file ``yNAME.npy``."""
    if path.suffix.lower() == ".npz":
        arrays = load_npz(path)
        found = next((arrays[k] for k in LABEL_ARRAYS if k in arrays), None)
        if found is None:
            raise UsageError(f"'{path.name}' holds no labels: add an array named 'y'")
        return list(np.asarray(found).reshape(-1).tolist())
    y_path = path.with_name("y" + path.stem[1:] + path.suffix) if path.stem[:1] in ("x", "X") else None
    if y_path is None or not y_path.is_file():
        raise UsageError(
            f"'{path.name}' has no labels: put them in y{path.stem[1:]}.npy beside it, or use a .npz"
        )
    return list(np.asarray(load_npy(y_path)).reshape(-1).tolist())


def _finite(arr: NDArray[Any], where: str, offset: int = 0) -> None:
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            index = [int(i) for i in np.argwhere(bad)[0]]
            index[0] += offset if arr.ndim > 1 else 0
            raise UsageError(
                f"{where} holds {int(bad.sum())} NaN/infinite value(s) (the first at index {index}); "
                "the model takes finite numbers"
            )


def _csv(model: Source, path: Path, opts: Options) -> Iterator[Chunk]:
    _one_input(model, "a CSV file")
    pre = model.info.preprocess
    if pre is not None:
        _fits(model, pre)
    named = getattr(pre, "feature_names", None) or []
    for table in read_csv(path, opts.batch_size):
        label_col = _label_column(table, opts, named)
        labels = [row[label_col].strip() for row in table.rows] if label_col is not None else None
        if opts.labels and labels is None:
            raise UsageError(
                f"{path}: no label column ({', '.join(LABEL_COLUMNS)}); name it with --label COLUMN"
            )
        if label_col is not None and not named:
            keep = [i for i in range(len(table.header)) if i != label_col]
            table = Table(
                [table.header[i] for i in keep],
                [[r[i] for i in keep] for r in table.rows],
                table.source,
                table.first_line,
            )
        if pre is None:
            x = FeaturesPreprocess(mean=[0.0] * len(table.header), std=[1.0] * len(table.header)).from_table(
                table, _sample(model)
            )
        else:
            x = pre.from_table(table, _sample(model))
        ids = [str(table.first_line + i) for i in range(len(table.rows))]
        yield Chunk({model.inputs[0].name: x}, ids, labels if opts.labels else None)


def _label_column(table: Table, opts: Options, features: Sequence[str]) -> int | None:
    if opts.label_column is not None:
        if opts.label_column not in table.header:
            raise UsageError(
                f"{table.source}: no column '{opts.label_column}' (columns: {', '.join(table.header)})"
            )
        return table.column(opts.label_column)
    lowered = [h.lower() for h in table.header]
    for name in LABEL_COLUMNS:
        if name in lowered and table.header[lowered.index(name)] not in features:
            return lowered.index(name)
    return None


# ------------------------------------------------------------------------------------------ results


def probabilities(x: NDArray[Any]) -> NDArray[np.float64]:
    """``x`` itself if its rows already are distributions, else ``softmax(x)`` over the last axis."""
    z = x.astype(np.float64)
    if z.size and np.all(np.isfinite(z)) and z.min() >= 0.0 and z.max() <= 1.0:
        if np.allclose(z.sum(axis=-1), 1.0, atol=1e-3):
            return z
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: NDArray[np.float64] = e / e.sum(axis=-1, keepdims=True)
    return out


def top_k(probs: NDArray[np.float64], k: int, names: Sequence[str] | None) -> list[list[dict[str, Any]]]:
    rows: list[list[dict[str, Any]]] = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        rows.append(
            [
                {
                    "label": names[i] if names is not None and i < len(names) else str(int(i)),
                    "index": int(i),
                    "prob": _finite_or_none(float(row[i])),
                }
                for i in order
            ]
        )
    return rows


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def json_safe(value: NDArray[Any]) -> tuple[Any, int]:
    """``(nested lists with NaN/inf as None, how many were replaced)``."""
    if value.dtype.kind != "f":
        return value.tolist(), 0
    bad = ~np.isfinite(value)
    out = value.astype(object)
    out[bad] = None
    return out.tolist(), int(bad.sum())


@dataclass
class Results:
    """Per-sample results of one chunk, JSON-ready."""

    task: str | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def results(model: Model, chunk: Chunk, outputs: dict[str, NDArray[Any]], k: int) -> Results:
    """One row per sample: ``{"id", "top_k"}`` for classifiers and language models (next token),
    ``{"id", "outputs": {name: values}}`` otherwise."""
    first = next(iter(outputs.values()))
    out = Results(model.task)
    bad = {name: int((~np.isfinite(v)).sum()) for name, v in outputs.items() if v.dtype.kind == "f"}
    for name, count in bad.items():
        if count:
            out.warnings.append(f"output '{name}' holds {count} NaN/infinite value(s), written as null")
    if model.is_language_model(first):
        if first.ndim != 3:
            raise UsageError(
                f"language model output '{model.outputs[0].name}' has shape {first.shape}; expected [batch, seq, vocab]"
            )
        out.task = "language_model"
        vocab = model.info.preprocess.vocab if isinstance(model.info.preprocess, TextPreprocess) else None
        for i, ranks in zip(chunk.ids, top_k(probabilities(first[:, -1, :]), k, vocab), strict=True):
            out.rows.append({"id": i, "top_k": ranks})
        return out
    classifier = model.is_classifier(first) and first.ndim in (1, 2)
    ranked = top_k(probabilities(first.reshape(len(chunk.ids), -1)), k, model.labels) if classifier else None
    for j, i in enumerate(chunk.ids):
        row: dict[str, Any] = {"id": i}
        if ranked is not None:
            row["top_k"] = ranked[j]
        else:
            row["outputs"] = {name: json_safe(np.asarray(v[j]))[0] for name, v in outputs.items()}
        out.rows.append(row)
    return out


def predict(
    model: Model, path: Path, k: int, opts: Options | None = None
) -> Iterator[tuple[Chunk, dict[str, NDArray[Any]], Results]]:
    """Run the model over every chunk of ``path``: ``(chunk, outputs, per-sample results)``."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise UsageError(f"top_k must be a positive integer, got {k!r}")
    for chunk in read_inputs(model, path, opts):
        outputs = model(**chunk.feeds)
        yield chunk, outputs, results(model, chunk, outputs, k)


# ------------------------------------------------------------------------------------------ writers

OUTPUT_SUFFIXES = (".csv", ".jsonl")


def check_output(path: Path) -> None:
    """Refuse an output file kind other than CSV/JSONL, or a folder that does not exist, before work."""
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"--output {path}: write predictions as .csv or .jsonl")
    if not path.parent.is_dir():
        raise UsageError(f"--output {path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise UsageError(f"--output {path} is a folder")


def _csv_fields(row: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {"id": row["id"]}
    for rank, entry in enumerate(row.get("top_k", []), start=1):
        suffix = "" if rank == 1 else f"_{rank}"
        flat[f"label{suffix}"] = entry["label"]
        flat[f"prob{suffix}"] = entry["prob"]
    for name, values in row.get("outputs", {}).items():
        vals = np.asarray(values, dtype=object).reshape(-1)
        for i, v in enumerate(vals):
            flat[name if len(vals) == 1 else f"{name}[{i}]"] = v
    return flat


def write_predictions(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Stream rows into ``path`` (``.csv``: id, label, prob, label_2, ...; ``.jsonl``: one JSON object
    per line), atomically: a failure leaves no partial file. Returns the number of rows."""

    count = 0
    jsonl = path.suffix.lower() == ".jsonl"
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer: csv.DictWriter[str] | None = None
        for row in rows:
            if jsonl:
                fh.write(json.dumps(row, allow_nan=False) + "\n")
            else:
                flat = _csv_fields(row)
                if writer is None:
                    writer = csv.DictWriter(fh, fieldnames=list(flat), lineterminator="\n")
                    writer.writeheader()
                writer.writerow(flat)
            count += 1
    return count


def dumps(value: Any) -> str:
    """JSON text that never holds NaN/Infinity (which are not JSON): they are null."""
    buf = io.StringIO()
    json.dump(_nan_to_none(value), buf, indent=2, allow_nan=False)
    return buf.getvalue()


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value
