"""The ASGI application of ``specc serve`` (Starlette): routes of the open inference protocol.

Routes (``{v}`` is the served version, ``1``; the versioned forms are accepted wherever the
protocol has them):

============================================  ==================================================
``GET  /v2/health/live``, ``/v2/health/ready``  200 when alive / ready (400 while starting or draining)
``GET  /v2``                                    server metadata (name, version, extensions)
``GET  /v2/models/{name}[/versions/{v}]``       model metadata: inputs, outputs, and ``parameters``
                                                with labels, preprocessing, task, spec name/hash
``GET  /v2/models/{name}[/versions/{v}]/ready`` 200 when the model is ready
``POST /v2/models/{name}[/versions/{v}]/infer`` inference: JSON tensors or binary tensor data
``POST /v2/models/{name}/predict``              a file (image, text, CSV, .npy) -> labels, with the
                                                preprocessing of ``specc predict``
``POST /v2/models/{name}/generate``             language models: text in, text out (Triton's
``POST /v2/models/{name}/generate_stream``      generate extension; the stream is Server-Sent
                                                Events), see :mod:`specc.serve.generation`
``GET  /metrics``                               Prometheus metrics
============================================  ==================================================

Errors are the protocol's ``{"error": message}`` with a 4xx status for a bad request (400; 401
without the token; 404 unknown model; 413 over a size limit; 415 unsupported content) and 503 when
a model's queue is full or the server is draining. No request can crash the server: anything
unexpected is a 500 for that request alone.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from specc import __version__
from specc.errors import ModelError, UsageError, did_you_mean
from specc.runtime import Model
from specc.runtime.generate import Generator
from specc.serve import generation
from specc.serve.batching import Batcher, QueueFull
from specc.serve.generation import generator_for
from specc.serve.metrics import Metrics
from specc.serve.protocol import (
    HEADER_LENGTH,
    Limits,
    ProtocolError,
    datatype,
    decode_infer_request,
    encode_infer_response,
    error_body,
    shape_json,
)

log = logging.getLogger(__name__)

SERVER_NAME = "specc"
MODEL_VERSION = "1"
EXTENSIONS = ("binary_tensor_data",)
HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})

# Content-Type of a /predict body -> the file suffix the runtime reads it as
PREDICT_TYPES: dict[str, str] = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/bmp": ".bmp",
    "text/plain": ".txt",
    "text/csv": ".csv",
    "application/x-npy": ".npy",
}
MAX_TOP_K = 1000


@dataclass(frozen=True)
class ServeSettings:
    """How the application batches, limits and authenticates (the CLI's options)."""

    max_batch: int = 32
    max_delay_ms: float = 0.0
    max_queue: int = 256
    max_body_bytes: int = 64 * 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    token: str | None = None


@dataclass
class ServedModel:
    """One model the server serves: its runtime model and its batcher."""

    name: str
    model: Model
    batcher: Batcher
    generator: Generator | UsageError = field(init=False)

    def __post_init__(self) -> None:
        self.generator = generator_for(self.model)

    def metadata(self) -> dict[str, Any]:
        """The protocol's model metadata, with specc's metadata under ``parameters``."""
        m = self.model
        info = m.info  # the typed specc metadata (specc.contracts.onnx_metadata), validated at load
        parameters = {
            "labels": m.labels,
            "preprocess": m.preprocess,
            "task": info.task,
            "spec_name": info.spec_name,
            "spec_hash": info.spec_hash,
            "specc_version": info.version,
            "variant": info.variant,
            "max_batch_size": self.batcher.max_batch,
            "generation": None if isinstance(self.generator, UsageError) else self.generator.info.kind,
        }
        return {
            "name": self.name,
            "versions": [MODEL_VERSION],
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": s.name, "datatype": datatype(s.dtype), "shape": shape_json(s)} for s in m.inputs
            ],
            "outputs": [
                {"name": s.name, "datatype": datatype(s.dtype), "shape": shape_json(s)} for s in m.outputs
            ],
            "parameters": {k: v for k, v in parameters.items() if v is not None},
        }


def batchable(model: Model) -> bool:
    """Whether requests can be merged: every input and output has the same symbolic first (batch)
    axis, so that rows can be stacked and split back."""
    firsts = {t.shape[0] if t.shape else None for t in (*model.inputs, *model.outputs)}
    return len(firsts) == 1 and isinstance(next(iter(firsts)), str)


