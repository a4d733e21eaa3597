"""``specc eval``: accuracy, top-k, per-class precision/recall/F1 and a confusion matrix."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from specc.cli.app import app
from specc.cli.spec_cmds import JsonOpt
from specc.errors import UsageError


@app.command("eval")
def eval_cmd(
    target: Annotated[Path, typer.Argument(help="a run folder (torch) or an exported .onnx file")],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="a run folder (its recorded split), the run's own source, or labelled files: an image "
            "folder with class sub-folders, a .csv with a label column, a .npz with y",
        ),
    ] = None,  # noqa: UP045
    split: Annotated[
        str, typer.Option("--split", help="split of a run's recorded data: test, val or train")
    ] = "test",
    top_k: Annotated[int, typer.Option("--top-k", help="also report top-K accuracy")] = 5,
    label: Annotated[str | None, typer.Option("--label", help="the label column of a CSV")] = None,  # noqa: UP045
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="folder for eval.json, confusion_matrix.png, predictions.csv"),
    ] = None,  # noqa: UP045
    batch_size: Annotated[int, typer.Option("--batch-size", help="samples per forward pass")] = 256,
    as_json: JsonOpt = False,
) -> None:
    """Measure a trained model on labelled data (its own test split by default)."""
    from specc.evaluation import EvalRequest, evaluate
    from specc.runtime.predict import dumps

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    if split not in ("train", "val", "test"):
        raise UsageError(f"--split must be test, val or train, got {split!r}")
    report = evaluate(
        EvalRequest(target, data, split, top_k, out, label, batch_size)  # type: ignore[arg-type]
    )
    if as_json:
        print(dumps(report))
        return
    print(_summary(report))


def _summary(report: dict[str, object]) -> str:
    lines = [f"{report['model']} on {report['data']}: {report['samples']} samples"]
    if report["task"] == "regression":
        lines.append(f"mse {report['mse']:.6g}, mae {report['mae']:.6g}, r2 {report['r2']:.4f}")
        return "\n".join(lines)
    tops = report["top_k"]
    assert isinstance(tops, dict)
    lines.append(f"accuracy {report['accuracy']:.4f}" + "".join(f", {k} {v:.4f}" for k, v in tops.items()))
    per_class = report["per_class"]
    assert isinstance(per_class, list)
    width = max([len(str(r["label"])) for r in per_class] + [5])
    lines.append(f"{'class':<{width}}  precision  recall  f1      support")
    for r in per_class:
        lines.append(
            f"{str(r['label']):<{width}}  {r['precision']:<9.4f}  {r['recall']:<6.4f}  {r['f1']:<6.4f}  {r['support']}"
        )
    macro = report["macro"]
    assert isinstance(macro, dict)
    lines.append(
        f"{'macro':<{width}}  {macro['precision']:<9.4f}  {macro['recall']:<6.4f}  {macro['f1']:<6.4f}"
    )
    return "\n".join(lines)
