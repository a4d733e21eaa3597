"""Commands on specs that never import torch: check, render, schema, ops (``build`` is in
:mod:`specc.cli.build_cmd`). Library modules are imported inside each command, so that starting the
CLI stays fast."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from specc.cli.app import app, error, print_table, say, stderr, stdout
from specc.errors import SpecError, UsageError, did_you_mean

if TYPE_CHECKING:
    from specc.graph import Graph

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override: key.path=value (repeatable)")]  # noqa: UP045
ScaleOpt = Annotated[Optional[str], typer.Option("--scale", help="named scale from the spec's scales:")]  # noqa: UP045
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
IncludeRootOpt = Annotated[
    Optional[list[Path]],  # noqa: UP045
    typer.Option(
        "--include-root",
        help="a folder whose files specs may include, besides the spec's own folder and std: (repeatable)",
    ),
]
MaxParamsOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--max-params",
        min=1,
        help="refuse, before allocating, a network with more parameters (default 2,000,000,000)",
    ),
]


def use_max_params(limit: int | None) -> None:
    """Apply ``--max-params`` to every model the running command builds."""
    from specc.graph.budget import set_max_params

    set_max_params(limit)


def use_include_roots(folders: list[Path] | None) -> None:
    """Apply ``--include-root`` for the running command (a missing folder: UsageError, exit 2)."""
    from specc.lang.document import set_include_roots

    set_include_roots(folders)


@app.command()
def check(
    specs: Annotated[list[Path], typer.Argument(help="spec files", show_default=False)],
    sets: SetOpt = None,
    scale: ScaleOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="per-node table")] = False,
    as_json: JsonOpt = False,
    include_root: IncludeRootOpt = None,
    memory: Annotated[
        bool, typer.Option("--memory", help="estimate the memory of one training step (no torch)")
    ] = False,
    batch: Annotated[int, typer.Option("--batch", help="--memory: batch size")] = 1,
    optimizer: Annotated[
        str, typer.Option("--optimizer", help="--memory: adamw, adam, sgd (momentum) or none")
    ] = "adamw",
    amp: Annotated[str, typer.Option("--amp", help="--memory: autocast dtype none, bf16 or fp16")] = "none",
    device: Annotated[str, typer.Option("--device", help="--memory: cuda (default) or cpu")] = "cuda",
    fits: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--fits", help="--memory: the largest batch whose peak fits this size (80GiB, 24GB)"),
    ] = None,
) -> None:
    """Validate specs and infer every shape (never imports torch). Exit 2 on spec errors.

    With --memory, also estimate what one training step holds at its peak (parameters, gradients,
    optimizer state, activations kept for backward), and with --fits the largest batch that fits."""
    from specc.api import check as check_spec
    from specc.summary import graph_json, node_table, summary_line

    use_include_roots(include_root)
    estimate = _memory_options(memory, batch, optimizer, amp, device, fits, 10 if verbose else 0)
    results: list[dict[str, object]] = []
    errors = 0
    for path in specs:
        try:
            graph = check_spec(path, sets or [], scale)
        except SpecError as exc:
            errors += len(exc.diagnostics)
            results.append({"file": str(path), "ok": False, "errors": [d.to_json() for d in exc.diagnostics]})
            if not as_json:
                for d in exc.diagnostics:
                    error(str(d))
            continue
        notes = graph.notes()
        results.append(
            {"file": str(path), "ok": True, **graph_json(graph), "notes": [d.to_json() for d in notes]}
        )
        lines = estimate(graph, results[-1]) if estimate else []
        if not as_json:
            say(f"{path}: ok  {summary_line(graph)}")
            for d in notes:
                error(str(d), prefix="note")
            if verbose:
                print_table(node_table(graph))
            for line in lines:
                say(line)
    if as_json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    elif errors:
        stderr().print(f"{errors} error{'s' if errors != 1 else ''}")
    if errors:
        raise typer.Exit(2)


def _memory_options(
    memory: bool, batch: int, optimizer: str, amp: str, device: str, fits: str | None, top: int
) -> Callable[[Graph, dict[str, object]], list[str]] | None:
    """Check the --memory options; returns what adds the estimate to one spec's result and text."""
    from specc.graph.memory import memory_report, parse_bytes

    if not memory:
        if fits is not None or batch != 1 or optimizer != "adamw" or amp != "none" or device != "cuda":
            raise UsageError("--batch, --optimizer, --amp, --device and --fits go with --memory")
        return None
    budget = parse_bytes(fits) if fits is not None else None
    memory_report(None, batch, optimizer, amp, device, budget)  # checks the options once

    def add(graph: Graph, result: dict[str, object]) -> list[str]:
        report, lines = memory_report(graph, batch, optimizer, amp, device, budget, top)
        result["memory"] = report
        return lines

    return add


@app.command()
def render(
    spec: Path, sets: SetOpt = None, scale: ScaleOpt = None, include_root: IncludeRootOpt = None
) -> None:
    """Print the fully expanded spec (itself a valid spec): every node with its path, every default
    and variable resolved, every shape as a comment."""
    from specc.api import check as check_spec
    from specc.summary import render as render_graph

    use_include_roots(include_root)
    say(render_graph(check_spec(spec, sets or [], scale)), end="")


@app.command()
def schema() -> None:
    """Print the JSON Schema of spec files (for yaml-language-server completion)."""
    from specc.schema import json_schema

    print(json.dumps(json_schema(), indent=2))


@app.command()
def ops(
    name: Annotated[Optional[str], typer.Argument(help="show one op in full")] = None,  # noqa: UP045
) -> None:
    """List the registered ops, or show one with its arguments and an example (rendered Markdown)."""
    from rich.markdown import Markdown

    from specc.ops import OPS
    from specc.schema import op_reference, ops_text

    if name is None:
        print(ops_text())
        return
    if name not in OPS:
        raise UsageError(f"unknown op '{name}'{did_you_mean(name, OPS)}")
    console = stdout()
    if not console.is_terminal:
        console.width = 110  # piped: wide enough that the argument table keeps one row per argument
    console.print(Markdown(op_reference(OPS[name]), code_theme="ansi_light"))
