"""Sequence lengths: the default comes from the spec's dims; data longer than the spec can take
(e.g. a learned position table) is refused before training with both sizes named."""

from __future__ import annotations

from pathlib import Path

from conftest import SPECS, run_cli


def test_default_seq_len_from_dims_trains(tmp_path: Path) -> None:
    result = run_cli(
        "train",
        str(SPECS / "gpt2_small.yaml"),
        "--scale",
        "tiny",
        "--data",
        "text:stdlib",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        "--set",
        "train.max_steps=1",
    )
    assert result.code == 0, result.err
    assert "windows of 32" in result.out + result.err  # dims.seq = $n_positions = 32 at the tiny scale


def test_too_long_sequences_refused_before_training(tmp_path: Path) -> None:
    result = run_cli(
        "train",
        str(SPECS / "gpt2_small.yaml"),
        "--scale",
        "tiny",
        "--data",
        "text:stdlib",
        "--out",
        str(tmp_path / "run"),
        "--set",
        "train.seq_len=64",
    )
    assert result.code == 2
    assert "(seq=64) does not fit the spec" in result.err and "max_len is 32" in result.err
    assert not (tmp_path / "run" / "model.safetensors").exists()
