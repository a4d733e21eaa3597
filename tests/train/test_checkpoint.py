"""Tests of specc.train.checkpoint: round trips, validation, retention and crash safety."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import sigkill_when_ready
from safetensors import safe_open
from torch import nn

from specc.errors import UsageError
from specc.train.checkpoint import (
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_FILE,
    capture_rng_state,
    checkpoint_dir,
    clean_stale,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


class TiedLM(nn.Module):
    """Embedding and output projection sharing one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.hidden = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.tanh(self.hidden(self.embed(ids))))
        return out


def _trained() -> tuple[TiedLM, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = TiedLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(2):
        loss = model(torch.tensor([1, 2, 3])).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model, opt, sched


def _state(opt: torch.optim.Optimizer, sched: Any, **extra: Any) -> dict[str, Any]:
    return {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": 1,
        "position": 7,
        **extra,
    }


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _draws() -> tuple[list[float], list[float], float]:
    return torch.rand(3).tolist(), np.random.randn(3).tolist(), random.random()


def test_round_trip_model_optimizer_and_rng(tmp_path: Path) -> None:
    model, opt, sched = _trained()
    random.seed(1)
    np.random.seed(2)
    np.random.randn(1)  # leaves a cached gaussian in numpy's state
    path = save_checkpoint(tmp_path, 2, model.state_dict(), _state(opt, sched, extra={"best": 0.5}))
    expected = _draws()
    _draws()  # move every generator on

    assert path == tmp_path / "checkpoints" / "step-00000002" == checkpoint_dir(tmp_path, 2)
    assert sorted(p.name for p in path.iterdir()) == [MANIFEST_FILE, MODEL_FILE, STATE_FILE]
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["step"] == 2 and manifest["complete"] is True
    assert set(manifest["files"]) == {MODEL_FILE, STATE_FILE}
    assert "specc_version" in manifest

    model_state, state = load_checkpoint(path)
    restore_rng_state(state["rng"])
    assert _draws() == expected

    assert state["step"] == 2 and state["epoch"] == 1 and state["position"] == 7
    assert state["extra"] == {"best": 0.5}
    fresh = TiedLM()
    fresh.load_state_dict(model_state)
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    fresh_opt.load_state_dict(state["optimizer"])
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh_opt, step_size=1, gamma=0.5)
    fresh_sched.load_state_dict(state["scheduler"])
    assert fresh_sched.get_last_lr() == sched.get_last_lr()
    for group_state, fresh_state in zip(opt.state.values(), fresh_opt.state.values(), strict=True):
        for key, value in group_state.items():
            assert torch.equal(torch.as_tensor(fresh_state[key]), torch.as_tensor(value)), key


def test_capture_restore_rng_in_process() -> None:
    np.random.randn(3)  # odd count: a cached gaussian is part of the state
    snapshot = capture_rng_state()
    expected = _draws()
    _draws()
    restore_rng_state(snapshot)
    assert _draws() == expected


def test_tied_weights_stored_once_and_restored(tmp_path: Path) -> None:
    model = TiedLM()
    path = save_checkpoint(tmp_path, 0, model.state_dict(), {})
    with safe_open(path / MODEL_FILE, framework="pt") as f:
        stored = set(f.keys())
    assert len({"embed.weight", "head.weight"} & stored) == 1

    model_state, _ = load_checkpoint(path)
    assert model_state["embed.weight"] is model_state["head.weight"]
    fresh = TiedLM()
    fresh.load_state_dict(model_state)
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, model.embed.weight)


