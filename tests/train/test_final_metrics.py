"""The final metrics reuse the last epoch's validation only when the model still holds the weights
it measured; either way they equal a fresh evaluation of the weights the run ends with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from specc.lang.train_config import TrainConfig
from specc.train.batches import ModelIO, load_for_model
from specc.train.distributed import Dist
from specc.train.loop import Trainer
from specc.train.report import RunReport
from specc.train.runner import train_module

IO = ModelIO(("x",), ((4,),), ("float32",), "logits", (3,))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **cfg: Any
) -> tuple[nn.Module, dict[str, Any], int]:
    """Train on iris; returns (the trained model, metrics.json, validation passes over the val split)."""
    ds = load_for_model("iris", IO, seed=0)
    calls = []
    evaluate = Trainer.evaluate

    def counted(self: Trainer, split: Any) -> dict[str, float]:
        calls.append(split is ds.val)
        return evaluate(self, split)

    monkeypatch.setattr(Trainer, "evaluate", counted)
    model = _model()
    train_module(model, IO, ds, TrainConfig(batch_size=16, lr=0.05, optimizer="sgd", **cfg), tmp_path / "r")
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    # a fresh evaluation of the weights the run ended with (the model object trained in place)
    report = RunReport(tmp_path / "r", write=False, quiet=True, log_every=10**9)
    fresh = Trainer(
        model, IO, ds, TrainConfig(batch_size=16), tmp_path / "r", torch.device("cpu"), Dist(), report
    )
    metrics["fresh"] = fresh.evaluate(ds.val)
    return model, metrics, sum(calls)


def test_final_validation_reuses_the_last_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, metrics, val_passes = _run(tmp_path, monkeypatch, epochs=3)
    assert metrics["status"] == "completed" and len(metrics["epochs"]) == 3
    assert val_passes == 3  # one per epoch, none more at the end
    final, last = metrics["final"], metrics["epochs"][-1]
    assert final["val_loss"] == last["val_loss"] and final["val_accuracy"] == last["val_accuracy"]
    assert final["val_loss"] == metrics["fresh"]["loss"]  # bit for bit what evaluating again gives
    assert final["val_accuracy"] == metrics["fresh"]["accuracy"]
    assert "test_loss" in final


def test_final_validation_runs_again_after_restore_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """restore_best loads epoch 1's weights at the end of epoch 2: the last row measured other weights."""
    _, metrics, val_passes = _run(
        tmp_path,
        monkeypatch,
        epochs=10,
        early_stopping={"patience": 1, "metric": "val_loss", "min_delta": 100},
    )
    assert metrics["status"] == "early_stopped" and metrics["final"]["weights_of_epoch"] == 1
    assert val_passes == 3  # epochs 1 and 2, then the restored weights
    final = metrics["final"]
    assert final["val_loss"] == metrics["fresh"]["loss"] != metrics["epochs"][-1]["val_loss"]
    assert final["val_loss"] == pytest.approx(metrics["epochs"][0]["val_loss"], rel=1e-6)


def test_final_validation_reused_when_the_best_epoch_is_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, metrics, val_passes = _run(
        tmp_path, monkeypatch, epochs=2, early_stopping={"patience": 5, "metric": "val_loss", "min_delta": 0}
    )
    assert metrics["final"]["weights_of_epoch"] == 2 and val_passes == 2
    assert metrics["final"]["val_loss"] == metrics["fresh"]["loss"] == metrics["epochs"][-1]["val_loss"]
