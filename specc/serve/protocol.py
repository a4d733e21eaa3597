"""The open inference protocol (KServe v2) over HTTP/REST: request decoding, response encoding.

Pure numpy and the standard library: no web framework, no onnxruntime. :func:`decode_infer_request`
turns a request body (JSON, optionally followed by binary tensor data) into checked numpy arrays;
:func:`encode_infer_response` turns outputs back into a body. Every problem with a request is a
:class:`ProtocolError` carrying the HTTP status and a message that names the input.

Binary tensor data extension: a request whose ``Inference-Header-Content-Length`` header is ``N``
has its JSON in the first ``N`` bytes of the body and the raw tensors after it, in the order of the
inputs that carry a ``binary_data_size`` parameter (little-endian, row-major, BOOL one byte per
element). An output is returned as binary data when its request entry has ``binary_data: true`` or
the request's parameters have ``binary_data_output: true``; the response then carries the same
header. Sizes are checked before anything is decoded: the element count from the declared shape
against ``max_elements``, then the binary size against ``elements * itemsize``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from specc.errors import did_you_mean
from specc.runtime.inputs import TensorSpec

HEADER_LENGTH = "inference-header-content-length"

# numpy dtype name (as in TensorSpec.dtype) <-> protocol datatype
DATATYPES: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
NUMPY_DTYPES: dict[str, str] = {v: k for k, v in DATATYPES.items()}


class ProtocolError(Exception):
    """A request the server refuses: ``status`` is the HTTP status, ``message`` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def datatype(dtype: str) -> str:
    """Protocol datatype of a numpy dtype name (``"float32"`` -> ``"FP32"``)."""
    return DATATYPES.get(dtype, dtype.upper())


def shape_json(spec: TensorSpec) -> list[int]:
    """The protocol's shape of a model tensor: fixed sizes, ``-1`` for symbolic/unknown axes."""
    return [d if isinstance(d, int) else -1 for d in spec.shape]


@dataclass(frozen=True)
class Limits:
    """Request size limits, checked before decoding."""

    max_elements: int = 1 << 24
    allow_nonfinite: bool = False


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request: inputs by name, and which outputs to return (and how)."""

    id: str | None
    inputs: dict[str, NDArray[Any]]
    outputs: tuple[str, ...]
    binary: frozenset[str]


# ----------------------------------------------------------------------------------------------
# decoding


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _load_json(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ProtocolError(400, f"malformed JSON in the request: {e}") from e


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(400, f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shape(name: str, raw: object, limits: Limits) -> tuple[tuple[int, ...], int]:
    """The request's shape of input ``name`` and its element count, refused past the limit."""
    if not isinstance(raw, list) or not all(_is_int(d) and d >= 0 for d in raw):
        raise ProtocolError(
            400, f"input '{name}': 'shape' must be a list of non-negative integers, got {raw!r}"
        )
    count = 1
    for d in raw:
        count *= d
        if count > limits.max_elements:
            raise ProtocolError(
                413,
                f"input '{name}': shape {raw} has more than {limits.max_elements} elements (the server's limit)",
            )
    return tuple(raw), count


_KIND_NAMES = {"b": "booleans", "i": "integers", "u": "unsigned integers", "f": "numbers"}


def _from_json_data(name: str, data: object, dtype: np.dtype[Any], count: int) -> NDArray[Any]:
    """Decode the ``data`` of a JSON tensor (flat or nested lists) without lossy casts."""
    if not isinstance(data, list):
        raise ProtocolError(400, f"input '{name}': 'data' must be a list, got {type(data).__name__}")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise ProtocolError(400, f"input '{name}': 'data' is not a regular array of numbers ({e})") from e
    if arr.size != count:
        raise ProtocolError(400, f"input '{name}': 'data' has {arr.size} values but 'shape' needs {count}")
    if count == 0:
        return np.zeros(0, dtype=dtype)
    kind = arr.dtype.kind
    ok = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[dtype.kind]
    if kind not in ok:
        got = {
            "f": "floats" if dtype.kind == "b" else "floats (or integers past 64 bits)",
            "i": "integers",
            "u": "integers",
            "U": "strings",
            "O": "values of mixed types (or integers past 64 bits)",
            "b": "booleans",
        }.get(kind, str(arr.dtype))
        raise ProtocolError(400, f"input '{name}': 'data' holds {got}, not {_KIND_NAMES[dtype.kind]}")
    if dtype.kind in "iu" and kind in "iu":
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise ProtocolError(400, f"input '{name}': 'data' has values that do not fit in {dtype}")
    return arr.astype(dtype).reshape(-1)


def _from_binary(blob: memoryview, dtype: np.dtype[Any]) -> NDArray[Any]:
    """Little-endian raw data (BOOL: one byte per element, non-zero is true) as ``dtype``."""
    if dtype.kind == "b":
        flags: NDArray[Any] = np.frombuffer(blob, dtype=np.uint8) != 0
        return flags
    return np.frombuffer(blob, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)


