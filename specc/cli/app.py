"""The ``specc`` typer application and what every command uses: printing (escaped, coloured on a
terminal), the exit code of an error and :func:`fail`. Command modules import from here; the package
(:mod:`specc.cli`) imports every command module and runs the application (:func:`specc.cli.main`).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import traceback
from typing import TYPE_CHECKING, Annotated

import typer
from typer.exceptions import TyperException

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


def usage_error(exc: TyperException) -> None:
    """The parser's own messages (unknown option, bad value) echo what was typed: escape them too."""
    buffer = io.StringIO()
    show = getattr(exc, "show", None)
    if show is not None:
        show(file=buffer)
    else:  # pragma: no cover - every parser error has show()
        buffer.write(f"Error: {exc.format_message()}\n")
    sys.stderr.write(printable(buffer.getvalue()))
    raise SystemExit(exc.exit_code)
