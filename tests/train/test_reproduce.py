"""A run folder re-runs: train.yaml loads back, run.json records absolute paths, versions and thread
counts, and `specc train --from RUN` repeats a run bit for bit on CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import WINE_SPEC, run_cli
from safetensors.torch import load_file

from specc.contracts.run_folder import RunFolder


def _bytes(path: Path) -> dict[str, bytes]:
    return {k: v.numpy().tobytes() for k, v in load_file(str(path)).items()}


def test_train_yaml_loads_back_and_betas_can_be_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`betas` (a list in YAML) is accepted from --set and from the run's own train.yaml; run.json
    holds absolute paths (the run was started from a relative folder), versions and thread counts."""
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(60, 13)), y=np.arange(60) % 3)
    (tmp_path / "s.yaml").write_text(WINE_SPEC.replace("epochs: 2", "epochs: 1"))
    monkeypatch.chdir(tmp_path)
    r = run_cli(
        "train", "s.yaml", "--data", "d.npz", "--out", "r", "--quiet", "--set", "train.betas=[0.8, 0.95]"
    )
    assert r.code == 0, r.err
    cfg = RunFolder(tmp_path / "r").read_train_config()
    assert cfg.betas == (0.8, 0.95)
    r = run_cli("train", "s.yaml", "--data", "d.npz", "--out", "r2", "--quiet", "--config", "r/train.yaml")
    assert r.code == 0, r.err
    assert _bytes(tmp_path / "r" / "model.safetensors") == _bytes(tmp_path / "r2" / "model.safetensors")
    start = RunFolder(tmp_path / "r").read_run().invocations[0]
    assert start.spec == str(tmp_path / "s.yaml") and start.data == str(tmp_path / "d.npz")
    assert start.cwd == str(tmp_path) and start.versions.packages["torch"] and start.versions.python
    assert start.threads.torch_intra_op and start.threads.cpu_count == os.cpu_count()
    record = RunFolder(tmp_path / "r").read_data()
    assert record.data.source == str(tmp_path / "d.npz") and record.data.seed == 0


def test_train_from_a_run_repeats_it_bit_for_bit(wine_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = wine_run
    r = run_cli("train", "--from", str(run), "--out", str(tmp_path / "again"), "--quiet")
    assert r.code == 0, r.err
    assert _bytes(run / "model.safetensors") == _bytes(tmp_path / "again" / "model.safetensors")
    first, again = RunFolder(run).read_data(), RunFolder(tmp_path / "again").read_data()
    assert first.data == again.data and first.preprocess == again.preprocess
    assert RunFolder(tmp_path / "again").read_run().invocations[0].from_run == str(run)
    metrics = [json.loads((p / "metrics.json").read_text())["final"] for p in (run, tmp_path / "again")]
    assert metrics[0]["test_accuracy"] == metrics[1]["test_accuracy"]
    r = run_cli("train", "spec.yaml", "--from", str(run), "--out", str(tmp_path / "x"))
    assert r.code == 2 and "--from RUN takes the spec, --data and --config from the run" in r.err
    r = run_cli("train", "--from", str(tmp_path), "--out", str(tmp_path / "y"))
    assert r.code == 2 and "not a specc run folder" in r.err
