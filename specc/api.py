"""The torch-free pipeline as functions: load → parse → lower → infer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from specc.graph import Graph, infer, lower
from specc.spec.document import SpecDocument, load_spec, load_spec_text


def compile_graph(doc: SpecDocument) -> Graph:
    """Lower and infer a parsed document."""
    graph = infer(lower(doc))
    graph.meta["document"] = doc
    return graph


def check(path: str | Path, sets: Sequence[str] = (), scale: str | None = None) -> Graph:
    """Load, validate and infer a spec file; raises :class:`specc.errors.SpecError` with every problem."""
    return compile_graph(load_spec(path, tuple(sets), scale))


def check_text(text: str, name: str = "<string>", sets: Sequence[str] = (), scale: str | None = None,
               base: Path | None = None) -> Graph:  # fmt: skip
    """:func:`check` for spec text in memory."""
    return compile_graph(load_spec_text(text, name, tuple(sets), scale, base))
