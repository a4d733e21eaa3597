"""``specc train``: spec + data + config → a run folder (what the CLI command calls).

The run folder's files and records are the contract :mod:`specc.contracts.run_folder`; rank 0
claims, validates and writes it through :mod:`specc.train.folder` (marker, lock, resume checks,
truthful terminal states). ``specc train --from RUN`` repeats a run from its folder.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specc.api import check
from specc.atomic import atomic_write_bytes
from specc.contracts.run_folder import (
    TOKENIZER_FILE,
    DataSource,
    Invocation,
    RunFolder,
    absolute,
    absolute_source,
    check_out,
)
from specc.data import Dataset
from specc.errors import DataError, NonFiniteError, ShapeError, UsageError
from specc.graph import Graph, infer
from specc.lang.train_config import TrainConfig, load_train_config
from specc.nn import CompiledModel, build, save_weights
from specc.summary import render
from specc.train import checkpoint as ckpt
from specc.train import distributed
from specc.train import folder as run_folder
from specc.train.batches import ModelIO, check_fit, load_for_model
from specc.train.finetune import freeze, init_from
from specc.train.loop import Outcome, StopRequest, Trainer
from specc.train.parts import StateOnly
from specc.train.report import RunReport

FINAL_WEIGHTS = "model.safetensors"
FINISHED = ("completed", "early_stopped")


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
    from_run: Path | None = None
    init_strict: bool = True
    init_map: str | None = None
    update_frozen_norms: bool = False


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
    source: DataSource | None = None
    spec_name: str = ""
    tokenizer: Path | None = None  # a Hugging Face tokenizer.json that came with --init-from


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
    if req.from_run is not None:
        req = from_run(req)
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
    check_out(req.out, resume=resume)
    io = ModelIO.from_graph(graph)
    source = DataSource(
        source=absolute_source(req.data),
        input_shape=list(io.input_shapes[0]),
        input_dtype=io.input_dtypes[0],
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        seq_len=cfg.seq_len or nominal_seq_len(graph),
        num_samples=cfg.num_samples,
        label=req.label,
    )
    ds = load_for_model(
        source.source,
        io,
        seed=source.seed,
        seq_len=source.seq_len,
        num_samples=source.num_samples,
        val_fraction=source.val_fraction,
        test_fraction=source.test_fraction,
        label=source.label,
        max_data_bytes=cfg.max_data_bytes,
        max_image_pixels=cfg.max_image_pixels,
    )
    bind_sequence_dims(graph, ds)
    _determinism(cfg)
    model = build(graph, seed=cfg.seed)
    notes = []
    tokenizer = None
    if req.init_from is not None:
        loaded, origin = init_from(model, req.init_from, strict=req.init_strict, map_name=req.init_map)
        notes += loaded.lines()
        tokenizer = origin.tokenizer
    if req.freeze:
        notes += freeze(model, req.freeze, norms=not req.update_frozen_norms).lines()
    info = {
        "spec": absolute(req.spec),
        "data": source.source,
        "sets": list(req.sets),
        "scale": req.scale,
        "config": absolute(req.config),
        "init_from": absolute(req.init_from),
        "init_strict": req.init_strict,
        "init_map": req.init_map,
        "freeze": list(req.freeze),
        "update_frozen_norms": req.update_frozen_norms,
        "from_run": absolute(req.from_run),
    }
    session = Session(
        model,
        io,
        ds,
        cfg,
        req.out,
        device,
        dist,
        req.quiet,
        resume,
        graph.labels,
        render(graph),
        info,
        notes,
        tokenizer=tokenizer,
    )
    session.source, session.spec_name = source, graph.name
    try:
        return run_session(session, stop)
    finally:
        distributed.shutdown(dist)


def from_run(req: TrainRequest) -> TrainRequest:
    """``specc train --from RUN``: the request that repeats RUN: its resolved spec, training config,
    data source (with every option that decides the splits), ``--init-from`` (with ``--init-strict``
    and ``--init-map``) and ``--freeze`` (with ``--update-frozen-norms``), and its torch thread counts
    (sums are reduced in the same order, so a CPU run repeats bit for bit). ``--set`` still applies on top."""
    folder = RunFolder(req.from_run or Path())
    if not folder.path.is_dir() or not folder.marked:
        raise UsageError(f"--from {folder.path}: not a specc run folder (no marker)")
    record = folder.read_data()
    first = folder.read_run().invocations[0]
    spec = folder.spec_source()
    threads = first.threads
    if threads.torch_intra_op and threads.torch_intra_op != torch.get_num_threads():
        torch.set_num_threads(threads.torch_intra_op)
    return replace(
        req,
        spec=spec,
        config=folder.file("train.yaml"),
        data=record.data.source,
        label=record.data.label if req.label is None else req.label,
        scale=None,
        **_repeated_init(req, first),
    )


def _repeated_init(req: TrainRequest, first: Invocation) -> dict[str, Any]:
    """``--init-from`` with ``--init-strict``/``--init-map``, and ``--freeze`` with
    ``--update-frozen-norms``, as the run's first start had them (options given now replace them)."""
    out: dict[str, Any] = {}
    if req.init_from is None and first.init_from:
        out.update(init_from=Path(first.init_from), init_strict=first.init_strict, init_map=first.init_map)
    if not req.freeze:
        out.update(freeze=tuple(first.freeze), update_frozen_norms=first.update_frozen_norms)
    return out


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


