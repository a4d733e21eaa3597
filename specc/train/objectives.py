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

from specc.lang.train_config import TrainConfig
from specc.registry import Registry

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


CountFn = Callable[[torch.Tensor], torch.Tensor]
LossFactory = Callable[[TrainConfig], tuple[LossFn, CountFn]]
LOSSES: Registry[LossFactory] = Registry("loss")
"""``train.loss`` names → a factory of the loss (a sum over targets) and of the target counter."""


@LOSSES.add("cross_entropy")
def _cross_entropy(cfg: TrainConfig) -> tuple[LossFn, CountFn]:
    def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.float(), y, reduction="sum", label_smoothing=cfg.label_smoothing)

    return ce, lambda y: torch.tensor(y.shape[0], dtype=torch.float32, device=y.device)


@LOSSES.add("mse")
def _mse(cfg: TrainConfig) -> tuple[LossFn, CountFn]:
    def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out.float().reshape(y.shape), y.float(), reduction="sum")

    return mse, lambda y: torch.tensor(y.numel(), dtype=torch.float32, device=y.device)


@LOSSES.add("lm")
def _lm(cfg: TrainConfig) -> tuple[LossFn, CountFn]:
    def lm(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (B, T, V), (B, T)
        return F.cross_entropy(
            out.float().reshape(-1, out.shape[-1]),
            y.reshape(-1),
            reduction="sum",
            ignore_index=cfg.ignore_index,
            label_smoothing=cfg.label_smoothing,
        )

    return lm, lambda y: (y != cfg.ignore_index).sum().to(torch.float32)


def make_loss(name: str, cfg: TrainConfig) -> tuple[LossFn, CountFn]:
    """The loss (sum over targets) and the function counting the targets of a batch of targets."""
    return LOSSES[name](cfg)


Hits = tuple[torch.Tensor | float, torch.Tensor | float]


@dataclass(frozen=True)
class Metric:
    """An evaluation metric: ``hits(out, y, valid, k)`` gives (hits, total) of a batch, summed over the
    split; ``value(hits, total, mean_loss, loss_name)`` turns the sums into the reported figure."""

    hits: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], Hits]
    value: Callable[[float, float, float, str], float] = lambda h, t, mean, loss: h / max(t, 1.0)


METRICS: Registry[Metric] = Registry("metric")
"""``train.metrics`` names → metrics; ``topK`` (``top5``) is the entry ``topK`` with k = 5."""


def _accuracy(out: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, k: int) -> Hits:
    right = (out.argmax(-1) == y) & valid
    return right.sum().double(), valid.sum().double()


def _exact_match(out: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, k: int) -> Hits:
    right = ((out.argmax(-1) == y) | ~valid).reshape(y.shape[0], -1).all(dim=1)
    return right.sum().double(), float(y.shape[0])


def _top_k(out: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, k: int) -> Hits:
    top = out.topk(min(k, out.shape[-1]), dim=-1).indices
    right = (top == y.unsqueeze(-1)).any(-1) & valid
    return right.sum().double(), valid.sum().double()


def _perplexity(hits: float, total: float, mean_loss: float, loss: str) -> float:
    return math.exp(min(mean_loss, 700.0)) if loss == "lm" or loss == "cross_entropy" else math.nan


METRICS.register("accuracy", Metric(_accuracy))
METRICS.register("exact_match", Metric(_exact_match))
METRICS.register("topK", Metric(_top_k))
METRICS.register("perplexity", Metric(lambda out, y, valid, k: (0.0, 0.0), _perplexity))  # from the loss


def metric_of(name: str) -> tuple[Metric, int]:
    """The registered metric a ``train.metrics`` name selects, and its k (``top5`` → ``topK``, 5)."""
    if name.startswith("top") and name[3:].isdigit():
        return METRICS["topK"], int(name[3:])
    return METRICS[name], 0


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
        if y.is_floating_point():  # regression targets: no class metrics
            return
        valid = (
            (y != ignore_index)
            if (ignore_index is not None and y.dim() > 1)
            else torch.ones_like(y, dtype=torch.bool)
        )
        for i, name in enumerate(self.names):
            metric, k = metric_of(name)
            hits, total = metric.hits(out, y, valid, k)
            acc[2 + 2 * i] += hits
            acc[3 + 2 * i] += total

    def finish(self, acc: torch.Tensor, loss: str) -> dict[str, float]:
        values = acc.tolist()
        mean = values[0] / max(values[1], 1.0)
        result = {"loss": mean}
        for i, name in enumerate(self.names):
            metric, _ = metric_of(name)
            result[name] = metric.value(values[2 + 2 * i], values[3 + 2 * i], mean, loss)
        return result
