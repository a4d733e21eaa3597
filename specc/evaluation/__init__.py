"""``specc eval``: a trained model (run folder or exported ``.onnx``) measured on labelled data.

The model: a run folder (its ``spec.yaml`` built in torch with its final weights, its
``data.json`` for labels and preprocessing) or an ``.onnx`` file (onnxruntime, its metadata).

The data:

* a run's recorded data (``--data RUN``, or nothing for a run folder, or the run's own source
  name): the data set is rebuilt with exactly the run's splits (seed, fractions, ...) and one split
  is measured (``--split test`` by default), never a sample the model trained on;
* labelled files, read raw through the same routes as ``specc predict`` with the model's
  preprocessing: an image folder with one sub-folder per class, a CSV with a label column
  (``label``/``target``/``y`` or ``--label COL``), a ``.npz`` with ``y``, or ``xNAME.npy`` with
  ``yNAME.npy`` beside it. Labels are class names (the model's labels) or class indices.

Classification gives accuracy, top-k accuracy, per-class precision/recall/F1/support, macro and
weighted means and the confusion matrix; regression MSE, MAE and R². With ``--out DIR``:
``DIR/eval.json``, ``DIR/confusion_matrix.png`` and ``DIR/predictions.csv``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from specc.atomic import atomic_write_text
from specc.contracts.onnx_metadata import OnnxMetadata
from specc.contracts.run_folder import DataRecord, RunFolder, absolute_source
from specc.errors import UsageError
from specc.evaluation.metrics import classification_report, plot_confusion, regression_report
from specc.runtime import load
from specc.runtime.inputs import TensorSpec, check_input
from specc.runtime.predict import Options, read_inputs

Split = Literal["train", "val", "test"]
REPORT_FILE = "eval.json"
CONFUSION_PNG = "confusion_matrix.png"
PREDICTIONS_CSV = "predictions.csv"


@dataclass(frozen=True)
class EvalRequest:
    """What ``specc eval`` was asked."""

    target: Path
    data: str | None = None
    split: Split = "test"
    top_k: int = 5
    out: Path | None = None
    label: str | None = None
    batch_size: int = 256


class TorchModel:
    """A run folder's model in torch, with the interface :mod:`specc.runtime.predict` reads."""

    def __init__(self, run: Path) -> None:
        from specc.export.metadata import input_entries  # noqa: PLC0415 - torch only for a run folder; an .onnx file is evaluated without it
        from specc.export.source import load_source  # noqa: PLC0415 - as above
        from specc.export.verify import torch_runner  # noqa: PLC0415 - as above

        source = load_source(RunFolder(run).spec_source(), weights=run)
        self.record = source.run.record
        graph = source.model.graph
        self.inputs = tuple(TensorSpec.from_json(e, "inputs") for e in input_entries(graph))
        labels = list(graph.labels) if graph.labels else source.run.class_names
        self.info = OnnxMetadata(
            labels=labels,
            preprocess=self.record.preprocess if self.record else None,
            task=self.record.task if self.record else None,
        )
        self._run = torch_runner(source.model.eval(), [s.name for s in self.inputs])

    def expects(self) -> str:
        return ", ".join(f"'{s.name}' {s.describe()}" for s in self.inputs)

    def __call__(self, **feeds: NDArray[Any]) -> dict[str, NDArray[Any]]:
        symbols: dict[str, tuple[int, str]] = {}
        checked = {s.name: check_input(s.name, feeds[s.name], s, symbols)[0] for s in self.inputs}
        return self._run(checked)


def _target(path: Path) -> tuple[Any, DataRecord | None]:
    if path.is_dir():
        if not RunFolder(path).marked:
            raise UsageError(
                f"{path} is not a specc run folder (no marker); give a run folder or an .onnx file"
            )
        model = TorchModel(path)
        return model, model.record
    if path.suffix.lower() != ".onnx":
        raise UsageError(f"cannot evaluate {path}: give a run folder or an .onnx file")

    return load(path), None


Batch = tuple[dict[str, NDArray[Any]], list[str], list[Any]]


def _recorded(record: DataRecord, split: Split, input_name: str, batch: int) -> Iterator[Batch]:
    ds = record.data.load()
    part = getattr(ds, split)
    if len(part) == 0:
        raise UsageError(f"the {split} split of '{record.data.source}' is empty (fraction 0)")
    start = 0
    for x, y in part.batches(batch):  # read batch by batch (lazy splits too)
        ids = [str(i) for i in range(start, start + len(x))]
        start += len(x)
        yield {input_name: np.asarray(x)}, ids, list(y)


