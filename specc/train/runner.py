"""``specc train``: spec + data + config → a run folder (what the CLI command calls).

Run folder (rank 0 writes it)::

    RUN/spec.yaml          the resolved spec (``specc render``)
    RUN/train.yaml         the training config, every default filled in
    RUN/run.json           data source, device, world size, init-from, freeze, versions
    RUN/data.json          preprocessing and class labels (read by the exporter)
    RUN/train.log          the log lines
    RUN/metrics.csv/.json  per epoch and final metrics; curves.png
    RUN/checkpoints/       crash-safe checkpoints (specc.train.checkpoint)
    RUN/model.safetensors  final weights
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specc.atomic import atomic_write_text
from specc.data import Dataset
from specc.errors import DataError, ShapeError, UsageError
from specc.graph import Graph, infer
from specc.train import checkpoint as ckpt
from specc.train import distributed
from specc.train.batches import ModelIO, check_fit, load_for_model, write_data_json
from specc.train.config import TrainConfig, load_train_config
from specc.train.finetune import freeze, init_from
from specc.train.loop import Outcome, StateOnly, StopRequest, Trainer
from specc.train.report import RunReport

FINAL_WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class TrainRequest:
    """What ``specc train`` was asked (CLI options)."""

    spec: Path
    data: str
    out: Path
    sets: tuple[str, ...] = ()
    scale: str | None = None
    config: Path | None = None
    resume: bool = False
    init_from: Path | None = None
    freeze: tuple[str, ...] = ()
    device: str = "auto"
    quiet: bool = False
    fsdp: bool = False
    label: str | None = None


@dataclass
class Session:
    """A prepared model + data + config, ready for :func:`run_session` (tests build these directly)."""

    model: nn.Module
    io: ModelIO
    ds: Dataset
    cfg: TrainConfig
    run: Path
    device: torch.device
    dist: distributed.Dist = field(default_factory=distributed.Dist)
    quiet: bool = True
    resume: bool = False
    labels: list[str] | None = None
    spec_text: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def pick_device(kind: str, dist: distributed.Dist) -> torch.device:
    if kind not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {kind!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    if kind == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dist.local_rank)


def train(req: TrainRequest) -> Outcome:
    """Load the spec, config and data, then train (see :func:`run_session`).

    SIGTERM/SIGINT handlers go up first, so a signal during set-up stops at the first step boundary.
    """
    with StopRequest() as stop:
        return _train(req, stop)


def _train(req: TrainRequest, stop: StopRequest) -> Outcome:
    from specc.api import check
    from specc.nn import build
    from specc.summary import render

    graph = check(req.spec, req.sets, req.scale)
    cfg = load_train_config(
        graph.document.raw if graph.document else None, str(req.spec), req.config, req.sets
    )
    if req.fsdp and not cfg.fsdp:
        try:
            cfg = TrainConfig.model_validate({**cfg.model_dump(), "fsdp": True})
        except ValueError as exc:
            raise UsageError(f"--fsdp: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}") from exc
    wanted = "cuda" if req.device == "cuda" or (req.device == "auto" and torch.cuda.is_available()) else "cpu"
    dist = distributed.init(wanted)
    device = pick_device(req.device, dist)
    resume = req.resume or distributed.restart_count() > 0
    _check_out(req.out, resume)
    io = ModelIO.from_graph(graph)
    ds = load_for_model(
        req.data,
        io,
        seed=cfg.seed,
        seq_len=cfg.seq_len or nominal_seq_len(graph),
        num_samples=cfg.num_samples,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        label=req.label,
        max_data_bytes=cfg.max_data_bytes,
        max_image_pixels=cfg.max_image_pixels,
    )
    bind_sequence_dims(graph, ds)
    _determinism(cfg)
    model = build(graph, seed=cfg.seed)
    notes = []
    if req.init_from is not None:
        notes += init_from(model, req.init_from).lines()
    if req.freeze:
        frozen = freeze(model, req.freeze)
        notes.append(f"froze {len(frozen)} parameters: {', '.join(frozen)}")
    info = {
        "spec": str(req.spec),
        "data": req.data,
        "data_options": ds.options,
        "sets": list(req.sets),
        "scale": req.scale,
        "config": str(req.config) if req.config else None,
        "init_from": str(req.init_from) if req.init_from else None,
        "freeze": list(req.freeze),
    }
    session = Session(
        model, io, ds, cfg, req.out, device, dist, req.quiet, resume, graph.labels, render(graph), info, notes
    )
    try:
        return run_session(session, stop)
    finally:
        distributed.shutdown(dist)


def nominal_seq_len(graph: Graph) -> int | None:
    """The default sequence length: the nominal size (``dims:``) of the first input's first axis."""
    first = next(iter(graph.inputs.values()))
    axis = first.shape[0] if first.shape else None
    return graph.dims.get(axis) if isinstance(axis, str) else None


