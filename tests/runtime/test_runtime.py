"""Tests of the deployment runtime on tiny ONNX models built with ``onnx.helper``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from specc.errors import ModelError, UsageError
from specc.runtime import METADATA_KEYS, Model, load, read_metadata

REPO = Path(__file__).resolve().parents[2]
OPSET = [helper.make_opsetid("", 17)]
IR_VERSION = 9


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[TensorProto],
    meta: dict[str, Any] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION)
    for key, value in (meta or {}).items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    return model


W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0 - 0.5
B = np.array([0.1, -0.2, 0.3], dtype=np.float32)
LABELS = ["cat", "dog", "bird"]


def classifier(meta: bool = True) -> onnx.ModelProto:
    """x [batch, 4] -> softmax(x @ W + b) as 'probs' [batch, 3]."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Add", ["h", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    md = {
        "specc.version": "0.1.0",
        "specc.spec_name": "tiny",
        "specc.spec_hash": hashlib.sha256(b"spec").hexdigest(),
        "specc.inputs": [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}],
        "specc.outputs": [{"name": "probs", "shape": ["batch", 3], "dtype": "float32"}],
        "specc.labels": LABELS,
        "specc.task": "classification",
    }
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
        md if meta else None,
    )


def reference(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float32) @ W + B
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def write_manifest(model_path: Path, *others: Path) -> Path:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in (model_path, *others)]
    manifest = model_path.with_name(model_path.name + ".sha256")
    manifest.write_text("".join(lines))
    return manifest


@pytest.fixture
def clf(tmp_path: Path) -> Model:
    return load(save(classifier(), tmp_path / "clf.onnx"))


X = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# metadata and basic calls


def test_metadata_and_properties(tmp_path: Path) -> None:
    path = save(classifier(), tmp_path / "clf.onnx")
    meta = read_metadata(path)
    assert meta["specc.spec_name"] == "tiny"
    assert meta["specc.inputs"] == [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}]
    assert meta["specc.labels"] == LABELS
    assert set(meta) <= set(METADATA_KEYS)
    model = load(path)
    assert [s.name for s in model.inputs] == ["x"]
    assert model.inputs[0].shape == ("batch", 4)
    assert model.outputs[0].describe() == "[batch, 3] float32"
    assert model.labels == LABELS
    assert model.preprocess is None
    assert model.metadata["specc.task"] == "classification"
    model.metadata["specc.task"] = "changed"
    assert model.task == "classification"


def test_call_by_name_and_position(clf: Model) -> None:
    by_name = clf(x=X)
    by_pos = clf(X)
    assert set(by_name) == {"probs"}
    np.testing.assert_allclose(by_name["probs"], reference(X), rtol=1e-5)
    np.testing.assert_array_equal(by_name["probs"], by_pos["probs"])


def test_unbatched_sample_is_batched(clf: Model) -> None:
    out = clf(X[0])["probs"]
    assert out.shape == (1, 3)
    np.testing.assert_allclose(out[0], reference(X)[0], rtol=1e-5)


def test_float64_is_cast_and_lists_accepted(clf: Model) -> None:
    np.testing.assert_allclose(clf(X.astype(np.float64))["probs"], reference(X), rtol=1e-5)
    np.testing.assert_allclose(clf(X.tolist())["probs"], reference(X), rtol=1e-5)


def test_wrong_shape_messages(clf: Model) -> None:
    with pytest.raises(UsageError) as e:
        clf(np.zeros((2, 5), np.float32))
    assert "input 'x': expected shape [batch, 4] float32, got (2, 5) float32" in str(e.value)
    assert "axis 1 must be 4" in str(e.value)
    with pytest.raises(UsageError) as e:
        clf(np.zeros((2, 3, 4), np.float64))
    assert (
        "input 'x': expected shape [batch, 4] float32, got (2, 3, 4) float64 (rank 3, expected rank 2)"
        in str(e.value)
    )


def test_mnist_like_message(tmp_path: Path) -> None:
    nodes = [helper.make_node("Identity", ["image"], ["out"])]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [],
        {"specc.inputs": [{"name": "image", "shape": ["batch", 1, 28, 28], "dtype": "float32"}]},
    )
    m = load(save(model, tmp_path / "m.onnx"))
    with pytest.raises(UsageError) as e:
        m(np.zeros((28, 28)))
    assert str(e.value).startswith(
        "input 'image': expected shape [batch, 1, 28, 28] float32, got (28, 28) float64"
    )
    assert m(np.zeros((1, 28, 28)))["out"].shape == (1, 1, 28, 28)