def test_overlapping_and_strided_views(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    state = {"base": base, "rows": base[1:], "cols": base[:, 1], "t": base.t(), "empty": torch.empty(0)}
    model_state, _ = load_checkpoint(save_checkpoint(tmp_path, 1, state, {}))
    assert set(model_state) == set(state)
    for name, tensor in state.items():
        assert torch.equal(model_state[name], tensor), name


def test_corrupt_checkpoint_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = TiedLM()
    first = save_checkpoint(tmp_path, 1, model.state_dict(), {})
    second = save_checkpoint(tmp_path, 2, model.state_dict(), {})
    assert find_latest_checkpoint(tmp_path) == second
    _flip_byte(second / MODEL_FILE)

    with caplog.at_level(logging.WARNING, logger="specc.contracts.run_folder"):
        assert find_latest_checkpoint(tmp_path) == first
    assert "step-00000002" in caplog.text and "corrupt" in caplog.text
    with pytest.raises(UsageError, match=r"step-00000002: model\.safetensors is corrupt"):
        load_checkpoint(second)


def test_damaged_state_and_missing_folder(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 3, {"w": torch.ones(2)}, {})
    (path / STATE_FILE).write_bytes((path / STATE_FILE).read_bytes()[:50])
    assert find_latest_checkpoint(tmp_path) is None
    with pytest.raises(UsageError, match="state.pt is corrupt"):
        load_checkpoint(path)
    with pytest.raises(UsageError, match=r"cannot read state\.pt"):
        load_checkpoint(path, verify=False)
    with pytest.raises(UsageError, match="missing"):
        load_checkpoint(tmp_path / "nope")
    assert find_latest_checkpoint(tmp_path / "nope") is None


def test_incomplete_folders_ignored_and_temp_cleaned(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path, 2, {"w": torch.ones(2)}, {})
    root = tmp_path / "checkpoints"
    temp = root / f".step-00000003.tmp-{os.getpid()}-deadbeef"
    temp.mkdir()
    (temp / MODEL_FILE).write_bytes(b"\x00" * 10)
    no_manifest = root / "step-00000004"
    no_manifest.mkdir()
    (no_manifest / MODEL_FILE).write_bytes(b"\x00" * 10)
    unfinished = root / "step-00000005"
    unfinished.mkdir()
    (unfinished / MANIFEST_FILE).write_text(json.dumps({"step": 5, "files": {}, "complete": False}))
    stray = tmp_path / f".metrics.json.tmp-{os.getpid()}-0a0b"
    stray.write_text("{")

    assert find_latest_checkpoint(tmp_path) == good
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 4, 5]
    assert sorted(clean_stale(tmp_path)) == sorted([temp, stray])
    assert not temp.exists() and not stray.exists()
    assert no_manifest.exists() and unfinished.exists()  # step folders are never cleaned
    assert find_latest_checkpoint(tmp_path) == good


def test_keep_retention(tmp_path: Path) -> None:
    for step in range(1, 5):
        save_checkpoint(tmp_path, step * 10, {"w": torch.full((2,), float(step))}, {}, keep=2)
    assert [p.name for _, p in list_checkpoints(tmp_path)] == ["step-00000030", "step-00000040"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000030", "step-00000040"]
    model_state, state = load_checkpoint(find_latest_checkpoint(tmp_path) or tmp_path)
    assert state["step"] == 40 and model_state["w"].tolist() == [4.0, 4.0]


def test_resave_same_step_replaces(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 5, {"w": torch.zeros(2)}, {})
    path = save_checkpoint(tmp_path, 5, {"w": torch.ones(2)}, {})
    assert load_checkpoint(path)[0]["w"].tolist() == [1.0, 1.0]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000005"]


def test_bad_inputs_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"train_state\['extra'\]\['path'\].*weights_only"):
        save_checkpoint(tmp_path, 1, {"w": torch.ones(1)}, {"extra": {"path": Path("x")}})
    with pytest.raises(TypeError, match="expected a tensor"):
        save_checkpoint(tmp_path, 1, {"w": 1.0}, {})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path, 1, {}, {"step": 2})
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, 1, {}, {}, keep=0)
    assert not (tmp_path / "checkpoints").exists()


# A child that saves step 2 and blocks (then is SIGKILLed) at one point of the save.
_CRASHING_SAVER = """
import sys, time
import torch
import specc.train.checkpoint as ckpt

run_dir, point = sys.argv[1], sys.argv[2]

def block():
    print("BLOCKED", flush=True)
    time.sleep(60)

if point == "model":
    real_write_model = ckpt._write_model
    def write_model(path, tensors, aliases):
        real_write_model(path, tensors, aliases)
        with open(path, "r+b") as f:  # as if only half of it had reached the disk
            f.truncate(path.stat().st_size // 2)
        block()
    ckpt._write_model = write_model
else:
    def publish(tmp, final):
        block()
    ckpt._publish = publish
ckpt.save_checkpoint(run_dir, 2, {"w": torch.full((64, 1024), 2.0)}, {})
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("point", ["model", "publish"])
def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path: Path, point: str) -> None:
    previous = save_checkpoint(tmp_path, 1, {"w": torch.full((64, 1024), 1.0)}, {})
    assert sigkill_when_ready(_CRASHING_SAVER, str(tmp_path), point, ready="BLOCKED") == -signal.SIGKILL

    root = tmp_path / "checkpoints"
    leftovers = [p for p in root.iterdir() if p.name.startswith(".step-00000002.tmp-")]
    assert len(leftovers) == 1
    assert find_latest_checkpoint(tmp_path) == previous
    model_state, state = load_checkpoint(previous)
    assert state["step"] == 1 and bool((model_state["w"] == 1.0).all())

    assert clean_stale(tmp_path) == leftovers
    assert [p.name for p in root.iterdir()] == ["step-00000001"]