def bind_sequence_dims(graph: Graph, ds: Dataset) -> None:
    """Re-run shape inference with the data's real sequence lengths, so a spec that cannot take them
    (e.g. a learned position table shorter than the windows) is refused before training."""
    types = list(graph.inputs.values())
    sizes = {d: n for d, n in zip(types[0].shape, ds.sample_shape, strict=False) if isinstance(d, str)}
    if ds.task == "seq2seq" and len(types) > 1 and types[1].shape and isinstance(types[1].shape[0], str):
        sizes[types[1].shape[0]] = ds.train.target_shape[0]
    if not sizes:
        return
    graph.dims.update(sizes)
    try:
        infer(graph)
    except ShapeError as exc:
        told = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise DataError(
            f"data '{ds.name}' ({told}) does not fit the spec: "
            + "; ".join(d.message for d in exc.diagnostics)
        ) from None


def _check_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if resume:
        return
    used = [p.name for p in (out / ckpt.CHECKPOINTS_DIR, out / FINAL_WEIGHTS) if p.exists()]
    if used:
        raise UsageError(
            f"--out {out} already holds a run ({', '.join(used)}); pass --resume to continue it "
            "or choose another --out"
        )
    existing = out.absolute()
    while not existing.exists():  # fail now, before loading data, if the folder cannot be made
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot create the run folder ({existing} is not a writable folder)")


def _determinism(cfg: TrainConfig) -> None:
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def run_session(s: Session, stop: StopRequest | None = None) -> Outcome:
    """Train a prepared session: write the run files, resume if asked, fit, save the final weights."""
    check_fit(s.ds, s.io)
    try:
        s.run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {s.run}: cannot create the run folder ({exc.strerror})") from None
    report = RunReport(s.run, write=s.dist.is_main, quiet=s.quiet, log_every=s.cfg.log_every)
    if s.dist.is_main:
        ckpt.clean_stale(s.run)
        _write_run_files(s)
    _prepare_model(s, report)
    trainer = Trainer(s.model, s.io, s.ds, s.cfg, s.run, s.device, s.dist, report)
    _log_start(s, report)
    if s.resume:
        step = trainer.resume()
        report.log(
            f"resumed from step {step}" if step is not None else f"no checkpoint in {s.run}: starting fresh"
        )
    trainer.wrap()
    try:
        with contextlib.nullcontext(stop) if stop is not None else StopRequest() as active:
            outcome = trainer.fit(active)
        if outcome.status == "interrupted":
            report.write_metrics(trainer.state.history, None, "interrupted")
            report.log(f"saved checkpoint at step {outcome.step}")
            if trainer.fsdp:
                s.dist.barrier()  # as in _finish: rank 0 may still be writing what all ranks gathered
            return outcome
        _finish(s, trainer, outcome, report)
    finally:
        report.close()
    return outcome


