"""Fine-tuning: start from saved weights (by name) and freeze parameters by glob pattern."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from specc.errors import UsageError
from specc.train.checkpoint import find_latest_checkpoint, load_checkpoint


@dataclass
class InitReport:
    """What ``--init-from`` loaded and what it left alone."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"init-from {self.source}: loaded {len(self.loaded)} tensors"]
        if self.mismatched:
            out.append(
                "  skipped (shape differs): "
                + ", ".join(f"{n} {list(a)} in file vs {list(b)} in model" for n, a, b in self.mismatched)
            )
        if self.missing:
            out.append("  missing in the file (kept as initialised): " + ", ".join(self.missing))
        if self.unexpected:
            out.append("  not in the model (ignored): " + ", ".join(self.unexpected))
        return out


def read_weights(source: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a run folder (its final weights, else newest checkpoint)."""
    from safetensors.torch import load_file

    if source.is_dir():
        final = source / "model.safetensors"
        if final.is_file():
            source = final
        else:
            ckpt = find_latest_checkpoint(source)
            if ckpt is None:
                raise UsageError(
                    f"--init-from {source}: a run folder with neither model.safetensors "
                    "nor a valid checkpoint"
                )
            return load_checkpoint(ckpt, verify=False)[0]
    if not source.is_file():
        raise UsageError(f"--init-from {source}: no such file or run folder")
    try:
        return load_file(str(source), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise UsageError(f"--init-from {source}: cannot read as safetensors: {exc}") from None


def init_from(model: nn.Module, source: Path) -> InitReport:
    """Copy every tensor of ``source`` whose name and shape match into ``model``."""
    tensors = read_weights(source)
    own = model.state_dict()
    report = InitReport(str(source))
    matched = {}
    for name, t in tensors.items():
        if name not in own:
            report.unexpected.append(name)
        elif tuple(t.shape) != tuple(own[name].shape):
            report.mismatched.append((name, tuple(t.shape), tuple(own[name].shape)))
        else:
            matched[name] = t
            report.loaded.append(name)
    report.missing = [n for n in own if n not in tensors]
    if not matched:
        raise UsageError(f"--init-from {source}: no tensor matches the model by name and shape")
    model.load_state_dict(matched, strict=False)
    return report


def freeze(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Stop the gradient of parameters whose name matches a glob; refuse a pattern matching nothing."""
    frozen: list[str] = []
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise UsageError(
                f"--freeze {pattern!r} matches no parameter; names look like "
                f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}"
            )
        frozen += hits
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    if len(set(frozen)) == len(names):
        raise UsageError("--freeze froze every parameter: nothing left to train")
    return sorted(set(frozen))
