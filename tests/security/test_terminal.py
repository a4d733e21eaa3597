"""Control characters never reach the terminal: spec keys, file names, model metadata, parser errors
and log lines are escaped where specc renders them (issue 17, point 4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from specc.errors import printable

OSC_LINK = "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\"
CLEAR = "\x1b[2J"
HEAD = "specc: 1\nname: h\ninputs: {x: {shape: [2]}}\n"


def _no_raw_controls(text: str) -> None:
    assert "\x1b" not in text and "\u202e" not in text and "\x9b" not in text, text
    assert "\\x1b" in text, text  # escaped, so the reader still sees what was there


def test_printable_escapes_controls_and_keeps_text() -> None:
    assert printable("plain text, ünïcode ✓\ttab\nline") == "plain text, ünïcode ✓\ttab\nline"
    assert printable(CLEAR + "x") == "\\x1b[2Jx"
    assert printable("a\rb\x07c\x7fd\x9be") == "a\\x0db\\x07c\\x7fd\\x9be"
    assert printable("\u202eevil\u2066\u200f") == "\\u202eevil\\u2066\\u200f"
    assert printable("\udcff.yaml") == "\\udcff.yaml"  # an undecodable file-name byte
    assert printable("a\tb\nc", newlines=False) == "a\\x09b\\x0ac"


def test_spec_key_with_escape_sequences_is_escaped(tmp_path: Path) -> None:
    key = (OSC_LINK + CLEAR).replace("\x1b", "\\e").replace("\\e\\", "\\e\\\\")
    spec = tmp_path / "s.yaml"
    spec.write_text(HEAD + f'layers:\n  - "{key}": 4\n')
    result = run_cli("check", str(spec))
    assert result.code == 2 and "unknown op or block" in result.err
    _no_raw_controls(result.err)
    assert "\\x1b]8;;http://evil.example" in result.err and "\\x1b[2J" in result.err
    result = run_cli("check", "--json", str(spec))
    assert result.code == 2 and "\x1b" not in result.out
    assert "\x1b]8;;" in json.loads(result.out)["errors"][0]["message"]  # JSON keeps the value exactly


def test_spec_name_and_file_name_with_escape_sequences(tmp_path: Path) -> None:
    name = tmp_path / f"a{CLEAR}b.yaml"
    name.write_text(HEAD + "layers: [relu]\n")
    result = run_cli("check", "-v", str(name))
    assert result.code == 0, result.err
    assert "a\\x1b[2Jb.yaml: ok" in result.out
    _no_raw_controls(result.out)
    result = run_cli("check", str(tmp_path / f"missing{OSC_LINK}.yaml"))
    assert result.code == 2 and "no such file" in result.err
    _no_raw_controls(result.err)


def test_parser_errors_echo_arguments_escaped() -> None:
    result = run_cli("check", "x.yaml", f"--{CLEAR}")
    assert result.code == 2 and "No such option" in result.err
    _no_raw_controls(result.err)


def test_onnx_metadata_and_file_name_with_escape_sequences(tmp_path: Path) -> None:
    """A model's labels (``specc.labels``) and its file name reach predict's table and the
    missing-manifest warning (a log line) escaped."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"specc.labels": json.dumps([OSC_LINK, CLEAR + "\u202eb"])})
    path = tmp_path / f"m{CLEAR}.onnx"
    onnx.save(model, str(path))
    np.save(tmp_path / "x.npy", np.array([[2.0, 1.0]], np.float32))
    result = run_cli("predict", str(path), "-i", str(tmp_path / "x.npy"))
    assert result.code == 0, result.err
    assert "sample 0: \\x1b]8;;http://evil.example" in result.out
    _no_raw_controls(result.out)
    assert "no SHA-256 manifest" in result.err  # the warning names the file, escaped
    _no_raw_controls(result.err)


def test_training_log_lines_are_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from specc.train.report import LOG_FILE, RunReport

    RunReport(tmp_path, write=True, quiet=True, log_every=1).log(f"data '{CLEAR}labels'")
    out = capsys.readouterr().out
    _no_raw_controls(out)
    _no_raw_controls((tmp_path / LOG_FILE).read_text())