def _determinism(cfg: TrainConfig) -> None:
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def run_session(s: Session, stop: StopRequest | None = None) -> Outcome:
    """Train a prepared session: claim the run folder (rank 0: lock, marker), validate a resume
    against it, write the run files, fit, save the final weights, then the terminal status."""
    check_fit(s.ds, s.io)
    if s.source is None:
        s.source = _source_of(s)
    lock = None
    problem: BaseException | None = None
    latest = None
    try:
        if s.dist.is_main:
            try:
                lock = run_folder.claim(s.run, resume=s.resume)
                if s.resume:
                    latest = run_folder.validate_resume(
                        s.run, cfg=s.cfg, source=s.source, model=s.model, spec_text=s.spec_text
                    )
            except BaseException as exc:  # every rank must stop, not only rank 0
                problem = exc
        _agree(s, problem)
        report = RunReport(s.run, write=s.dist.is_main, quiet=s.quiet, log_every=s.cfg.log_every)
        if s.dist.is_main:
            ckpt.clean_stale(s.run)
            _write_run_files(s)
        return _fit(s, report, stop, finished=latest is not None and _finished(s.run))
    finally:
        if lock is not None:
            lock.release()


def _agree(s: Session, problem: BaseException | None) -> None:
    """Rank 0's refusal (lock, folder, resume) stops every rank before the first collective."""
    if s.dist.enabled:
        flag = torch.tensor([float(problem is not None)], device=s.device)
        if s.dist.all_max(flag).item() and problem is None:
            raise UsageError(f"rank 0 refused the run folder {s.run} (its error says why)")
    if problem is not None:
        raise problem


def _finished(run: Path) -> bool:
    return (run / FINAL_WEIGHTS).is_file() and RunFolder(run).read_status() in FINISHED


def _fit(s: Session, report: RunReport, stop: StopRequest | None, *, finished: bool) -> Outcome:
    """Fit and finish; any failure ends with ``failed: ...`` in metrics.json (I/O failures as an
    OutputError naming the path, exit 2)."""
    trainer: Trainer | None = None
    try:
        _prepare_model(s, report)
        trainer = Trainer(s.model, s.io, s.ds, s.cfg, s.run, s.device, s.dist, report)
        _log_start(s, report)
        if s.resume:
            step = trainer.resume()
            report.log(
                f"resumed from step {step}"
                if step is not None
                else f"no checkpoint in {s.run}: starting fresh"
            )
            if finished and trainer.progress.step >= trainer.total_steps:
                status = RunFolder(s.run).read_status() or "completed"
                report.log(
                    f"the run is finished ({status} at step {step}): nothing to train, the weights stay as they are"
                )
                return Outcome(status, trainer.progress.step, None)
        trainer.wrap()
        with contextlib.nullcontext(stop) if stop is not None else StopRequest() as active:
            outcome = trainer.fit(active)
        if outcome.status == "interrupted":
            report.write_metrics(trainer.progress.history, None, "interrupted")
            report.log(f"saved checkpoint at step {outcome.step}")
            if trainer.fsdp:
                s.dist.barrier()  # as in _finish: rank 0 may still be writing what all ranks gathered
            return outcome
        _finish(s, trainer, outcome, report)
        return outcome
    except NonFiniteError:
        raise  # the loop wrote its failed status already
    except BaseException as exc:
        output = run_folder.as_output_error(exc, s.run)
        if s.dist.is_main:
            why = str(output) if output is not None else f"{type(exc).__name__}: {exc}"
            history = trainer.progress.history if trainer is not None else []
            run_folder.record_failure(s.run, f"failed: {why}", history)
        if output is not None and output is not exc:
            raise output from None
        raise
    finally:
        report.close()


