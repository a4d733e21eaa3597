"""Helpers shared by the multi-process training tests: a plain MLP spec and `specc train` runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import ROOT
from safetensors.torch import load_file


def mlp_spec(name: str) -> str:
    """A plain MLP (no dropout, no BatchNorm), so process count cannot change the maths."""
    return f"""specc: 1
name: {name}
inputs: {{x: {{shape: [64]}}}}
layers:
  - linear: {{out_features: 32, name: hidden}}
  - act
  - linear: {{out_features: 10, name: logits}}
train: {{optimizer: sgd, momentum: 0.9, lr: 0.05, batch_size: 32, max_steps: 24, epochs: null,
        checkpoint_every: 4, log_every: 1}}
"""


def train_cmd(spec: Path, run: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "specc.cli",
        "train",
        str(spec),
        "--data",
        "digits",
        "--out",
        str(run),
        "--quiet",
        "--device",
        "cpu",
        *extra,
    ]


def train_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run_train(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=timeout)


def run_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def check_restore_best(spec: Path, run: Path, *launch: str) -> None:
    """Train with early stopping that nothing beats after epoch 1 (min_delta 100): the run must end
    with epoch 1's weights on every rank (final val_loss = epoch 1's) and save exactly those."""
    import json

    done = run_train(
        train_cmd(
            spec,
            run,
            *launch,
            "--set",
            "train.max_steps=null",
            "--set",
            "train.epochs=3",
            "--set",
            "train.early_stopping={patience: 2, metric: val_loss, min_delta: 100}",
        )
    )
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    epochs = metrics["epochs"]
    assert len(epochs) == 3 and epochs[0]["val_loss"] != epochs[-1]["val_loss"]
    assert metrics["final"]["weights_of_epoch"] == 1
    assert abs(metrics["final"]["val_loss"] - epochs[0]["val_loss"]) <= 1e-5 * abs(epochs[0]["val_loss"])
    final, best = run_weights(run), load_file(str(run / "best.safetensors"))
    assert sorted(final) == sorted(best) and all(torch.equal(final[k], best[k]) for k in final)
