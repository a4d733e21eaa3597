"""The trainer's parts: small objects that each own one piece of the loop's state.

Each part with state a resume needs has ``state_dict()`` / ``load_state_dict()``
(:class:`specc.train.checkpoint.Stateful`, the shape of ``torch.distributed.checkpoint``'s); a
checkpoint stores their states by name, next to the model, optimizer, scheduler and RNG:

- ``progress``: :class:`Progress`, optimizer steps done, the epoch rows and the current epoch's
  running train loss;
- ``sampler``: :class:`specc.train.batches.TrainBatches`, the cursor ``(epoch, position)`` in the
  batch order;
- ``early_stopping``: :class:`EarlyStopper`, the best value and its epoch, epochs without
  improvement, stopped or not;
- ``grad_scaler``: :class:`Precision`, torch's ``GradScaler`` state (fp16; empty otherwise).

:class:`NonFiniteGuard` has no state; :class:`BestWeights` keeps its state in ``RUN/best.safetensors``
(the epoch it holds is in the file's header and checked against the early stopper's best epoch).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specc.lang.train_config import EarlyStopping as EarlyStoppingConfig
from specc.nn import save_weights
from specc.train import distributed
from specc.train.distributed import Dist
from specc.weights import read_metadata


class Progress:
    """Optimizer steps done, one metrics row per finished epoch, the current epoch's running train
    loss (a sum over samples and its count, so a resumed epoch reports the same mean) and the batch
    size the run evaluates with (fixed when the run starts: a resumed run sums its validation in the
    same order, so its metric rows are bit for bit those of an uninterrupted run).

    ``eval_batch`` None: a checkpoint from before it was recorded; the evaluation keeps the rule of
    that time (up to 256 samples a batch)."""

    def __init__(self, eval_batch: int | None = None) -> None:
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.loss_sum = 0.0
        self.loss_count = 0.0
        self.eval_batch = eval_batch

    def add_step(self, loss_sum: float, count: float) -> None:
        """One optimizer step done, whose batch had ``count`` targets with losses summing to ``loss_sum``."""
        self.step += 1
        self.loss_sum += loss_sum
        self.loss_count += count

    def end_epoch(self, epoch: int, val: Mapping[str, float], lr: float, rate: float) -> dict[str, Any]:
        """Record the row of epoch ``epoch`` (0-based) and start the next epoch's train loss."""
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.step,
            "train_loss": self.loss_sum / max(self.loss_count, 1.0),
        }
        row.update({f"val_{k}": v for k, v in val.items()})
        row.update({"lr": lr, "samples_per_s": rate})
        self.history.append(row)
        self.loss_sum, self.loss_count = 0.0, 0.0
        return row

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "history": [dict(row) for row in self.history],
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "eval_batch": self.eval_batch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.history = [dict(row) for row in state["history"]]
        self.loss_sum, self.loss_count = float(state["loss_sum"]), float(state["loss_count"])
        eval_batch = state.get("eval_batch")  # absent before it was recorded
        self.eval_batch = None if eval_batch is None else int(eval_batch)


class EarlyStopper:
    """``train.early_stopping``: stop when the metric has not improved by ``min_delta`` for
    ``patience`` epochs; remembers the best value and its epoch. Without a config it never stops."""

    def __init__(self, config: EarlyStoppingConfig | None) -> None:
        self.config = config
        self.best: float | None = None  # the metric's value, as the rows have it
        self.best_epoch: int | None = None  # 1-based, as the rows number epochs
        self.bad_epochs = 0
        self.stopped = False

    def update(self, row: Mapping[str, Any]) -> bool:
        """Take an epoch's row; returns True when it is a new best."""
        es = self.config
        if es is None or es.metric not in row:
            return False
        sign = -1.0 if es.higher_is_better else 1.0  # compared as "lower is better"
        value = float(row[es.metric])
        if self.best is None or value * sign < self.best * sign - es.min_delta:
            self.best, self.bad_epochs, self.best_epoch = value, 0, int(row["epoch"])
            return True
        self.bad_epochs += 1
        self.stopped = self.bad_epochs >= es.patience
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        best, epoch = state["best"], state["best_epoch"]
        self.best = None if best is None else float(best)
        self.best_epoch = None if epoch is None else int(epoch)
        self.bad_epochs, self.stopped = int(state["bad_epochs"]), bool(state["stopped"])


class Precision:
    """``train.amp``: autocast to bf16/fp16 in the forward pass, and (fp16) torch's ``GradScaler``,
    disabled otherwise (then ``scale``/``unscale_``/``step`` are the plain operations)."""

    def __init__(self, amp: str, device: torch.device) -> None:
        self.device_type = device.type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    @property
    def scales_grads(self) -> bool:
        """fp16: the scaler finds non-finite gradients itself (and skips those steps)."""
        return self.scaler.is_enabled()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]

    def unscale_(self, opt: torch.optim.Optimizer) -> None:
        """True gradients for the non-finite check and clipping (a no-op unless fp16)."""
        self.scaler.unscale_(opt)

    def step(self, opt: torch.optim.Optimizer) -> None:
        """``opt.step()``; fp16: skipped on non-finite gradients, then the scale is updated."""
        self.scaler.step(opt)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()  # {} when disabled

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(dict(state))


