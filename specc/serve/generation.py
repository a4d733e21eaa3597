"""Generation routes of ``specc serve``, in the form of Triton's generate extension.

``POST /v2/models/{name}/generate`` takes ``{"text_input": "...", "parameters": {...}}`` and answers
``{"model_name", "model_version", "text_output", "ids", "stop_reason", "new_tokens"}``;
``POST /v2/models/{name}/generate_stream`` answers the same request with Server-Sent Events, one
``data: {"model_name", "model_version", "text_output": piece}`` per piece of text as it is
generated, then a last event with ``"stop_reason"`` and the ids (an error after the stream started
is an event with ``"error"``). Parameters: ``max_tokens`` (new tokens), ``temperature``, ``top_k``,
``top_p``, ``seed``, ``stop`` (a string or a list), ``beams`` — the options of ``specc generate``.

Generation runs on the model's inference thread (it never competes with a batch for the cores);
a stream whose client goes away stops at the next token.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from specc.errors import UsageError
from specc.runtime.generate import Generation, Generator, Options
from specc.serve.protocol import ProtocolError

MAX_TOKENS = 4096
PARAMETERS = ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "beams")


def _bad(message: str) -> ProtocolError:
    return ProtocolError(400, message)


def generator_for(model: Any) -> Generator | UsageError:
    """The model's generator, or why it cannot generate (kept for the 400 answer)."""
    try:
        return Generator(model)
    except UsageError as e:
        return e


def parse_request(body: bytes) -> tuple[str, Options]:
    """``text_input`` and the generation options of a request body (a bad one is a 400)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise _bad(f"the body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise _bad('the body must be a JSON object: {"text_input": "...", "parameters": {...}}')
    unknown = sorted(set(data) - {"text_input", "parameters", "id"})
    if unknown:
        raise _bad(f"unknown field(s) {', '.join(unknown)}; expected text_input and parameters")
    text = data.get("text_input")
    if not isinstance(text, str):
        raise _bad("'text_input' must be a string (the prompt)")
    params = data.get("parameters", {})
    if not isinstance(params, dict):
        raise _bad("'parameters' must be an object")
    bad = sorted(set(params) - set(PARAMETERS))
    if bad:
        raise _bad(f"unknown parameter(s) {', '.join(bad)}; known: {', '.join(PARAMETERS)}")
    stop = params.get("stop", [])
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("'stop' must be a string or a list of strings")
    options = Options(
        max_new_tokens=_int(params, "max_tokens", 1, MAX_TOKENS),
        temperature=_number(params, "temperature", 0.0),
        top_k=_int(params, "top_k", 1, None),
        top_p=_optional_number(params, "top_p"),
        seed=_int(params, "seed", 0, None),
        stop=tuple(stops),
        beams=_int(params, "beams", 1, None) or 1,
    )
    try:
        options.check()
    except UsageError as e:
        raise _bad(str(e)) from None
    return text, options


def _int(params: Mapping[str, Any], key: str, low: int, high: int | None) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise _bad(f"parameter '{key}' must be an integer {bounds}, got {value!r}")
    return value


def _optional_number(params: Mapping[str, Any], key: str) -> float | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _bad(f"parameter '{key}' must be a number, got {value!r}")
    return float(value)


def _number(params: Mapping[str, Any], key: str, default: float) -> float:
    value = _optional_number(params, key)
    return default if value is None else value


def _final(name: str, version: str, result: Generation) -> dict[str, Any]:
    return {
        "model_name": name,
        "model_version": version,
        "text_output": result.text,
        "ids": result.ids,
        "stop_reason": result.stop_reason,
        "new_tokens": len(result.ids),
    }


async def generate(gen: Generator, name: str, version: str, body: bytes, executor: Any) -> Response:
    """The whole generation in one JSON answer."""
    prompt, options = parse_request(body)
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(executor, gen.generate, prompt, options)
    return JSONResponse(_final(name, version, result))


async def generate_stream(gen: Generator, name: str, version: str, body: bytes, executor: Any) -> Response:
    """Server-Sent Events, one per piece of text (see the module notes)."""
    prompt, options = parse_request(body)
    stream = gen.stream(prompt, options)  # prompt errors are a 400 here, before any event
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    cancel = threading.Event()

    def put(item: dict[str, Any] | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def run() -> None:
        try:
            for piece in stream:
                if cancel.is_set():
                    return
                put({"model_name": name, "model_version": version, "text_output": piece})
            assert stream.result is not None
            put({**_final(name, version, stream.result), "text_output": ""})
        except UsageError as e:
            put({"model_name": name, "model_version": version, "error": str(e)})
        finally:
            put(None)

    async def events() -> AsyncIterator[bytes]:
        job = loop.run_in_executor(executor, run)
        try:
            while (item := await queue.get()) is not None:
                yield f"data: {json.dumps(item)}\n\n".encode()
        finally:
            cancel.set()  # the client went away (or the stream ended): stop at the next token
            await job

    return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})
