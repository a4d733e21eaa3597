"""Hostile and broken files at every reading entry point: exit 2 with the file named, nothing
allocated from a header before it is checked (issue 17, points 15 and 16)."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from specc.errors import DataError, UsageError
from specc.runtime import inputs
from specc.runtime.inputs import load_arrays

HEAD = "specc: 1\nname: h\ninputs: {x: {shape: [2]}}\n"


def _npy_bytes(descr: str, shape: tuple[int, ...], data: bytes = b"") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (118 - len(header)) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data


def test_npy_header_claims_are_checked_before_reading(tmp_path: Path) -> None:
    huge = tmp_path / "huge.npy"
    huge.write_bytes(_npy_bytes("<f4", (10**6, 10**6)))  # 128 bytes claiming 10**12 floats
    with pytest.raises(UsageError, match="claims 4,000,000,000,000 bytes .* truncated or forged"):
        load_arrays(huge, ["x"])
    forged = tmp_path / "forged.npy"
    forged.write_bytes(_npy_bytes("<f4", (1000, 1000), b"\0" * 64))  # 4 MB claimed, 64 bytes present
    with pytest.raises(
        UsageError, match=r"claims 4,000,000 bytes of float32 \(1000, 1000\) but the file holds 64"
    ):
        load_arrays(forged, ["x"])
    obj = tmp_path / "obj.npy"
    obj.write_bytes(_npy_bytes("|O", (2,), b"\x80\x04N."))
    with pytest.raises(UsageError, match=r"object \(pickled\) arrays are refused"):
        load_arrays(obj, ["x"])
    text = tmp_path / "text.npy"
    text.write_text("hello world\n")
    with pytest.raises(UsageError, match="not a valid .npy array") as info:
        load_arrays(text, ["x"])
    assert "pickled" not in str(info.value)  # the old message called a text file "pickled data"


def test_npz_members_are_budgeted_from_their_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forged = tmp_path / "forged.npz"
    with zipfile.ZipFile(forged, "w") as z:
        z.writestr("x.npy", _npy_bytes("<f4", (10**6, 10**6)))
    with pytest.raises(UsageError, match="x.npy': the header claims .* truncated or forged"):
        load_arrays(forged, ["x"])
    monkeypatch.setattr(inputs, "MAX_ARRAY_BYTES", 1 << 20)
    bomb = tmp_path / "bomb.npz"  # 4 MiB of zeros, compressed to a few KiB: the budget stops it
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _npy_bytes("<f4", (1024, 1024), bytes(4 << 20)))
    assert bomb.stat().st_size < 64 << 10
    with pytest.raises(UsageError, match="over the budget of 1,048,576"):
        load_arrays(bomb, ["x"])
    objz = tmp_path / "obj.npz"
    with zipfile.ZipFile(objz, "w") as z:
        z.writestr("x.npy", _npy_bytes("|O", (2,), b"\x80\x04N."))
    with pytest.raises(UsageError, match=r"object \(pickled\) arrays are refused"):
        load_arrays(objz, ["x"])
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(UsageError, match="cannot read arrays from .*not a zip file"):
        load_arrays(text, ["x"])
    good = tmp_path / "good.npz"
    np.savez(good, x=np.arange(6, dtype=np.float32))
    np.testing.assert_array_equal(load_arrays(good, ["x"])["x"], np.arange(6, dtype=np.float32))


def test_training_npy_claims_and_text_files(tmp_path: Path) -> None:
    from specc.data.datasets import load_dataset

    (tmp_path / "x.npy").write_bytes(_npy_bytes("<f4", (10**6, 10**6)))
    np.save(tmp_path / "y.npy", np.zeros(3, np.int64))
    with pytest.raises(DataError, match="holds only 0 bytes of data"):
        load_dataset(str(tmp_path / "x.npy"), input_shape=(2,), input_dtype="float32")
    (tmp_path / "t.npz").write_text("not a zip")
    with pytest.raises(DataError, match="is not a .npz archive") as info:
        load_dataset(str(tmp_path / "t.npz"), input_shape=(2,), input_dtype="float32")
    assert "pickled" not in str(info.value)


def _safetensors(header: dict[str, object], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    "content",
    [
        _safetensors(
            {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}, b"\0" * 16
        ),
        struct.pack("<Q", 2**60) + b"{}",  # header length far past the file
        b"hello world, not safetensors\n",
        _safetensors({"__metadata__": {"specc.aliases": "[1, 2]"}}, b""),  # aliases not a mapping
    ],
    ids=["claims_4TB", "header_length", "text", "bad_aliases"],
)
def test_forged_safetensors_are_refused(tmp_path: Path, content: bytes) -> None:
    import torch

    from specc.export.source import load_weights

    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    with pytest.raises(UsageError, match="cannot read weights"):
        load_weights(torch.nn.Linear(2, 2), path)


def test_files_of_the_wrong_kind_and_os_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "text.onnx").write_text("hello world\n")
    np.save(tmp_path / "x.npy", np.zeros((1, 2), np.float32))
    result = run_cli("predict", str(tmp_path / "text.onnx"), "-i", str(tmp_path / "x.npy"))
    # not a readable ONNX model: a ModelError (exit 4, docs/deployment.md), still named, no traceback
    assert result.code == 2 and "cannot read ONNX model" in result.err and "text.onnx" in result.err
    long_name = tmp_path / ("a" * 300 + ".yaml")
    result = run_cli("check", str(long_name))
    assert result.code == 2 and "File name too long" in result.err and "a" * 40 in result.err
    (tmp_path / "ok.yaml").write_text(HEAD + "layers: [relu]\n")
    for args in (  # paths that reach the OS outside the spec reader: the one fallback in fail()
        ["predict", str(tmp_path / ("b" * 300 + ".onnx")), "-i", str(tmp_path / "x.npy")],
        [
            "train",
            str(tmp_path / "ok.yaml"),
            "--data",
            str(tmp_path / ("b" * 300 + ".npy")),
            "--out",
            str(tmp_path / "r"),
        ],
    ):
        result = run_cli(*args)
        assert result.code == 2 and "File name too long" in result.err and "b" * 40 in result.err, result.err
    (tmp_path / "sub").mkdir()
    result = run_cli("check", str(tmp_path / "sub"))
    assert result.code == 2 and "is a directory" in result.err
    os.mkfifo(tmp_path / "fifo.yaml")
    result = run_cli("check", str(tmp_path / "fifo.yaml"))
    assert result.code == 2 and "not a regular file" in result.err
    spec = tmp_path / "s.yaml"
    spec.write_text(HEAD + "layers: [relu]\n")
    real_open = os.open

    def denied(path: object, *args: object, **kw: object) -> int:
        if str(path) == str(spec):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", denied)
    result = run_cli("check", str(spec))
    assert result.code == 2 and f"cannot read {spec}: Permission denied" in result.err


def test_token_file_from_a_device_is_refused_unread() -> None:
    from specc.serve.server import read_token

    with pytest.raises(UsageError, match="not a regular file"):
        read_token(Path("/dev/zero"))


def test_deep_json_in_onnx_metadata(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"specc.labels": "[" * 100_000 + "]" * 100_000})
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "x.npy", np.zeros((1, 2), np.float32))
    result = run_cli("predict", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.npy"))
    assert result.code == 2 and "model metadata 'specc.labels' is nested too deeply" in result.err


def test_hostile_scalars_in_specs(tmp_path: Path) -> None:
    cases = {
        "digits": ("layers:\n  - linear: " + "9" * 5000 + "\n", "does not fit in 64 bits"),
        "float_overflow": ("layers:\n  - linear: 1e400\n", "valid integer"),
        "float_expr": ('vars: {z: 1e308}\nlayers:\n  - linear: "$z * 10"\n', "finite number"),
        "nan_int": ('vars: {z: .nan}\nlayers:\n  - linear: "int($z)"\n', "NaN"),
        "seed": ("layers: [relu]\ntrain: {seed: 100000000000000000000}\n", "does not fit in 64 bits"),
        "deep": ("layers: " + "[" * 1000 + "]" * 1000 + "\n", "nesting"),
        "bidi_key": ("layers:\n  - \u202elinear\U0001f600: 4\n", "unknown op or block"),
        "nul_key": ('layers:\n  - "a\\0b": 4\n', "unknown op or block"),
        "surrogate": ('layers:\n  - "\\ud800": 4\n', "invalid YAML"),
    }
    for name, (body, _) in cases.items():
        (tmp_path / f"{name}.yaml").write_text(HEAD + body, encoding="utf-8")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    result = run_cli("check", "--json", *(str(tmp_path / f"{n}.yaml") for n in [*cases, "binary"]))
    assert result.code == 2, result.err
    reports = {Path(r["file"]).stem: r for r in json.loads(result.out)}
    for name, (_, message) in cases.items():
        errors = reports[name]["errors"]
        assert errors and message in errors[0]["message"], (name, errors)
        assert errors[0]["line"] and errors[0]["col"], (name, errors)
    assert "not UTF-8" in reports["binary"]["errors"][0]["message"]
