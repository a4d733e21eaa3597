"""The command line's common habits: exit codes in one place, --version, completion, colour."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import specc
from specc.cli.app import exit_code_of
from specc.errors import (
    DataError,
    ExportError,
    ExportVerificationError,
    ModelError,
    NonFiniteError,
    ParseError,
    UsageError,
)

BAD = "specc: 1\nname: x\ninputs: {x: {shape: [4]}}\nlayers: [linaer: 3]\n"


def _specc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM")}
    return subprocess.run(
        [sys.executable, "-m", "specc.cli", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=120,
    )


def test_exit_codes_by_error_kind() -> None:
    cases = [
        (ParseError.one("bad"), 2),
        (UsageError("bad option"), 2),
        (DataError("bad data"), 2),
        (ExportVerificationError("parity"), 3),
        (ExportError("exporter"), 4),
        (ModelError("onnxruntime"), 4),
        (NonFiniteError("nan"), 5),
        (KeyboardInterrupt(), 130),
        (RuntimeError("bug"), 1),
    ]
    assert [exit_code_of(exc) for exc, _ in cases] == [code for _, code in cases]


def test_a_corrupt_model_file_is_bad_input_naming_the_file(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x00not a model\xff" * 10)
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    result = run_cli("predict", str(model), "--input", str(tmp_path / "x.npy"))
    assert result.code == 2  # a file that is not a model is bad input (exit 4: onnxruntime failed on a model)
    assert f"error: cannot read ONNX model '{model}'" in result.err
    missing = run_cli("predict", str(tmp_path / "nope.onnx"), "--input", str(tmp_path / "x.npy"))
    assert missing.code == 2  # a path that does not exist is the user's mistake


def test_version() -> None:
    result = run_cli("--version")
    assert result.code == 0 and result.out == f"specc {specc.__version__}\n"


def test_shell_completion_script() -> None:
    # typer detects the shell from the parent process (pytest here); its test switch takes the name
    result = _specc("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert result.returncode == 0, result.stderr
    assert "_SPECC_COMPLETE=complete_bash" in result.stdout and "complete " in result.stdout


@pytest.mark.slow
def test_errors_are_red_on_a_terminal_and_plain_when_piped_or_no_color(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(BAD)
    message = f"{spec}:4:18: layers[0].linaer: unknown op or block 'linaer' (did you mean 'linear'?)"
    piped = _specc("check", str(spec))
    assert piped.returncode == 2 and piped.stderr == f"error: {message}\n1 error\n"
    terminal = _specc("check", str(spec), env={"FORCE_COLOR": "1"})  # rich's switch for "a terminal"
    assert terminal.returncode == 2 and terminal.stderr.startswith("\x1b[1;31merror:\x1b[0m " + message)
    no_color = _specc("check", str(spec), env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert "\x1b[31" not in no_color.stderr and "\x1b[1;31" not in no_color.stderr
    table = _specc(
        "check", "-v", str(Path(__file__).parents[2] / "specs" / "mlp.yaml"), env={"FORCE_COLOR": "1"}
    )
    assert "\x1b[1;36mpath" in table.stdout
