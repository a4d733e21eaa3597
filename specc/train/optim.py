"""Optimisers and learning-rate schedules (per optimizer step)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from specc.lang.train_config import TrainConfig


def make_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam or AdamW over ``params``."""
    params = list(params)
    fused = {"foreach": True} if device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            **fused,
        )
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fused)


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based) of ``total`` (none/step/cosine)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "step":
        return float(cfg.gamma ** (step // cfg.step_size))
    if cfg.schedule == "cosine":
        span = max(1, total - cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler stepped once per optimizer step; one-cycle is torch's ``OneCycleLR``."""
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=cfg.lr,
            total_steps=max(2, total_steps),
            cycle_momentum=cfg.optimizer == "sgd" and cfg.momentum > 0,
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(cfg, step, total_steps))