def _batches(req: EvalRequest, model: Any, record: DataRecord | None) -> tuple[str, Iterator[Batch]]:
    """``(what the data is, its batches)``."""

    name = model.inputs[0].name
    if req.data is None:
        if record is None:
            raise UsageError("--data is needed for an .onnx model: a run folder, or labelled files")
        return f"{record.data.source} ({req.split} split)", _recorded(record, req.split, name, req.batch_size)
    path = Path(req.data)
    if path.is_dir() and RunFolder(path).marked:
        other = RunFolder(path).read_data()
        return f"{other.data.source} ({req.split} split of {path})", _recorded(
            other, req.split, name, req.batch_size
        )
    if record is not None and absolute_source(req.data) == record.data.source:
        return f"{record.data.source} ({req.split} split)", _recorded(record, req.split, name, req.batch_size)
    if not path.exists():
        raise UsageError(
            f"--data {req.data}: not a file, a folder or a run folder (a named data set is evaluated on "
            "the splits a run recorded: --data RUN)"
        )
    opts = Options(batch_size=req.batch_size, labels=True, label_column=req.label)
    return str(path), ((c.feeds, c.ids, c.labels or []) for c in read_inputs(model, path, opts))


def _class_ids(
    raw: Sequence[Any], ids: Sequence[str], names: Sequence[str] | None, classes: int
) -> NDArray[np.int64]:
    """Labels (class names or indices) → indices below ``classes``; anything else is refused, named."""
    index = {n: i for i, n in enumerate(names or [])}
    out = np.empty(len(raw), np.int64)
    for j, value in enumerate(raw):
        item = value.item() if isinstance(value, np.generic) else value
        if isinstance(item, str) and item in index:
            out[j] = index[item]
            continue
        text = str(item).strip()
        if isinstance(item, float) and item.is_integer():
            text = str(int(item))
        if text.lstrip("-").isdigit() and 0 <= int(text) < classes:
            out[j] = int(text)
            continue
        known = f"the model's classes are {', '.join(names[:12])}" if names else f"indices 0..{classes - 1}"
        raise UsageError(f"sample {ids[j]}: label {item!r} is not a class of the model ({known})")
    return out


def evaluate(req: EvalRequest) -> dict[str, Any]:
    """Measure the model on the data; returns the report (also written to ``--out``)."""
    if req.top_k < 1 or req.batch_size < 1:
        raise UsageError("--top-k and --batch-size must be positive")
    if req.out is not None and req.out.exists() and not req.out.is_dir():
        raise UsageError(f"--out {req.out} exists and is not a folder")
    model, record = _target(req.target)
    task = model.info.task
    if task not in (None, "classification", "regression"):
        raise UsageError(f"specc eval measures classifiers and regressors; this model's task is {task}")
    what, batches = _batches(req, model, record)
    scores, targets, ids = [], [], []
    for feeds, batch_ids, labels in batches:
        out = next(iter(model(**feeds).values()))
        scores.append(np.asarray(out, np.float64).reshape(len(batch_ids), -1))
        targets += list(labels)
        ids += batch_ids
    if not ids:
        raise UsageError(f"--data {what} holds no samples")
    x = np.concatenate(scores)
    if not np.isfinite(x).all():
        raise UsageError(f"the model's outputs on {what} are not finite (NaN/inf): nothing to measure")
    report: dict[str, Any] = {"model": str(req.target), "data": what, "task": task or "classification"}
    if report["task"] == "regression":
        try:
            t = np.asarray(targets, np.float64)
        except ValueError:
            raise UsageError(f"{what}: regression targets must be numbers") from None
        report.update(regression_report(x, t))
        rows = [
            {"id": i, "true": a.tolist(), "predicted": b.tolist()}
            for i, a, b in zip(ids, t.reshape(len(ids), -1), x, strict=True)
        ]
        _write(req, report, rows)
        return report
    y = _class_ids(targets, ids, model.info.labels, x.shape[1])
    report.update(classification_report(x, y, model.info.labels, (req.top_k,)))
    names = report["labels"]
    pred = x.argmax(axis=1)
    rows = [
        {"id": i, "true": names[t], "predicted": names[p], "correct": t == p}
        for i, t, p in zip(ids, y.tolist(), pred.tolist(), strict=True)
    ]
    _write(req, report, rows)
    return report


def _write(req: EvalRequest, report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """``eval.json``, ``predictions.csv`` and (classification) ``confusion_matrix.png`` in ``--out``."""
    if req.out is None:
        return

    try:
        req.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {req.out}: cannot create the folder ({exc.strerror})") from None
    atomic_write_text(req.out / REPORT_FILE, json.dumps(report, indent=2, allow_nan=False) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(req.out / PREDICTIONS_CSV, buf.getvalue())
    if "confusion_matrix" in report:
        title = f"{req.target.name}: {report['data']}"
        plot_confusion(req.out / CONFUSION_PNG, report["confusion_matrix"], report["labels"], title)