def test_missing_extra_and_duplicate_inputs(clf: Model) -> None:
    with pytest.raises(UsageError, match=r"missing input 'x': expected shape \[batch, 4\] float32"):
        clf()
    with pytest.raises(
        UsageError, match=r"unknown input 'y'; the model's inputs are: 'x' \[batch, 4\] float32"
    ):
        clf(x=X, y=X)
    with pytest.raises(UsageError, match=r"unknown input 'xx' \(did you mean 'x'\?\)"):
        clf(xx=X)
    with pytest.raises(UsageError, match=r"the model takes 1 input\(s\) \('x' \[batch, 4\] float32\), got 2"):
        clf(X, X)
    with pytest.raises(UsageError, match="given both by position and by name"):
        clf(X, x=X)


def test_non_numeric_and_ragged_refused(clf: Model) -> None:
    with pytest.raises(UsageError, match="input 'x': expected shape"):
        clf(np.array([["a", "b", "c", "d"]]))
    with pytest.raises(UsageError, match="input 'x': expected shape"):
        clf([[1.0, 2.0], [1.0]])


def two_inputs() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["a", "b"], ["s"])]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4]),
        ],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 4])],
        [],
        {
            "specc.inputs": [
                {"name": "a", "shape": ["batch", 4], "dtype": "float32"},
                {"name": "b", "shape": ["batch", 4], "dtype": "float32"},
            ]
        },
    )


def test_symbolic_dims_consistent(tmp_path: Path) -> None:
    m = load(save(two_inputs(), tmp_path / "two.onnx"))
    a = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(m(a, b=a)["s"], a * 2)
    np.testing.assert_array_equal(m(b=a, a=a)["s"], a * 2)
    with pytest.raises(UsageError) as e:
        m(a=a, b=np.ones((3, 4), np.float32))
    msg = str(e.value)
    assert "input 'b': expected shape [batch, 4] float32, got (3, 4) float32" in msg
    assert "axis 0 ('batch') is 3 but input 'a' has batch = 2" in msg
    with pytest.raises(UsageError, match="missing input 'b'"):
        m(a)


def token_model(task: str | None = "language_model", vocab: str = "abcd") -> onnx.ModelProto:
    """tokens [batch, seq] int64 -> logits = table[tokens]  [batch, seq, V]."""
    v = len(vocab)
    table = np.log(np.arange(1, v * v + 1, dtype=np.float32).reshape(v, v)[:, ::-1].copy())
    meta: dict[str, Any] = {
        "specc.inputs": [{"name": "tokens", "shape": ["batch", "seq"], "dtype": "int64"}],
        "specc.outputs": [{"name": "logits", "shape": ["batch", "seq", v], "dtype": "float32"}],
        "specc.preprocess": {"kind": "text", "vocab": list(vocab)},
    }
    if task:
        meta["specc.task"] = task
    return _model(
        [helper.make_node("Gather", ["table", "tokens"], ["logits"], axis=0)],
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", "T"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "T", v])],
        [numpy_helper.from_array(table, "table")],
        meta,
    )


def test_int64_input_dtypes(tmp_path: Path) -> None:
    m = load(save(token_model(), tmp_path / "lm.onnx"))
    ids = np.array([[0, 1, 2]], dtype=np.int64)
    ref = m(ids)["logits"]
    assert ref.shape == (1, 3, 4)
    np.testing.assert_array_equal(m(tokens=ids.astype(np.int32))["logits"], ref)
    np.testing.assert_array_equal(m([0, 1, 2])["logits"], ref)  # unbatched python list
    with pytest.raises(UsageError) as e:
        m(ids.astype(np.float32))
    assert "input 'tokens': expected shape [batch, seq] int64, got (1, 3) float32" in str(e.value)
    assert "float values cannot be used as int64 ids" in str(e.value)
    with pytest.raises(UsageError, match="values do not fit in int64"):
        m(np.array([[2**63]], dtype=np.uint64))


def test_without_metadata_uses_session_info(tmp_path: Path) -> None:
    m = load(save(classifier(meta=False), tmp_path / "plain.onnx"))
    assert m.inputs[0].describe() == "[N, 4] float32"
    assert m.labels is None
    np.testing.assert_allclose(m(X)["probs"], reference(X), rtol=1e-5)
    with pytest.raises(UsageError, match=r"input 'x': expected shape \[N, 4\] float32, got \(2, 2\) float32"):
        m(np.zeros((2, 2), np.float32))


