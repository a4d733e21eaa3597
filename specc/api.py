"""The torch-free pipeline as functions: load → parse → lower (+ infer)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from specc.errors import Diagnostic, LowerError, ParseError, ShapeError, SpecError
from specc.graph import Graph
from specc.graph.lower import lower_collect
from specc.lang.document import SpecDocument, load_spec, load_spec_text
from specc.lang.train_config import train_config_from_tree
from specc.load import LMap


def train_problems(doc: SpecDocument) -> list[Diagnostic]:
    """The spec's ``train:`` section checked by the training config's own model, at check time."""
    raw = doc.raw
    if "train" not in raw or raw["train"] is None:
        return []
    try:
        train_config_from_tree(
            raw["train"], doc.path, raw.value_loc("train") if isinstance(raw, LMap) else None
        )
    except SpecError as exc:
        return exc.diagnostics
    return []


def compile_graph(doc: SpecDocument) -> Graph:
    """Lower and infer a parsed document; every problem of the file is reported together."""
    lowered = lower_collect(doc)
    parse = doc.problems + train_problems(doc)
    problems = parse + lowered.problems + lowered.shape_problems
    if problems:
        problems = list(dict.fromkeys(problems))
        problems.sort(key=lambda d: (d.loc.file, d.loc.line, d.loc.col) if d.loc else ("", 0, 0))
        kind = ParseError if parse else LowerError if lowered.problems else ShapeError
        raise kind(problems)
    return lowered.graph


def check(
    path: str | Path,
    sets: Sequence[str] = (),
    scale: str | None = None,
    include_roots: Sequence[str | Path] | None = None,
) -> Graph:
    """Load, validate and infer a spec file; raises :class:`specc.errors.SpecError` with every problem.

    ``include_roots``: folders whose files the spec may include besides its own folder tree (by
    default those given to :func:`specc.lang.document.include_roots`, the CLI's ``--include-root``).
    """
    return compile_graph(load_spec(path, tuple(sets), scale, include_roots))


def check_text(
    text: str,
    name: str = "<string>",
    sets: Sequence[str] = (),
    scale: str | None = None,
    base: Path | None = None,
) -> Graph:
    """:func:`check` for spec text in memory (includes resolve inside ``base``, default the cwd)."""
    return compile_graph(load_spec_text(text, name, tuple(sets), scale, base))
