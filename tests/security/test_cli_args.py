"""Command-line numbers are validated before anything runs, and every command that builds a model
takes the same ``--max-params`` budget its refusal message suggests (issue 17, points 15 and 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

SPEC = (
    "specc: 1\nname: tiny\ninputs: {x: {shape: [1, 8, 8]}}\nlayers: [flatten, {linear: 10}]\n"  # 650 params
)


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC)
    return path


def test_every_building_command_takes_max_params(spec: Path, tmp_path: Path) -> None:
    over = "over the limit of 100; raise it with --max-params"
    commands = {
        "build": ["build", str(spec)],
        "export": ["export", str(spec), "-o", str(tmp_path / "m.onnx")],
        "bench": ["bench", str(spec), "--no-compile", "--iters", "1"],
        "train": ["train", str(spec), "--data", "digits", "--out", str(tmp_path / "run")],
    }
    for name, args in commands.items():
        result = run_cli(*args, "--max-params", "100")
        assert result.code == 2 and over in result.err, (name, result.err[-500:])
    assert not (tmp_path / "m.onnx").exists()
    result = run_cli("build", str(spec), "--max-params", "650")
    assert result.code == 0 and "650" in result.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "{spec}", "--max-params", "0"], "Invalid value for '--max-params'"),
        (
            ["bench", "{spec}", "--batch", "-1"],
            "--batch, --iters, --rounds, --seq and --threads must be positive",
        ),
        (["bench", "{spec}", "--compile-timeout", "nan"], "--compile-timeout must be a positive number"),
        (["export", "{spec}", "-o", "m.onnx", "--atol", "nan"], "--atol and --rtol must be finite"),
        (["export", "{spec}", "-o", "m.onnx", "--rtol", "-1"], "--atol and --rtol must be finite"),
        (["export", "{spec}", "-o", "m.onnx", "--opset", "99"], "--opset 99 is not supported"),
        (["graph", "{spec}", "--depth", "0"], "--depth must be 1 or more"),
        (["serve", "m.onnx", "--port", "70000"], "--port must be 0-65535"),
        (["serve", "m.onnx", "--threads", "-1"], "--threads must be 0"),
        (["train", "{spec}", "--data", "digits", "--out", "r", "--nproc-per-node", "0"], "--nproc-per-node"),
        (
            [
                "train",
                "{spec}",
                "--data",
                "digits",
                "--out",
                "r",
                "--nproc-per-node",
                "1",
                "--node-rank",
                "-1",
            ],
            "--node-rank and --max-restarts must be 0 or more",
        ),
        (
            ["train", "{spec}", "--data", "digits", "--out", "r", "--nproc-per-node", "1", "--nnodes", "0"],
            "--nnodes must be a number of nodes or MIN:MAX",
        ),
        (
            ["train", "{spec}", "--data", "digits", "--out", "r", "--nproc-per-node", "1"]
            + ["--rdzv-endpoint", "localhost:99999999"],
            "--rdzv-endpoint must be HOST:PORT with a port 1-65535",
        ),
    ],
)
def test_numbers_out_of_range_are_usage_errors(spec: Path, args: list[str], message: str) -> None:
    result = run_cli(*(a.replace("{spec}", str(spec)) for a in args))
    assert result.code == 2 and message in result.err, result.err[-800:]
    assert "internal error" not in result.err and "Traceback" not in result.err


def test_unwritable_save_and_unallocatable_model(spec: Path, tmp_path: Path) -> None:
    result = run_cli("build", str(spec), "--save", "/proc/specc-test.safetensors")
    assert result.code == 2 and "cannot write /proc/specc-test.safetensors" in result.err, result.err
    huge = tmp_path / "huge.yaml"  # 4·10^15 parameters: past any machine, under an explicit budget
    huge.write_text(
        "specc: 1\nname: huge\ninputs: {x: {shape: [1000]}}\nlayers:\n  - linear: 4000000000000\n"
    )
    result = run_cli("build", str(huge), "--max-params", str(10**17))
    assert result.code == 2 and "cannot allocate 4,004,000,000,000,000 parameters" in result.err, result.err
