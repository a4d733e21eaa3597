"""The KServe v2 codec on its own: JSON and binary tensors in, JSON and binary tensors out."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from specc.runtime import TensorSpec
from specc.serve.protocol import (
    InferRequest,
    Limits,
    ProtocolError,
    decode_infer_request,
    encode_infer_response,
)

INPUTS = (
    TensorSpec("ids", ("batch", "seq"), "int64"),
    TensorSpec("mask", ("batch", "seq"), "bool"),
    TensorSpec("x", ("batch", 2), "float16"),
)
OUTPUTS = (TensorSpec("a", ("batch", 2), "float32"), TensorSpec("b", ("batch",), "int64"))


def _binary_request(arrays: dict[str, np.ndarray], **extra: Any) -> tuple[bytes, str]:
    entries, blobs = [], []
    for name, arr in arrays.items():
        blob = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        dtype = {"int64": "INT64", "bool": "BOOL", "float16": "FP16"}[arr.dtype.name]
        entries.append(
            {
                "name": name,
                "shape": list(arr.shape),
                "datatype": dtype,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    head = json.dumps({"inputs": entries, **extra}).encode()
    return head + b"".join(blobs), str(len(head))


def decode(body: bytes | dict[str, Any], header: str | None = None, **limits: Any) -> InferRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return decode_infer_request(raw, header, INPUTS, OUTPUTS, Limits(**limits))


ARRAYS = {
    "ids": np.array([[1, 2, 3]], np.int64),
    "mask": np.array([[True, False, True]]),
    "x": np.array([[0.5, -1.25]], np.float16),
}


def test_binary_inputs_decode_exactly() -> None:
    body, header = _binary_request(ARRAYS, id="q")
    req = decode(body, header)
    assert req.id == "q" and req.outputs == ("a", "b") and req.binary == frozenset()
    for name, arr in ARRAYS.items():
        assert req.inputs[name].dtype == arr.dtype
        np.testing.assert_array_equal(req.inputs[name], arr)


def test_json_inputs_flat_or_nested() -> None:
    body = {
        "inputs": [
            {"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [[1, 2, 3]]},
            {"name": "mask", "shape": [1, 3], "datatype": "BOOL", "data": [True, False, True]},
            {"name": "x", "shape": [1, 2], "datatype": "FP16", "data": [0.5, -1.25]},
        ],
        "outputs": [{"name": "b", "parameters": {"binary_data": True}}, {"name": "a"}],
    }
    req = decode(body)
    for name, arr in ARRAYS.items():
        np.testing.assert_array_equal(req.inputs[name], arr)
    assert req.outputs == ("b", "a") and req.binary == frozenset({"b"})


def _with(name: str, **changes: Any) -> dict[str, Any]:
    base = {
        "ids": {"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]},
        "mask": {"name": "mask", "shape": [1, 3], "datatype": "BOOL", "data": [True, True, True]},
        "x": {"name": "x", "shape": [1, 2], "datatype": "FP16", "data": [0.5, 1.0]},
    }
    base[name] = {**base[name], **changes}
    return {"inputs": list(base.values())}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            _with("ids", data=[1.5, 2, 3]),
            "input 'ids': 'data' holds floats (or integers past 64 bits), not integers",
        ),
        (_with("ids", data=[2**63, 2, 3]), "input 'ids': 'data' holds floats (or integers past 64 bits)"),
        (
            _with("ids", data=[2**64 - 1, 2**63, 2**63]),
            "input 'ids': 'data' has values that do not fit in int64",
        ),
        (_with("ids", data=[2**70, 2, 3]), "input 'ids': 'data' holds values of mixed types"),
        (_with("ids", data=["1", 2, 3]), "input 'ids': 'data' holds strings"),
        (_with("mask", data=[1, 0, 1]), "input 'mask': 'data' holds integers, not booleans"),
        (_with("ids", data=[[1, 2], [3]]), "input 'ids': 'data' is not a regular array"),
        (_with("ids", data="123"), "input 'ids': 'data' must be a list"),
        (_with("ids", shape=[1, -3]), "input 'ids': 'shape' must be a list of non-negative integers"),
        (_with("ids", shape=[1, True, 3]), "input 'ids': 'shape' must be a list of non-negative integers"),
        (_with("x", data=[0.5, float("inf")]), "is not a JSON number"),
        (_with("ids", datatype="BYTES"), "input 'ids': datatype 'BYTES' does not match the model's INT64"),
        (_with("ids", data=None), "input 'ids': 'data' must be a list"),
        ({"inputs": _with("ids")["inputs"][:2]}, "missing input 'x'"),
        ({"inputs": [*_with("ids")["inputs"], _with("ids")["inputs"][0]]}, "input 'ids' is given twice"),
        ({**_with("ids"), "outputs": [{"name": "c"}]}, "unknown output 'c'"),
        (
            {**_with("ids"), "outputs": [{"name": "a", "parameters": {"classification": 2}}]},
            "classification extension",
        ),
        (
            {**_with("ids"), "parameters": {"binary_data_output": 1}},
            "'binary_data_output' must be true or false",
        ),
        ({**_with("ids"), "id": 3}, "'id' must be a string"),
        ({"inputs": {}}, "the request needs 'inputs'"),
    ],
)
def test_bad_json_requests_name_the_problem(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(body)
    assert info.value.status == 400 and message in info.value.message


def test_nonfinite_values_refused_unless_allowed() -> None:
    arrays = {**ARRAYS, "x": np.array([[np.nan, 1.0]], np.float16)}
    body, header = _binary_request(arrays)
    with pytest.raises(ProtocolError, match="input 'x': holds NaN or infinite values"):
        decode(body, header)
    assert np.isnan(decode(body, header, allow_nonfinite=True).inputs["x"][0, 0])


def test_element_limit_is_checked_before_the_data() -> None:
    body = _with("ids", shape=[1 << 20, 1 << 20], data=[1])
    with pytest.raises(ProtocolError) as info:
        decode(body, max_elements=1000)
    assert info.value.status == 413 and "more than 1000 elements" in info.value.message


@pytest.mark.parametrize(
    ("header", "cut", "message"),
    [
        ("0", 0, "must be a positive integer"),
        ("abc", 0, "must be a positive integer"),
        ("99999", 0, "no larger than the body"),
        (None, 0, "malformed JSON"),
        ("", -2, "the body ends before its"),
    ],
)
def test_binary_framing_errors(header: str | None, cut: int, message: str) -> None:
    body, real = _binary_request(ARRAYS)
    if cut:
        body = body[:cut]
    with pytest.raises(ProtocolError, match=message):
        decode(body, header if header != "" else real)


def test_binary_size_must_match_the_shape() -> None:
    body, header = _binary_request(ARRAYS)
    head = json.loads(body[: int(header)])
    head["inputs"][0]["parameters"]["binary_data_size"] = 16
    new = json.dumps(head).encode()
    with pytest.raises(
        ProtocolError, match=r"input 'ids': binary_data_size is 16 bytes but shape \[1, 3\] of INT64 needs 24"
    ):
        decode(new + body[int(header) :], str(len(new)))


def test_response_json_and_binary_layout() -> None:
    a = np.array([[1.5, -2.0], [0.25, 3.0]], np.float32)
    b = np.array([7, -1], np.int64)
    req = InferRequest("r", {}, ("a", "b"), frozenset({"b"}))
    body, headers = encode_infer_response("m", "1", req, {"a": a, "b": b})
    n = int(headers["inference-header-content-length"])
    assert headers["content-type"] == "application/octet-stream"
    meta = json.loads(body[:n])
    assert meta["model_name"] == "m" and meta["id"] == "r"
    assert meta["outputs"][0] == {
        "name": "a",
        "datatype": "FP32",
        "shape": [2, 2],
        "data": [1.5, -2.0, 0.25, 3.0],
    }
    assert meta["outputs"][1]["parameters"] == {"binary_data_size": 16}
    np.testing.assert_array_equal(np.frombuffer(body[n:], "<i8"), b)

    body, headers = encode_infer_response("m", "1", InferRequest(None, {}, ("a",), frozenset()), {"a": a})
    assert headers == {"content-type": "application/json"} and "id" not in json.loads(body)
    with pytest.raises(ProtocolError, match="output 'a' holds NaN"):
        encode_infer_response("m", "1", InferRequest(None, {}, ("a",), frozenset()), {"a": a * np.nan})
