"""specc serve's generate routes (Triton's generate extension) on 127.0.0.1: the answer is what
specc.runtime.generate gives, the stream (Server-Sent Events) adds up to it, bad requests are 4xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from lm_specs import one_thread
from servers import Server, export, serving

from specc.runtime.generate import Generator, Options


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve_generate")
    with one_thread():
        return {
            "gpt": export("gpt2_small.yaml", root / "gpt.onnx", "--scale", "tiny", "--kv-cache"),
            "mlp": export("mlp.yaml", root / "mlp.onnx"),
        }


@pytest.fixture(scope="module")
def server(models: dict[str, Path]) -> Iterator[Server]:
    with serving([str(models["gpt"]), str(models["mlp"])], "--threads", "1") as s:
        yield s


def _post(server: Server, path: str, body: object) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return server.request("POST", path, data, {"Content-Type": "application/json"}, timeout=60)


def _events(raw: bytes) -> list[dict[str, object]]:
    chunks = [c for c in raw.decode().split("\n\n") if c.strip()]
    assert all(c.startswith("data: ") for c in chunks), raw[:200]
    return [json.loads(c[len("data: ") :]) for c in chunks]


def test_generate_equals_the_runtime(server: Server, models: dict[str, Path]) -> None:
    gen = Generator(models["gpt"])
    for params in ({"max_tokens": 12}, {"max_tokens": 9, "temperature": 0.9, "top_k": 20, "seed": 4}):
        status, _, body = _post(
            server, "/v2/models/gpt/generate", {"text_input": "3 1 4 1 5", "parameters": params}
        )
        assert status == 200, body
        got = json.loads(body)
        want = gen.generate(
            "3 1 4 1 5",
            Options(max_new_tokens=params["max_tokens"], temperature=params.get("temperature", 0.0),
                    top_k=params.get("top_k"), seed=params.get("seed")),
        )  # fmt: skip
        assert got["text_output"] == want.text and got["ids"] == want.ids
        assert (got["model_name"], got["model_version"], got["stop_reason"]) == ("gpt", "1", "length")
    status, _, body = server.request("GET", "/v2/models/gpt")
    assert json.loads(body)["parameters"]["generation"] == "causal_lm"


def test_stream_adds_up_to_the_answer(server: Server) -> None:
    request = {"text_input": "2 7 1 8", "parameters": {"max_tokens": 10}}
    status, headers, raw = _post(server, "/v2/models/gpt/generate_stream", request)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = _events(raw)
    assert len(events) == 11  # one per token, then the final event
    final = events[-1]
    assert final["stop_reason"] == "length" and final["new_tokens"] == 10
    whole = json.loads(_post(server, "/v2/models/gpt/generate", request)[2])
    assert "".join(str(e["text_output"]) for e in events) == whole["text_output"]
    assert final["ids"] == whole["ids"]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v2/models/gpt/generate", b"{not json", 400, "the body is not JSON"),
        ("/v2/models/gpt/generate", {"prompt": "1"}, 400, "unknown field(s) prompt"),
        ("/v2/models/gpt/generate", {"text_input": 5}, 400, "'text_input' must be a string"),
        ("/v2/models/gpt/generate", {"text_input": "1", "parameters": {"top_p": 2, "temperature": 1}}, 400,
         "top_p must be in (0, 1], got 2.0"),
        ("/v2/models/gpt/generate", {"text_input": "1", "parameters": {"max_tokens": 0}}, 400,
         "parameter 'max_tokens' must be an integer 1..4096"),
        ("/v2/models/gpt/generate", {"text_input": "1", "parameters": {"temprature": 1}}, 400,
         "unknown parameter(s) temprature"),
        ("/v2/models/gpt/generate_stream", {"text_input": "one two"}, 400, "prompt must be token ids"),
        ("/v2/models/gpt/generate", {"text_input": "1 999"}, 400, "prompt token id 999 is outside"),
        ("/v2/models/gpt/generate_stream", {"text_input": "1 " * 32}, 400, "32 tokens; the model takes at most 32"),
        ("/v2/models/mlp/generate", {"text_input": "1"}, 400, "cannot generate: its metadata has no 'specc.generation'"),
        ("/v2/models/nope/generate", {"text_input": "1"}, 404, "unknown model 'nope'"),
    ],
)  # fmt: skip
def test_bad_requests(server: Server, path: str, body: object, status: int, words: str) -> None:
    got, _, raw = _post(server, path, body)
    assert got == status, raw
    assert words in json.loads(raw)["error"]


def test_server_still_answers(server: Server) -> None:
    assert server.request("GET", "/v2/health/ready")[0] == 200
    status, _, body = _post(
        server, "/v2/models/gpt/generate", {"text_input": "1", "parameters": {"max_tokens": 2}}
    )
    assert status == 200 and json.loads(body)["new_tokens"] == 2