def _source_of(s: Session) -> DataSource:
    """The data options of a session built by hand (:func:`train_module`): the config's."""
    return DataSource(
        source=absolute_source(s.ds.name),
        input_shape=list(s.io.input_shapes[0]),
        input_dtype=s.io.input_dtypes[0],
        seed=s.cfg.seed,
        val_fraction=s.cfg.val_fraction,
        test_fraction=s.cfg.test_fraction,
        seq_len=s.cfg.seq_len,
        num_samples=s.cfg.num_samples,
    )


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
    """Replace BatchNorm layers by synchronised ones in place (with :meth:`CompiledModel.replace_module`,
    so the forward plan runs them too): torch's SyncBatchNorm on CUDA,
    :class:`~specc.train.distributed.GroupBatchNorm` on CPU (gloo)."""
    swapped = 0
    synced = (nn.SyncBatchNorm, distributed.GroupBatchNorm)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, synced):
            new = distributed.to_sync_batchnorm(module, cuda)
            if isinstance(model, CompiledModel):
                model.replace_module(name, new)
            else:
                parent_path, _, leaf = name.rpartition(".")
                (model.get_submodule(parent_path) if parent_path else model).add_module(leaf, new)
            swapped += 1
    return swapped


def _write_run_files(s: Session) -> None:
    assert s.source is not None
    inputs = list(zip(s.io.input_names, s.io.input_shapes, s.io.input_dtypes, strict=True))
    run_folder.write_run_files(
        s.run,
        spec_text=s.spec_text,
        cfg=s.cfg,
        record=run_folder.data_record(s.ds, s.source, inputs, s.io.output_name, s.labels),
        started=run_folder.invocation(s.info, resume=s.resume, device=str(s.device), world=s.dist.world),
        spec_name=s.spec_name or type(s.model).__name__,
        params=sum(p.numel() for p in s.model.parameters()),
    )
    if s.tokenizer is not None:
        atomic_write_bytes(s.run / TOKENIZER_FILE, s.tokenizer.read_bytes())


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
    trainable = sum(p.numel() for p in s.model.parameters() if p.requires_grad)
    split = f" ({trainable:,} trainable, {params - trainable:,} frozen)" if trainable < params else ""
    report.log(
        f"model: {params:,} parameters{split} on {s.device}"
        + (f", {s.dist.world} processes" if s.dist.enabled else "")
    )


def _finish(s: Session, trainer: Trainer, outcome: Outcome, report: RunReport) -> None:
    """Final weights first, then the log lines, then the terminal status (written last: a status
    ``completed`` always has its ``model.safetensors``)."""
    target = s.run / FINAL_WEIGHTS
    if trainer.fsdp:
        full = trainer.model_state()  # a collective: every rank gathers, rank 0 holds the result
        if s.dist.is_main:
            with ckpt.writing(target):
                save_weights(StateOnly(full), target)
        s.dist.barrier()  # the others must not tear the process group down while rank 0 writes
    elif s.dist.is_main:
        with ckpt.writing(target):
            save_weights(s.model, target)
    final = outcome.final or {}
    shown = ", ".join(
        f"{k} {v:.4f}"
        for k, v in final.items()
        if isinstance(v, float) and (k.startswith("test_") or k.startswith("val_"))
    )
    report.log(f"done ({outcome.status}) at step {outcome.step}: {shown}")
    report.log(f"weights: {target}")
    report.write_metrics(trainer.progress.history, outcome.final, outcome.status)


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
    source: DataSource | None = None,
) -> Outcome:
    """Train any ``nn.Module`` whose inputs/output ``io`` describes (library use and tests).

    ``source`` records how ``ds`` was loaded (``RUN/data.json``); by default the config's seed,
    fractions, sequence length and sample count, which is right when ``ds`` was loaded with them."""
    dist = distributed.Dist()
    session = Session(model, io, ds, cfg, run, pick_device(device, dist), dist, quiet, resume)
    session.source = source
    return run_session(session)
