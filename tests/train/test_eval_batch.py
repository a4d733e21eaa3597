"""The evaluation batch: on the CPU a new run validates in batches of ``batch_size`` (or
``train.eval_batch_size``), the choice is kept in the checkpoint's progress, and a checkpoint from
before it was recorded keeps the earlier rule (up to 256) so the run's sums repeat bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import specc.train.loop as loop
from specc.lang.train_config import TrainConfig
from specc.train import checkpoint as ckpt
from specc.train.batches import ModelIO, load_for_model
from specc.train.distributed import Dist
from specc.train.report import RunReport
from specc.train.runner import train_module

IO = ModelIO(("x",), ((4,),), ("float32",), "logits", (3,))


@pytest.fixture
def sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size of every evaluation sampler the trainer makes."""
    seen: list[int] = []
    real = loop.EvalBatches

    def spy(n: int, size: int, *args: Any, **kwargs: Any) -> Any:
        seen.append(size)
        return real(n, size, *args, **kwargs)

    monkeypatch.setattr(loop, "EvalBatches", spy)
    return seen


def _train(tmp_path: Path, **cfg: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    ds = load_for_model("iris", IO, seed=0)
    config = TrainConfig(batch_size=16, lr=0.05, optimizer="sgd", epochs=2, **cfg)
    train_module(model, IO, ds, config, tmp_path / "r")
    latest = ckpt.find_latest_checkpoint(tmp_path / "r")
    assert latest is not None
    return ckpt.load_checkpoint(latest)[1]["progress"]


def test_cpu_runs_evaluate_in_training_batches(tmp_path: Path, sizes: list[int]) -> None:
    progress = _train(tmp_path)
    assert sizes and set(sizes) == {16}  # validation every epoch and the test split at the end
    assert progress["eval_batch"] == 16


def test_eval_batch_size_overrides(tmp_path: Path, sizes: list[int]) -> None:
    progress = _train(tmp_path, eval_batch_size=40)
    assert sizes and set(sizes) == {40} and progress["eval_batch"] == 40


def test_a_checkpoint_without_the_choice_keeps_the_earlier_rule(tmp_path: Path, sizes: list[int]) -> None:
    ds = load_for_model("iris", IO, seed=0)
    report = RunReport(tmp_path, write=False, quiet=True, log_every=10**9)
    model = nn.Sequential(nn.Linear(4, 3))
    trainer = loop.Trainer(
        model, IO, ds, TrainConfig(batch_size=16), tmp_path, torch.device("cpu"), Dist(), report
    )
    state = trainer.progress.state_dict()
    del state["eval_batch"]  # as a checkpoint written before the choice was recorded
    trainer.progress.load_state_dict(state)
    assert trainer.progress.eval_batch is None
    trainer.evaluate(ds.val)
    assert sizes == [256]


def test_an_eval_batch_over_the_data_budget_is_refused_before_training(tmp_path: Path) -> None:
    from specc.errors import DataError

    ds = load_for_model("iris", IO, seed=0)
    report = RunReport(tmp_path, write=False, quiet=True, log_every=10**9)
    cfg = TrainConfig(batch_size=16, eval_batch_size=10**6, max_data_bytes=1_000_000)
    with pytest.raises(
        DataError, match=r"an evaluation batch of 1000000 samples .* lower train.eval_batch_size"
    ):
        loop.Trainer(
            nn.Sequential(nn.Linear(4, 3)), IO, ds, cfg, tmp_path, torch.device("cpu"), Dist(), report
        )
