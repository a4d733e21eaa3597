"""The training loop: steps, evaluation, checkpoints, exact resume, SIGTERM and non-finite stops.

Exact resume rests on four rules: the visiting order of epoch ``e`` is ``permutation(seed, e)``;
a sample's augmentation is drawn from ``(seed, e, sample)`` (in the loader's workers); the other
randomness of step ``s`` on rank ``r`` (dropout) is seeded from ``(seed, s, r)``; and a checkpoint
stores the epoch, the batches done in it, and the optimizer, scheduler and grad-scaler states. A run
stopped anywhere and resumed therefore replays exactly the same steps, with any number of workers.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specc.data import Augmenter, DataBudget, Dataset, Split, make_augmenter
from specc.data.images import ImageSplit
from specc.errors import NonFiniteError
from specc.lang.train_config import TrainConfig
from specc.nn import save_weights
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
    steps_per_epoch,
    unpack,
)
from specc.train.distributed import Dist
from specc.train.objectives import EvalSums, loss_name, make_loss, metric_names
from specc.train.optim import make_optimizer, make_scheduler
from specc.train.report import RunReport
from specc.weights import load_state

BEST_WEIGHTS = "best.safetensors"


class StateOnly(nn.Module):
    """Hands a gathered state dict to :func:`specc.nn.save_weights` (which calls ``state_dict()``)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._state = state

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return self._state


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
class Progress:
    """Everything of the loop's position that a checkpoint must restore (plus history for the files)."""

    step: int = 0
    epoch: int = 0
    position: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    loss_sum: float = 0.0
    loss_count: float = 0.0
    best_epoch: int | None = None


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
        self.spe = steps_per_epoch(len(ds.train), cfg.batch_size)
        self.total_steps = min(cfg.max_steps or math.inf, (cfg.epochs or math.inf) * self.spe)
        self.fsdp = cfg.fsdp and dist.enabled
        self._build_optimizer()
        self.constant_lr = cfg.schedule == "none" and cfg.warmup_steps == 0
        self._one = torch.ones(1, device=device)
        self.scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        self.state = Progress()
        self.net: nn.Module = model
        self.ddp: Any = None
        self._pending_optim: dict[str, Any] | None = None

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
        weights, st = ckpt.load_checkpoint(path, verify=False)
        # FSDP: into the whole model, sharded afterwards by wrap(); every tensor checked first
        load_state(self.model, weights, path, hint="the spec differs from the run's: train into a new --out")
        if self.fsdp:  # loaded into the sharded optimizer by wrap()
            self._pending_optim = distributed.optim_state_by_name(st["optimizer"], self.param_names)
        else:
            self.opt.load_state_dict(distributed.optim_state_by_index(st["optimizer"], self.param_names))
        self.sched.load_state_dict(st["scheduler"])
        if self.scaler is not None and st.get("grad_scaler"):
            self.scaler.load_state_dict(st["grad_scaler"])
        ckpt.restore_rng_state(st["rng"])
        extra = st["extra"]
        self.state = Progress(
            st["step"],
            st["epoch"],
            st["position"],
            list(extra["history"]),
            extra["best"],
            extra["bad_epochs"],
            extra["stopped_early"],
            extra["loss_sum"],
            extra["loss_count"],
            extra.get("best_epoch"),
        )
        return int(st["step"])

    def wrap(self) -> None:
        """DDP (after loading weights: DDP broadcasts rank 0's) or FSDP2, and torch.compile."""
        net: nn.Module = self.model
        if self.fsdp:
            self._shard()
        elif self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

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
        st = self.state
        wall = time.perf_counter()
        while not self._done():
            rate, stopped = self._epoch(stop)
            if stopped:
                return Outcome("interrupted", st.step, None, self._save(), stop.signum)
            if st.position >= self.spe or (self._done() and st.position > 0):
                self._end_epoch(rate)  # a last partial epoch (max_steps) gets its row too
        weights_epoch = self._restore_best()
        final = self._final(time.perf_counter() - wall, weights_epoch)
        status = "early_stopped" if st.stopped_early else "completed"
        return Outcome(status, st.step, final)

    def _epoch(self, stop: StopRequest) -> tuple[float, bool]:
        """Steps of the current epoch from ``position``; returns (samples/s, stop requested)."""
        st = self.state
        n, size = len(self.ds.train), self.cfg.batch_size
        self.sampler.set_epoch(st.epoch, st.position)
        self.report.start_epoch(st.epoch, self.cfg.epochs, self.spe, st.position)
        t0, samples, rate = time.perf_counter(), 0, 0.0
        batches = iter(self.loader)
        try:
            while st.position < self.spe and not self._done():
                batch = unpack(next(batches), self.device, self.io)
                loss, stop_now = self._step(batch, stop)
                samples += min(size, n - st.position * size)  # the global batch's samples
                st.position += 1
                rate = samples / max(time.perf_counter() - t0, 1e-9)
                self.report.step(st.step, st.epoch, loss, rate, float(self.sched.get_last_lr()[0]))
                if stop_now:
                    return rate, True
                if self.cfg.checkpoint_every and st.step % self.cfg.checkpoint_every == 0:
                    self._save()
        finally:
            self.report.end_epoch()
        return rate, False

    def _done(self) -> bool:
        st = self.state
        return st.stopped_early or st.step >= self.total_steps

    def _step(self, batch: Batch, stop: StopRequest) -> tuple[float, bool]:
        """One optimizer step on this rank's share of a global batch; returns (local mean loss, stop
        requested)."""
        st = self.state
        self._seed_step(st.step)
        xs, y = batch
        norm = self.count_fn(y)  # the global batch's target count: summed over the ranks
        norm = (self.dist.all_sum(norm.reshape(1))[0] if self.dist.enabled else norm).clamp_min(1.0)
        if not self.model.training:
            self.net.train()
        self.opt.zero_grad(set_to_none=True)
        total = self._backward(xs, y, norm)
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        bad = self._nonfinite_flag(total)
        stopping = stop.signum is not None
        if self.dist.enabled:  # one all-reduce: every rank stops (or fails) at the same step
            flags = self.dist.all_max(torch.stack([bad, torch.tensor(float(stopping), device=self.device)]))
            bad, stopping = flags[0], bool(flags[1])
        total_f, norm_f, bad_f = torch.stack([total, norm, bad]).tolist()
        if bad_f:
            self._nonfinite(total_f, norm_f)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        if not self.constant_lr:
            self.sched.step()
        st.step += 1
        local_count = norm_f / self.dist.world
        st.loss_sum += total_f
        st.loss_count += local_count
        return total_f / max(local_count, 1.0), stopping

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
                loss = loss_sum * (self.dist.world / norm)
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()  # type: ignore[no-untyped-call]
            total += loss_sum.detach()
        return total

    def _nonfinite_flag(self, total: torch.Tensor) -> torch.Tensor:
        """1.0 when the loss or any gradient element is NaN/inf (fp16: the grad scaler handles grads)."""
        found = (~torch.isfinite(total)).float().reshape(())
        if self.cfg.grad_clip:
            gnorm = _local(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip), full=True)
            return found + (~torch.isfinite(gnorm)).float()
        grads = [_local(p.grad) for p in self.params if p.grad is not None]  # FSDP: this rank's shards
        if self.scaler is None and grads:
            flag = torch.zeros(1, device=self.device)
            # one fused pass over every gradient: sets flag on any NaN/inf, multiplies by 1 (no change)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, self._one)
            found = found + flag[0]
        return found

    def _seed_step(self, step: int) -> None:
        seed = (self.cfg.seed * 1_000_003 + step) * 1009 + self.dist.rank
        torch.default_generator.manual_seed(seed % (2**63))  # torch.manual_seed would also queue CUDA seeding
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed % (2**63))

    def _forward_loss(self, xs: tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
        xs = self._prepare(xs)
        with self._autocast():
            out = self.net(*xs)
        if isinstance(out, tuple):
            out = out[0]
        return self.loss_fn(out, y)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _prepare(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        first = xs[0]
        if self.cfg.channels_last and first.dim() == 4:
            first = first.contiguous(memory_format=torch.channels_last)
        return (first, *xs[1:])

    def _nonfinite(self, total: float, norm: float) -> None:
        st = self.state
        where = f"step {st.step + 1} (epoch {st.epoch + 1}, batch {st.position + 1})"
        culprit = next(
            (
                n
                for n, p in self.model.named_parameters()
                if p.grad is not None and not torch.isfinite(_local(p.grad)).all()
            ),
            None,
        )
        loss_text = f"{total / max(norm, 1.0):.4g}"
        if not math.isfinite(total):
            what = f"non-finite loss ({loss_text}) at {where}"
            if culprit:
                what += f"; first non-finite gradient: '{culprit}'"
        elif culprit:
            what = f"non-finite gradient of '{culprit}' at {where} (loss {loss_text})"
        else:
            what = f"the gradient norm overflowed at {where} (loss {loss_text})"
        newest = ckpt.find_latest_checkpoint(self.run)
        kept = (
            f"the newest checkpoint ({newest.name}) holds the last finite weights"
            if newest
            else "no checkpoint was saved yet"
        )
        self.report.write_metrics(st.history, None, f"failed: {what}")
        raise NonFiniteError(
            f"{what}; stopped before applying it; {kept}. "
            "Lower train.lr, set train.grad_clip, or check the data and the spec"
        )

    # ------------------------------------------------------------------------------ epochs

    def _end_epoch(self, rate: float) -> None:
        st = self.state
        val = self.evaluate(self.ds.val) if len(self.ds.val) else {}
        row: dict[str, Any] = {
            "epoch": st.epoch + 1,
            "step": st.step,
            "train_loss": st.loss_sum / max(st.loss_count, 1.0),
        }
        row.update({f"val_{k}": v for k, v in val.items()})
        row.update({"lr": self.sched.get_last_lr()[0], "samples_per_s": rate})
        st.history.append(row)
        st.epoch, st.position, st.loss_sum, st.loss_count = st.epoch + 1, 0, 0.0, 0.0
        self._early_stopping(row)
        shown = " ".join(
            f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "step", "lr", "samples_per_s")
        )
        self.report.log(f"epoch {row['epoch']} step {st.step}: {shown} ({rate:,.0f} samples/s)")
        self.report.write_metrics(st.history, None, "running", curves=False)  # curves: at the end
        self._save()

    def _early_stopping(self, row: dict[str, Any]) -> None:
        es, st = self.cfg.early_stopping, self.state
        if es is None or es.metric not in row:
            return
        value = float(row[es.metric]) * (-1.0 if es.higher_is_better else 1.0)
        if st.best is None or value < st.best - es.min_delta:
            st.best, st.bad_epochs, st.best_epoch = value, 0, int(row["epoch"])
            if es.restore_best:
                self._save_best()
            return
        st.bad_epochs += 1
        if st.bad_epochs >= es.patience:
            st.stopped_early = True
            self.report.log(f"early stopping: {es.metric} has not improved for {es.patience} epochs")

    def _save_best(self) -> None:
        """The weights of the best epoch so far, as ``RUN/best.safetensors`` with the epoch in its
        metadata (rank 0 writes; FSDP gathers them, a collective)."""
        full = self.model_state() if self.fsdp else None
        if self.dist.is_main:
            save_weights(
                StateOnly(full) if full is not None else self.model,
                self.run / BEST_WEIGHTS,
                metadata={"epoch": str(self.state.best_epoch)},
            )

    def _restore_best(self) -> int | None:
        """Early stopping's ``restore_best``: load the best epoch's weights on every rank (rank 0
        reads the file, the others get them by broadcast) before the final evaluation and save.
        Returns the epoch whose weights the model now holds (None: unknown, the last epoch's)."""
        es, st = self.cfg.early_stopping, self.state
        if es is None or not es.restore_best or st.best_epoch is None:
            return None
        if st.best_epoch == st.epoch:
            return st.epoch  # the last epoch is the best one
        path = self.run / BEST_WEIGHTS
        full: dict[str, torch.Tensor] = {}
        problem = ""
        if self.dist.is_main:  # every check before the collectives, so that no rank waits forever
            problem, full = self._read_best(path, st.best_epoch)
        failed = torch.tensor([float(bool(problem))], device=self.device)
        if self.dist.all_max(failed).item():
            self.report.log(
                f"restore_best: {problem or 'rank 0 could not read ' + str(path)}; "
                f"keeping the last epoch's weights (epoch {st.epoch})"
            )
            return None
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(
                self.model,
                dict[str, Any](full),
                options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
            )
        else:
            if self.dist.is_main:
                self.model.load_state_dict(full)
            if self.dist.enabled:
                for t in self.model.state_dict().values():
                    torch.distributed.broadcast(t, 0)
        value = st.best * (-1.0 if es.higher_is_better else 1.0) if st.best is not None else float("nan")
        self.report.log(
            f"restore_best: weights of epoch {st.best_epoch} ({es.metric} {value:.4f}), not of the "
            f"last epoch {st.epoch}"
        )
        return st.best_epoch

    def _read_best(self, path: Path, epoch: int) -> tuple[str, dict[str, torch.Tensor]]:
        """``(problem, state)``: the best weights if ``path`` holds those of ``epoch`` and fits the model."""
        from specc.weights import read_metadata

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

    @torch.no_grad()
    def evaluate(self, split: Split) -> dict[str, float]:
        """Loss and metrics over a split (sharded over ranks, read through a DataLoader, sums all-reduced)."""
        acc = self.sums.zeros(self.device)
        self.model.eval()
        ignore = self.cfg.ignore_index if self.loss_kind == "lm" else None
        for batch in self._eval_loader(split):
            xs, y = unpack(batch, self.device, self.io)
            with self._autocast():
                out = self.model(*self._prepare(xs))
            out = out[0] if isinstance(out, tuple) else out
            self.sums.update(acc, self.loss_fn(out, y), self.count_fn(y), out.float(), y, ignore)
        return self.sums.finish(self.dist.all_sum(acc), self.loss_kind)

    def _eval_loader(self, split: Split) -> Iterator[Any]:
        """Batches of at least ``batch_size`` (up to 256 within the data budget); with FSDP every rank
        runs the same number of batches (each forward is a collective)."""
        sample_bytes = 4 * math.prod(split.sample_shape) or 1
        size = max(self.cfg.batch_size, min(256, self.budget.max_bytes // sample_bytes))
        sampler = EvalBatches(len(split), size, self.dist.rank, self.dist.world, uniform=self.fsdp)
        workers = resolve_workers(self.cfg.num_workers, split, self.dist.world)
        ds = SplitDataset(split, self.ds.task, self.io)
        yield from make_loader(
            ds, sampler, workers, prefetch_factor=self.cfg.prefetch_factor, pin_memory=self.pin
        )

    def _final(self, wall: float, weights_epoch: int | None = None) -> dict[str, Any]:
        rates = [row["samples_per_s"] for row in self.state.history]
        final: dict[str, Any] = {
            "step": self.state.step,
            "epochs": self.state.epoch,
            "wall_s": wall,
            "samples_per_s": sum(rates) / len(rates) if rates else None,
        }
        if weights_epoch is not None:
            final["weights_of_epoch"] = weights_epoch  # restore_best: whose weights the metrics and files are
        for name, split in (("val", self.ds.val), ("test", self.ds.test)):
            if len(split):
                final.update({f"{name}_{k}": v for k, v in self.evaluate(split).items()})
        return final

    # ------------------------------------------------------------------------------ checkpoints

    def _save(self) -> Path | None:
        if self.fsdp:  # gathering is a collective: every rank takes part, rank 0 writes
            weights, optim = self.model_state(), distributed.fsdp_optim_state(self.model, self.opt)
        elif self.dist.is_main:
            weights, optim = self.model.state_dict(), self.opt.state_dict()
        if not self.dist.is_main:
            return None
        st = self.state
        extra = {
            "history": st.history,
            "best": st.best,
            "best_epoch": st.best_epoch,
            "bad_epochs": st.bad_epochs,
            "stopped_early": st.stopped_early,
            "loss_sum": st.loss_sum,
            "loss_count": st.loss_count,
            "config": self.cfg.model_dump_json(),
        }
        state = {
            "optimizer": optim,
            "scheduler": self.sched.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": st.epoch,
            "position": st.position,
            "extra": extra,
        }
        return ckpt.save_checkpoint(self.run, st.step, weights, state, keep=self.cfg.keep_checkpoints)


def _local(t: torch.Tensor, full: bool = False) -> torch.Tensor:
    """A DTensor's local shard (``full``: the whole tensor, a collective); other tensors as they are."""
    if hasattr(t, "to_local"):
        return t.full_tensor() if full else t.to_local()  # type: ignore[attr-defined,no-any-return]
    return t
