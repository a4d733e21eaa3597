"""The training loop: steps, evaluation, checkpoints, exact resume, SIGTERM and non-finite stops.

Exact resume rests on four rules: the visiting order of epoch ``e`` is ``permutation(seed, e)``;
a sample's augmentation is drawn from ``(seed, e, sample)`` (in the loader's workers); the other
randomness of step ``s`` on rank ``r`` (dropout) is seeded from ``(seed, s, r)``; and a checkpoint
stores the epoch, the batches done in it, and the optimizer, scheduler and grad-scaler states. A run
stopped anywhere and resumed therefore replays exactly the same steps, with any number of workers.

The loop's state lives in small parts (:mod:`specc.train.parts`), each with ``state_dict()`` /
``load_state_dict()``: :class:`~specc.train.parts.Progress` (steps, epoch rows, running loss), the
sampler :class:`~specc.train.batches.TrainBatches` (epoch and batches done in it),
:class:`~specc.train.parts.EarlyStopper` and :class:`~specc.train.parts.Precision` (autocast and the
grad scaler). :meth:`Trainer.parts` names them; a checkpoint stores each under its name.
:class:`~specc.train.parts.NonFiniteGuard` and :class:`~specc.train.parts.BestWeights` have no
checkpointed state. The trainer itself sets up model, data, optimizer and the processes, and runs
the steps.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from specc.data import Augmenter, DataBudget, Dataset, Split, make_augmenter
from specc.data.images import ImageSplit
from specc.errors import NonFiniteError
from specc.lang.train_config import TrainConfig
from specc.train import checkpoint as ckpt
from specc.train import distributed
from specc.train.batches import (
    Batch,
    EvalBatches,
    ModelIO,
    SplitDataset,
    TrainBatches,
    make_loader,
    resolve_workers,
    unpack,
)
from specc.train.distributed import Dist
from specc.train.objectives import EvalSums, loss_name, make_loss, metric_names
from specc.train.optim import make_optimizer, make_scheduler
from specc.train.parts import BestWeights, EarlyStopper, NonFiniteGuard, Precision, Progress
from specc.train.report import RunReport
from specc.weights import load_state

BEST_WEIGHTS = "best.safetensors"


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop saves at the next step boundary. A second SIGINT aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Outcome:
    status: str  # "completed", "early_stopped", "interrupted"
    step: int
    final: dict[str, Any] | None
    checkpoint: Path | None = None
    signum: int | None = None  # the signal that interrupted the run

    @property
    def exit_code(self) -> int:
        """0 for a finished run; 128 + the signal number for an interrupted one (143 SIGTERM, 130
        SIGINT), as shells report a process the signal stopped, so ``specc train && specc export``
        never exports an unfinished model and torchrun restarts an interrupted worker."""
        if self.status != "interrupted":
            return 0
        return 128 + (self.signum if self.signum is not None else signal.SIGTERM)


class Trainer:
    """Trains ``model`` on ``ds`` as ``cfg`` says; rank 0 writes into ``run``."""

    def __init__(
        self,
        model: nn.Module,
        io: ModelIO,
        ds: Dataset,
        cfg: TrainConfig,
        run: Path,
        device: torch.device,
        dist: Dist,
        report: RunReport,
    ) -> None:
        self.model, self.io, self.ds, self.cfg, self.run = model, io, ds, cfg, run
        self.device, self.dist, self.report = device, dist, report
        self.loss_kind = loss_name(cfg, ds.task)
        self.loss_fn, self.count_fn = make_loss(self.loss_kind, cfg)
        self.sums = EvalSums(metric_names(cfg, ds.task))
        self.budget = DataBudget(cfg.max_data_bytes, cfg.max_image_pixels)
        self.budget.check(
            f"a batch of {cfg.batch_size} samples of shape {ds.sample_shape}",
            (cfg.batch_size, *ds.sample_shape),
            4,
            "; lower train.batch_size, or give the spec a smaller input",
        )
        if cfg.eval_batch_size is not None:
            self.budget.check(
                f"an evaluation batch of {cfg.eval_batch_size} samples of shape {ds.sample_shape}",
                (cfg.eval_batch_size, *ds.sample_shape),
                4,
                "; lower train.eval_batch_size",
            )
        self.pin = cfg.pin_memory if cfg.pin_memory is not None else device.type == "cuda"
        self.sampler = TrainBatches(len(ds.train), cfg.batch_size, cfg.seed, dist.rank, dist.world)
        self.workers = resolve_workers(cfg.num_workers, ds.train, dist.world)
        self.loader = make_loader(
            SplitDataset(ds.train, ds.task, io, self._augmenter()),
            self.sampler,
            self.workers,
            prefetch_factor=cfg.prefetch_factor,
            pin_memory=self.pin,
            persistent=True,
        )
        self.spe = self.sampler.steps
        self.total_steps = min(cfg.max_steps or math.inf, (cfg.epochs or math.inf) * self.spe)
        self.fsdp = cfg.fsdp and dist.enabled
        self._build_optimizer()
        self.constant_lr = cfg.schedule == "none" and cfg.warmup_steps == 0
        self.progress = Progress(self._eval_batch(ds.sample_shape))
        self.early_stopping = EarlyStopper(cfg.early_stopping)
        self.precision = Precision(cfg.amp, device)
        self.guard = NonFiniteGuard(cfg.grad_clip, check_grads=not self.precision.scales_grads, device=device)
        self.best = BestWeights(run / BEST_WEIGHTS, model, dist, fsdp=self.fsdp)
        self.net: nn.Module = model
        self.ddp: Any = None
        self._pending_optim: dict[str, Any] | None = None
        self._last_val: tuple[int, dict[str, float]] | None = None  # (step, metrics) of the last validation

    def parts(self) -> dict[str, ckpt.Stateful]:
        """The loop's state a checkpoint stores besides model, optimizer, scheduler and RNG, by name."""
        return {
            "progress": self.progress,
            "sampler": self.sampler,
            "early_stopping": self.early_stopping,
            "grad_scaler": self.precision,
        }

    def _augmenter(self) -> Augmenter | None:
        """The training augmentation; arrays held standardised are jittered in pixel space."""
        cfg, pre = self.cfg, self.ds.preprocess
        pixels = isinstance(self.ds.train, ImageSplit)  # augmented before standardisation
        stats = not pixels and pre.get("kind") == "image"
        mean, std = pre.get("mean"), pre.get("std")
        return make_augmenter(
            cfg.augment,
            cfg.seed,
            crop_padding=cfg.crop_padding,
            scale=(cfg.resized_crop_scale[0], cfg.resized_crop_scale[1]),
            jitter=cfg.jitter,
            mean=[float(v) for v in mean] if stats and isinstance(mean, list) else None,
            std=[float(v) for v in std] if stats and isinstance(std, list) else None,
            clip=pre.get("kind") == "image",
        )

    def _build_optimizer(self) -> None:
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.param_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.opt = make_optimizer(self.params, self.cfg, self.device)
        self.sched = make_scheduler(self.opt, self.cfg, int(self.total_steps))

    # ------------------------------------------------------------------------------ setup

    def resume(self) -> int | None:
        """Restore the newest valid checkpoint of the run; returns its step (None: nothing to resume)."""
        path = ckpt.find_latest_checkpoint(self.run)
        if path is None:
            return None
        weights, state = ckpt.load_checkpoint(path, verify=False)
        # FSDP: into the whole model, sharded afterwards by wrap(); every tensor checked first
        load_state(self.model, weights, path, hint="the spec differs from the run's: train into a new --out")
        ckpt.load_parts(path, state, self.parts())
        if self.fsdp:  # loaded into the sharded optimizer by wrap()
            self._pending_optim = distributed.optim_state_by_name(state["optimizer"], self.param_names)
        else:
            self.opt.load_state_dict(distributed.optim_state_by_index(state["optimizer"], self.param_names))
        self.sched.load_state_dict(state["scheduler"])
        ckpt.restore_rng_state(state["rng"])
        return self.progress.step

    def wrap(self) -> None:
        """DDP (after loading weights: DDP broadcasts rank 0's) or FSDP2, and torch.compile."""
        net: nn.Module = self.model
        if self.fsdp:
            self._shard()
        elif self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = self.ddp = DDP(net, device_ids=ids)
        if self.cfg.compile:
            net = torch.compile(net)  # type: ignore[assignment]
        self.net = net

    def _shard(self) -> None:
        """FSDP2: shard the model in place, then rebuild the optimizer and scheduler on the shards."""
        sched_state = self.sched.state_dict()
        units = distributed.fsdp_shard(self.model, self.device)
        self._build_optimizer()
        if self._pending_optim is not None:
            distributed.fsdp_load_optim_state(self.model, self.opt, self._pending_optim)
            self._pending_optim = None
        self.sched.load_state_dict(sched_state)
        self.report.log(f"fsdp: parameters sharded over {self.dist.world} processes ({units} blocks + root)")

    def model_state(self) -> dict[str, torch.Tensor]:
        """The model's full state dict (FSDP: gathered on rank 0, empty elsewhere; every rank must call)."""
        return distributed.fsdp_model_state(self.model) if self.fsdp else self.model.state_dict()

    # ------------------------------------------------------------------------------ loop

    def fit(self, stop: StopRequest) -> Outcome:
        try:
            return self._fit(stop)
        finally:
            self._stop_workers()

    def _stop_workers(self) -> None:
        """End the train loader's persistent workers now. They ignore SIGTERM (the main process
        owns it), so if they were left to the interpreter's exit, multiprocessing's exit handler
        would terminate() them in vain and then wait forever. ``_shutdown_workers`` is what the
        loader's own iterator runs when it is collected; here it runs at a known point."""
        iterator = getattr(self.loader, "_iterator", None)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
            self.loader._iterator = None

    def _fit(self, stop: StopRequest) -> Outcome:
        wall = time.perf_counter()
        while not self._done():
            rate, stopped = self._epoch(stop)
            if stopped:
                return Outcome("interrupted", self.progress.step, None, self._save(), stop.signum)
            if self.sampler.epoch_done or (self._done() and self.sampler.position > 0):
                self._end_epoch(rate)  # a last partial epoch (max_steps) gets its row too
        weights_epoch = self._restore_best()
        final = self._final(time.perf_counter() - wall, weights_epoch)
        status = "early_stopped" if self.early_stopping.stopped else "completed"
        return Outcome(status, self.progress.step, final)

    def _epoch(self, stop: StopRequest) -> tuple[float, bool]:
        """The steps of the current epoch from where the sampler stands; returns (samples/s, stop
        requested)."""
        order, size = self.sampler, self.cfg.batch_size
        self.report.start_epoch(order.epoch, self.cfg.epochs, self.spe, order.position)
        t0, samples, rate = time.perf_counter(), 0, 0.0
        try:
            for raw in self.loader:  # the epoch's batches not trained on yet
                loss, stopping = self._step(unpack(raw, self.device, self.io), stop)
                samples += min(size, order.n - order.position * size)  # the global batch's samples
                order.advance()
                rate = samples / max(time.perf_counter() - t0, 1e-9)
                self.report.step(self.progress.step, order.epoch, loss, rate, self._lr())
                if stopping:
                    return rate, True
                if self.cfg.checkpoint_every and self.progress.step % self.cfg.checkpoint_every == 0:
                    self._save()
                if self._done():
                    break
        finally:
            self.report.end_epoch()
        return rate, False

    def _lr(self) -> float:
        return float(self.sched.get_last_lr()[0])

    def _done(self) -> bool:
        return self.early_stopping.stopped or self.progress.step >= self.total_steps

    def _step(self, batch: Batch, stop: StopRequest) -> tuple[float, bool]:
        """One optimizer step on this rank's share of a global batch: forward, loss and backward
        (:meth:`_backward`), the non-finite check, the optimizer step, progress. Returns (local mean
        loss, stop requested)."""
        self._seed_step(self.progress.step)
        xs, y = batch
        norm = self._target_count(y)
        if not self.model.training:
            self.net.train()
        self.opt.zero_grad(set_to_none=True)
        total = self._backward(xs, y, norm)
        self.precision.unscale_(self.opt)
        bad, stopping = self._agree(self.guard.flag(total, self.params), stop.signum is not None)
        total_f, norm_f, bad_f = torch.stack([total, norm, bad]).tolist()
        if bad_f:
            self._nonfinite(total_f, norm_f)
        self.precision.step(self.opt)
        if not self.constant_lr:
            self.sched.step()
        count = norm_f / self.dist.world
        self.progress.add_step(total_f, count)
        return total_f / max(count, 1.0), stopping

    def _target_count(self, y: torch.Tensor) -> torch.Tensor:
        """The global batch's target count (summed over the ranks), at least 1."""
        norm = self.count_fn(y)
        return (self.dist.all_sum(norm.reshape(1))[0] if self.dist.enabled else norm).clamp_min(1.0)

    def _agree(self, bad: torch.Tensor, stopping: bool) -> tuple[torch.Tensor, bool]:
        """One all-reduce, so that every rank stops (or fails) at the same step."""
        if not self.dist.enabled:
            return bad, stopping
        flags = self.dist.all_max(torch.stack([bad, torch.tensor(float(stopping), device=self.device)]))
        return flags[0], bool(flags[1])

    def _backward(self, xs: tuple[torch.Tensor, ...], y: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        """Forward/backward over ``grad_accum`` micro-batches; returns the local loss sum (detached).

        Each micro-batch's loss sum is divided by the global target count (times the world size,
        which DDP's gradient averaging divides out), so any split gives the global-batch gradient.
        """
        total = torch.zeros((), device=self.device)
        k = self.cfg.grad_accum
        micro = list(zip(*(torch.tensor_split(t, k) for t in (*xs, y)), strict=True)) if k > 1 else [(*xs, y)]
        for i, part in enumerate(micro):
            if self.fsdp and len(micro) > 1:  # reduce-scatter once, after the last micro-batch
                self.model.set_requires_gradient_sync(i == len(micro) - 1)  # type: ignore[operator]
            sync = self.ddp is None or i == len(micro) - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                loss_sum = self._forward_loss(part[:-1], part[-1])
                self.precision.backward(loss_sum * (self.dist.world / norm))
            total += loss_sum.detach()
        return total

    def _seed_step(self, step: int) -> None:
        seed = (self.cfg.seed * 1_000_003 + step) * 1009 + self.dist.rank
        torch.default_generator.manual_seed(seed % (2**63))  # torch.manual_seed would also queue CUDA seeding
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed % (2**63))

    def _forward_loss(self, xs: tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
        xs = self._prepare(xs)
        with self.precision.autocast():
            out = self.net(*xs)
        if isinstance(out, tuple):
            out = out[0]
        return self.loss_fn(out, y)

    def _prepare(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        first = xs[0]
        if self.cfg.channels_last and first.dim() == 4:
            first = first.contiguous(memory_format=torch.channels_last)
        return (first, *xs[1:])

    def _nonfinite(self, total: float, norm: float) -> NoReturn:
        """Stop the run before the step is applied: ``failed: ...`` in metrics.json, exit code 5."""
        order = self.sampler
        where = f"step {self.progress.step + 1} (epoch {order.epoch + 1}, batch {order.position + 1})"
        what = self.guard.describe(self.model.named_parameters(), total, norm, where)
        newest = ckpt.find_latest_checkpoint(self.run)
        kept = (
            f"the newest checkpoint ({newest.name}) holds the last finite weights"
            if newest
            else "no checkpoint was saved yet"
        )
        self.report.write_metrics(self.progress.history, None, f"failed: {what}")
        raise NonFiniteError(
            f"{what}; stopped before applying it; {kept}. "
            "Lower train.lr, set train.grad_clip, or check the data and the spec"
        )

    # ------------------------------------------------------------------------------ epochs

    def _end_epoch(self, rate: float) -> None:
        """The epoch's row (validation metrics included), early stopping, metrics files, a checkpoint."""
        val = self.evaluate(self.ds.val) if len(self.ds.val) else {}
        self._last_val = (self.progress.step, val)
        row = self.progress.end_epoch(self.sampler.epoch, val, self._lr(), rate)
        self.sampler.next_epoch()
        es = self.cfg.early_stopping
        if self.early_stopping.update(row) and es is not None and es.restore_best:
            self.best.save(row["epoch"])
        if es is not None and self.early_stopping.stopped:
            self.report.log(f"early stopping: {es.metric} has not improved for {es.patience} epochs")
        shown = " ".join(
            f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "step", "lr", "samples_per_s")
        )
        self.report.log(f"epoch {row['epoch']} step {row['step']}: {shown} ({rate:,.0f} samples/s)")
        self.report.write_metrics(self.progress.history, None, "running", curves=False)  # curves: at the end
        self._save()

    def _restore_best(self) -> int | None:
        """Early stopping's ``restore_best``: load the best epoch's weights on every rank before the
        final evaluation and save. Returns the epoch whose weights the model now holds (None:
        unknown, the last epoch's)."""
        es, best, last = self.cfg.early_stopping, self.early_stopping, self.sampler.epoch
        if es is None or not es.restore_best or best.best_epoch is None:
            return None
        if best.best_epoch == last:
            return last  # the last epoch is the best one
        problem = self.best.load(best.best_epoch, self.device)
        if problem:
            self.report.log(f"restore_best: {problem}; keeping the last epoch's weights (epoch {last})")
            return None
        value = best.best if best.best is not None else math.nan
        self.report.log(
            f"restore_best: weights of epoch {best.best_epoch} ({es.metric} {value:.4f}), not of the "
            f"last epoch {last}"
        )
        return best.best_epoch

    @torch.no_grad()
    def evaluate(self, split: Split) -> dict[str, float]:
        """Loss and metrics over a split (sharded over ranks, read through a DataLoader, sums all-reduced)."""
        acc = self.sums.zeros(self.device)
        self.model.eval()
        ignore = self.cfg.ignore_index if self.loss_kind == "lm" else None
        for batch in self._eval_loader(split):
            xs, y = unpack(batch, self.device, self.io)
            with self.precision.autocast():
                out = self.model(*self._prepare(xs))
            out = out[0] if isinstance(out, tuple) else out
            self.sums.update(acc, self.loss_fn(out, y), self.count_fn(y), out.float(), y, ignore)
        return self.sums.finish(self.dist.all_sum(acc), self.loss_kind)

    def _eval_batch(self, sample_shape: tuple[int, ...], legacy: bool = False) -> int:
        """The evaluation batch of a new run: on the CPU the training batch (a conv net's activations
        at 256 samples outgrow the caches: a small ResNet validated 2.7x slower in batches of 256
        than of 64, benchmarks/RESULTS.md), on an accelerator up to 256 within the data budget, never
        less than ``batch_size``. ``legacy``: the rule before the choice was recorded in checkpoints
        (up to 256 everywhere), for a run resumed from such a checkpoint. ``train.eval_batch_size``
        overrides both."""
        if self.cfg.eval_batch_size is not None:
            return self.cfg.eval_batch_size
        sample_bytes = 4 * math.prod(sample_shape) or 1
        if self.device.type == "cpu" and not legacy:
            return self.cfg.batch_size
        return max(self.cfg.batch_size, min(256, self.budget.max_bytes // sample_bytes))

    def _eval_loader(self, split: Split) -> Iterator[Any]:
        """Batches of the run's evaluation batch size (:meth:`_eval_batch`); with FSDP every rank
        runs the same number of batches (each forward is a collective)."""
        size = self.progress.eval_batch or self._eval_batch(split.sample_shape, legacy=True)
        sampler = EvalBatches(len(split), size, self.dist.rank, self.dist.world, uniform=self.fsdp)
        workers = resolve_workers(self.cfg.num_workers, split, self.dist.world)
        ds = SplitDataset(split, self.ds.task, self.io)
        yield from make_loader(
            ds, sampler, workers, prefetch_factor=self.cfg.prefetch_factor, pin_memory=self.pin
        )

    def _final(self, wall: float, weights_epoch: int | None = None) -> dict[str, Any]:
        rates = [row["samples_per_s"] for row in self.progress.history]
        final: dict[str, Any] = {
            "step": self.progress.step,
            "epochs": self.sampler.epoch,
            "wall_s": wall,
            "samples_per_s": sum(rates) / len(rates) if rates else None,
        }
        if weights_epoch is not None:
            final["weights_of_epoch"] = weights_epoch  # restore_best: whose weights the metrics and files are
        for name, split in (("val", self.ds.val), ("test", self.ds.test)):
            if len(split):
                metrics = self._reused_val(weights_epoch) if name == "val" else None
                final.update({f"{name}_{k}": v for k, v in (metrics or self.evaluate(split)).items()})
        return final

    def _reused_val(self, weights_epoch: int | None) -> dict[str, float] | None:
        """The last epoch's validation metrics when the model still holds the weights they measured
        (no step since, no restore_best to another epoch's weights): evaluating again gives the same."""
        if self._last_val is None or self._last_val[0] != self.progress.step:
            return None
        if weights_epoch is not None and weights_epoch != self.sampler.epoch:
            return None
        return self._last_val[1] or None

    # ------------------------------------------------------------------------------ checkpoints

    def _save(self) -> Path | None:
        """The checkpoint of this step: model, optimizer, scheduler, the parts by name (and the RNG
        states, which :func:`~specc.train.checkpoint.save_checkpoint` adds). Rank 0 writes; with
        FSDP every rank gathers."""
        if self.fsdp:  # gathering is a collective: every rank takes part, rank 0 writes
            weights, optim = self.model_state(), distributed.fsdp_optim_state(self.model, self.opt)
        elif self.dist.is_main:
            weights, optim = self.model.state_dict(), self.opt.state_dict()
        if not self.dist.is_main:
            return None
        state = {
            "optimizer": optim,
            "scheduler": self.sched.state_dict(),
            "config": self.cfg.model_dump_json(),
            **ckpt.part_states(self.parts()),
        }
        return ckpt.save_checkpoint(
            self.run, self.progress.step, weights, state, keep=self.cfg.keep_checkpoints
        )
