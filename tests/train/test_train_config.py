"""The training config: located errors (spec section, --set, --config file) and defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

from specc.errors import ParseError
from specc.lang.train_config import TrainConfig, load_train_config
from specc.load import load_text

SPEC = """specc: 1
name: tiny
inputs: {x: {shape: [4]}}
layers:
  - linear: {out_features: 3, name: logits}
train:
  lr: -0.1
  optimiser: adam
  schedule: cosine
  early_stopping: {patience: 2, metric: accuracy}
"""


def _errors(text: str, sets: tuple[str, ...] = ()) -> list[str]:
    raw = load_text(text, "spec.yaml")
    from specc.load import apply_overrides

    apply_overrides(raw, sets)
    with pytest.raises(ParseError) as info:
        load_train_config(raw, "spec.yaml")
    return [str(d) for d in info.value.diagnostics]


def test_errors_are_located_and_all_reported() -> None:
    errors = _errors(SPEC)
    assert "spec.yaml:7:7: train.lr: input should be greater than 0, got -0.1" in errors
    assert "spec.yaml:8:3: train.optimiser: unknown key 'optimiser' (did you mean 'optimizer'?)" in errors
    assert any(
        e.startswith("spec.yaml:10:19: train.early_stopping: early_stopping.metric 'accuracy'")
        for e in errors
    )
    assert len(errors) == 3


def test_set_overrides_fix_and_break() -> None:
    raw = load_text(SPEC, "spec.yaml")
    from specc.load import apply_overrides

    apply_overrides(raw, ["train.lr=0.5", "train.optimiser=", "train.early_stopping.metric=val_accuracy"])
    del raw["train"]["optimiser"]
    cfg = load_train_config(raw, "spec.yaml")
    assert cfg.lr == 0.5 and cfg.schedule == "cosine" and cfg.early_stopping is not None
    assert cfg.early_stopping.higher_is_better
    errors = _errors(SPEC.split("train:")[0], ("train.amp=fp8",))
    assert errors == ["<--set>:1:1: train.amp: input should be 'none', 'bf16' or 'fp16', got 'fp8'"]


def test_cross_field_rules() -> None:
    errors = _errors(SPEC.split("train:")[0] + "train: {optimizer: adam, nesterov: true, epochs: null}\n")
    assert len(errors) == 1 and "set epochs or max_steps" in errors[0]
    errors = _errors(SPEC.split("train:")[0] + "train: {batch_size: 10, grad_accum: 3}\n")
    assert "not divisible by grad_accum 3" in errors[0]
    errors = _errors(SPEC.split("train:")[0] + "train: {metrics: [accuracy, top0]}\n")
    assert "unknown metric 'top0'" in errors[0]


def test_defaults_without_section() -> None:
    cfg = load_train_config(load_text(SPEC.split("train:")[0], "s.yaml"), "s.yaml")
    assert cfg == TrainConfig()
    assert cfg.optimizer == "adamw" and cfg.epochs == 10 and cfg.amp == "none"


def test_separate_config_file_with_sets(tmp_path: Path) -> None:
    conf = tmp_path / "train.yaml"
    conf.write_text("optimizer: sgd\nlr: 0.1\nnesterov: true\nbatch_size: 0\n")
    with pytest.raises(ParseError) as info:
        load_train_config(load_text(SPEC, "spec.yaml"), "spec.yaml", conf, ("train.lr=0.2",))
    assert [str(d) for d in info.value.diagnostics] == [
        f"{conf}:4:13: train.batch_size: input should be greater than 0, got 0"
    ]
    cfg = load_train_config(None, "spec.yaml", conf, ("train.batch_size=8", "train.lr=0.2", "layers.0=x"))
    assert cfg.batch_size == 8 and cfg.lr == 0.2 and cfg.nesterov


def test_cli_reports_config_errors_before_loading_data(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    result = run_cli("train", str(spec), "--data", "iris", "--out", str(tmp_path / "run"))
    assert result.code == 2
    assert f"error: {spec}:7:7: train.lr: input should be greater than 0" in result.err
    assert "3 errors" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "run").exists()
