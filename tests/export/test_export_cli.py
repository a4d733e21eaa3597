"""`specc export`, `specc predict` and `specc bench` end to end, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli, train_run

from specc.runtime import load, read_metadata

SPEC = """specc: 1
name: tiny_cnn
inputs: {image: {shape: [1, 12, 12]}}
labels: [zero, one, two]
layers:
  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1, name: stem}
  - norm
  - act
  - maxpool2d: 2
  - flatten
  - linear: {out_features: 3, name: head}
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder (tiny_cnn trained one epoch on a generated 3-class image folder x/y/z)
    exported once with --int8 --fp16 --optimize."""
    from PIL import Image

    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    for k, c in enumerate("xyz"):
        (root / "images" / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(40 * k, 40 * k + 120, (12, 12), np.uint8)).save(
                root / "images" / c / f"{i}.png"
            )
    spec, run = train_run(root, SPEC, str(root / "images"), "--set", "train.epochs=1", name="tiny_cnn")
    out = root / "m.onnx"
    r = run_cli(
        "export",
        str(spec),
        "--weights",
        str(run),
        "--out",
        str(out),
        "--int8",
        "--fp16",
        "--optimize",
        "--json",
    )
    assert r.code == 0, r.err
    (root / "stdout.json").write_text(r.out)
    return out


def test_report_printed_and_written(exported: Path) -> None:
    printed = json.loads((exported.parent / "stdout.json").read_text())
    written = json.loads(Path(str(exported) + ".json").read_text())
    assert printed == written and printed["ok"]
    assert printed["exporter"] == "torchscript" and printed["opset"] == 17
    assert [s["batch"] for s in printed["sizes_tested"]] == [1, 2, 7]
    assert printed["max_diff"]["output"]["max_abs"] <= 1e-4
    assert set(printed["timings_s"]) == {"export", "check", "verify", "total"}
    assert printed["weights"].endswith("model.safetensors")
    line = Path(str(exported) + ".sha256").read_text().split()
    assert line == [printed["sha256"], "m.onnx"]
    assert printed["node_names"]["with_spec_path"] > 0


def test_metadata_round_trip(exported: Path) -> None:
    meta = read_metadata(exported)
    assert meta["specc.spec_name"] == "tiny_cnn" and len(meta["specc.spec_hash"]) == 64
    assert meta["specc.inputs"] == [{"name": "image", "shape": ["batch", 1, 12, 12], "dtype": "float32"}]
    assert meta["specc.outputs"] == [{"name": "output", "shape": ["batch", 3], "dtype": "float32"}]
    assert meta["specc.labels"] == ["zero", "one", "two"]  # the spec's labels win over data.json
    run = exported.parent / "tiny_cnn"
    assert meta["specc.preprocess"] == json.loads((run / "data.json").read_text())["preprocess"]
    assert meta["specc.preprocess"]["size"] == [12, 12] and meta["specc.task"] == "classification"
    assert meta["specc.version"]
    proto = onnx.load(str(exported))
    assert any(n.name.startswith("/stem/") for n in proto.graph.node)
    assert {i.name: i.type.tensor_type.shape.dim[0].dim_param for i in proto.graph.input} == {
        "image": "batch"
    }


def test_runtime_verifies_manifest(exported: Path, tmp_path: Path) -> None:
    model = load(exported)
    assert model(np.zeros((5, 1, 12, 12), np.float32))["output"].shape == (5, 3)
    copy = tmp_path / "m.onnx"
    data = bytearray(exported.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    (tmp_path / "m.onnx.sha256").write_text(Path(str(exported) + ".sha256").read_text())
    r = run_cli("predict", str(copy), "--input", str(tmp_path / "none.npy"))
    assert r.code == 2 and "SHA-256 mismatch" in r.err


def test_variants_written_and_checked(exported: Path) -> None:
    report = json.loads(Path(str(exported) + ".json").read_text())
    for kind in ("opt", "int8", "fp16"):
        v = report["variants"][kind]
        path = Path(v["file"])
        assert path.is_file() and Path(str(path) + ".sha256").is_file()
        assert v["output_change"]["output"]["max_abs"] < 0.1
        assert read_metadata(path)["specc.variant"] == kind
        load(path)  # manifest verified
    acc = report["variants"]["int8"]["accuracy"]  # on the run's own validation split
    assert acc["split"].endswith("images (validation, 2 samples)") and 0 <= acc["fp32"] <= 1


def test_predict_npy_and_png(exported: Path, tmp_path: Path) -> None:
    from PIL import Image

    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((1, 12, 12)).astype(np.float32))
    r = run_cli("predict", str(exported), "--input", str(tmp_path / "x.npy"), "--top-k", "2", "--json")
    assert r.code == 0, r.err
    top = json.loads(r.out)["top_k"][0]
    assert len(top) == 2 and top[0]["label"] in {"zero", "one", "two"}
    Image.fromarray((np.arange(400).reshape(20, 20) % 255).astype(np.uint8)).save(tmp_path / "d.png")
    r = run_cli("predict", str(exported), "--input", str(tmp_path / "d.png"))
    assert r.code == 0, r.err
    assert r.out.startswith("sample d.png: ")


def test_predict_wrong_shape_is_usage_error(exported: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((2, 13, 12), np.float32))
    r = run_cli("predict", str(exported), "--input", str(tmp_path / "bad.npy"))
    assert r.code == 2
    assert "input 'image': expected shape [batch, 1, 12, 12] float32, got (2, 13, 12) float32" in r.err
    assert "Traceback" not in r.err
    np.save(tmp_path / "ids.npy", np.zeros((1, 12, 12), np.int64))
    assert run_cli("predict", str(exported), "--input", str(tmp_path / "ids.npy")).code == 0  # safe cast


def test_wrong_model_fails_verification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import specc.export.onnx_export as ox

    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    real = ox.ort_runner

    def corrupted(session):  # type: ignore[no-untyped-def]
        run = real(session)

        def wrong(feeds):  # type: ignore[no-untyped-def]
            out = run(feeds)
            out["output"][0, 1] += 0.5
            return out

        return wrong

    monkeypatch.setattr(ox, "ort_runner", corrupted)
    (tmp_path / "m.onnx").write_bytes(b"old")
    r = run_cli("export", str(spec), "--out", str(tmp_path / "m.onnx"))
    assert r.code == 3
    assert "output 'output' differs from PyTorch at batch=1, index [0, 1]" in r.err
    assert (tmp_path / "m.onnx").read_bytes() == b"old"  # the previous file is untouched
    assert (tmp_path / "m.failed.onnx").is_file()
    assert not json.loads((tmp_path / "m.failed.onnx.json").read_text())["ok"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_corrupted_initializer_fails_reverification(tmp_path: Path) -> None:
    from specc.errors import ExportVerificationError
    from specc.export.samples import parity_sizes
    from specc.export.verify import ort_runner, ort_session, parity, raise_on_failure, torch_runner
    from specc.nn import build

    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    model = build(spec).eval()
    assert run_cli("export", str(spec), "--out", str(tmp_path / "m.onnx")).code == 0
    proto = onnx.load(str(tmp_path / "m.onnx"))
    w = next(t for t in proto.graph.initializer if t.name == "head.weight")
    arr = onnx.numpy_helper.to_array(w).copy()
    arr[0, 0] += 1.0
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    cases = parity(
        torch_runner(model, ["image"]),
        ort_runner(ort_session(tmp_path / "bad.onnx")),
        model.graph,
        parity_sizes(model.graph),
    )
    with pytest.raises(ExportVerificationError, match="output 'output' differs"):
        raise_on_failure(cases, "re-verification", 1e-4, 1e-3)


def test_dynamo_exporter_and_static(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    r = run_cli("export", str(spec), "--out", str(tmp_path / "d.onnx"), "--exporter", "dynamo", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["opset"] == 18
    r = run_cli("export", str(spec), "--out", str(tmp_path / "s.onnx"), "--static", "--json")
    assert r.code == 0, r.err
    assert read_metadata(tmp_path / "s.onnx")["specc.inputs"][0]["shape"] == [1, 1, 12, 12]
    r = run_cli("export", str(spec), "--out", str(tmp_path / "x.onnx"), "--exporter", "jit")
    assert r.code == 2 and "unknown exporter 'jit'" in r.err


def test_bench_json_keys(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    r = run_cli(
        "bench", str(spec), "--json", "--iters", "3", "--rounds", "3", "--warmup", "1", "--batch", "4",
        "--no-compile", "--threads", "1",
    )  # fmt: skip
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert [row["engine"] for row in result["rows"]] == [
        "torch eager",
        "onnxruntime fp32",
        "onnxruntime int8",
    ]
    for row in result["rows"]:
        assert set(row) == {"engine", "latency_ms", "throughput_per_s", "speedup", "calls_per_block", "note"}
        for figure in ("latency_ms", "throughput_per_s", "speedup"):
            assert set(row[figure]) == {"p10", "p50", "p90"} and row[figure]["p50"] > 0
    assert result["rows"][0]["speedup"]["p50"] == 1.0  # torch eager is the baseline
    assert result["settings"]["batch"] == 4 and result["machine"]["threads"]["torch"] == 1


def test_optimize_fuses_specc_attention_with_exact_mask_semantics(tmp_path: Path) -> None:
    """--optimize on specc's BERT: onnxruntime's Attention fusion matches specc's attention export, and
    the fused file keeps the raw 2-d mask (not the right-padding-only mask index), so a mask with holes
    gives what the fp32 model gives."""
    import onnxruntime as ort
    from conftest import SPECS

    out = tmp_path / "bert.onnx"
    r = run_cli(
        "export", str(SPECS / "bert_base.yaml"), "--scale", "tiny", "--out", str(out), "--optimize", "--json"
    )
    assert r.code == 0, r.err
    fused = json.loads(r.out)["variants"]["opt"]["fused_ops"]
    assert fused.get("Attention") == 2, fused  # both layers of the tiny scale
    rng = np.random.default_rng(0)
    mask = rng.random((3, 10)) > 0.4
    mask[:, 0], mask[1, -1], mask[1, 3] = True, True, False  # holes and a kept token after padding
    feeds = {
        "tokens": rng.integers(1, 64, (3, 10)),
        "token_types": rng.integers(0, 2, (3, 10)),
        "attention_mask": mask,
    }
    plain, opt = (
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        for p in (out, tmp_path / "bert.opt.onnx")
    )
    np.testing.assert_allclose(opt.run(None, feeds)[0], plain.run(None, feeds)[0], atol=1e-5, rtol=1e-4)
