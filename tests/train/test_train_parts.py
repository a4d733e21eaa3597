"""The trainer's parts (specc.train.parts, the sampler in specc.train.batches) and the checkpoint that
stores them by name: each part's state survives a round trip through ``state_dict`` (and through a
real checkpoint file) and a loaded part then behaves as the original; a checkpoint written before the
parts existed (format 1, a run of the previous main) still resumes exactly."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from specc.errors import UsageError
from specc.lang.train_config import EarlyStopping as EarlyStoppingConfig
from specc.train import checkpoint as ckpt
from specc.train.batches import TrainBatches
from specc.train.parts import EarlyStopper, Precision, Progress

FORMAT1 = Path(__file__).parent / "fixtures" / "format1"


def _through_file(tmp_path: Path, parts: dict[str, ckpt.Stateful]) -> dict[str, Any]:
    """The parts' states as a checkpoint stores and loads them (torch.load with weights_only)."""
    folder = ckpt.save_checkpoint(tmp_path, 1, {"w": torch.zeros(1)}, ckpt.part_states(parts))
    return ckpt.load_checkpoint(folder)[1]


# ------------------------------------------------------------------------------------------- parts


def test_progress_round_trip_continues_the_epoch_and_its_mean_loss(tmp_path: Path) -> None:
    a = Progress()
    for loss in (3.0, 2.0):
        a.add_step(loss * 4, 4.0)
    a.end_epoch(0, {"loss": 1.5}, 0.1, 100.0)
    a.add_step(8.0, 4.0)  # one step into the second epoch
    b = Progress()
    ckpt.load_parts(tmp_path, _through_file(tmp_path, {"progress": a}), {"progress": b})
    assert b.state_dict() == a.state_dict()
    a.history[0]["epoch"] = 99  # the loaded history is a copy, not the same rows
    assert b.history[0]["epoch"] == 1
    b.add_step(4.0, 4.0)
    row = b.end_epoch(1, {}, 0.05, 50.0)
    assert (row["epoch"], row["step"], row["train_loss"]) == (2, 4, 1.5)  # (8 + 4) / 8
    assert b.loss_sum == b.loss_count == 0.0


@pytest.mark.parametrize(("metric", "values"), [("val_accuracy", [0.5, 0.7, 0.6, 0.69, 0.65]),
                                                ("val_loss", [2.0, 1.0, 1.2, 1.01, 1.1])])  # fmt: skip
def test_early_stopper_round_trip_stops_at_the_same_epoch(
    tmp_path: Path, metric: str, values: list[float]
) -> None:
    config = EarlyStoppingConfig(metric=metric, patience=3, min_delta=0.02)
    whole, first = EarlyStopper(config), EarlyStopper(config)
    rows = [{"epoch": e + 1, metric: v} for e, v in enumerate(values)]
    improved = [whole.update(row) for row in rows]
    assert improved == [True, True, False, False, False]  # 0.69 and 1.01 are within min_delta
    assert whole.stopped and whole.best == values[1] and whole.best_epoch == 2
    for row in rows[:3]:
        first.update(row)
    second = EarlyStopper(config)
    ckpt.load_parts(tmp_path, _through_file(tmp_path, {"early_stopping": first}), {"early_stopping": second})
    assert second.state_dict() == {"best": values[1], "best_epoch": 2, "bad_epochs": 1, "stopped": False}
    assert [second.update(row) for row in rows[3:]] == [False, False]
    assert second.state_dict() == whole.state_dict()


def test_early_stopper_without_config_or_metric_never_stops() -> None:
    off = EarlyStopper(None)
    assert not any(off.update({"epoch": e, "val_loss": 1.0}) for e in range(1, 10)) and not off.stopped
    no_val = EarlyStopper(EarlyStoppingConfig(patience=1))
    assert not any(no_val.update({"epoch": e, "train_loss": 1.0}) for e in range(1, 10))
    assert no_val.state_dict() == {"best": None, "best_epoch": None, "bad_epochs": 0, "stopped": False}


