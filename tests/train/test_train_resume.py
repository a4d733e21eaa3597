"""Exact resume: a run killed (SIGKILL) or stopped (SIGTERM) mid-epoch and resumed ends with
bit-identical weights to an uninterrupted run (subprocesses, CPU), also when the interrupted or the
resumed part reads its batches through DataLoader workers (augmentation is drawn per sample from
(seed, epoch, sample), so the worker count changes nothing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from safetensors.torch import load_file

SPEC = """specc: 1
name: resumable
inputs: {image: {shape: [1, 8, 8]}}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
  - act
  - dropout: 0.2
  - flatten
  - linear: {out_features: 10, name: logits}
train:
  epochs: 2
  batch_size: 96
  lr: 0.01
  schedule: cosine
  warmup_steps: 3
  augment: crop_flip
  checkpoint_every: 4
  keep_checkpoints: 2
  log_every: 1
"""


def _tensor_bytes(path: Path) -> dict[str, bytes]:
    """Every tensor's raw bytes (the safetensors header's metadata order varies between processes)."""
    return {name: t.numpy().tobytes() for name, t in load_file(str(path)).items()}


def _cmd(spec: Path, run: Path, *extra: str) -> list[str]:
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
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)


def _interrupt_at(cmd: list[str], step: int, sig: int) -> tuple[int, str]:
    """Start ``cmd``; send ``sig`` once it logs ``step N``; return its exit code and output."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"step {step} "):
            proc.send_signal(sig)
            break
    lines += proc.stdout.readlines()
    return proc.wait(timeout=60), "".join(lines)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("resume")
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    done = _run(_cmd(spec, root / "ref"))
    assert done.returncode == 0, done.stdout + done.stderr
    return spec, _tensor_bytes(root / "ref" / "model.safetensors")


def test_sigkill_then_resume_is_bit_exact(reference: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    spec, expected = reference
    run = tmp_path / "run"
    code, _ = _interrupt_at(_cmd(spec, run, "--set", "train.num_workers=2"), 7, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (run / "model.safetensors").exists()
    resumed = _run(_cmd(spec, run, "--resume", "--set", "train.num_workers=1"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step" in resumed.stdout
    assert _tensor_bytes(run / "model.safetensors") == expected


def test_sigterm_saves_then_resume_is_bit_exact(
    reference: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    spec, expected = reference
    run = tmp_path / "run"
    code, out = _interrupt_at(_cmd(spec, run), 10, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, out  # interrupted, not done: `specc train && specc export` stops
    saved = [line for line in out.splitlines() if line.startswith("saved checkpoint at step ")]
    assert len(saved) == 1
    step = int(saved[0].rsplit(" ", 1)[1])
    assert (run / "checkpoints" / f"step-{step:08d}").is_dir()
    assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
    resumed = _run(_cmd(spec, run, "--resume", "--set", "train.num_workers=2"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step {step}" in resumed.stdout
    assert _tensor_bytes(run / "model.safetensors") == expected
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and [r["epoch"] for r in metrics["epochs"]] == [1, 2]
