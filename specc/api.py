"""The torch-free pipeline as functions: load → parse → lower → infer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from specc.errors import LowerError, ShapeError
from specc.graph import Graph, infer
from specc.graph.lower import lower_collect
from specc.lang.document import SpecDocument, load_spec, load_spec_text


def compile_graph(doc: SpecDocument) -> Graph:
    """Lower and infer a parsed document; every lowering and shape problem is reported together."""
    graph, problems = lower_collect(doc)
    lowered_problems = bool(problems)
    try:
        infer(graph)
    except ShapeError as exc:
        problems = problems + exc.diagnostics
    if problems:
        problems = list(dict.fromkeys(problems))
        problems.sort(key=lambda d: (d.loc.file, d.loc.line, d.loc.col) if d.loc else ("", 0, 0))
        raise (ShapeError if not lowered_problems else LowerError)(problems)
    graph.meta["document"] = doc
    return graph


def check(path: str | Path, sets: Sequence[str] = (), scale: str | None = None) -> Graph:
    """Load, validate and infer a spec file; raises :class:`specc.errors.SpecError` with every problem."""
    return compile_graph(load_spec(path, tuple(sets), scale))


def check_text(
    text: str,
    name: str = "<string>",
    sets: Sequence[str] = (),
    scale: str | None = None,
    base: Path | None = None,
) -> Graph:
    """:func:`check` for spec text in memory."""
    return compile_graph(load_spec_text(text, name, tuple(sets), scale, base))
