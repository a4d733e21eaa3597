"""The ``specc`` command line (typer). Commands only parse options and call library functions;
error types map to exit codes here, in one place: 0 ok, 1 unexpected, 2 spec/usage, 3 export
verification (parity mismatch), 4 exporter failure (and ``specc train``'s 128 + signal for a run interrupted after saving). No traceback reaches a user unless ``SPECC_DEBUG=1``."""

from __future__ import annotations

import contextvars
import functools
import io
import logging
import os
import sys
import traceback
from typing import Any

import typer
from typer.exceptions import Abort, TyperException

from specc.errors import SpeccError, SpecError, printable

app = typer.Typer(
    name="specc",
    help="Declarative model-spec compiler: YAML → static shapes → PyTorch → ONNX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def say(text: str, *, err: bool = False, end: str = "\n") -> None:
    """Print one message of a command: user-derived text in it is escaped (:func:`printable`), so a
    spec key, a file name or a model's label can never drive the terminal."""
    print(printable(text), file=sys.stderr if err else sys.stdout, end=end)


class _TerminalLog(logging.Handler):
    """Log records as ``warning: ...`` lines on the current ``sys.stderr`` (looked up per record, so
    a redirected stderr is honoured), rendered like every other message: control characters escaped."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(printable(self.format(record)) + "\n")
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def log_to_stderr(level: int = logging.WARNING) -> None:
    """Warnings of the library as ``warning: ...`` lines on stderr (once per process)."""
    root = logging.getLogger()
    if not any(isinstance(h, _TerminalLog) for h in root.handlers):
        handler = _TerminalLog()
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        root.addHandler(handler)
        root.setLevel(level)


def fail(exc: BaseException) -> None:
    """Print an error the way users should see it and exit with its code."""
    if os.environ.get("SPECC_DEBUG") == "1":
        traceback.print_exception(exc)
    if isinstance(exc, SpecError):
        for d in exc.diagnostics:
            say(f"error: {d}", err=True)
        n = len(exc.diagnostics)
        say(f"{n} error{'s' if n != 1 else ''}", err=True)
        raise SystemExit(exc.exit_code)
    if isinstance(exc, SpeccError):
        say(f"error: {exc}", err=True)
        raise SystemExit(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        say("interrupted", err=True)
        raise SystemExit(130)
    if isinstance(exc, OSError) and exc.filename is not None:  # the machine refused a path: not a bug
        paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
        say(f"error: {paths}: {exc.strerror or exc}", err=True)
        raise SystemExit(2)
    say(f"internal error: {type(exc).__name__}: {exc} (SPECC_DEBUG=1 shows the traceback)", err=True)
    raise SystemExit(1)


def _usage_error(exc: TyperException) -> None:
    """The parser's own messages (unknown option, bad value) echo what was typed: escape them too."""
    buffer = io.StringIO()
    show = getattr(exc, "show", None)
    if show is not None:
        show(file=buffer)
    else:  # pragma: no cover - every parser error has show()
        buffer.write(f"Error: {exc.format_message()}\n")
    sys.stderr.write(printable(buffer.getvalue()))
    raise SystemExit(exc.exit_code)


@functools.cache
def _command() -> Any:
    """The parser built from ``app`` once per process (typer rebuilds it, ~15 ms, on every call)."""
    # command modules register themselves on `app`; none of them imports torch at module level
    from specc.cli import (  # noqa: F401
        build_cmd,
        eval_cmd,
        export_cmds,
        generate_cmd,
        graph_cmd,
        serve_cmd,
        spec_cmds,
        train_cmds,
        weights_cmds,
    )

    return typer.main.get_command(app)


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    command = _command()
    log_to_stderr()
    try:  # a fresh context per command: settings such as --include-root do not outlive it
        code = contextvars.copy_context().run(command.main, args=argv, standalone_mode=False)
    except SystemExit:
        raise
    except TyperException as exc:
        _usage_error(exc)
    except Abort as exc:  # the parser's name for Ctrl-C (or EOF at a prompt)
        fail(exc.__cause__ if isinstance(exc.__cause__, KeyboardInterrupt) else KeyboardInterrupt())
    except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
        fail(exc)
    raise SystemExit(code if isinstance(code, int) else 0)