def _decode_input(
    entry: Mapping[str, Any],
    spec: TensorSpec,
    binary: memoryview,
    offset: int,
    limits: Limits,
) -> tuple[NDArray[Any], int]:
    """Decode one input; return the array (request shape, model dtype) and the new binary offset."""
    name = spec.name
    want = datatype(spec.dtype)
    got = entry.get("datatype")
    if got != want:
        raise ProtocolError(400, f"input '{name}': datatype {got!r} does not match the model's {want}")
    dtype = np.dtype(spec.dtype)
    shape, count = _shape(name, entry.get("shape"), limits)
    if len(shape) != len(spec.shape):
        raise ProtocolError(
            400,
            f"input '{name}': shape {list(shape)} has rank {len(shape)}, the model expects "
            f"{shape_json(spec)} (rank {len(spec.shape)}, batch axis first)",
        )
    params = _object(entry.get("parameters", {}), f"input '{name}': 'parameters'")
    size = params.get("binary_data_size")
    if size is not None:
        if not _is_int(size) or size < 0:
            raise ProtocolError(400, f"input '{name}': 'binary_data_size' must be a non-negative integer")
        if "data" in entry:
            raise ProtocolError(400, f"input '{name}': give either 'data' or 'binary_data_size', not both")
        expected = count * dtype.itemsize
        if size != expected:
            raise ProtocolError(
                400,
                f"input '{name}': binary_data_size is {size} bytes but shape {list(shape)} of {want} "
                f"needs {expected}",
            )
        if offset + size > len(binary):
            raise ProtocolError(400, f"input '{name}': the body ends before its {size} bytes of binary data")
        flat = _from_binary(binary[offset : offset + size], dtype)
        offset += size
    elif "data" in entry:
        flat = _from_json_data(name, entry["data"], dtype, count)
    else:
        raise ProtocolError(400, f"input '{name}': no 'data' and no 'binary_data_size'")
    arr = flat.reshape(shape)
    if dtype.kind == "f" and not limits.allow_nonfinite and not np.isfinite(arr).all():
        raise ProtocolError(400, f"input '{name}': holds NaN or infinite values")
    return arr, offset


def _requested_outputs(
    request: Mapping[str, Any], outputs: Sequence[TensorSpec]
) -> tuple[tuple[str, ...], frozenset[str]]:
    params = _object(request.get("parameters", {}), "'parameters'")
    all_binary = params.get("binary_data_output", False)
    if not isinstance(all_binary, bool):
        raise ProtocolError(400, "'binary_data_output' must be true or false")
    known = [s.name for s in outputs]
    raw = request.get("outputs")
    if raw is None:
        return tuple(known), frozenset(known) if all_binary else frozenset()
    if not isinstance(raw, list):
        raise ProtocolError(400, "'outputs' must be a list")
    names: list[str] = []
    binary: set[str] = set()
    for entry in raw:
        entry = _object(entry, "each entry of 'outputs'")
        name = entry.get("name")
        if not isinstance(name, str) or name not in known:
            raise ProtocolError(
                400,
                f"unknown output {name!r}{did_you_mean(str(name), known)}; the model's outputs are: {', '.join(known)}",
            )
        if name in names:
            raise ProtocolError(400, f"output '{name}' is requested twice")
        out_params = _object(entry.get("parameters", {}), f"output '{name}': 'parameters'")
        if "classification" in out_params:
            raise ProtocolError(
                400, f"output '{name}': the classification extension is not supported; use the /predict route"
            )
        flag = out_params.get("binary_data", all_binary)
        if not isinstance(flag, bool):
            raise ProtocolError(400, f"output '{name}': 'binary_data' must be true or false")
        names.append(name)
        if flag:
            binary.add(name)
    return tuple(names), frozenset(binary)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """``(JSON bytes, binary tail)`` of a request body, per ``Inference-Header-Content-Length``."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 < n <= len(body):
        raise ProtocolError(
            400,
            f"Inference-Header-Content-Length {header_length!r} must be a positive integer no larger than "
            f"the body ({len(body)} bytes)",
        )
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def decode_infer_request(
    body: bytes,
    header_length: str | None,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    limits: Limits,
) -> InferRequest:
    """Decode and check an inference request against the model's inputs and outputs."""
    raw_json, binary = split_body(body, header_length)
    request = _object(_load_json(raw_json), "the request")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(400, "'id' must be a string")
    entries = request.get("inputs")
    if not isinstance(entries, list):
        raise ProtocolError(400, "the request needs 'inputs': a list of tensors")
    specs = {s.name: s for s in inputs}
    expects = ", ".join(f"'{s.name}' {shape_json(s)} {datatype(s.dtype)}" for s in inputs)
    arrays: dict[str, NDArray[Any]] = {}
    offset = 0
    for entry in entries:
        entry = _object(entry, "each entry of 'inputs'")
        name = entry.get("name")
        spec = specs.get(name) if isinstance(name, str) else None
        if spec is None:
            raise ProtocolError(
                400,
                f"unknown input {name!r}{did_you_mean(str(name), specs)}; the model's inputs are: {expects}",
            )
        if name in arrays:
            raise ProtocolError(400, f"input '{name}' is given twice")
        arrays[spec.name], offset = _decode_input(entry, spec, binary, offset, limits)
    missing = [n for n in specs if n not in arrays]
    if missing:
        raise ProtocolError(400, f"missing input '{missing[0]}'; the model's inputs are: {expects}")
    if offset != len(binary):
        raise ProtocolError(
            400, f"the body has {len(binary) - offset} bytes of binary data that no input claims"
        )
    names, binary_outputs = _requested_outputs(request, outputs)
    return InferRequest(request_id, arrays, names, binary_outputs)


# ----------------------------------------------------------------------------------------------
# encoding


def _json_data(name: str, arr: NDArray[Any]) -> list[Any]:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ProtocolError(
            500, f"output '{name}' holds NaN or infinite values, which JSON cannot carry; ask for binary data"
        )
    data: list[Any] = arr.reshape(-1).tolist()
    return data


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Mapping[str, NDArray[Any]],
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (binary outputs after the JSON, in output order)."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in request.outputs:
        arr = outputs[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype(arr.dtype.name), "shape": list(arr.shape)}
        if name in request.binary:
            blob = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(name, arr)
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = entries
    head = json.dumps(response, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return b"".join([head, *blobs]), headers


def error_body(message: str) -> bytes:
    """The protocol's error object."""
    return json.dumps({"error": message}).encode()
