"""``specc serve``: load models, bind a socket, run the application under uvicorn.

Shutdown on SIGTERM or Ctrl-C is uvicorn's graceful one: the listening socket closes at once,
readiness turns false, requests already received run to completion and get their response (up to
``graceful_timeout_s``), idle keep-alive connections are closed, then the batchers drain and stop.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import uvicorn

from specc.errors import LoadError, UsageError
from specc.load.yaml_loader import read_capped
from specc.runtime import Model, load
from specc.serve.app import ServeSettings, State, create_app

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 4096
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ServeOptions:
    """Where and how ``specc serve`` listens (the rest is :class:`ServeSettings`)."""

    host: str = "127.0.0.1"
    port: int = 8000
    settings: ServeSettings = field(default_factory=ServeSettings)
    threads: int | None = None
    providers: tuple[str, ...] | None = None
    graceful_timeout_s: int = 30
    log_level: str = "info"
    access_log: bool = False


def parse_model_args(args: Sequence[str]) -> list[tuple[str, Path]]:
    """``NAME=PATH`` or ``PATH`` (named after the file: ``lenet.onnx`` -> ``lenet``); names unique."""
    entries: list[tuple[str, Path]] = []
    for arg in args:
        name, sep, path = arg.partition("=")
        if not sep:
            name, path = Path(arg).stem, arg
        if not _NAME.match(name):
            raise UsageError(
                f"model name '{name}' (from '{arg}') must be letters, digits, '_', '.' or '-'; "
                "name it with NAME=PATH"
            )
        if any(name == n for n, _ in entries):
            raise UsageError(f"two models are named '{name}'; give one another name with NAME=PATH")
        entries.append((name, Path(path)))
    if not entries:
        raise UsageError("give at least one .onnx model to serve")
    return entries


def load_models(
    entries: Sequence[tuple[str, Path]], threads: int | None, providers: Sequence[str] | None = None
) -> list[tuple[str, Model]]:
    """Load every model with the runtime (manifest and external data checked first)."""
    return [(name, load(path, intra_op_threads=threads, providers=providers)) for name, path in entries]


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (surrounding whitespace dropped); must be printable ASCII."""

    try:  # a regular file, read up to the cap (/dev/zero or a FIFO is refused, not read)
        raw = read_capped(path, MAX_TOKEN_BYTES, "token file")
    except LoadError as e:
        message = e.diagnostics[0].message
        if "larger than" in message:
            raise UsageError(f"the token file '{path}' is larger than {MAX_TOKEN_BYTES} bytes") from None
        raise UsageError(f"cannot read the token file '{path}': {message}") from None
    token = raw.strip()
    if not token or not all(33 <= b < 127 for b in token):
        raise UsageError(f"the token file '{path}' must hold one token of printable ASCII characters")
    return token.decode("ascii")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, token: str | None) -> str | None:
    """The warning for a server that anyone on the network can use, else ``None``."""
    if is_loopback(host) or token is not None:
        return None
    return (
        f"listening on {host} without --token-file: anyone who can reach this address can use the models "
        "(give --token-file, or keep the default --host 127.0.0.1)"
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: any free port)."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0-65535, got {port}")
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bare, port))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.set_inheritable(True)
    return sock


def serve(
    model_args: Sequence[str],
    options: ServeOptions,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve the models until SIGTERM/SIGINT (see the module docstring)."""
    settings = options.settings
    warning = exposure_warning(options.host, settings.token)
    if warning:
        log.warning("%s", warning)
    models = load_models(parse_model_args(model_args), options.threads, options.providers)
    app, state = create_app(models, settings)
    sock = bind(options.host, options.port)
    port = sock.getsockname()[1]
    shown = f"[{options.host}]" if ":" in options.host else options.host
    config = uvicorn.Config(
        app,
        log_level=options.log_level,
        access_log=options.access_log,
        timeout_graceful_shutdown=options.graceful_timeout_s,
        server_header=False,
    )
    server = _Server(config, state)
    names = ", ".join(f"{name} (max batch {state.models[name].batcher.max_batch})" for name, _ in models)
    announce(f"specc serve: listening on http://{shown}:{port} - models: {names}")
    sys.stdout.flush()
    server.run(sockets=[sock])


class _Server(uvicorn.Server):
    """uvicorn's server, with readiness turned off as soon as a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, state: State) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._state.draining = True
        super().handle_exit(sig, frame)
