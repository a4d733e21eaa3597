"""The ``specc`` command line (typer). Commands only parse options and call library functions;
error types map to exit codes here, in one place: 0 ok, 1 unexpected, 2 spec/usage, 3 export
verification (parity mismatch), 4 exporter failure (and ``specc train``'s 128 + signal for a run interrupted after saving). No traceback reaches a user unless ``SPECC_DEBUG=1``."""

from __future__ import annotations

import contextvars
import os
import sys
import traceback
from typing import Any

import typer

from specc.errors import SpeccError, SpecError

app = typer.Typer(
    name="specc",
    help="Declarative model-spec compiler: YAML → static shapes → PyTorch → ONNX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def fail(exc: BaseException) -> None:
    """Print an error the way users should see it and exit with its code."""
    if os.environ.get("SPECC_DEBUG") == "1":
        traceback.print_exception(exc)
    if isinstance(exc, SpecError):
        for d in exc.diagnostics:
            print(f"error: {d}", file=sys.stderr)
        n = len(exc.diagnostics)
        print(f"{n} error{'s' if n != 1 else ''}", file=sys.stderr)
        raise SystemExit(exc.exit_code)
    if isinstance(exc, SpeccError):
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
    print(f"internal error: {type(exc).__name__}: {exc} (SPECC_DEBUG=1 shows the traceback)", file=sys.stderr)
    raise SystemExit(1)


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    # command modules register themselves on `app`; none of them imports torch at module level
    from specc.cli import eval_cmd, export_cmds, graph_cmd, serve_cmd, spec_cmds, train_cmds  # noqa: F401

    try:  # a fresh context per command: settings such as --include-root do not outlive it
        return contextvars.copy_context().run(app, args=argv, standalone_mode=True)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
        fail(exc)
