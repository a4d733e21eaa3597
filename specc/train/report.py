"""The run folder's human- and machine-readable outputs: log, progress, metrics files, curves.

Only rank 0 creates a :class:`RunReport` that writes; the other ranks get ``write=False``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from specc.atomic import atomic_write_files
from specc.errors import printable

METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
CURVES_PNG = "curves.png"
LOG_FILE = "train.log"


class RunReport:
    """Log lines (stdout + ``RUN/train.log``), a progress bar, and metrics written atomically."""

    def __init__(self, run: Path, *, write: bool, quiet: bool, log_every: int) -> None:
        self.run, self.write, self.quiet, self.log_every = run, write, quiet, log_every
        self._progress: Any = None
        self._task: Any = None
        self._tb: Any = None
        self._last = time.perf_counter()

    # -------------------------------------------------------------------------------------- log

    def log(self, line: str) -> None:
        if not self.write:
            return
        line = printable(line)  # file names and data labels in it never drive the terminal
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, flush=True)
        with open(self.run / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def start_epoch(self, epoch: int, total_epochs: int | None, steps: int, done: int) -> None:
        if not self.write or self.quiet or not sys.stdout.isatty():
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[rate]} samples/s"),
                TimeRemainingColumn(),
            )
            self._progress.start()
        label = f"epoch {epoch + 1}" + (f"/{total_epochs}" if total_epochs else "")
        self._task = self._progress.add_task(label, total=steps, completed=done, loss="-", rate="-")

    def step(self, step: int, epoch: int, loss: float, rate: float, lr: float) -> None:
        if not self.write:
            return
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, loss=f"{loss:.4f}", rate=f"{rate:,.0f}")
        elif step % self.log_every == 0:
            self.log(f"step {step} epoch {epoch + 1} loss {loss:.4f} lr {lr:.3g} {rate:,.0f} samples/s")

    def end_epoch(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb:
            self._tb.close()

    # ---------------------------------------------------------------------------------- metrics

    def write_metrics(
        self, history: list[dict[str, Any]], final: dict[str, Any] | None, status: str, *, curves: bool = True
    ) -> None:
        """``metrics.csv`` (one row per epoch), ``metrics.json`` (epochs + final) and, with ``curves``,
        ``curves.png``. The trainer writes the metrics after every epoch and the curves once, when the
        run ends (completed, interrupted or failed): matplotlib's import and a redraw per epoch cost
        more than a small model's whole epoch."""
        if not self.write:
            return
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        doc = {"status": status, "epochs": history, "final": final}
        files: dict[Path, bytes | str] = {}
        if history and curves:
            files[self.run / CURVES_PNG] = render_curves(history)
        files[self.run / METRICS_CSV] = buf.getvalue()
        files[self.run / METRICS_JSON] = json.dumps(nan_to_null(doc), indent=2) + "\n"  # the status: last
        atomic_write_files(files)  # each file atomic, one folder flush for all
        self._tensorboard(history[-1] if history else None)

    def _tensorboard(self, row: dict[str, Any] | None) -> None:
        if row is None:
            return
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self._tb = False
                return
            self._tb = SummaryWriter(str(self.run / "tensorboard"))
        if self._tb is False:
            return
        for key, value in row.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                self._tb.add_scalar(key, value, row.get("step", 0))


def nan_to_null(value: Any) -> Any:
    """JSON has no NaN/Infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_null(v) for v in value]
    return value


def render_curves(history: list[dict[str, Any]]) -> bytes:
    """Loss (train/val) and the validation metrics per epoch, as PNG bytes (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    metrics = [k for k in history[-1] if k.startswith("val_") and k != "val_loss"]
    fig = Figure(figsize=(10 if metrics else 5, 3.6), dpi=100)
    # fixed margins instead of tight_layout(), whose extra text-measuring draw costs more than the
    # plot itself (~0.1 s); the tick labels of losses and [0, 1] metrics fit these margins
    fig.subplots_adjust(left=0.08 if metrics else 0.15, right=0.98, bottom=0.14, top=0.91, wspace=0.22)
    axes = fig.subplots(1, 2 if metrics else 1, squeeze=False)[0]
    for key in ("train_loss", "val_loss"):
        axes[0].plot(epochs, [row.get(key, math.nan) for row in history], marker="o", label=key)
    axes[0].set_xlabel("epoch")
    axes[0].set_title("loss")
    axes[0].legend()
    if metrics:
        for key in metrics:
            axes[1].plot(epochs, [row.get(key, math.nan) for row in history], marker="o", label=key)
        axes[1].set_xlabel("epoch")
        axes[1].set_title("validation metrics")
        axes[1].legend()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    return png.getvalue()
