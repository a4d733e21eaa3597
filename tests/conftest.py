"""Shared test helpers: paths and a CLI runner (in-process, with exit codes)."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One torch thread per test process (each pytest-xdist worker), and one for the processes the
    tests start: ``make test`` runs two workers on two cores, and torch's default of one thread per
    core in each of them oversubscribes the machine (small convolutions then spin for seconds)."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(*args: str) -> Result:
    """Run ``specc ARGS`` in-process and capture exit code, stdout and stderr."""
    from specc.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return run_cli


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Files of this process may not grow over ``limit`` bytes (soft RLIMIT_FSIZE, restored after):
    writes beyond fail with EFBIG, as they fail with ENOSPC on a full disk."""
    import resource
    import signal

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def sigkill_when_ready(script: str, *args: str, ready: str) -> int:
    """Run ``python -c script args`` with the repository importable, SIGKILL it as soon as it prints
    the line ``ready``, and return its exit status (``-SIGKILL`` when the kill landed)."""
    import os
    import signal
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == ready
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


# ------------------------------------------------------------------------------------------------
# real (tiny) training runs: fixtures that stand for a run folder are made by `specc train`

WINE_SPEC = """specc: 1
name: wine_mlp
inputs: {x: {shape: [13]}}
layers:
  - linear: 16
  - act
  - linear: {out_features: 3, name: logits}
train: {epochs: 2, batch_size: 16, lr: 0.05}
"""


def train_run(root: Path, spec_text: str, data: str, *args: str, name: str = "run") -> tuple[Path, Path]:
    """``specc train`` a spec (written to ``root/NAME.yaml``) into ``root/NAME``; ``(spec, run)``."""
    spec = root / f"{name}.yaml"
    spec.write_text(spec_text)
    run = root / name
    r = run_cli("train", str(spec), "--data", data, "--out", str(run), "--quiet", "--device", "cpu", *args)
    assert r.code == 0, r.err
    return spec, run


@pytest.fixture(scope="session")
def wine_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 13-16-3 MLP trained on scikit-learn's wine for 2 epochs: ``(spec, run folder)``."""
    return train_run(tmp_path_factory.mktemp("wine"), WINE_SPEC, "wine")


@pytest.fixture(scope="session")
def wine_onnx(wine_run: tuple[Path, Path]) -> Path:
    """``wine_run`` exported to ONNX (metadata: labels, features preprocessing)."""
    spec, run = wine_run
    out = run.parent / "wine.onnx"
    r = run_cli("export", str(spec), "--weights", str(run), "--out", str(out))
    assert r.code == 0, r.err
    return out