def _scaled_steps(precision: Precision, grads: list[float]) -> torch.nn.Parameter:
    w = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=0.1)
    for g in grads:
        opt.zero_grad()
        precision.backward((w * g).sum())
        precision.unscale_(opt)
        precision.step(opt)
    return w


def test_precision_fp16_grad_scaler_state_round_trip(tmp_path: Path) -> None:
    a = Precision("fp16", torch.device("cpu"))
    _scaled_steps(a, [1.0, float("inf"), 1.0])  # an overflow halves the scale and skips that step
    assert a.scales_grads and a.scaler.get_scale() == 2.0**15
    b = Precision("fp16", torch.device("cpu"))
    ckpt.load_parts(tmp_path, _through_file(tmp_path, {"grad_scaler": a}), {"grad_scaler": b})
    assert b.scaler.get_scale() == 2.0**15 and b.state_dict() == a.state_dict()
    for precision in (a, b):
        _scaled_steps(precision, [float("inf")])
    assert b.state_dict() == a.state_dict() and b.scaler.get_scale() == 2.0**14


def test_precision_without_fp16_is_plain_and_has_empty_state() -> None:
    for amp in ("none", "bf16"):
        p = Precision(amp, torch.device("cpu"))
        assert p.state_dict() == {} and not p.scales_grads
        p.load_state_dict({})  # what a run without a scaler saved: nothing to load
        w = _scaled_steps(p, [2.0])
        assert w.item() == pytest.approx(1.0 - 0.1 * 2.0)  # an unscaled SGD step
    with torch.no_grad(), Precision("bf16", torch.device("cpu")).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def _batches(sampler: TrainBatches) -> Iterator[list[tuple[int, int]]]:
    for batch in sampler:
        yield batch
        sampler.advance()


def test_sampler_round_trip_hands_out_exactly_the_batches_not_yet_trained(tmp_path: Path) -> None:
    whole = TrainBatches(50, 8, seed=3, rank=1, world=2)
    whole.set_epoch(1)
    expected = list(_batches(whole))
    assert len(expected) == whole.steps == 7 and whole.epoch_done
    first = TrainBatches(50, 8, seed=3, rank=1, world=2)
    first.set_epoch(1)
    seen = []
    for batch in first:
        seen.append(batch)
        first.advance()  # what the loop does after each step
        if len(seen) == 3:
            break
    state = _through_file(tmp_path, {"sampler": first})
    assert state["sampler"] == {"epoch": 1, "position": 3}
    second = TrainBatches(50, 8, seed=3, rank=1, world=2)
    ckpt.load_parts(tmp_path, state, {"sampler": second})
    assert seen + list(_batches(second)) == expected
    second.next_epoch()
    assert second.state_dict() == {"epoch": 2, "position": 0} and len(second) == 7
    assert [b[0][0] for b in second] == [2] * 7  # the next epoch's order, from its start


def test_sampler_cursor_moves_only_when_the_loop_says() -> None:
    sampler = TrainBatches(20, 4, seed=0, rank=0, world=1)
    prefetched = list(sampler)  # a loader's workers run ahead of the loop
    assert len(prefetched) == 5 and sampler.state_dict() == {"epoch": 0, "position": 0}


def test_load_parts_names_the_checkpoint_and_the_part(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"step-1: state.pt has no state of the training loop's 'sampler'"):
        ckpt.load_parts(tmp_path / "step-1", {"progress": Progress().state_dict()}, {"sampler": Progress()})
    with pytest.raises(UsageError, match=r"step-1: the 'progress' state in state.pt does not fit \(KeyError"):
        ckpt.load_parts(tmp_path / "step-1", {"progress": {"step": 3}}, {"progress": Progress()})


# ------------------------------------------------------------------------------------- checkpoints


