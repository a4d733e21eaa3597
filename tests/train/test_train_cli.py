"""``specc train`` end to end (in-process, tiny models, one short epoch each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli
from safetensors.torch import load_file

CNN = """specc: 1
name: tinycnn
inputs: {image: {shape: [1, 12, 12]}}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1, name: conv}
  - act
  - maxpool2d: 2
  - flatten
  - linear: {out_features: 10, name: head}
outputs: [head]
train: {epochs: 1, batch_size: 128, lr: 0.01, augment: crop, log_every: 5}
"""

MLP = """specc: 1
name: tinymlp
inputs: {x: {shape: [FEATURES]}}
layers:
  - linear: {out_features: 8, name: hidden}
  - act
  - linear: {out_features: CLASSES, name: head}
train: {epochs: 1, batch_size: 32, lr: 0.01}
"""


def _mlp(tmp_path: Path, features: int, classes: int, name: str = "mlp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(MLP.replace("FEATURES", str(features)).replace("CLASSES", str(classes)))
    return path


def test_digits_run_folder(tmp_path: Path) -> None:
    spec = tmp_path / "cnn.yaml"
    spec.write_text(CNN)
    run = tmp_path / "run"
    result = run_cli("train", str(spec), "--data", "digits", "--out", str(run), "--quiet")
    assert result.code == 0, result.err
    assert result.out.count("resized 1x8x8 -> 1x12x12") == 1
    assert "test_accuracy" in result.out
    for name in (
        "spec.yaml",
        "train.yaml",
        "run.json",
        "data.json",
        "metrics.csv",
        "metrics.json",
        "curves.png",
        "model.safetensors",
        "train.log",
    ):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["epochs"]) == 1
    assert {"test_loss", "test_accuracy", "val_accuracy", "samples_per_s"} <= set(metrics["final"])
    assert (
        (run / "metrics.csv")
        .read_text()
        .splitlines()[0]
        .startswith("epoch,step,train_loss,val_loss,val_accuracy")
    )
    data = json.loads((run / "data.json").read_text())
    assert data["task"] == "classification" and data["class_names"][:2] == ["0", "1"]
    assert data["preprocess"]["size"] == [12, 12] and data["inputs"][0]["name"] == "image"
    weights = load_file(str(run / "model.safetensors"))
    assert set(weights) == {"conv.weight", "conv.bias", "head.weight", "head.bias"}
    again = run_cli("train", str(spec), "--data", "digits", "--out", str(run), "--quiet")
    assert again.code == 2 and "pass --resume" in again.err


@pytest.mark.parametrize(
    ("source", "features", "classes"), [("iris", 4, 3), ("wine", 13, 3), ("breast_cancer", 30, 2)]
)
def test_sklearn_tables(tmp_path: Path, source: str, features: int, classes: int) -> None:
    spec = _mlp(tmp_path, features, classes)
    result = run_cli(
        "train",
        str(spec),
        "--data",
        source,
        "--out",
        str(tmp_path / "r"),
        "--quiet",
        "--set",
        "train.optimizer=sgd",
        "--set",
        "train.nesterov=true",
        "--set",
        "train.schedule=onecycle",
    )
    assert result.code == 0, result.err
    final = json.loads((tmp_path / "r" / "metrics.json").read_text())["final"]
    assert 0 <= final["test_accuracy"] <= 1


def test_more_classes_than_outputs_refused_before_training(tmp_path: Path) -> None:
    spec = _mlp(tmp_path, 13, 2)
    result = run_cli("train", str(spec), "--data", "wine", "--out", str(tmp_path / "r"))
    assert result.code == 2
    assert (
        "data 'wine' has 3 classes but the spec output 'output' has shape (2,): it cannot predict them all"
        in result.err
    )
    assert not (tmp_path / "r").exists()


def test_fewer_classes_allowed_with_a_note(tmp_path: Path) -> None:
    spec = _mlp(tmp_path, 4, 5)
    result = run_cli("train", str(spec), "--data", "iris", "--out", str(tmp_path / "r"), "--quiet")
    assert result.code == 0, result.err
    assert "the extra 2 are never targets" in result.out


def test_shape_mismatch_and_bad_files(tmp_path: Path) -> None:
    spec = _mlp(tmp_path, 5, 3)
    result = run_cli("train", str(spec), "--data", "iris", "--out", str(tmp_path / "r"))
    assert result.code == 2 and "shape (4,)" in result.err and "(5,)" in result.err
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a zip")
    result = run_cli("train", str(spec), "--data", str(bad), "--out", str(tmp_path / "r"))
    assert result.code == 2 and str(bad) in result.err and "Traceback" not in result.err
    result = run_cli(
        "train", str(spec), "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r")
    )
    assert result.code == 2 and "missing.csv" in result.err


def test_npz_regression_and_early_stopping(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=(x @ np.array([1.0, -2.0, 0.5], dtype=np.float32)))
    spec = _mlp(tmp_path, 3, 1)
    result = run_cli(
        "train",
        str(spec),
        "--data",
        str(tmp_path / "reg.npz"),
        "--out",
        str(tmp_path / "r"),
        "--quiet",
        "--set",
        "train.epochs=30",
        "--set",
        "train.lr=0.05",
        "--set",
        "train.optimizer=sgd",
        "--set",
        "train.early_stopping={patience: 1, metric: val_loss, min_delta: 100}",
    )
    assert result.code == 0, result.err
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["status"] == "early_stopped" and len(metrics["epochs"]) == 2
    assert "test_loss" in metrics["final"]
    # restore_best (the default): nothing beat epoch 1 by min_delta, so the run ends with epoch 1's
    # weights: evaluated again they give epoch 1's validation loss, and they are what is saved
    first, last = metrics["epochs"][0]["val_loss"], metrics["epochs"][1]["val_loss"]
    assert first != last and metrics["final"]["weights_of_epoch"] == 1
    assert metrics["final"]["val_loss"] == pytest.approx(first, rel=1e-6)
    assert "restore_best: weights of epoch 1" in result.out
    final, best = (
        load_file(str(tmp_path / "r" / "model.safetensors")),
        load_file(str(tmp_path / "r" / "best.safetensors")),
    )
    assert all(torch.equal(final[k], best[k]) for k in final)
    result = run_cli(
        "train",
        str(spec),
        "--data",
        str(tmp_path / "reg.npz"),
        "--out",
        str(tmp_path / "r2"),
        "--quiet",
        "--set",
        "train.epochs=30",
        "--set",
        "train.lr=0.05",
        "--set",
        "train.optimizer=sgd",
        "--set",
        "train.early_stopping={patience: 1, metric: val_loss, min_delta: 100, restore_best: false}",
    )
    assert result.code == 0, result.err
    metrics = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert metrics["final"]["val_loss"] == pytest.approx(metrics["epochs"][1]["val_loss"], rel=1e-6)
    assert "weights_of_epoch" not in metrics["final"] and not (tmp_path / "r2" / "best.safetensors").exists()


def test_restore_best_refuses_a_best_file_of_another_epoch(tmp_path: Path) -> None:
    """best.safetensors records its epoch; one that does not belong to the best epoch the (resumed)
    run knows is not loaded: the run keeps its last weights and says so."""
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=(x @ np.array([1.0, -2.0, 0.5], dtype=np.float32)))
    spec = _mlp(tmp_path, 3, 1)
    args = [
        "train",
        str(spec),
        "--data",
        str(tmp_path / "reg.npz"),
        "--out",
        str(tmp_path / "r"),
        "--quiet",
        "--set",
        "train.lr=0.05",
        "--set",
        "train.optimizer=sgd",
        "--set",
        "train.early_stopping={patience: 5, metric: val_loss, min_delta: 100}",
    ]
    first = run_cli(*args, "--set", "train.epochs=2")
    assert first.code == 0, first.err
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["final"]["weights_of_epoch"] == 1
    best = tmp_path / "r" / "best.safetensors"
    save_file(load_file(str(best)), str(best), metadata={"format": "pt", "epoch": "7"})  # a stray file
    resumed = run_cli(*args, "--set", "train.epochs=3", "--resume")
    assert resumed.code == 0, resumed.err
    assert "holds the weights of epoch 7, not of the best epoch 1" in resumed.out
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert "weights_of_epoch" not in metrics["final"] and len(metrics["epochs"]) == 3
    assert metrics["final"]["val_loss"] == pytest.approx(metrics["epochs"][2]["val_loss"], rel=1e-6)


def test_nonfinite_loss_stops_naming_step_and_tensor(tmp_path: Path) -> None:
    spec = _mlp(tmp_path, 4, 3)
    run = tmp_path / "r"
    result = run_cli(
        "train",
        str(spec),
        "--data",
        "iris",
        "--out",
        str(run),
        "--quiet",
        "--set",
        "train.epochs=3",
        "--set",
        "train.optimizer=sgd",
        "--set",
        "train.lr=1e30",
        "--set",
        "train.checkpoint_every=1",
    )
    assert result.code == 5  # training stopped on a non-finite value
    assert "non-finite loss (nan) at step 2 (epoch 1, batch 2)" in result.err
    assert "first non-finite gradient: 'hidden.weight'" in result.err
    assert "the newest checkpoint (step-00000001) holds the last finite weights" in result.err
    newest = sorted((run / "checkpoints").iterdir())[-1]
    assert newest.name == "step-00000001"
    assert all(np.isfinite(t.numpy()).all() for t in load_file(str(newest / "model.safetensors")).values())
    assert json.loads((run / "metrics.json").read_text())["status"].startswith("failed: non-finite loss")


def test_init_from_new_head_and_freeze(tmp_path: Path) -> None:
    base = _mlp(tmp_path, 13, 3, "base.yaml")
    assert run_cli("train", str(base), "--data", "wine", "--out", str(tmp_path / "a"), "--quiet").code == 0
    first = load_file(str(tmp_path / "a" / "model.safetensors"))
    head5 = _mlp(tmp_path, 13, 5, "head5.yaml")
    result = run_cli(
        "train",
        str(head5),
        "--data",
        "wine",
        "--out",
        str(tmp_path / "b"),
        "--quiet",
        "--init-from",
        str(tmp_path / "a"),
        "--no-init-strict",
        "--freeze",
        "hidden.*",
    )
    assert result.code == 0, result.err
    assert "loaded 2 tensors" in result.out
    assert "head.weight [3, 8] in file vs [5, 8] in model" in result.out
    assert "froze 2 parameters: hidden.bias, hidden.weight" in result.out
    second = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert (second["hidden.weight"] == first["hidden.weight"]).all()
    assert second["head.weight"].shape == (5, 8)
    result = run_cli("train", str(head5), "--data", "wine", "--out", str(tmp_path / "c"), "--freeze", "nope*")
    assert result.code == 2 and "--freeze 'nope*' matches no parameter" in result.err
    result = run_cli(
        "train", str(head5), "--data", "wine", "--out", str(tmp_path / "c"), "--init-from", str(base)
    )
    assert result.code == 2 and "not a weights file" in result.err
    result = run_cli(
        "train",
        str(head5),
        "--data",
        "wine",
        "--out",
        str(tmp_path / "c"),
        "--init-from",
        str(tmp_path / "a"),
    )  # a new head without --no-init-strict: refused, naming the tensor, its node and the file
    assert result.code == 2
    assert "tensor head.weight has shape [3, 8] in" in result.err and "node 'head'" in result.err
    assert "--no-init-strict" in result.err


@pytest.mark.parametrize(
    ("spec", "source", "metric", "extra"),
    [
        ("lstm_lm.yaml", "text:stdlib", "test_perplexity", ("--set", "vocab=128")),
        ("seq2seq_attention.yaml", "reverse", "test_exact_match", ()),
    ],
)
def test_sequence_specs(tmp_path: Path, spec: str, source: str, metric: str, extra: tuple[str, ...]) -> None:
    path = ROOT / "specs" / spec
    if not path.is_file():
        pytest.skip(f"specs/{spec} not written yet")
    result = run_cli(
        "train",
        str(path),
        "--scale",
        "tiny",
        "--data",
        source,
        "--out",
        str(tmp_path / "r"),
        "--quiet",
        "--set",
        "train.epochs=1",
        "--set",
        "train.num_samples=150",
        "--set",
        "train.seq_len=16",
        *extra,
    )
    assert result.code == 0, result.err
    assert metric in json.loads((tmp_path / "r" / "metrics.json").read_text())["final"]


def test_epochs_lr_batch_size_are_shortcuts_for_set(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ("train", str(_mlp(tmp_path, 4, 3)), "--data", "iris", "--out", str(run), "--quiet")
    result = run_cli(*args, "--epochs", "2", "--lr", "0.005", "--batch-size", "16")
    assert result.code == 0, result.err
    cfg = (run / "train.yaml").read_text()
    assert "epochs: 2\n" in cfg and "lr: 0.005\n" in cfg and "batch_size: 16\n" in cfg
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2"]  # 2 epochs of ceil(105 / 16) = 7 steps
    assert [r.split(",")[1] for r in rows] == ["7", "14"]
    bad = run_cli(*args, "--lr", "-1", "--out", str(tmp_path / "bad"))
    assert bad.code == 2 and "train.lr" in bad.err
