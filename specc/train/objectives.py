"""Losses and evaluation metrics.

Losses return a **sum** over the targets of a (micro-)batch; the trainer divides by the number of
targets in the whole global batch, so a batch split over processes or micro-batches gives the same
gradient as one batch on one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from specc.train.config import TrainConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_LOSS_OF_TASK = {
    "classification": "cross_entropy",
    "regression": "mse",
    "language_model": "lm",
    "seq2seq": "lm",
}
_METRICS_OF_TASK = {
    "classification": ["accuracy"],
    "regression": [],
    "language_model": ["perplexity"],
    "seq2seq": ["accuracy", "exact_match"],
}


def loss_name(cfg: TrainConfig, task: str) -> str:
    return _LOSS_OF_TASK[task] if cfg.loss == "auto" else cfg.loss


def metric_names(cfg: TrainConfig, task: str) -> list[str]:
    return list(cfg.metrics) if cfg.metrics is not None else list(_METRICS_OF_TASK[task])


def make_loss(name: str, cfg: TrainConfig) -> tuple[LossFn, Callable[[torch.Tensor], torch.Tensor]]:
    """The loss (sum over targets) and the function counting the targets of a batch of targets."""
    if name == "cross_entropy":

        def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(out.float(), y, reduction="sum", label_smoothing=cfg.label_smoothing)

        return ce, lambda y: torch.tensor(y.shape[0], dtype=torch.float32, device=y.device)
    if name == "mse":

        def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.mse_loss(out.float().reshape(y.shape), y.float(), reduction="sum")

        return mse, lambda y: torch.tensor(y.numel(), dtype=torch.float32, device=y.device)

    def lm(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (B, T, V), (B, T)
        return F.cross_entropy(
            out.float().reshape(-1, out.shape[-1]),
            y.reshape(-1),
            reduction="sum",
            ignore_index=cfg.ignore_index,
            label_smoothing=cfg.label_smoothing,
        )

    return lm, lambda y: (y != cfg.ignore_index).sum().to(torch.float32)


@dataclass
class EvalSums:
    """Sums over an evaluated split (all-reducible as one tensor)."""

    names: list[str]

    def zeros(self, device: torch.device) -> torch.Tensor:
        # loss_sum, count, then per metric: hits, total
        return torch.zeros(2 + 2 * len(self.names), dtype=torch.float64, device=device)

    def update(
        self,
        acc: torch.Tensor,
        loss_sum: torch.Tensor,
        count: torch.Tensor,
        out: torch.Tensor,
        y: torch.Tensor,
        ignore_index: int | None,
    ) -> None:
        acc[0] += loss_sum.double()
        acc[1] += count.double()
        for i, name in enumerate(self.names):
            hits, total = _metric_hits(name, out, y, ignore_index)
            acc[2 + 2 * i] += hits
            acc[3 + 2 * i] += total

    def finish(self, acc: torch.Tensor, loss: str) -> dict[str, float]:
        values = acc.tolist()
        mean = values[0] / max(values[1], 1.0)
        result = {"loss": mean}
        for i, name in enumerate(self.names):
            if name == "perplexity":
                result[name] = (
                    math.exp(min(mean, 700.0)) if loss == "lm" or loss == "cross_entropy" else math.nan
                )
            else:
                result[name] = values[2 + 2 * i] / max(values[3 + 2 * i], 1.0)
        return result


def _metric_hits(
    name: str, out: torch.Tensor, y: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    if name == "perplexity" or y.is_floating_point():
        return 0.0, 0.0
    valid = (
        (y != ignore_index)
        if (ignore_index is not None and y.dim() > 1)
        else torch.ones_like(y, dtype=torch.bool)
    )
    if name == "accuracy":
        right = (out.argmax(-1) == y) & valid
        return right.sum().double(), valid.sum().double()
    if name == "exact_match":
        right = ((out.argmax(-1) == y) | ~valid).reshape(y.shape[0], -1).all(dim=1)
        return right.sum().double(), float(y.shape[0])
    k = min(int(name[3:]), out.shape[-1])
    top = out.topk(k, dim=-1).indices
    right = (top == y.unsqueeze(-1)).any(-1) & valid
    return right.sum().double(), valid.sum().double()