class NonFiniteGuard:
    """Finds a NaN/inf loss or gradient after backward, before the optimizer applies it (no state)."""

    def __init__(self, grad_clip: float | None, check_grads: bool, device: torch.device) -> None:
        self.grad_clip, self.check_grads = grad_clip, check_grads
        self._one = torch.ones(1, device=device)

    def flag(self, total: torch.Tensor, params: list[nn.Parameter]) -> torch.Tensor:
        """1.0 when the loss ``total`` or any gradient element is NaN/inf; clips gradients when
        ``grad_clip`` is set (the norm it computes is the check)."""
        found = (~torch.isfinite(total)).float().reshape(())
        if self.grad_clip:
            norm = local(torch.nn.utils.clip_grad_norm_(params, self.grad_clip), full=True)
            return found + (~torch.isfinite(norm)).float()
        grads = [local(p.grad) for p in params if p.grad is not None]  # FSDP: this rank's shards
        if self.check_grads and grads:
            flag = torch.zeros(1, device=self._one.device)
            # one fused pass over every gradient: sets flag on any NaN/inf, multiplies by 1 (no change)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, self._one)
            found = found + flag[0]
        return found

    @staticmethod
    def describe(named: Iterable[tuple[str, nn.Parameter]], total: float, norm: float, where: str) -> str:
        """What went non-finite at ``where``: the loss, the first parameter's gradient, or the norm."""
        culprit = next(
            (n for n, p in named if p.grad is not None and not torch.isfinite(local(p.grad)).all()), None
        )
        loss_text = f"{total / max(norm, 1.0):.4g}"
        if not math.isfinite(total):
            what = f"non-finite loss ({loss_text}) at {where}"
            return what + (f"; first non-finite gradient: '{culprit}'" if culprit else "")
        if culprit:
            return f"non-finite gradient of '{culprit}' at {where} (loss {loss_text})"
        return f"the gradient norm overflowed at {where} (loss {loss_text})"


class StateOnly(nn.Module):
    """Hands a gathered state dict to :func:`specc.nn.save_weights` (which calls ``state_dict()``)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._state = state

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return self._state


class BestWeights:
    """``RUN/best.safetensors``: the weights of the best epoch so far, that epoch in the file's
    header. Rank 0 writes and reads it; with FSDP the weights are gathered (every rank calls)."""

    def __init__(self, path: Path, model: nn.Module, dist: Dist, *, fsdp: bool) -> None:
        self.path, self.model, self.dist, self.fsdp = path, model, dist, fsdp

    def save(self, epoch: int) -> None:
        full = distributed.fsdp_model_state(self.model) if self.fsdp else None
        if self.dist.is_main:
            module = StateOnly(full) if full is not None else self.model
            save_weights(module, self.path, metadata={"epoch": str(epoch)})

    def load(self, epoch: int, device: torch.device) -> str:
        """Load the weights of ``epoch`` on every rank (rank 0 reads, the others get them by
        broadcast); returns why not ("" when loaded). Every check runs before the collectives, so
        no rank waits forever."""
        full: dict[str, torch.Tensor] = {}
        problem = ""
        if self.dist.is_main:
            problem, full = self._read(epoch)
        failed = torch.tensor([float(bool(problem))], device=device)
        if self.dist.all_max(failed).item():
            return problem or f"rank 0 could not read {self.path}"
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(
                self.model,
                dict[str, Any](full),
                options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
            )
            return ""
        if self.dist.is_main:
            self.model.load_state_dict(full)
        if self.dist.enabled:
            for t in self.model.state_dict().values():
                torch.distributed.broadcast(t, 0)
        return ""

    def _read(self, epoch: int) -> tuple[str, dict[str, torch.Tensor]]:
        """``(problem, state)``: the weights if the file holds those of ``epoch`` and fits the model."""
        path = self.path
        if not path.is_file():
            return f"{path} is missing", {}
        try:
            saved = read_metadata(path).get("epoch")
            full = distributed.load_full_state(self.model, path)
        except Exception as e:  # noqa: BLE001 - any unreadable file means: keep the last weights
            return f"{path} cannot be read ({e})", {}
        if saved != str(epoch):
            return f"{path} holds the weights of epoch {saved}, not of the best epoch {epoch}", {}
        expected = set(self.model.state_dict())
        if set(full) != expected:
            return f"{path} does not fit the model ({len(set(full) ^ expected)} tensor names differ)", {}
        return "", full


def local(t: torch.Tensor, full: bool = False) -> torch.Tensor:
    """A DTensor's local shard (``full``: the whole tensor, a collective); other tensors as they are."""
    if hasattr(t, "to_local"):
        return t.full_tensor() if full else t.to_local()  # type: ignore[attr-defined,no-any-return]
    return t