def test_onnxruntime_errors_are_wrapped(tmp_path: Path) -> None:
    # metadata disagrees with the graph on a fixed dim: the check passes, onnxruntime fails
    model = classifier()
    for prop in model.metadata_props:
        if prop.key == "specc.inputs":
            prop.value = json.dumps([{"name": "x", "shape": ["batch", 5], "dtype": "float32"}])
    m = load(save(model, tmp_path / "bad.onnx"))
    with pytest.raises(ModelError, match="onnxruntime failed to run 'bad.onnx'"):
        m(np.zeros((1, 5), np.float32))


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="model file not found: .*nope.onnx"):
        load(tmp_path / "nope.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model\xff" * 10)
    with pytest.raises(UsageError, match="cannot read ONNX model .*garbage.onnx"):
        load(garbage)
    path = save(classifier(), tmp_path / "clf.onnx")
    with pytest.raises(UsageError, match="execution provider 'NoSuchExecutionProvider' is not available"):
        load(path, providers=["NoSuchExecutionProvider"])
    assert load(path, intra_op_threads=1)(X)["probs"].shape == (2, 3)


# ------------------------------------------------------------------------------------------------
# integrity: manifest and external data


def test_manifest_ok_and_missing_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = save(classifier(), tmp_path / "clf.onnx")
    with caplog.at_level(logging.WARNING, logger="specc.runtime"):
        load(path)
    assert "no SHA-256 manifest 'clf.onnx.sha256'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="specc.runtime"):
        load(path, verify_manifest=False)
    assert caplog.text == ""
    write_manifest(path)
    with caplog.at_level(logging.WARNING, logger="specc.runtime"):
        load(path)
    assert caplog.text == ""


def test_manifest_mismatch_refused(tmp_path: Path) -> None:
    path = save(classifier(), tmp_path / "clf.onnx")
    manifest = write_manifest(path)
    manifest.write_text("0" * 64 + "  clf.onnx\n")
    with pytest.raises(UsageError, match=r"SHA-256 mismatch for '.*clf.onnx'"):
        load(path)
    manifest.write_text("not a hash line\n")
    with pytest.raises(UsageError, match="malformed line"):
        load(path)
    manifest.write_text("")
    with pytest.raises(UsageError, match="does not list 'clf.onnx'"):
        load(path)


def save_external(tmp_path: Path, location: str = "weights.bin") -> tuple[Path, Path]:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    path = folder / "ext.onnx"
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(classifier(), str(path), save_as_external_data=True, location=location, size_threshold=0)
    return path, folder / location


def set_location(path: Path, location: str) -> None:
    proto = onnx.load(str(path), load_external_data=False)
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(proto.SerializeToString())


def test_external_data_ok_and_in_manifest(tmp_path: Path) -> None:
    path, data = save_external(tmp_path)
    assert data.is_file()
    np.testing.assert_allclose(load(path)(X)["probs"], reference(X), rtol=1e-5)
    write_manifest(path, data)
    np.testing.assert_allclose(load(path)(X)["probs"], reference(X), rtol=1e-5)
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(UsageError, match=r"SHA-256 mismatch for '.*weights.bin'"):
        load(path)
    write_manifest(path)  # lists only the model
    with pytest.raises(UsageError, match="does not list 'weights.bin'"):
        load(path)


def test_external_data_in_subfolder_ok(tmp_path: Path) -> None:
    path, _ = save_external(tmp_path, "data/weights.bin")
    np.testing.assert_allclose(load(path)(X)["probs"], reference(X), rtol=1e-5)


def test_external_data_dotdot_refused(tmp_path: Path) -> None:
    path, data = save_external(tmp_path)
    data.rename(tmp_path / "x")
    set_location(path, "../x")
    with pytest.raises(UsageError, match=r"external data of tensor 'W' at location '../x' is refused: '..'"):
        load(path)


def test_external_data_absolute_refused(tmp_path: Path) -> None:
    path, data = save_external(tmp_path)
    set_location(path, str(data.resolve()))
    with pytest.raises(
        UsageError, match=r"external data of tensor 'W' at location '.*weights.bin' is refused: absolute"
    ):
        load(path)


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="needs symlinks")
def test_external_data_symlink_refused(tmp_path: Path) -> None:
    path, data = save_external(tmp_path)
    outside = tmp_path / "outside.bin"
    data.rename(outside)
    data.symlink_to(outside)
    with pytest.raises(
        UsageError, match=r"external data of tensor 'W' at location 'weights.bin' is refused: .*symbolic link"
    ):
        load(path)
    # a symlink to a file inside the folder is refused too
    data.unlink()
    inside = path.parent / "real.bin"
    outside.rename(inside)
    data.symlink_to(inside)
    with pytest.raises(UsageError, match="symbolic link"):
        load(path)


