"""Run-folder ownership and truthful terminal states: nothing of the user's is replaced, one process
per folder, a resume changes nothing until validated, a full disk ends in `failed: ...` and exit 2."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, WINE_SPEC, Result, file_size_limit, run_cli, train_run

from specc.contracts.run_folder import LOCK_FILE, MARKER_FILE, RunFolder

SMALL = WINE_SPEC.replace("epochs: 2", "epochs: 1")


def _digest(folder: Path) -> dict[str, str]:
    """Every file's SHA-256 (the lock file's content changes with its holder and is left out)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def _train(spec: Path, run: Path, *args: str) -> Result:
    return run_cli("train", str(spec), "--data", "wine", "--out", str(run), "--quiet", *args)


def test_out_must_be_new_empty_or_a_run_folder(tmp_path: Path) -> None:
    """An existing folder that is not a specc run folder is refused before anything is written:
    the user's spec.yaml (the spec being trained), data.json, metrics.csv and a file named like a
    temporary file stay as they were."""
    mine = tmp_path / "mine"
    mine.mkdir()
    spec = mine / "spec.yaml"
    spec.write_text(SMALL)
    for name in ("data.json", "metrics.csv", ".spec.yaml.tmp-1-deadbeef"):
        (mine / name).write_text("the user's " + name)
    before = _digest(mine)
    r = _train(spec, mine)
    assert r.code == 2, r.err
    assert "is not a specc run folder (no .specc-run marker) and is not empty" in r.err
    assert _digest(mine) == before and not (mine / LOCK_FILE).exists()
    r = _train(spec, mine, "--resume")
    assert r.code == 2 and _digest(mine) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _train(spec, empty)
    assert r.code == 0, r.err
    marker = json.loads((empty / MARKER_FILE).read_text())
    assert marker["format"] == 2 and marker["specc"]
    r = _train(spec, empty)
    assert r.code == 2 and "already holds a run" in r.err


def test_a_second_train_on_a_locked_folder_exits_2_naming_the_owner(tmp_path: Path) -> None:
    """Another process holds the run folder's lock: `specc train` exits 2 naming its pid and host and
    leaves the folder alone; once that process is gone (SIGKILL: the kernel drops the lock) it runs."""
    spec, run = train_run(tmp_path, SMALL, "wine")
    before = _digest(run)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from specc.contracts.run_folder import RunLock\n"
            "lock = RunLock(Path(sys.argv[1])); lock.acquire(); print('locked', flush=True); time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        r = _train(spec, run, "--resume")
        assert r.code == 2, r.err
        assert f"is in use by process {holder.pid} on " in r.err
        assert _digest(run) == before
    finally:
        holder.kill()
        holder.wait()
    r = _train(spec, run, "--resume")
    assert r.code == 0, r.err


def test_resume_never_replaces_a_finished_model(tmp_path: Path) -> None:
    """A finished run without valid checkpoints: --resume refuses (it used to start afresh and
    replace model.safetensors); with its checkpoints it has nothing to train and changes no weights."""
    spec, run = train_run(tmp_path, SMALL, "wine")
    weights = (run / "model.safetensors").read_bytes()
    r = _train(spec, run, "--resume")
    assert r.code == 0 and "the run is finished (completed at step 8): nothing to train" in r.out
    assert (run / "model.safetensors").read_bytes() == weights
    for manifest in (run / "checkpoints").glob("*/manifest.json"):
        manifest.write_text("{}")  # every checkpoint invalid
    before = _digest(run)
    r = _train(spec, run, "--resume")
    assert r.code == 2, r.err
    assert "holds a finished model (model.safetensors, status completed) and no valid checkpoint" in r.err
    assert _digest(run) == before


def test_a_resume_that_does_not_fit_changes_nothing(tmp_path: Path) -> None:
    """A changed spec (parameter shapes), optimizer or data: exit 2 listing what differs, and not one
    file of the run folder changed (they used to be rewritten before an internal error)."""
    spec, run = train_run(
        tmp_path, SMALL, "wine", "--set", "train.checkpoint_every=3", "--set", "train.epochs=1"
    )
    (run / "model.safetensors").unlink()  # as if stopped before the end: checkpoints only
    before = _digest(run)
    wide = tmp_path / "wide.yaml"
    wide.write_text(SMALL.replace("linear: 16", "linear: 24"))
    r = _train(wide, run, "--resume")
    assert r.code == 2, r.err
    assert "0.weight: shape [16, 13] in the checkpoint, [24, 13] now" in r.err
    assert "internal error" not in r.err and _digest(run) == before
    tanh = tmp_path / "tanh.yaml"
    tanh.write_text(SMALL.replace("  - act\n", "  - {act: {fn: tanh}}\n"))
    r = _train(tanh, run, "--resume")  # the same parameters, another network
    assert r.code == 2 and "(the resolved spec differs)" in r.err and "tanh" in r.err
    assert _digest(run) == before
    r = _train(spec, run, "--resume", "--set", "train.optimizer=sgd", "--set", "train.lr=0.1")
    assert r.code == 2, r.err
    assert "train.optimizer: 'adamw' in the run, 'sgd' now" in r.err
    assert "train.lr: 0.05 in the run, 0.1 now" in r.err and _digest(run) == before
    r = run_cli("train", str(spec), "--data", "iris", "--out", str(run), "--quiet", "--resume")
    assert r.code == 2 and _digest(run) == before
    r = _train(spec, run, "--resume", "--set", "train.val_fraction=0.2")
    assert r.code == 2 and "data.val_fraction: 0.1 in the run, 0.2 now" in r.err
    assert _digest(run) == before
    r = _train(spec, run, "--resume", "--set", "train.epochs=2")  # more epochs: a continuation
    assert r.code == 0, r.err
    record = RunFolder(run).read_run()
    assert [i.resume for i in record.invocations] == [False, True]


