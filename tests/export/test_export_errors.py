"""`specc export` failures (issue 11): an exporter failure is exit 4 with one line (not exit 3, which is
a parity mismatch), the TorchScript exporter's IR dump stays off stdout, `--json` prints JSON whatever
happens, and an opset the exporter cannot write is a usage error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

SPEC = """specc: 1
name: causal_attention
inputs: {x: {shape: [seq, 8]}}
dims: {seq: 16}
layers:
  - multihead_attention: {num_heads: 2, causal: true}
"""


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(SPEC)
    return path


def test_unsupported_opset_is_a_usage_error(spec: Path, tmp_path: Path) -> None:
    r = run_cli("export", str(spec), "--out", str(tmp_path / "m.onnx"), "--opset", "99", "--json")
    assert r.code == 2
    assert r.err.strip() == (
        "error: --opset 99 is not supported by the torchscript exporter (it writes opsets 7..20; default 17)"
    )
    assert json.loads(r.out) == {
        "ok": False,
        "exit_code": 2,
        "error": "UsageError",
        "message": r.err.strip().removeprefix("error: "),
    }
    r = run_cli(
        "export", str(spec), "--out", str(tmp_path / "m.onnx"), "--exporter", "dynamo", "--opset", "17"
    )
    assert r.code == 2 and "dynamo exporter (it writes opsets 18..23" in r.err
    assert [p.name for p in tmp_path.iterdir()] == ["s.yaml"]


def test_exporter_failure_is_exit_4_with_one_line_and_json(
    spec: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """opset 7 has no Range op, so the causal mask's arange cannot be exported."""
    monkeypatch.delenv("SPECC_DEBUG", raising=False)
    out = tmp_path / "m.onnx"
    r = run_cli("export", str(spec), "--out", str(out), "--opset", "7", "--json")
    native = capfd.readouterr()  # what C++ code wrote to the real file descriptors
    assert r.code == 4
    data = json.loads(r.out)  # stdout is one JSON document, nothing else
    assert data["ok"] is False and data["exit_code"] == 4 and data["error"] == "ExportError"
    assert data["message"].startswith(
        "torch.onnx.export (torchscript, opset 7) failed: ONNX export failed on arange"
    )
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {data['message']}"] and "\n" not in data["message"]
    assert "Torch IR graph" not in r.out + r.err + native.out + native.err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    monkeypatch.setenv("SPECC_DEBUG", "1")
    r = run_cli("export", str(spec), "--out", str(out), "--opset", "7")
    native = capfd.readouterr()
    assert r.code == 4 and "Torch IR graph at exception" in native.err + r.err  # details on stderr only
    assert "Torch IR graph" not in r.out + native.out


def test_checker_rejection_is_an_export_error(
    spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import specc.export.onnx_export as ox

    def reject(*args: object, **kwargs: object) -> None:
        raise ox.onnx.checker.ValidationError("Field 'type' of 'value_info' is required but missing.\nmore")

    monkeypatch.setattr(ox.onnx.checker, "check_model", reject)
    r = run_cli("export", str(spec), "--out", str(tmp_path / "m.onnx"))
    assert r.code == 4
    assert "error: onnx.checker rejected the exported file: Field 'type' of 'value_info' is required" in r.err


def test_parity_miss_json_carries_the_report(
    spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import specc.export.onnx_export as ox

    real = ox.ort_runner

    def corrupted(session):  # type: ignore[no-untyped-def]
        run = real(session)
        return lambda feeds: {k: v + 1.0 for k, v in run(feeds).items()}

    monkeypatch.setattr(ox, "ort_runner", corrupted)
    r = run_cli("export", str(spec), "--out", str(tmp_path / "m.onnx"), "--json")
    assert r.code == 3
    data = json.loads(r.out)
    assert data["exit_code"] == 3 and data["error"] == "ExportVerificationError"
    assert data["report"]["ok"] is False and data["report"]["model"].endswith("m.failed.onnx")
