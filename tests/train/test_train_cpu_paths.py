"""The GPU training options run on the CPU where torch allows: autocast in bf16 and fp16 (fp16 with the
grad scaler), channels_last inputs and weights, and torch.compile (traced by dynamo; the eager
backend stands in for inductor, whose C++ build would take most of the test budget). Their speed is
measured only on a GPU (benchmarks/RESULTS.md says which figures wait for one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_cli

from specc.train.loop import Trainer

SPEC = """specc: 1
name: cpucnn
inputs: {image: {shape: [3, 8, 8]}}           # 3 channels: layouts are unambiguous
layers:
  - conv2d: {out_channels: 8, kernel_size: 3, padding: 1}
  - norm
  - act
  - maxpool2d: 2
  - flatten
  - linear: {out_features: 10, name: logits}
train: {epochs: 1, batch_size: 32, lr: 0.01, max_steps: 4, num_samples: 256}
"""


def _train(tmp_path: Path, *options: str) -> dict[str, Any]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    sets = [arg for opt in options for arg in ("--set", opt)]
    out = tmp_path / "r"
    result = run_cli(
        "train", str(spec), "--data", "digits", "--out", str(out), "--device", "cpu", "--quiet", *sets
    )
    assert result.code == 0, result.err
    final: dict[str, Any] = json.loads((out / "metrics.json").read_text())["final"]
    assert final["test_loss"] == pytest.approx(final["test_loss"])  # finite (JSON has no NaN)
    from safetensors.torch import load_file

    weights = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in weights.values()} <= {torch.float32, torch.int64}  # fp32 master weights
    return final


def test_bf16_autocast_and_channels_last_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[torch.dtype, bool, bool]] = []
    forward_loss = Trainer._forward_loss

    def spy(self: Trainer, xs: tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
        first = self._prepare(xs)[0]
        with torch.no_grad(), self.precision.autocast():
            out = self.net(first)
        weight = next(self.model.parameters())
        seen.append((out.dtype, first.is_contiguous(memory_format=torch.channels_last),
                     weight.is_contiguous(memory_format=torch.channels_last)))  # fmt: skip
        return forward_loss(self, xs, y)

    monkeypatch.setattr(Trainer, "_forward_loss", spy)
    _train(tmp_path, "train.amp=bf16", "train.channels_last=true")
    assert len(seen) == 4 and all(s == (torch.bfloat16, True, True) for s in seen), seen


def test_fp16_grad_scaler_and_compile_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    updates: list[float] = []
    update = torch.amp.GradScaler.update

    def counting_update(self: torch.amp.GradScaler, new_scale: Any = None) -> None:
        updates.append(self.get_scale())
        update(self, new_scale)

    compiled: list[Any] = []
    real = torch.compile

    def eager_compile(model: Any, **kwargs: Any) -> Any:
        net = real(model, backend="eager")
        compiled.append(net)
        return net

    monkeypatch.setattr(torch.amp.GradScaler, "update", counting_update)
    monkeypatch.setattr(torch, "compile", eager_compile)
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    try:
        _train(tmp_path, "train.amp=fp16", "train.compile=true")
        assert len(updates) == 4 and updates[0] == 2.0**16  # the grad scaler ran every optimizer step
        assert len(compiled) == 1 and isinstance(compiled[0], torch._dynamo.eval_frame.OptimizedModule)
        assert counters["stats"]["unique_graphs"] >= 1  # dynamo traced the model's forward
    finally:
        torch._dynamo.reset()
