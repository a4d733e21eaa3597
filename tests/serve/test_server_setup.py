"""`specc serve` before it listens: model names, token file, exposure warning, option errors, and
import hygiene (the server, like the runtime, never imports torch or training code)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from specc.errors import UsageError
from specc.serve.server import exposure_warning, is_loopback, parse_model_args, read_token


def test_model_names_come_from_files_or_name_equals_path() -> None:
    assert parse_model_args(["a/lenet.onnx", "enc=b/bert.onnx"]) == [
        ("lenet", Path("a/lenet.onnx")),
        ("enc", Path("b/bert.onnx")),
    ]
    with pytest.raises(UsageError, match="two models are named 'lenet'"):
        parse_model_args(["a/lenet.onnx", "b/lenet.onnx"])
    with pytest.raises(UsageError, match="model name 'a b'"):
        parse_model_args(["a b=m.onnx"])


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_text("  abc.DEF-123\n")
    assert read_token(path) == "abc.DEF-123"
    for bad in ("", "two words", "é"):
        path.write_text(bad)
        with pytest.raises(UsageError, match="printable ASCII"):
            read_token(path)
    with pytest.raises(UsageError, match="cannot read the token file"):
        read_token(tmp_path / "missing")


def test_exposure_warning_only_off_loopback_without_token() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("0.0.0.0", "tok") is None
    warning = exposure_warning("0.0.0.0", None)
    assert warning is not None and "without --token-file" in warning


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.onnx"], "model file not found: missing.onnx"),
        (["m.onnx", "--max-batch", "0"], "--max-batch, --max-queue and --max-elements must be positive"),
        (["m.onnx", "--max-delay-ms", "-1"], "--max-delay-ms must be between 0 and 10000"),
        (["m.onnx", "--log-level", "loud"], "--log-level must be one of"),
        (["m.onnx", "--token-file", "nope"], "cannot read the token file 'nope'"),
    ],
)
def test_cli_errors_exit_2(args: list[str], message: str) -> None:
    result = run_cli("serve", *args)
    assert result.code == 2 and message in result.err and "Traceback" not in result.err


def test_serve_imports_no_torch_or_training() -> None:
    code = (
        "import sys, onnxruntime, specc.serve, specc.serve.server, specc.cli.serve_cmd\n"
        "specc.serve.create_app([], specc.serve.ServeSettings())\n"
        "print('\\n'.join(sys.modules))"
    )
    mods = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert {"uvicorn", "starlette", "prometheus_client", "specc.runtime"} <= mods
    assert "torch" not in mods
    assert not {m for m in mods if m.startswith(("specc.train", "specc.nn", "specc.export", "specc.data"))}


def test_only_models_with_one_symbolic_batch_axis_are_batched() -> None:
    from types import SimpleNamespace

    from specc.runtime import TensorSpec
    from specc.serve.app import batchable

    def model(*shapes: tuple[object, ...]) -> object:
        specs = [TensorSpec(f"t{i}", s, "float32") for i, s in enumerate(shapes)]  # type: ignore[arg-type]
        return SimpleNamespace(inputs=specs[:-1], outputs=specs[-1:])

    assert batchable(model(("batch", 4), ("batch", "seq"), ("batch", 3)))  # type: ignore[arg-type]
    assert not batchable(model((1, 4), (1, 3)))  # type: ignore[arg-type]  # `specc export --static`
    assert not batchable(model(("batch", 4), ("n", 3)))  # type: ignore[arg-type]