def test_a_full_disk_during_a_checkpoint_is_exit_2_and_status_failed(tmp_path: Path) -> None:
    """The first checkpoint (a 64x64 layer: bigger than the limit) cannot be written: exit 2 naming
    it (it was `internal error: RuntimeError: [enforce fail at inline_container.cc:672]`), status
    `failed: ...` (it stayed `running`), no half checkpoint; the small log and metrics files fit."""
    spec = tmp_path / "big.yaml"
    spec.write_text(
        "specc: 1\nname: big\ninputs: {x: {shape: [64]}}\nlayers: [linear: 64, act, linear: 10]\n"
        "train: {epochs: 1, batch_size: 256, checkpoint_every: 1}\n"
    )
    with file_size_limit(12_000):
        r = run_cli("train", str(spec), "--data", "digits", "--out", str(tmp_path / "r"), "--quiet")
    assert r.code == 2, r.err
    assert f"error: cannot write {tmp_path / 'r' / 'checkpoints' / 'step-00000001'}: File too large" in r.err
    assert "internal error" not in r.err and "Traceback" not in r.err
    status = json.loads((tmp_path / "r" / "metrics.json").read_text())["status"]
    assert status.startswith("failed: cannot write ") and "File too large" in status
    assert not (tmp_path / "r" / "model.safetensors").exists()
    assert not list((tmp_path / "r" / "checkpoints").iterdir())  # no half checkpoint left


def test_a_full_disk_at_a_later_checkpoint_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second checkpoint's weights cannot be written (ENOSPC): exit 2 naming it, the first
    checkpoint stays valid (the run resumes from it) and no half second one is left."""
    import specc.train.checkpoint as ckpt
    import specc.weights.store as store

    calls: list[object] = []
    real = store.save_file  # the one safetensors writer, under checkpoints and final weights alike

    def full_at_the_second(tensors: object, path: object, metadata: object = None) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")  # as a failed write(): no file named
        real(tensors, path, metadata=metadata)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "save_file", full_at_the_second)
    spec = tmp_path / "s.yaml"
    spec.write_text(SMALL.replace("epochs: 1,", "epochs: 1, checkpoint_every: 1,"))
    run = tmp_path / "r"
    r = _train(spec, run)
    assert r.code == 2, r.err
    assert (
        f"error: cannot write {run / 'checkpoints' / 'step-00000002'}" in r.err and "No space left" in r.err
    )
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]
    assert ckpt.find_latest_checkpoint(run) == run / "checkpoints" / "step-00000001"
    assert json.loads((run / "metrics.json").read_text())["status"].startswith("failed: cannot write")
    monkeypatch.setattr(store, "save_file", real)
    r = _train(spec, run, "--resume")
    assert r.code == 0, r.err


def test_a_full_disk_at_the_final_weights_is_not_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final weights cannot be written: status `failed: ...` (written last), exit 2 naming the
    file; never `completed` without a model.safetensors."""
    import specc.train.runner

    def full(model: object, path: object, metadata: object = None) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(specc.train.runner, "save_weights", full)  # the runner imports it at the top
    spec = tmp_path / "s.yaml"
    spec.write_text(SMALL)
    r = _train(spec, tmp_path / "r")
    assert r.code == 2, r.err
    assert f"cannot write {tmp_path / 'r' / 'model.safetensors'}: No space left on device" in r.err
    status = json.loads((tmp_path / "r" / "metrics.json").read_text())["status"]
    assert status.startswith("failed: cannot write") and not (tmp_path / "r" / "model.safetensors").exists()


def test_a_data_error_during_training_ends_in_failed(tmp_path: Path) -> None:
    """An image of the validation split that cannot be decoded (found only when the loop evaluates):
    exit 2 naming the file, and metrics.json says `failed: ...` naming it too, never `running`."""
    import numpy as np
    from PIL import Image

    from specc.data import load_dataset

    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        for i in range(8):
            path = root / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8), "RGB").save(path)
    val = load_dataset(str(root), input_shape=(3, 8, 8), input_dtype="float32").val
    bad = Path(val.read(0)[1])  # the run rebuilds the same split (same seed and fractions)
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated: the header still reads, the pixels do not
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "specc: 1\nname: s\ninputs: {image: {shape: [3, 8, 8]}}\nlayers: [flatten, linear: 2]\n"
        "train: {epochs: 1, batch_size: 4}\n"
    )
    run = tmp_path / "r"
    r = run_cli("train", str(spec), "--data", str(root), "--out", str(run), "--quiet")
    assert r.code == 2, r.err
    assert f"cannot read image '{bad}'" in r.err and "Traceback" not in r.err
    status = json.loads((run / "metrics.json").read_text())["status"]
    assert status.startswith("failed: ") and str(bad) in status
    assert not (run / "model.safetensors").exists()
