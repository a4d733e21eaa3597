"""CUDA training: AMP (bf16, fp16 with GradScaler), channels_last and torch.compile (skipped without CUDA)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SPEC = """specc: 1
name: gpucnn
inputs: {image: {shape: [1, 16, 16]}}
layers:
  - conv2d: {out_channels: 16, kernel_size: 3, padding: 1}
  - norm
  - act
  - maxpool2d: 2
  - flatten
  - linear: {out_features: 10, name: logits}
train: {epochs: 2, batch_size: 64, lr: 0.01}
"""


@pytest.mark.parametrize(
    "options",
    [
        ("train.amp=bf16", "train.channels_last=true"),
        ("train.amp=fp16",),
        ("train.amp=bf16", "train.compile=true", "train.channels_last=true"),
    ],
)
def test_cuda_training_options(tmp_path: Path, options: tuple[str, ...]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    sets = [arg for opt in options for arg in ("--set", opt)]
    result = run_cli(
        "train",
        str(spec),
        "--data",
        "digits",
        "--out",
        str(tmp_path / "r"),
        "--device",
        "cuda",
        "--quiet",
        *sets,
    )
    assert result.code == 0, result.err
    assert "on cuda:0" in result.out
    final = json.loads((tmp_path / "r" / "metrics.json").read_text())["final"]
    assert final["test_accuracy"] > 0.8
