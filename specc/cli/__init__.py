"""The ``specc`` command line (typer). Commands only parse options and call library functions;
errors become exit codes in one place (:func:`~specc.cli.app.exit_code_of` and
:func:`~specc.cli.app.fail`, called by :func:`main`):

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

The application and the helpers every command uses live in :mod:`specc.cli.app`; this package
imports the command modules (each registers its commands on the application) and runs it. Command
modules import library code inside each command, so that starting the CLI (and
``specc check``, which never imports torch) stays fast; rich is imported when a message is coloured.
At exit the objects still alive are frozen out of the cyclic collector (:func:`_fast_teardown`).
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import gc
from typing import Any

import typer
from typer.exceptions import Abort, TyperException

# the commands register themselves on `app` when imported; none imports torch at module level
from specc.cli import (
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
from specc.cli.app import app, fail, log_to_stderr, usage_error

# one way to reach each helper: commands import them from specc.cli.app; the package offers main()
__all__ = [
    "app",
    "build_cmd",
    "eval_cmd",
    "export_cmds",
    "generate_cmd",
    "graph_cmd",
    "main",
    "serve_cmd",
    "spec_cmds",
    "train_cmds",
    "weights_cmds",
]


@functools.cache
def _command() -> Any:
    """The parser built from ``app`` once per process (typer rebuilds it, ~15 ms, on every call)."""
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
        usage_error(exc)
    except Abort as exc:  # the parser's name for Ctrl-C (or EOF at a prompt)
        fail(exc.__cause__ if isinstance(exc.__cause__, KeyboardInterrupt) else KeyboardInterrupt())
    except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
        fail(exc)
    raise SystemExit(code if isinstance(code, int) else 0)
