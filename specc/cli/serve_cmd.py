"""``specc serve``: exported models behind the open inference protocol (KServe v2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from specc.cli.app import app, log_to_stderr
from specc.errors import UsageError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@app.command()
def serve(
    models: Annotated[
        list[str], typer.Argument(help="M.onnx files, each optionally NAME=M.onnx", show_default=False)
    ],
    host: Annotated[
        str, typer.Option("--host", help="address to listen on (non-loopback: use --token-file)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port (0: any free port, printed at start)")] = 8000,
    max_batch: Annotated[
        int, typer.Option("--max-batch", help="rows merged into one onnxruntime call (1: no batching)")
    ] = 32,
    max_delay_ms: Annotated[
        float, typer.Option("--max-delay-ms", help="longest wait for a batch to fill (0: run what is queued)")
    ] = 0.0,
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="requests waiting per model before 503")
    ] = 256,
    max_body_mb: Annotated[
        float, typer.Option("--max-body-mb", help="largest request body (MiB), else 413")
    ] = 64.0,
    max_elements: Annotated[
        int, typer.Option("--max-elements", help="largest tensor of a request (elements), else 413")
    ] = 1 << 24,
    allow_nonfinite: Annotated[
        bool, typer.Option("--allow-nonfinite", help="accept NaN/inf in float inputs")
    ] = False,
    threads: Annotated[
        int | None, typer.Option("--threads", help="onnxruntime intra-op threads per model")
    ] = None,  # noqa: UP045
    providers: Annotated[
        list[str] | None,
        typer.Option(
            "--provider", help="onnxruntime execution provider, in order of preference (repeatable)"
        ),
    ] = None,  # noqa: UP045
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="require 'Authorization: Bearer <token>' (all routes but health)"),
    ] = None,  # noqa: UP045, E501
    graceful_timeout: Annotated[
        int, typer.Option("--graceful-timeout", help="seconds to finish in-flight requests on SIGTERM")
    ] = 30,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level")] = "info",
    access_log: Annotated[bool, typer.Option("--access-log", help="log every request")] = False,
) -> None:
    """Serve exported models over HTTP (KServe v2 / open inference protocol) with dynamic batching,
    Prometheus metrics at /metrics and a /v2/models/NAME/predict route for files. Runs until SIGTERM."""

    from specc.serve import Limits, ServeOptions, ServeSettings
    from specc.serve import serve as run
    from specc.serve.server import read_token

    log_to_stderr()
    if max_batch < 1 or max_queue < 1 or max_elements < 1:
        raise UsageError("--max-batch, --max-queue and --max-elements must be positive")
    if not 0 <= max_delay_ms <= 10_000:
        raise UsageError("--max-delay-ms must be between 0 and 10000")
    if not 0 < max_body_mb <= 4096:
        raise UsageError("--max-body-mb must be more than 0 and at most 4096")
    if threads is not None and threads < 0:
        raise UsageError("--threads must be 0 (onnxruntime's choice) or more")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0-65535, got {port}")
    if graceful_timeout < 0:
        raise UsageError("--graceful-timeout must be non-negative")
    if log_level not in LOG_LEVELS:
        raise UsageError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    settings = ServeSettings(
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        max_queue=max_queue,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        limits=Limits(max_elements=max_elements, allow_nonfinite=allow_nonfinite),
        token=read_token(token_file) if token_file is not None else None,
    )
    options = ServeOptions(
        host=host,
        port=port,
        settings=settings,
        threads=threads,
        providers=tuple(providers) if providers else None,
        graceful_timeout_s=graceful_timeout,
        log_level=log_level,
        access_log=access_log,
    )
    run(models, options)
