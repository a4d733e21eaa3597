"""`specc serve` end to end: the official Triton client, the protocol's routes, batching, limits,
authentication, the predict route, metrics, a bounded fuzz of request bodies, and shutdown under load.

Models come from the real export path (a short LeNet training run on digits, BERT at scale tiny);
every server is a `specc serve` subprocess on 127.0.0.1 with a free port, stopped by its test.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from servers import HOST, Server, export, infer_body, read_outputs, serving, start, train_lenet
from tritonclient.utils import InferenceServerException

import specc
from specc.runtime import Model, load

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    run = train_lenet(root / "run")
    return {
        "lenet": export("lenet.yaml", root / "lenet.onnx", "-w", str(run)),
        "bert": export("bert_base.yaml", root / "bert.onnx", "--scale", "tiny"),
    }


@pytest.fixture(scope="module")
def server(models: dict[str, Path]) -> Iterator[Server]:
    with serving(
        [str(models["lenet"]), f"enc={models['bert']}"],
        "--max-delay-ms", "30", "--max-body-mb", "1", "--max-elements", "200000",
    ) as s:  # fmt: skip
        yield s


@pytest.fixture(scope="module")
def runtime(models: dict[str, Path]) -> dict[str, Model]:
    return {"lenet": load(models["lenet"]), "enc": load(models["bert"])}


def close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def tokens(rng: np.random.Generator, batch: int, seq: int) -> dict[str, np.ndarray]:
    return {
        "tokens": rng.integers(1, 64, size=(batch, seq), dtype=np.int64),
        "token_types": rng.integers(0, 2, size=(batch, seq), dtype=np.int64),
        "attention_mask": rng.random((batch, seq)) < 0.8,
    }


def triton_input(name: str, arr: np.ndarray, binary: bool) -> triton.InferInput:
    from tritonclient.utils import np_to_triton_dtype

    entry = triton.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
    entry.set_data_from_numpy(arr, binary_data=binary)
    return entry


# ------------------------------------------------------------------------------------------------
# the official client


def test_tritonclient_health_and_metadata(server: Server, runtime: dict[str, Model]) -> None:
    client = triton.InferenceServerClient(server.address)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("lenet") and client.is_model_ready("enc", "1")
        assert not client.is_model_ready("lenet", "2") and not client.is_model_ready("nope")
        meta = client.get_server_metadata()
        assert meta["name"] == "specc" and "binary_tensor_data" in meta["extensions"]
        lenet = client.get_model_metadata("lenet")
        assert lenet["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
        assert lenet["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
        params = lenet["parameters"]
        assert params["labels"] == runtime["lenet"].labels == [str(i) for i in range(10)]
        assert params["preprocess"] == runtime["lenet"].preprocess and params["preprocess"]["kind"] == "image"
        assert params["task"] == "classification" and params["spec_name"] == "lenet"
        info = runtime["lenet"].info  # the typed ONNX metadata contract, one reader for runtime and serve
        assert params["spec_hash"] == info.spec_hash and len(params["spec_hash"]) == 64
        assert params["specc_version"] == info.version == specc.__version__ and "variant" not in params
        enc = client.get_model_metadata("enc", "1")
        assert [(i["name"], i["datatype"], i["shape"]) for i in enc["inputs"]] == [
            ("tokens", "INT64", [-1, -1]),
            ("token_types", "INT64", [-1, -1]),
            ("attention_mask", "BOOL", [-1, -1]),
        ]
        with pytest.raises(InferenceServerException, match="unknown model 'lenett'.*did you mean 'lenet'"):
            client.get_model_metadata("lenett")
    finally:
        client.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_equals_runtime(server: Server, runtime: dict[str, Model], binary: bool) -> None:
    rng = np.random.default_rng(int(binary))
    client = triton.InferenceServerClient(server.address)
    try:
        x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
        outputs = None if binary else [triton.InferRequestedOutput("logits", binary_data=False)]
        result = client.infer("lenet", [triton_input("image", x, binary)], outputs=outputs, request_id="r1")
        response = result.get_response()
        assert response["id"] == "r1" and response["model_name"] == "lenet"
        assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) == binary
        close(result.as_numpy("logits"), runtime["lenet"](image=x)["logits"])

        feeds = tokens(rng, 2, 7)
        result = client.infer(
            "enc", [triton_input(k, v, binary) for k, v in feeds.items()], model_version="1"
        )
        want = runtime["enc"](**feeds)
        for name in ("sequence", "pooled"):
            close(result.as_numpy(name), want[name])
    finally:
        client.close()


def test_tritonclient_bad_requests_are_4xx(server: Server) -> None:
    client = triton.InferenceServerClient(server.address)
    try:
        x = np.zeros((1, 1, 28, 27), np.float32)
        with pytest.raises(
            InferenceServerException, match=r"\[400\] input 'image'.*axis 3 must be 28, is 27"
        ):
            client.infer("lenet", [triton_input("image", x, True)])
        with pytest.raises(InferenceServerException, match=r"\[400\] input 'image': datatype 'FP64'"):
            client.infer("lenet", [triton_input("image", x.astype(np.float64), True)])
        with pytest.raises(InferenceServerException, match=r"\[400\] unknown input 'img'"):
            client.infer("lenet", [triton_input("img", x, True)])
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------
# batching


def _post(server: Server, model: str, inputs: dict[str, np.ndarray]) -> tuple[int, Any]:
    body, headers = infer_body(inputs)
    status, rh, data = server.request("POST", f"/v2/models/{model}/infer", body, headers)
    return status, (read_outputs(rh, data) if status == 200 else json.loads(data)["error"])


def _metric(server: Server, name: str, model: str) -> float:
    text = server.request("GET", "/metrics")[2].decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_concurrent_requests_are_merged_and_split_back(server: Server, runtime: dict[str, Model]) -> None:
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((int(rng.integers(1, 4)), 1, 28, 28)).astype(np.float32) for _ in range(16)]
    calls_before = _metric(server, "specc_batch_requests_count", "lenet")
    merged_before = _metric(server, "specc_batch_requests_sum", "lenet")
    barrier = threading.Barrier(len(xs))

    def post(x: np.ndarray) -> tuple[int, Any]:
        barrier.wait(timeout=30)  # all at once, so that they meet in the queue
        return _post(server, "lenet", {"image": x})

    with ThreadPoolExecutor(len(xs)) as pool:
        results = list(pool.map(post, xs))
    for x, (status, out) in zip(xs, results, strict=True):
        assert status == 200, out
        close(out["logits"], runtime["lenet"](image=x)["logits"])
    calls = _metric(server, "specc_batch_requests_count", "lenet") - calls_before
    merged = _metric(server, "specc_batch_requests_sum", "lenet") - merged_before
    assert merged == 16 and calls < 16  # fewer onnxruntime calls than requests


def test_batches_group_shapes_and_isolate_a_failing_request(
    server: Server, runtime: dict[str, Model]
) -> None:
    rng = np.random.default_rng(3)
    requests = [tokens(rng, 1, int(rng.choice([5, 9]))) for _ in range(10)]
    requests[4]["tokens"][0, 0] = 1000  # past the embedding (64 rows): onnxruntime fails on this one only
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda f: _post(server, "enc", f), requests))
    for i, (feeds, (status, out)) in enumerate(zip(requests, results, strict=True)):
        if i == 4:
            assert status == 400 and "onnxruntime failed" in out
            continue
        assert status == 200, out
        want = runtime["enc"](**feeds)
        close(out["sequence"], want["sequence"])
        close(out["pooled"], want["pooled"])


# ------------------------------------------------------------------------------------------------
# bad requests and limits

GOOD = {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}


def _json(**changes: Any) -> bytes:
    return json.dumps({"inputs": [{**GOOD, **changes}]}).encode()


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b'{"inputs": [', {}, 400, "malformed JSON"),
        (b"[1, 2]", {}, 400, "the request must be a JSON object"),
        (
            b'{"inputs": [{"name": "image", "shape": [1,1,28,28], "datatype": "FP32", "data": [NaN]}]}',
            {},
            400,
            "NaN is not a JSON number",
        ),
        (
            _json(data=[7.0] * 784).replace(b"7.0", b"1e400"),
            {},
            400,
            "input 'image': holds NaN or infinite values",
        ),
        (_json(shape=[1, 1, 28]), {}, 400, "input 'image': shape [1, 1, 28] has rank 3"),
        (_json(shape=[2, 1, 28, 28]), {}, 400, "input 'image': 'data' has 784 values but 'shape' needs 1568"),
        (_json(datatype="INT64"), {}, 400, "input 'image': datatype 'INT64' does not match the model's FP32"),
        (_json(data=["a"] * 784), {}, 400, "input 'image': 'data' holds strings"),
        (
            _json(shape=[1000, 1, 28, 28]),
            {},
            413,
            "input 'image': shape [1000, 1, 28, 28] has more than 200000 elements",
        ),
        (_json(name="picture"), {}, 400, "unknown input 'picture'"),
        (
            _json(data=None, parameters={"binary_data_size": 3136}),
            {"Inference-Header-Content-Length": "10"},
            400,
            "malformed JSON",
        ),
        (b"x" * (1024 * 1024 + 1), {}, 413, "the server's limit is 1048576"),
        (_json(), {"Content-Encoding": "gzip"}, 415, "Content-Encoding 'gzip' is not supported"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_requests(
    server: Server, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    got, _, data = server.request("POST", "/v2/models/lenet/infer", body, headers)
    assert got == status
    assert message in json.loads(data)["error"]


def test_binary_size_checked_before_decoding(server: Server) -> None:
    head = json.dumps({"inputs": [{**GOOD, "data": None, "parameters": {"binary_data_size": 3136}}]})
    head = head.replace(', "data": null', "")
    for tail, message in [
        (b"\0" * 3000, "the body ends before its 3136 bytes"),
        (b"\0" * 3140, "4 bytes of binary data that no input claims"),
    ]:
        body = head.encode() + tail
        status, _, data = server.request(
            "POST", "/v2/models/lenet/infer", body, {"Inference-Header-Content-Length": str(len(head))}
        )
        assert status == 400 and message in json.loads(data)["error"]


def test_unknown_provider_is_refused_before_listening(models: dict[str, Path]) -> None:
    result = run_cli("serve", str(models["lenet"]), "--port", "0", "--provider", "NopeExecutionProvider")
    assert result.code == 2 and "execution provider 'NopeExecutionProvider' is not available" in result.err
    assert "listening" not in result.out


def test_unknown_routes_and_models(server: Server) -> None:
    status, _, data = server.request("GET", "/v2/models/nope/ready")
    assert status == 404 and "unknown model 'nope'" in json.loads(data)["error"]
    status, _, data = server.request("GET", "/v3")
    assert status == 404 and "error" in json.loads(data)
    assert server.request("GET", "/v2/models/lenet/infer")[0] == 405


# ------------------------------------------------------------------------------------------------
# predict route and metrics


def test_predict_route_matches_specc_predict(
    server: Server, runtime: dict[str, Model], tmp_path: Path
) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path / "digit.png"
    Image.fromarray((digits.images[5] * 16).astype(np.uint8)).save(path)
    status, _, data = server.request(
        "POST", "/v2/models/lenet/predict?top_k=3", path.read_bytes(), {"Content-Type": "image/png"}
    )
    assert status == 200
    got = json.loads(data)
    want = runtime["lenet"].predict_file(path, top_k=3)
    assert [r["label"] for r in got["top_k"][0]] == [r["label"] for r in want["top_k"][0]]
    close(np.asarray(got["outputs"]["logits"]), np.asarray(want["outputs"]["logits"]))

    for body, ctype, code, message in [
        (b"7", "text/plain", 400, "no text preprocessing"),
        (b"\x89PNG broken", "image/png", 400, "cannot read image"),
        (b"{}", "application/json", 415, "Content-Type 'application/json' is not supported"),
    ]:
        status, _, data = server.request("POST", "/v2/models/lenet/predict", body, {"Content-Type": ctype})
        assert status == code and message in json.loads(data)["error"], data
    status, _, data = server.request(
        "POST", "/v2/models/lenet/predict?top_k=0", b"", {"Content-Type": "image/png"}
    )
    assert status == 400 and "top_k" in json.loads(data)["error"]


def test_metrics(server: Server) -> None:
    assert _post(server, "lenet", {"image": np.zeros((1, 1, 28, 28), np.float32)})[0] == 200
    assert _post(server, "enc", tokens(np.random.default_rng(0), 1, 4))[0] == 200
    status, headers, data = server.request("GET", "/metrics")
    text = data.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'specc_requests_total{model="lenet",route="infer",status="200"}' in text
    assert 'specc_request_duration_seconds_bucket{le="0.005",model="lenet",route="infer"}' in text
    assert 'specc_batch_size_bucket{le="1.0",model="lenet"}' in text
    assert 'specc_queue_depth{model="lenet"} 0.0' in text
    assert 'specc_inference_duration_seconds_count{model="enc"}' in text


# ------------------------------------------------------------------------------------------------
# fuzz: the server answers every body with a response (never a 5xx) and stays up

_DATATYPES = st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES", "fp32", ""])
_JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=5)
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=12,
)
_INPUT = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["image", "imag", "", "tokens"]) | _JSON,
        "shape": st.lists(st.integers(-2, 40), max_size=5) | st.just([1, 1, 28, 28]) | _JSON,
        "datatype": _DATATYPES | _JSON,
        "data": st.lists(st.floats(width=32, allow_nan=False), max_size=30) | st.just([0.5] * 784) | _JSON,
        "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-5, 4000) | _JSON}) | _JSON,
    },
)
_REQUEST = st.fixed_dictionaries(
    {"inputs": st.lists(_INPUT, max_size=3) | _JSON},
    optional={"outputs": _JSON, "parameters": _JSON, "id": _JSON},
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request=_REQUEST | _JSON,
    tail=st.binary(max_size=64),
    header=st.none() | st.integers(-3, 400).map(str) | st.text(alphabet="0123456789 -x+", max_size=4),
)
def test_fuzzed_bodies_never_break_the_server(
    server: Server, request: Any, tail: bytes, header: str | None
) -> None:
    body = json.dumps(request).encode() + tail
    headers = {} if header is None else {"Inference-Header-Content-Length": header}
    status, rh, data = server.request("POST", "/v2/models/lenet/infer", body, headers, timeout=10)
    assert status in (200, 400, 413), data
    if status != 200:
        assert json.loads(data)["error"]


def test_server_survives_the_fuzz(server: Server) -> None:
    assert server.request("GET", "/v2/health/ready")[0] == 200


# ------------------------------------------------------------------------------------------------
# token, queue limit


def test_bearer_token_and_full_queue(models: dict[str, Path], tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with serving(
        [str(models["lenet"])], "--token-file", str(token), "--max-queue", "2", "--max-delay-ms", "3000"
    ) as s:  # fmt: skip
        assert s.request("GET", "/v2/health/ready")[0] == 200
        assert s.request("GET", "/v2/health/live")[0] == 200
        for path in ("/v2", "/v2/models/lenet", "/metrics"):
            status, headers, data = s.request("GET", path)
            assert status == 401 and headers["www-authenticate"] == "Bearer"
            assert "missing bearer token" in json.loads(data)["error"]
        assert s.request("GET", "/v2", headers={"Authorization": "Bearer s3cret-tokeN"})[0] == 401
        good = {"Authorization": "Bearer s3cret-token"}
        client = triton.InferenceServerClient(s.address)
        try:
            assert client.get_model_metadata("lenet", headers=good)["name"] == "lenet"
            with pytest.raises(InferenceServerException, match=r"\[401\]"):
                client.get_model_metadata("lenet")
        finally:
            client.close()
        # two requests wait for their batch (delay 3 s, batch of 32 not reached): a third gets 503 at once
        body, headers = infer_body({"image": np.zeros((1, 1, 28, 28), np.float32)})
        headers = {**headers, **good}
        with ThreadPoolExecutor(2) as pool:
            waiting = [
                pool.submit(s.request, "POST", "/v2/models/lenet/infer", body, headers) for _ in range(2)
            ]
            deadline = time.monotonic() + 10
            while (
                'specc_queue_depth{model="lenet"} 2.0'
                not in s.request("GET", "/metrics", headers=good)[2].decode()
            ):
                assert time.monotonic() < deadline, "the two requests never queued"
                time.sleep(0.02)
            start_ = time.monotonic()
            status, rh, data = s.request("POST", "/v2/models/lenet/infer", body, headers)
            assert status == 503 and time.monotonic() - start_ < 2.0
            assert "queue of model 'lenet' is full (2 requests waiting)" in json.loads(data)["error"]
            assert rh["retry-after"] == "1"
            assert [f.result()[0] for f in waiting] == [200, 200]


# ------------------------------------------------------------------------------------------------
# shutdown under load: every request gets a correct answer or a connection error


def _client(port: int, seed: int, count: int, records: list[tuple[str, Any]], lock: threading.Lock) -> None:
    """Up to ``count`` requests on one keep-alive connection; stops at the first connection error."""
    rng = np.random.default_rng(seed)
    conn = http.client.HTTPConnection(HOST, port, timeout=20)
    try:
        for _ in range(count):
            x = rng.standard_normal((1, 1, 28, 28)).astype(np.float32)
            body, headers = infer_body({"image": x})
            try:
                conn.request("POST", "/v2/models/lenet/infer", body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except TimeoutError:
                with lock:
                    records.append(("timeout", None))
                return
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                with lock:
                    records.append(("connection error", type(e).__name__))
                return
            hdrs = {k.lower(): v for k, v in response.getheaders()}
            with lock:
                records.append(("response", (time.monotonic(), response.status, x, hdrs, data)))
    finally:
        conn.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_under_load_answers_correctly_or_not_at_all(
    models: dict[str, Path], runtime: dict[str, Model], sig: int
) -> None:
    server = start([str(models["lenet"])], "--max-delay-ms", "150", "--max-batch", "4")
    records: list[tuple[str, Any]] = []
    lock = threading.Lock()
    threads = [
        threading.Thread(target=_client, args=(server.port, seed, 60, records, lock), daemon=True)
        for seed in range(6)
    ]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until the load is running
            with lock:
                if sum(kind == "response" for kind, _ in records) >= 12:
                    break
            time.sleep(0.01)
        server.proc.send_signal(sig)
        signalled_at = time.monotonic()
        code = server.stop(sig)
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
    finally:
        server.stop(signal.SIGKILL)
    assert code == -sig or (sig == signal.SIGTERM and code == 0)
    kinds = [kind for kind, _ in records]
    assert "timeout" not in kinds
    responses = [r for kind, r in records if kind == "response"]
    assert len(responses) >= 12
    for _, status, x, hdrs, data in responses:
        assert status == 200, data
        close(read_outputs(hdrs, data)["logits"], runtime["lenet"](image=x)["logits"])
    assert kinds.count("connection error") == len(threads)  # every client ends on a closed connection
    if sig == signal.SIGTERM:  # requests waiting in the batcher when the signal came were answered
        assert any(r[0] > signalled_at for r in responses), "no request in flight at SIGTERM got its response"