def test_external_data_missing_file(tmp_path: Path) -> None:
    path, data = save_external(tmp_path)
    data.unlink()
    with pytest.raises(UsageError, match="external data of tensor 'W' at location 'weights.bin' is missing"):
        load(path)


# ------------------------------------------------------------------------------------------------
# predict_file


def image_model(channels: int) -> onnx.ModelProto:
    """image [batch, C, 6, 5] -> global mean per channel -> linear -> logits [batch, 2]."""
    w = np.linspace(-1.0, 1.0, channels * 2, dtype=np.float32).reshape(channels, 2)
    mean = [0.5, 0.4, 0.3][:channels]
    std = [0.2, 0.25, 0.3][:channels]
    return _model(
        [
            helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
        ],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, 6, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w, "w")],
        {
            "specc.inputs": [{"name": "image", "shape": ["batch", channels, 6, 5], "dtype": "float32"}],
            "specc.outputs": [{"name": "logits", "shape": ["batch", 2], "dtype": "float32"}],
            "specc.labels": ["no", "yes"],
            "specc.task": "classification",
            "specc.preprocess": {
                "kind": "image",
                "mean": mean,
                "std": std,
                "size": [6, 5],
                "channels": channels,
            },
        },
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_image_predict_matches_manual_preprocessing(tmp_path: Path, channels: int) -> None:
    rng = np.random.default_rng(0)
    png = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 256, (17, 13, 3), dtype=np.uint8), "RGB").save(png)
    m = load(save(image_model(channels), tmp_path / "img.onnx"))
    pre = m.preprocess
    assert pre is not None and pre["kind"] == "image"

    img = Image.open(png).convert("L" if channels == 1 else "RGB").resize((5, 6), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    if channels == 1:
        arr = arr[:, :, None]
    norm = (arr - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    manual = norm.transpose(2, 0, 1)[None].astype(np.float32)
    logits = m(image=manual)["logits"]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()

    result = m.predict_file(png, top_k=5)
    np.testing.assert_allclose(result["outputs"]["logits"], logits, rtol=1e-6)
    top = result["top_k"][0]
    assert len(top) == 2
    assert [t["index"] for t in top] == list(np.argsort(-probs[0]))
    assert top[0]["label"] == ["no", "yes"][top[0]["index"]]
    np.testing.assert_allclose([t["prob"] for t in top], np.sort(probs[0])[::-1], rtol=1e-5)


def test_classifier_predict_npy_npz(tmp_path: Path, clf: Model) -> None:
    np.save(tmp_path / "x.npy", X)
    result = clf.predict_file(tmp_path / "x.npy", top_k=2)
    probs = reference(X)
    assert len(result["top_k"]) == 2 and len(result["top_k"][0]) == 2
    assert result["top_k"][1][0]["index"] == int(np.argmax(probs[1]))
    assert result["top_k"][1][0]["label"] == LABELS[int(np.argmax(probs[1]))]
    # already a distribution: no second softmax
    np.testing.assert_allclose(result["top_k"][0][0]["prob"], probs[0].max(), rtol=1e-5)
    np.savez(tmp_path / "named.npz", x=X)
    np.savez(tmp_path / "single.npz", whatever=X)
    for name in ("named.npz", "single.npz"):
        assert clf.predict_file(tmp_path / name)["outputs"]["probs"] == clf(X)["probs"].tolist()
    np.savez(tmp_path / "two.npz", a=X, b=X)
    with pytest.raises(UsageError, match="holds arrays a, b but the model's inputs are x"):
        clf.predict_file(tmp_path / "two.npz")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UsageError, match="cannot read arrays"):
        clf.predict_file(tmp_path / "obj.npy")


def test_predict_file_errors(tmp_path: Path, clf: Model) -> None:
    with pytest.raises(UsageError, match="file not found"):
        clf.predict_file(tmp_path / "missing.npy")
    (tmp_path / "data.xyz").write_text("1,2,3,4\n")
    with pytest.raises(
        UsageError,
        match=r"unsupported file kind '.xyz'; supported: .npy, .npz, .png, .jpg, .jpeg, .bmp, .txt, .csv",
    ):
        clf.predict_file(tmp_path / "data.xyz")
    (tmp_path / "data.csv").write_text("1,2,3,4\n")
    with pytest.raises(UsageError, match="the first row must be a header of column names"):
        clf.predict_file(tmp_path / "data.csv")
    (tmp_path / "data.csv").write_text("a,b,c,d\n")
    with pytest.raises(UsageError, match="has a header but no data rows"):
        clf.predict_file(tmp_path / "data.csv")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    with pytest.raises(UsageError, match="no image preprocessing metadata"):
        clf.predict_file(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("abc")
    with pytest.raises(UsageError, match="no text preprocessing metadata"):
        clf.predict_file(tmp_path / "a.txt")
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(UsageError, match="top_k must be a positive integer"):
        clf.predict_file(tmp_path / "x.npy", top_k=0)


def test_text_predict_language_model(tmp_path: Path) -> None:
    m = load(save(token_model(), tmp_path / "lm.onnx"))
    (tmp_path / "prompt.txt").write_text("ab?c\n", encoding="utf-8")
    result = m.predict_file(tmp_path / "prompt.txt", top_k=3)
    assert result["task"] == "language_model"
    assert result["text"] == "ab?c"
    logits = m(np.array([[0, 1, 0, 2]]))["logits"][0, -1]  # '?' is unknown -> 0
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)[:3]
    top = result["top_k"][0]
    assert [t["index"] for t in top] == list(order)
    assert [t["label"] for t in top] == ["abcd"[i] for i in order]
    np.testing.assert_allclose([t["prob"] for t in top], probs[order], rtol=1e-5)
    # the heuristic (no task, last dim == vocab size) finds the language model too
    m2 = load(save(token_model(task=None), tmp_path / "lm2.onnx"))
    assert m2.predict_file(tmp_path / "prompt.txt", top_k=3)["top_k"] == result["top_k"]


def test_import_does_not_pull_torch() -> None:
    code = (
        "import sys, specc.runtime\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "extra = sorted(m for m in sys.modules if m.startswith('specc') and m not in "
        "{'specc', 'specc.errors', 'specc.limits', 'specc.runtime', 'specc.runtime.model', "
        "'specc.runtime.inputs', 'specc.runtime.predict', 'specc.runtime.session', 'specc.contracts', "
        "'specc.contracts.base', 'specc.contracts.onnx_metadata', 'specc.contracts.preprocess', "
        "'specc.contracts.generation', 'specc.atomic', 'specc.publish'})\n"
        "assert not extra, extra\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def _residual_layernorm_model(path: Path) -> Path:
    """x (B, 4, 8) -> MatMul + bias + x -> LayerNormalization: the pattern SkipLayerNormFusion fuses."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["hb"]),
        helper.make_node("Add", ["hb", "x"], ["r"]),
        helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5),
    ]
    graph = helper.make_graph(
        nodes,
        "skip_ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4, 8])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_sessions_leave_skip_layer_norm_unfused(tmp_path: Path) -> None:
    """specc's CPU sessions keep Add + LayerNormalization (SkipLayerNormalization's CPU kernel was
    6x slower); plain onnxruntime fuses the same graph, so the setting is what makes the difference."""
    import onnxruntime as ort

    from specc.runtime.session import DISABLE_KEY, session_options

    src = _residual_layernorm_model(tmp_path / "m.onnx")

    def optimised_ops(options: Any) -> set[str]:
        options.optimized_model_filepath = str(tmp_path / "opt.onnx")
        ort.InferenceSession(str(src), sess_options=options, providers=["CPUExecutionProvider"])
        return {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}

    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert "SkipLayerNormalization" in optimised_ops(plain)
    ours = session_options()
    ours.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # ALL adds CPU layouts
    ops = optimised_ops(ours)
    assert {"Add", "LayerNormalization"} <= ops and "SkipLayerNormalization" not in ops
    model = load(src, verify_manifest=False)
    assert model.session.get_session_options().get_session_config_entry(DISABLE_KEY) == "SkipLayerNormFusion"
    x = np.random.default_rng(1).standard_normal((2, 4, 8)).astype(np.float32)
    reference = ort.InferenceSession(str(src), sess_options=plain, providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    np.testing.assert_allclose(model(x=x)["y"], reference, rtol=1e-5, atol=1e-5)