def _prepare_model(s: Session, report: RunReport) -> None:
    if s.cfg.sync_batchnorm and s.dist.enabled:
        swapped = sync_batchnorm(s.model, cuda=s.device.type == "cuda")
        report.log(f"sync_batchnorm: {swapped} BatchNorm layers synchronised across processes")
    if s.cfg.fsdp and not s.dist.enabled:
        report.log("fsdp: one process, nothing to shard; training unsharded")
    if not (s.cfg.fsdp and s.dist.enabled):  # FSDP moves each rank's shards to the device itself
        s.model.to(s.device)
    if s.cfg.channels_last:
        s.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def sync_batchnorm(model: nn.Module, cuda: bool = False) -> int:
    """Replace BatchNorm layers by synchronised ones in place (also in a CompiledModel's forward plan):
    torch's SyncBatchNorm on CUDA, :class:`~specc.train.distributed.GroupBatchNorm` on CPU (gloo)."""
    from dataclasses import replace

    swaps: dict[int, nn.Module] = {}
    synced = (nn.SyncBatchNorm, distributed.GroupBatchNorm)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, synced):
            new = distributed.to_sync_batchnorm(module, cuda)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            parent.add_module(name.rsplit(".", 1)[-1], new)
            swaps[id(module)] = new
    plan = getattr(model, "_plan", None)
    if plan is not None:
        model._plan = [replace(st, module=swaps.get(id(st.module), st.module)) for st in plan]  # type: ignore[assignment]
    return len(swaps)


def _write_run_files(s: Session) -> None:
    import yaml

    if s.spec_text is not None:
        atomic_write_text(s.run / "spec.yaml", s.spec_text)
    atomic_write_text(s.run / "train.yaml", yaml.safe_dump(s.cfg.model_dump(mode="json"), sort_keys=False))
    info = {
        **s.info,
        "device": str(s.device),
        "world_size": s.dist.world,
        "torch": torch.__version__,
        "resume": s.resume,
    }
    atomic_write_text(s.run / "run.json", json.dumps(info, indent=2) + "\n")
    write_data_json(s.run, s.ds, s.io, s.labels)


def _log_start(s: Session, report: RunReport) -> None:
    ds = s.ds
    classes = (
        f", {ds.num_classes} classes"
        if ds.task == "classification"
        else (f", vocabulary {ds.num_classes}" if ds.num_classes else "")
    )
    report.log(
        f"data {ds.name}: {ds.task}{classes}; train {len(ds.train)} / val {len(ds.val)} / "
        f"test {len(ds.test)} samples of shape {tuple(ds.sample_shape)}"
    )
    for line in [*ds.notes, *check_fit(ds, s.io), *s.notes]:
        report.log(f"  {line}")
    params = sum(p.numel() for p in s.model.parameters())
    report.log(
        f"model: {params:,} parameters on {s.device}"
        + (f", {s.dist.world} processes" if s.dist.enabled else "")
    )


def _finish(s: Session, trainer: Trainer, outcome: Outcome, report: RunReport) -> None:
    from specc.nn import save_weights

    report.write_metrics(trainer.state.history, outcome.final, outcome.status)
    if trainer.fsdp:
        full = trainer.model_state()  # a collective: every rank gathers, rank 0 holds the result
        if s.dist.is_main:
            save_weights(StateOnly(full), s.run / FINAL_WEIGHTS)
        s.dist.barrier()  # the others must not tear the process group down while rank 0 writes
    elif s.dist.is_main:
        save_weights(s.model, s.run / FINAL_WEIGHTS)
    final = outcome.final or {}
    shown = ", ".join(
        f"{k} {v:.4f}"
        for k, v in final.items()
        if isinstance(v, float) and (k.startswith("test_") or k.startswith("val_"))
    )
    report.log(f"done ({outcome.status}) at step {outcome.step}: {shown}")
    report.log(f"weights: {s.run / FINAL_WEIGHTS}")


def train_module(
    model: nn.Module,
    io: ModelIO,
    ds: Dataset,
    cfg: TrainConfig,
    run: Path,
    *,
    resume: bool = False,
    device: str = "cpu",
    quiet: bool = True,
) -> Outcome:
    """Train any ``nn.Module`` whose inputs/output ``io`` describes (library use and tests)."""
    dist = distributed.Dist()
    return run_session(Session(model, io, ds, cfg, run, pick_device(device, dist), dist, quiet, resume))
