"""What to export: a spec compiled to torch, with weights from a file or a ``specc train`` run folder.

A run folder holds ``model.safetensors`` (or ``checkpoints/step-*/model.safetensors``) and its
:class:`~specc.contracts.run_folder.DataRecord` (``data.json``): the labels, preprocessing and task
written into the ONNX metadata, and the data source with every option that rebuilds the run's
validation split (accuracy checks of ``--int8``/``--fp16``) and training split (calibration).
The preprocessing must fit the spec's input (its image size, channels, feature count), and every
weight must be finite, before anything is exported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from specc.contracts.preprocess import Preprocess
from specc.contracts.run_folder import DATA_FILE, RUN_FILE, DataRecord, RunFolder
from specc.errors import UsageError
from specc.nn import CompiledModel, build
from specc.weights import load_file

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    """What a run folder says about the data (no record when exporting a bare weights file)."""

    folder: Path | None = None
    record: DataRecord | None = None

    @property
    def preprocess(self) -> Preprocess | None:
        return self.record.preprocess if self.record is not None else None

    @property
    def class_names(self) -> list[str] | None:
        return list(self.record.class_names) if self.record and self.record.class_names else None

    @property
    def task(self) -> str | None:
        return self.record.task if self.record is not None else None


@dataclass
class Source:
    """A compiled model ready to export, and where its weights came from."""

    model: CompiledModel
    weights: Path | None
    run: RunInfo


def load_source(
    spec: str | Path,
    *,
    weights: str | Path | None = None,
    sets: tuple[str, ...] = (),
    scale: str | None = None,
    seed: int = 0,
    run_flags: bool = False,
) -> Source:
    """Build ``spec`` and load ``weights`` (a ``.safetensors`` file or a run folder) into it.

    With ``run_flags`` and a run folder trained from this very spec file, the run's own ``--scale`` and
    ``--set`` values (its first start, ``run.json``) apply first and the given ones on top, so
    ``specc export SPEC -w RUN`` builds the network the run trained without the user repeating them.
    """
    if run_flags and weights is not None:
        sets, scale = _with_run_flags(Path(spec), Path(weights), sets, scale)
    model = build(Path(spec), sets=sets, scale=scale, seed=seed)
    if weights is None:
        log.warning("no --weights given: exporting the freshly initialised network (seed %d)", seed)
        return Source(model, None, RunInfo())
    path = Path(weights)
    run = RunInfo()
    if path.is_dir():
        run = RunInfo(path, read_record(path))
        path = RunFolder(path).weights_file()
    elif not path.is_file():
        raise UsageError(f"weights not found: {path}")
    if run.record is not None and run.folder is not None:
        check_preprocess_fits(run.record, model, run.folder)
    load_weights(model, path)
    return Source(model, path, run)


def _with_run_flags(
    spec: Path, run: Path, sets: tuple[str, ...], scale: str | None
) -> tuple[tuple[str, ...], str | None]:
    """The run's flags first, the given ones on top, when ``spec`` is the file the run started from
    (the same path, or the same bytes as that file); a resolved ``RUN/spec.yaml`` needs none."""
    if not (run.is_dir() and (run / RUN_FILE).is_file()):
        return sets, scale
    first = RunFolder(run).read_run().invocations[0]
    trained = Path(first.spec)
    same = spec.resolve() == trained.resolve() or (
        trained.is_file() and spec.is_file() and trained.read_bytes() == spec.read_bytes()
    )
    if not same:
        return sets, scale
    inherited = [f"--scale {first.scale}"] if first.scale and scale is None else []
    inherited += [f"--set {s}" for s in first.sets]
    if inherited:
        log.info(
            "using the run's %s (%s); flags given here apply on top", " ".join(inherited), run / RUN_FILE
        )
    return (*first.sets, *sets), scale if scale is not None else first.scale


def read_record(run: Path) -> DataRecord | None:
    """The run folder's data record; None (with a warning) for a folder holding only weights."""
    if not (run / DATA_FILE).is_file():
        log.warning("run folder %s has no %s: no labels or preprocessing in the metadata", run, DATA_FILE)
        return None
    return RunFolder(run).read_data()


def check_preprocess_fits(record: DataRecord, model: CompiledModel, run: Path) -> None:
    """The run's preprocessing must produce the spec's first input (else the metadata would lie)."""
    name, t = next(iter(model.graph.inputs.items()))
    problem = record.preprocess.fits(tuple(t.shape))
    if problem:
        raise UsageError(
            f"{run / DATA_FILE}: preprocess does not fit the spec's input '{name}' {tuple(t.shape)}: {problem}"
        )


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a safetensors state dict (tied tensors may be stored once) strictly; never ``torch.load``."""
    try:
        load_file(model, path)
    except UsageError as exc:
        raise UsageError(f"weights {path} do not fit the spec: {exc}") from None
    check_finite(model, path)


def check_finite(model: torch.nn.Module, path: Path | str) -> None:
    """Refuse weights holding NaN/inf (parity would compare garbage with garbage): names the tensor."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UsageError(
                f"weights {path}: tensor '{name}' {list(t.shape)} holds {bad} NaN/infinite value(s); "
                "a model with non-finite weights cannot be exported"
            )
