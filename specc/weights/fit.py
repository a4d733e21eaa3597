"""Putting named tensors into a built network, with every tensor accounted for.

Each tensor is checked against the network's own before anything is copied: a shape mismatch names
the tensor, the spec node that owns it (with its spec location) and the file; names the network does
not have and parameters the tensors leave unset are listed. Nothing is loaded partially unless the
caller allows it (``allow_partial``: leave missing ones as initialised and ignore extra ones;
``skip_mismatched``: keep the network's own tensor where the shapes differ, e.g. a new head).
Tied parameters (GPT-2's ``lm_head.weight`` = ``wte.weight``) count as set when any name of the tie is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from specc.errors import UsageError
from specc.weights.store import complete_ties, read_state

__all__ = ["LoadReport", "load_file", "load_state", "node_of"]

_SHOWN = 8


@dataclass
class LoadReport:
    """What a load copied, and what it left alone (only non-empty when the caller allowed it)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable summary, one line per kind."""
        out = [f"weights from {self.source}: loaded {len(self.loaded)} tensors"]
        if self.mismatched:
            out.append(
                "  re-initialised (shape differs): "
                + ", ".join(f"{n} {list(a)} in file vs {list(b)} in model" for n, a, b in self.mismatched)
            )
        if self.missing:
            out.append("  not in the file (kept as initialised): " + ", ".join(self.missing))
        if self.unexpected:
            out.append("  not in the model (ignored): " + ", ".join(self.unexpected))
        if self.ignored:
            out.append("  left out by the name map: " + ", ".join(self.ignored))
        return out


def node_of(model: nn.Module, name: str) -> str:
    """The spec node owning state-dict entry ``name``, with its spec location when known."""
    graph = getattr(model, "graph", None)
    parts = name.split(".")
    if graph is not None:
        paths = {n.path: n for n in graph.nodes}
        for cut in range(len(parts) - 1, 0, -1):
            node = paths.get(".".join(parts[:cut]))
            if node is not None:
                where = f" ({node.loc})" if node.loc is not None else ""
                return f"node '{node.path}'{where}"
    return f"module '{'.'.join(parts[:-1]) or '<root>'}'"


def _tie_groups(model: nn.Module) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
    return list(groups.values())


def _listing(names: list[str]) -> str:
    more = f", ... ({len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def load_state(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    source: str | Path,
    *,
    allow_partial: bool = False,
    skip_mismatched: bool = False,
    ignored: list[str] | None = None,
    hint: str = "",
) -> LoadReport:
    """Copy ``tensors`` (named as ``model.state_dict()``) into ``model`` after checking all of them.

    Args:
        model: The network (a :class:`~specc.nn.CompiledModel` gives node names and spec locations).
        tensors: Tensors by state-dict name (after any name map).
        source: The file or folder they came from (for messages).
        allow_partial: Leave parameters without a tensor as initialised; ignore unknown names.
        skip_mismatched: Keep the model's own tensor where the shapes differ (a new head).
        ignored: Source names a name map left out on purpose (listed in the report).
        hint: Appended to an error (which option allows what was refused).

    Returns:
        What was loaded and what was left alone.

    Raises:
        UsageError: A refused mismatch, missing or unexpected tensor (all of them listed); nothing
            is copied then.
    """
    own = model.state_dict(keep_vars=True)
    report = LoadReport(str(source), ignored=list(ignored or []))
    problems: list[str] = []
    accepted: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name not in own:
            report.unexpected.append(name)
        elif tuple(tensor.shape) != tuple(own[name].shape):
            report.mismatched.append((name, tuple(tensor.shape), tuple(own[name].shape)))
            if not skip_mismatched:
                problems.append(
                    f"tensor {name} has shape {list(tensor.shape)} in {source} but "
                    f"{list(own[name].shape)} in the spec's {node_of(model, name)}"
                )
        else:
            accepted[name] = tensor
    skipped = {n for n, _, _ in report.mismatched}
    for group in _tie_groups(model):
        if not any(n in accepted for n in group):
            report.missing += [n for n in group if n not in skipped]
    if report.missing and not allow_partial:
        problems.append(f"{len(report.missing)} spec tensor(s) not in {source}: {_listing(report.missing)}")
    if report.unexpected and not allow_partial:
        problems.append(
            f"{len(report.unexpected)} tensor(s) of {source} match nothing in the spec: "
            f"{_listing(report.unexpected)}"
        )
    if problems:
        raise UsageError("; ".join(problems) + (f" ({hint})" if hint else ""))
    if not accepted:
        raise UsageError(f"{source}: no tensor matches the spec by name and shape")
    with torch.no_grad():
        for name, tensor in accepted.items():
            target = own[name]
            target.copy_(tensor.to(dtype=target.dtype, device=target.device))
    report.loaded = list(accepted)
    return report


def load_file(model: nn.Module, path: str | Path, *, hint: str = "") -> LoadReport:
    """Load a weights file written by specc (safetensors; a tied tensor may be stored once, as
    ``safetensors.torch.save_model`` also does) into ``model``, every tensor checked (see :func:`load_state`).

    Raises:
        UsageError: An unreadable file, or tensors that do not fit ``model``; nothing is copied then.
    """
    return load_state(model, complete_ties(model, read_state(path)[0]), path, hint=hint)
