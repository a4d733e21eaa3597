"""Distributed training with 2 CPU processes (gloo) launched through torch.distributed.run.

Equivalence: 2 processes with global batch B equal 1 process with batch B (plain MLP: no dropout, no
BatchNorm). Fault tolerance: SIGTERM to the launcher saves one checkpoint; --resume continues exactly
(with loader workers);
--max-restarts restarts a killed worker, which resumes from the newest checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from dist_runs import check_restore_best, mlp_spec, run_train, run_weights, train_cmd, train_env

SPEC = mlp_spec("ddpmlp")

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def _watch(cmd: list[str], step: int) -> tuple[subprocess.Popen[str], list[str]]:
    """Start ``cmd`` and read its output until rank 0 logs ``step N``."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=train_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"step {step} "):
            break
    return proc, lines


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    two = run_train(train_cmd(spec, root / "two", "--nproc-per-node", "2"))
    assert two.returncode == 0, two.stdout + two.stderr
    return spec, root / "two"


def test_two_processes_equal_one_process(runs: tuple[Path, Path], tmp_path: Path) -> None:
    spec, two = runs
    one = run_train(train_cmd(spec, tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    a, b = run_weights(tmp_path / "one"), run_weights(two)
    for name in a:
        rel = ((a[name] - b[name]).abs().max() / a[name].abs().max()).item()
        assert rel < 1e-6, (name, rel)
    assert not list(two.glob("checkpoints/.*"))  # rank 0 alone wrote, nothing half-written


def test_sigterm_to_launcher_saves_once_and_resume_is_exact(runs: tuple[Path, Path], tmp_path: Path) -> None:
    spec, two = runs
    run = tmp_path / "run"
    proc, lines = _watch(train_cmd(spec, run, "--nproc-per-node", "2"), 6)
    proc.send_signal(signal.SIGTERM)
    out = "".join(lines) + proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    saved = [line for line in out.splitlines() if line.startswith("saved checkpoint at step ")]
    assert len(saved) == 1, out
    step = int(saved[0].rsplit(" ", 1)[1])
    assert (run / "checkpoints" / f"step-{step:08d}").is_dir()
    resumed = run_train(
        train_cmd(spec, run, "--nproc-per-node", "2", "--resume", "--set", "train.num_workers=1")
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from step {step}" in resumed.stdout
    a, b = run_weights(two), run_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_restore_best_is_broadcast_to_every_rank(runs: tuple[Path, Path], tmp_path: Path) -> None:
    check_restore_best(runs[0], tmp_path / "run", "--nproc-per-node", "2")


def test_max_restarts_restarts_a_killed_worker(runs: tuple[Path, Path], tmp_path: Path) -> None:
    spec, two = runs
    run = tmp_path / "run"
    proc, _ = _watch(train_cmd(spec, run, "--nproc-per-node", "2", "--max-restarts", "1"), 10)
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode == 0, out
    assert "resumed from step" in out
    a, b = run_weights(two), run_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _children(pid: int) -> list[int]:
    for _ in range(50):
        found = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True
        ).stdout.split()
        if len(found) >= 2:
            return sorted(int(p) for p in found)
        time.sleep(0.1)
    return [int(p) for p in found]
