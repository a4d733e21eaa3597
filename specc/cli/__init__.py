"""The ``specc`` command line (typer). Commands only parse options and call library functions;
errors become exit codes here, in one place (:func:`exit_code_of`, :func:`fail`):

==== ==========================================================================================
0    ok
1    unexpected (a bug: ``SPECC_DEBUG=1`` shows the traceback)
2    you used it wrong: a spec error, a bad option, a bad file or data set, a path the OS refused
3    export verification failed (the ONNX model does not compute what PyTorch computes)
4    the model, the runtime or the exporter failed on input that passed the checks
5    training stopped on a non-finite loss or gradient (the last finite checkpoint is kept)
130  interrupted (Ctrl-C); ``specc train`` exits 128 + signal after saving a checkpoint
==== ==========================================================================================

No traceback reaches a user unless ``SPECC_DEBUG=1``. Errors are red and tables coloured on a
terminal; piped output and ``NO_COLOR`` get plain text (rich decides). Every message is escaped with
:func:`~specc.errors.printable` first, so user-derived text never drives the terminal.

Command modules import library code inside each command, so that starting the CLI (and
``specc check``, which never imports torch) stays fast; rich is imported when a message is coloured.
At exit the objects still alive are frozen out of the cyclic collector (:func:`_fast_teardown`).
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import gc
import io
import logging
import os
import sys
import traceback
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.exceptions import Abort, TyperException

from specc import __version__
from specc.errors import SpeccError, SpecError, printable

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    name="specc",
    help="Declarative model-spec compiler: YAML → static shapes → PyTorch → ONNX.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def say(text: str, *, err: bool = False, end: str = "\n") -> None:
    """Print one message of a command: user-derived text in it is escaped (:func:`printable`), so a
    spec key, a file name or a model's label can never drive the terminal."""
    print(printable(text), file=sys.stderr if err else sys.stdout, end=end)


def stderr() -> Console:
    """The console for errors and notes (a new one per call: tests swap ``sys.stderr``)."""
    from rich.console import Console

    return Console(file=sys.stderr, highlight=False, soft_wrap=True, emoji=False)


def stdout() -> Console:
    """The console for tables and rendered text on stdout (plain when piped or ``NO_COLOR``)."""
    from rich.console import Console

    return Console(file=sys.stdout, highlight=False, soft_wrap=True, emoji=False)


def error(message: str, prefix: str = "error") -> None:
    """Print ``prefix: message`` to stderr, the prefix red (or yellow for notes) on a terminal."""
    from rich.markup import escape

    style = "bold yellow" if prefix == "note" else "bold red"
    stderr().print(f"[{style}]{prefix}:[/] {escape(printable(message))}")


def print_table(text: str) -> None:
    """Print a plain-text table (header, rule, rows, total) with a coloured header and total on a
    terminal; the text itself is the same either way."""
    from rich.markup import escape

    text = printable(text)  # spec keys and file names in it never drive the terminal
    console = stdout()
    if console.no_color or not console.is_terminal:
        print(text)
        return
    head, rule, *rows = text.split("\n")
    console.print(f"[bold cyan]{escape(head)}[/]\n[dim]{escape(rule)}[/]")
    for row in rows:
        console.print(f"[bold]{escape(row)}[/]" if row.startswith("total ") else escape(row))


def exit_code_of(exc: BaseException) -> int:
    """The exit code of an error (the table in this module's docstring)."""
    if isinstance(exc, SpeccError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, OSError) and exc.filename is not None:  # the machine refused a path: not a bug
        return 2
    return 1


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
    code = exit_code_of(exc)
    if isinstance(exc, SpecError):
        for d in exc.diagnostics:
            error(str(d))
        n = len(exc.diagnostics)
        stderr().print(f"{n} error{'s' if n != 1 else ''}")
    elif isinstance(exc, SpeccError):
        error(str(exc))
    elif isinstance(exc, KeyboardInterrupt):
        stderr().print("interrupted")
    elif isinstance(exc, OSError) and exc.filename is not None:
        paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
        error(f"{paths}: {exc.strerror or exc}")
    else:
        error(f"{type(exc).__name__}: {exc} (SPECC_DEBUG=1 shows the traceback)", prefix="internal error")
    raise SystemExit(code)


def _version(value: bool) -> None:
    if value:
        print(f"specc {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Declarative model-spec compiler: YAML → static shapes → PyTorch → ONNX."""


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


def _fast_teardown() -> None:
    """Freeze what is alive at exit out of the cyclic collector (runs after every later-registered
    exit handler: atexit calls them last-registered first).

    Once torch is imported the interpreter's shutdown collections walk millions of objects (import
    tables, torch's and pydantic's caches): 0.7-1.5 s of CPU after a command has finished. Nothing
    that matters waits on them: files are written and closed with ``with``, loader workers and the
    TensorBoard writer are closed by the trainer, exit handlers (``weakref.finalize`` included) have
    run, and modules are still torn down (only unreachable cycles are left to the OS, which CPython
    never promises to finalise at exit anyway)."""
    gc.freeze()


@functools.cache
def _register_teardown() -> None:
    """Once per process, before a command registers exit handlers of its own (so it runs last)."""
    atexit.register(_fast_teardown)


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    _register_teardown()
    command = _command()
    log_to_stderr()
    try:  # a fresh context per command: settings such as --include-root do not outlive it
        code = contextvars.copy_context().run(
            command.main, args=argv, prog_name="specc", standalone_mode=False
        )
    except SystemExit:
        raise
    except TyperException as exc:
        _usage_error(exc)
    except Abort as exc:  # the parser's name for Ctrl-C (or EOF at a prompt)
        fail(exc.__cause__ if isinstance(exc.__cause__, KeyboardInterrupt) else KeyboardInterrupt())
    except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
        fail(exc)
    raise SystemExit(code if isinstance(code, int) else 0)
