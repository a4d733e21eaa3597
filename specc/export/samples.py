"""Example inputs for export and parity checks, and the dynamic axes of a graph.

A spec's input shapes are per sample; a string dim (``"seq"``) is a symbolic axis. Every input gets
a leading ``batch`` axis. Token ids (int64) are drawn below the ``num_embeddings`` of the op that
reads them (else of the first op that has one, else below :data:`SMALL_INT`), bool masks at random.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from specc.graph import Graph

BATCH = "batch"
SMALL_INT = 8
PARITY_BATCHES = (1, 2, 7)
PARITY_SEQ_LENS = (5, 17)


@dataclass(frozen=True)
class SampleSizes:
    """One setting of the dynamic axes: the batch size and a size for every symbol."""

    batch: int
    symbols: Mapping[str, int]

    def to_json(self) -> dict[str, int]:
        return {BATCH: self.batch, **dict(self.symbols)}


def symbols_of(graph: Graph) -> list[str]:
    """Symbolic axes of the inputs, in order of first appearance (the batch axis excluded)."""
    seen: dict[str, None] = {}
    for t in graph.inputs.values():
        for d in t.shape:
            if isinstance(d, str):
                seen[d] = None
    return list(seen)


def input_dims(graph: Graph, name: str, static: Mapping[str, int] | None = None) -> list[int | str]:
    """Shape of input ``name`` with the batch axis; symbols replaced by sizes when ``static``."""
    dims: list[int | str] = [BATCH, *graph.inputs[name].shape]
    if static is None:
        return dims
    return [static[d] if isinstance(d, str) else d for d in dims]


def vocab_size(graph: Graph, input_name: str) -> int:
    """Upper bound (exclusive) for random ids of an int64 input: the tightest ``index_bound`` of the
    ops reading it (an embedding's size; token-type ids stay below 2), else :data:`SMALL_INT`."""
    bound = graph.index_bound(input_name)
    return bound if bound is not None else SMALL_INT


def parity_sizes(
    graph: Graph, batches: tuple[int, ...] = PARITY_BATCHES, seq_lens: tuple[int, ...] = PARITY_SEQ_LENS
) -> list[SampleSizes]:
    """Batch sizes × (for specs with symbolic axes) sequence lengths, capped at ``graph.dims``."""
    symbols = symbols_of(graph)
    if not symbols:
        return [SampleSizes(b, {}) for b in batches]
    out: list[SampleSizes] = []
    for length in seq_lens:
        sizes = {s: _cap(length, graph.dims.get(s)) for s in symbols}
        out.extend(SampleSizes(b, sizes) for b in batches)
    return out


def _cap(length: int, nominal: int | None) -> int:
    return length if nominal is None else max(1, min(length, nominal))


def example_sizes(graph: Graph) -> SampleSizes:
    """The sizes traced at export: batch 2 and each symbol at its nominal size (capped at 8)."""
    return SampleSizes(2, {s: _cap(8, graph.dims.get(s)) for s in symbols_of(graph)})


def make_inputs(graph: Graph, sizes: SampleSizes, seed: int = 0) -> dict[str, NDArray[Any]]:
    """Random inputs of the given sizes: float32 normal, int64 ids, bool masks."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, NDArray[Any]] = {}
    for name, t in graph.inputs.items():
        shape = tuple(
            sizes.batch if d == BATCH else sizes.symbols[d] if isinstance(d, str) else d
            for d in input_dims(graph, name)
        )
        if t.dtype == "int64":
            feeds[name] = rng.integers(0, vocab_size(graph, name), size=shape, dtype=np.int64)
        elif t.dtype == "bool":
            feeds[name] = rng.random(shape) < 0.8
        else:
            feeds[name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


def dynamic_axes(graph: Graph) -> dict[str, dict[int, str]]:
    """``{tensor name: {axis: symbol}}`` for every input and output (the torchscript form)."""
    axes: dict[str, dict[int, str]] = {}
    for name in graph.inputs:
        axes[name] = {i: d for i, d in enumerate(input_dims(graph, name)) if isinstance(d, str)}
    for name, t in graph.output_types().items():
        axes[name] = {0: BATCH, **{i + 1: d for i, d in enumerate(t.shape) if isinstance(d, str)}}
    return axes