def test_a_checkpoint_of_a_newer_format_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckpt, "FORMAT", ckpt.FORMAT + 1)
    folder = ckpt.save_checkpoint(tmp_path, 2, {"w": torch.zeros(1)}, {})
    monkeypatch.undo()
    assert ckpt.find_latest_checkpoint(tmp_path) is None
    with pytest.raises(
        UsageError, match=re.escape(f"{folder}: checkpoint format 3 is newer than this specc reads (2)")
    ):
        ckpt.load_checkpoint(folder)


def test_format_1_checkpoint_of_the_previous_trainer_is_converted() -> None:
    folder = FORMAT1 / "run" / "checkpoints" / "step-00000035"
    assert json.loads((folder / ckpt.MANIFEST_FILE).read_text())["format"] == 1
    state = ckpt.load_checkpoint(folder)[1]
    rows = json.loads((FORMAT1 / "run" / "metrics.json").read_text())["epochs"]
    progress = state["progress"]
    assert progress["step"] == state["step"] == 35 and progress["history"] == rows
    assert progress["loss_count"] == 5 * 128 and progress["loss_sum"] > 0  # 5 batches into epoch 4
    assert state["sampler"] == {"epoch": 3, "position": 5}
    # the best val_accuracy (higher is better) comes back as itself, not as the old negated score
    best = max(r["val_accuracy"] for r in rows)
    assert state["early_stopping"] == {"best": best, "best_epoch": 2, "bad_epochs": 1, "stopped": False}
    assert state["grad_scaler"]["scale"] == 2.0**14  # fp16: two overflows in 35 steps
    assert set(state) >= {"optimizer", "scheduler", "rng", "config"} and "extra" not in state


def test_format_1_checkpoint_that_cannot_be_converted_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ckpt, "FORMAT", 1)
    folder = ckpt.save_checkpoint(tmp_path, 2, {"w": torch.zeros(1)}, {"epoch": 0, "extra": {"history": []}})
    monkeypatch.undo()
    with pytest.raises(
        UsageError, match=re.escape(f"{folder}: state.pt of checkpoint format 1 cannot be converted")
    ):
        ckpt.load_checkpoint(folder)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The fixture run was made with one thread; sums reduced in the same order repeat bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(spec: Path, out: Path, *extra: str) -> None:
    result = run_cli("train", str(spec), "--data", "digits", "--out", str(out), "--quiet", *extra)
    assert result.code == 0, result.out + result.err


def _rows(run: Path) -> list[dict[str, Any]]:
    rows = json.loads((run / "metrics.json").read_text())["epochs"]
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]


@pytest.mark.slow
def test_a_run_interrupted_under_format_1_resumes_exactly(tmp_path: Path, one_thread: None) -> None:
    """The fixture: the previous main's run of ``spec.yaml`` (fp16 grad scaler, early stopping with
    restore_best, dropout, augmentation), stopped by SIGTERM at step 35 of 40."""
    spec, old = FORMAT1 / "spec.yaml", tmp_path / "old"
    shutil.copytree(FORMAT1 / "run", old)
    _train(spec, old, "--resume")
    # the previous main evaluated in batches of up to 256 (the run keeps that: its checkpoint has no
    # evaluation batch); a new run evaluates in batches of batch_size on the CPU unless told
    _train(spec, tmp_path / "whole", "--set", "train.eval_batch_size=256")
    resumed, whole = (
        load_file(str(old / "model.safetensors")),
        load_file(str(tmp_path / "whole" / "model.safetensors")),
    )
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert _rows(old) == _rows(tmp_path / "whole") and len(_rows(old)) == 4
    final = [json.loads((r / "metrics.json").read_text())["final"] for r in (old, tmp_path / "whole")]
    assert final[0]["weights_of_epoch"] == 2 and final[0]["test_loss"] == final[1]["test_loss"]
    a, b = (ckpt.load_checkpoint(r / "checkpoints" / "step-00000040")[1] for r in (old, tmp_path / "whole"))
    for name in ("sampler", "early_stopping", "grad_scaler"):
        assert a[name] == b[name], name
    assert a["sampler"] == {"epoch": 4, "position": 0} and a["early_stopping"]["bad_epochs"] == 2
