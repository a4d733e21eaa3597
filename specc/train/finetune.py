"""Fine-tuning: start from saved or published weights and freeze parts of the network.

``--init-from SRC`` reads a specc run folder or weights file, a Hugging Face model folder or a
PyTorch state-dict file (:mod:`specc.weights.sources`), maps its names to the spec's and loads every
tensor, checked. By default (``--init-strict``) every tensor must fit; ``--no-init-strict`` keeps the
spec's own initialisation where shapes differ or a tensor is absent (a new head) and lists them.

``--freeze GLOB`` stops the gradient of matching parameters. A normalisation layer whose parameters
are all frozen (or, without parameters, whose ``running_mean`` matches a pattern) is frozen in full:
it stays in eval mode, so its running statistics do not move either (``--update-frozen-norms``
lets them update as before).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from specc.errors import UsageError
from specc.weights.fit import LoadReport
from specc.weights.sources import Source, import_into, open_source

__all__ = ["Frozen", "freeze", "init_from"]


def init_from(
    model: nn.Module, source: Path, *, strict: bool = True, map_name: str | None = None
) -> tuple[LoadReport, Source]:
    """Load ``source`` into ``model`` (see the module doc); returns the report and the source read."""
    src = open_source(source)
    hint = "--no-init-strict keeps the spec's own tensors for these and lists them"
    report, _ = import_into(
        model, src, map_name=map_name, allow_partial=not strict, skip_mismatched=not strict, hint=hint
    )
    return report, src


@dataclass
class Frozen:
    """What :func:`freeze` froze."""

    params: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"froze {len(self.params)} parameters: {', '.join(self.params)}"]
        if self.norms:
            out.append(
                f"froze the running statistics of {len(self.norms)} norm layers: {', '.join(self.norms)}"
            )
        return out


def _keep_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of a frozen norm: normalise with the running statistics, never update them."""
    module.training = False


def _frozen_norms(model: nn.Module, frozen: set[str], patterns: Sequence[str]) -> list[str]:
    norms = []
    for path, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._NormBase):
            continue
        prefix = f"{path}." if path else ""
        own = [prefix + n for n, _ in module.named_parameters(recurse=False)]
        if own:
            hit = all(n in frozen for n in own)
        else:
            hit = any(fnmatch.fnmatchcase(prefix + "running_mean", p) for p in patterns)
        if hit:
            norms.append(path)
    return norms


def freeze(model: nn.Module, patterns: Sequence[str], *, norms: bool = True) -> Frozen:
    """Stop the gradient of parameters whose name matches a glob (refusing a pattern that matches
    nothing, or one set that freezes everything); with ``norms`` keep the frozen norm layers in eval
    mode so their running statistics stay as loaded."""
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
    hit = set(frozen)
    if len(hit) == len(names):
        raise UsageError("--freeze froze every parameter: nothing left to train")
    for name, p in model.named_parameters():
        if name in hit:
            p.requires_grad_(False)
    result = Frozen(sorted(hit))
    if norms:
        result.norms = _frozen_norms(model, hit, patterns)
        for path in result.norms:
            model.get_submodule(path).register_forward_pre_hook(_keep_eval)
    return result
