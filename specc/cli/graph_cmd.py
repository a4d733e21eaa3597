"""``specc graph``: the architecture as a Mermaid or DOT diagram (SVG through Graphviz's ``dot``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from specc.atomic import atomic_write_text
from specc.cli.app import app, say
from specc.cli.spec_cmds import IncludeRootOpt, ScaleOpt, SetOpt, use_include_roots


@app.command()
def graph(
    spec: Annotated[Path, typer.Argument(help="spec file")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="mermaid, dot or svg")] = "mermaid",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output file")] = None,  # noqa: UP045
    depth: Annotated[int, typer.Option("--depth", help="path parts per box (1: blocks collapsed)")] = 1,
    sets: SetOpt = None,
    scale: ScaleOpt = None,
    include_root: IncludeRootOpt = None,
) -> None:
    """Draw the architecture: repeated blocks collapse into one box, edges carry tensor shapes."""
    from specc.api import check as check_spec
    from specc.graphviz import render_graph

    use_include_roots(include_root)
    text = render_graph(check_spec(spec, sets or [], scale), fmt, depth)
    if out is None:
        say(text, end="")
        return

    atomic_write_text(out, text)
    say(f"wrote {fmt} diagram to {out}")