class State:
    """What the routes share: the models, the settings, the metrics and the readiness flags."""

    def __init__(self, models: Sequence[ServedModel], settings: ServeSettings, metrics: Metrics) -> None:
        self.models = {m.name: m for m in models}
        self.settings = settings
        self.metrics = metrics
        self.ready = False
        self.draining = False

    def lookup(self, name: str, version: str | None = None) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            known = ", ".join(self.models)
            raise ProtocolError(
                404, f"unknown model '{name}'{did_you_mean(name, self.models)}; served: {known}"
            )
        if version is not None and version != MODEL_VERSION:
            raise ProtocolError(404, f"model '{name}' has no version '{version}'; served: {MODEL_VERSION}")
        return served


# ----------------------------------------------------------------------------------------------
# helpers


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(error_body(message), status_code=status, media_type="application/json", headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (before reading, when the length is given)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ProtocolError(
            415, f"Content-Encoding '{encoding}' is not supported; send the body uncompressed"
        )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ProtocolError(400, f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise ProtocolError(413, f"the body has {declared} bytes; the server's limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(413, f"the body has more than {limit} bytes (the server's limit)")
        chunks.append(chunk)
    return b"".join(chunks)


Handler = Callable[[Request, State], Awaitable[Response]]


def endpoint(route: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: errors become protocol error responses, every request is counted and timed."""

    async def wrapped(request: Request) -> Response:
        state: State = request.app.state.specc
        start = time.perf_counter()
        name = request.path_params.get("name", "")
        try:
            response = await handler(request, state)
        except ProtocolError as e:
            response = _error(e.status, e.message)
        except (UsageError, ModelError) as e:  # the runtime's input checks name the input; what
            response = _error(400, str(e))  # slips past them (an index out of range) fails in onnxruntime
        except QueueFull as e:
            response = _error(503, str(e), {"retry-after": "1"})
        except ClientDisconnect:  # nobody is left to answer; counted, not logged
            response = _error(499, "the client closed the connection before sending the whole body")
        except Exception:  # noqa: BLE001 - one request fails, never the server
            log.exception("internal error on %s %s", request.method, request.url.path)
            response = _error(500, "internal server error (see the server's log)")
        model = name if name in state.models else ""
        state.metrics.requests.labels(model, route, str(response.status_code)).inc()
        state.metrics.latency.labels(model, route).observe(time.perf_counter() - start)
        return response

    return wrapped


# ----------------------------------------------------------------------------------------------
# routes


async def live(request: Request, state: State) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request, state: State) -> Response:
    ok = state.ready and not state.draining
    return JSONResponse({"ready": ok}, status_code=200 if ok else 400)


async def server_metadata(request: Request, state: State) -> Response:
    return JSONResponse({"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)})


def _served(request: Request, state: State) -> ServedModel:
    return state.lookup(request.path_params["name"], request.path_params.get("version"))


async def model_metadata(request: Request, state: State) -> Response:
    return JSONResponse(_served(request, state).metadata())


async def model_ready(request: Request, state: State) -> Response:
    _served(request, state)
    ok = state.ready and not state.draining
    return JSONResponse({"name": request.path_params["name"], "ready": ok}, status_code=200 if ok else 400)


async def infer(request: Request, state: State) -> Response:
    served = _served(request, state)
    body = await read_body(request, state.settings.max_body_bytes)
    model = served.model
    decoded = decode_infer_request(
        body, request.headers.get(HEADER_LENGTH), model.inputs, model.outputs, state.settings.limits
    )
    feeds = model.prepare(**decoded.inputs)
    first = next(iter(feeds))
    if feeds[first].shape[0] == 0:
        raise ProtocolError(400, f"input '{first}': the batch axis has size 0")
    outputs = await served.batcher.submit(feeds)
    content, headers = encode_infer_response(served.name, MODEL_VERSION, decoded, outputs)
    return Response(content, headers=headers)


def _predict_file(model: Model, body: bytes, suffix: str, top_k: int) -> dict[str, Any]:
    """Run the runtime's own file prediction (the preprocessing of ``specc predict``) on ``body``."""
    with tempfile.TemporaryDirectory(prefix="specc-serve-") as folder:
        path = Path(folder) / f"input{suffix}"
        path.write_bytes(body)
        return model.predict_file(path, top_k=top_k)


async def predict(request: Request, state: State) -> Response:
    served = _served(request, state)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    suffix = PREDICT_TYPES.get(content_type)
    if suffix is None:
        raise ProtocolError(
            415,
            f"Content-Type {content_type or '(none)'!r} is not supported; send one of: {', '.join(PREDICT_TYPES)}",
        )
    raw_k = request.query_params.get("top_k", "5")
    if not raw_k.isdigit() or not 1 <= int(raw_k) <= MAX_TOP_K:
        raise ProtocolError(400, f"top_k must be an integer from 1 to {MAX_TOP_K}, got {raw_k!r}")
    body = await read_body(request, state.settings.max_body_bytes)
    loop = asyncio.get_running_loop()
    # on the model's inference thread, so it never competes with a batch for the cores
    result = await loop.run_in_executor(
        served.batcher.executor, _predict_file, served.model, body, suffix, int(raw_k)
    )
    return JSONResponse(result)


async def _generation(request: Request, state: State, stream: bool) -> Response:
    served = _served(request, state)
    gen = served.generator
    if isinstance(gen, UsageError):
        raise ProtocolError(400, f"model '{served.name}': {gen}")
    body = await read_body(request, state.settings.max_body_bytes)
    run = generation.generate_stream if stream else generation.generate
    return await run(gen, served.name, MODEL_VERSION, body, served.batcher.executor)


async def generate(request: Request, state: State) -> Response:
    return await _generation(request, state, stream=False)


async def generate_stream(request: Request, state: State) -> Response:
    return await _generation(request, state, stream=True)


async def metrics(request: Request, state: State) -> Response:
    text, content_type = state.metrics.render()
    return Response(text, headers={"content-type": content_type})


# ----------------------------------------------------------------------------------------------
# authentication


class BearerAuth:
    """Pure ASGI middleware: every route but health needs ``Authorization: Bearer <token>``.

    The comparison is constant-time (:func:`hmac.compare_digest`) on the whole header value.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in HEALTH_PATHS:
            await self.app(scope, receive, send)
            return
        given = b""
        for key, value in scope["headers"]:
            if key == b"authorization":
                given = value
                break
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        why = "missing" if not given else "wrong"
        response = _error(
            401, f"{why} bearer token: send 'Authorization: Bearer <token>'", {"www-authenticate": "Bearer"}
        )
        await response(scope, receive, send)


# ----------------------------------------------------------------------------------------------
# application


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")


def create_app(models: Sequence[tuple[str, Model]], settings: ServeSettings) -> tuple[ASGIApp, State]:
    """The application serving ``models`` (name, loaded runtime model), behind the bearer-token
    check when ``settings.token`` is set, and its shared state (``draining`` turns readiness off)."""
    metrics_ = Metrics()
    served = [
        ServedModel(
            name,
            model,
            Batcher(
                name,
                _runner(model),
                max_batch=settings.max_batch if batchable(model) else 1,
                max_delay_s=settings.max_delay_ms / 1000.0,
                max_queue=settings.max_queue,
                metrics=metrics_,
            ),
        )
        for name, model in models
    ]
    state = State(served, settings, metrics_)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for m in served:
            m.batcher.start()
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            state.draining = True
            for m in served:  # finish whatever is still queued
                await m.batcher.stop()

    v = "/versions/{version}"
    routes = [
        Route("/v2/health/live", endpoint("live", live)),
        Route("/v2/health/ready", endpoint("ready", ready)),
        Route("/v2", endpoint("server_metadata", server_metadata)),
        Route("/v2/models/{name}", endpoint("model_metadata", model_metadata)),
        Route("/v2/models/{name}" + v, endpoint("model_metadata", model_metadata)),
        Route("/v2/models/{name}/ready", endpoint("model_ready", model_ready)),
        Route("/v2/models/{name}" + v + "/ready", endpoint("model_ready", model_ready)),
        Route("/v2/models/{name}/infer", endpoint("infer", infer), methods=["POST"]),
        Route("/v2/models/{name}" + v + "/infer", endpoint("infer", infer), methods=["POST"]),
        Route("/v2/models/{name}/predict", endpoint("predict", predict), methods=["POST"]),
        Route("/v2/models/{name}/generate", endpoint("generate", generate), methods=["POST"]),
        Route("/v2/models/{name}" + v + "/generate", endpoint("generate", generate), methods=["POST"]),
        Route(
            "/v2/models/{name}/generate_stream",
            endpoint("generate_stream", generate_stream),
            methods=["POST"],
        ),
        Route(
            "/v2/models/{name}" + v + "/generate_stream",
            endpoint("generate_stream", generate_stream),
            methods=["POST"],
        ),
        Route("/metrics", endpoint("metrics", metrics)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.specc = state
    return (app if settings.token is None else BearerAuth(app, settings.token)), state


def _runner(model: Model) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def run(feeds: dict[str, Any]) -> dict[str, Any]:
        return model(**feeds)

    return run
