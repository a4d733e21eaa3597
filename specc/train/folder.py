"""The run folder's life: claimed (marker, lock), validated before a resume, written, ended truthfully.

Rules (tested in ``tests/train/test_run_folder.py``):

* ``--out`` is a new or empty folder, or a specc run folder (its marker ``.specc-run`` is written
  before anything else); any other folder is refused, so no file of the user's is replaced.
* One process trains into a folder at a time: rank 0 holds an exclusive ``fcntl`` lock on
  ``.specc-lock`` (pid, host, since) for the whole run; a second ``specc train`` exits 2 naming it.
* ``--resume`` changes nothing in the folder until the run is validated against it: the same
  resolved spec, parameter names and shapes as the newest checkpoint, the same data source and
  options, and the same training settings (only those that do not change the steps already done
  may differ: epochs/max_steps without a schedule that depends on them, logging, checkpointing,
  compile, fsdp). A finished run without a valid checkpoint is never restarted over its model.
* Terminal states are written last: final weights, then ``metrics.json``'s status. Any failure
  (an OSError such as a full disk included) ends with ``failed: ...`` there, and an OS failure
  is an :class:`~specc.errors.OutputError` (exit 2) naming the path.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

import specc
from specc.atomic import atomic_write_files, atomic_write_text
from specc.contracts.onnx_metadata import TensorEntry
from specc.contracts.preprocess import parse_preprocess
from specc.contracts.run_folder import (
    DATA_FILE,
    METRICS_JSON,
    MODEL_FILE,
    RUN_FILE,
    SPEC_FILE,
    TRAIN_FILE,
    DataRecord,
    DataSource,
    Invocation,
    RunFolder,
    RunLock,
    RunRecord,
    Sizes,
    Threads,
    Versions,
    check_out,
    now,
)
from specc.data import Dataset
from specc.errors import OutputError, SpeccError, UsageError
from specc.lang.train_config import TrainConfig
from specc.train import checkpoint as ckpt
from specc.train.report import nan_to_null
from specc.weights.store import read_shapes

#: Settings a resume may change: they do not alter the steps already taken.
RESUMABLE = frozenset(
    {
        "epochs",
        "max_steps",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "compile",
        "fsdp",
        # the data loader's workers and budgets: the same batches whatever they are (exact resume)
        "num_workers",
        "prefetch_factor",
        "pin_memory",
        "max_data_bytes",
        "max_image_pixels",
    }
)
#: Schedules whose shape depends on the total number of steps (so epochs/max_steps may not change).
LENGTH_SCHEDULES = ("cosine", "onecycle")
_PACKAGES = ("torch", "numpy", "pydantic", "safetensors", "scikit-learn", "Pillow", "onnx", "onnxruntime")
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")


# ------------------------------------------------------------------------------------------ records


def versions() -> Versions:
    found = {}
    for name in _PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return Versions(
        specc=specc.__version__, python=sys.version.split()[0], platform=platform.platform(), packages=found
    )


def threads() -> Threads:
    return Threads(
        torch_intra_op=torch.get_num_threads(),
        torch_inter_op=torch.get_num_interop_threads(),
        cpu_count=os.cpu_count(),
        env={k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
    )


def invocation(info: Mapping[str, Any], *, resume: bool, device: str, world: int) -> Invocation:
    """This start of the run: the request (``info``: absolute paths), where and with what it runs."""
    return Invocation(
        started=now(),
        spec=str(info.get("spec", "")),
        data=str(info.get("data", "")),
        sets=list(info.get("sets", [])),
        scale=info.get("scale"),
        config=info.get("config"),
        init_from=info.get("init_from"),
        init_strict=bool(info.get("init_strict", True)),
        init_map=info.get("init_map"),
        freeze=list(info.get("freeze", [])),
        update_frozen_norms=bool(info.get("update_frozen_norms", False)),
        resume=resume,
        from_run=info.get("from_run"),
        device=device,
        world_size=world,
        cwd=str(Path.cwd()),
        host=socket.gethostname(),
        pid=os.getpid(),
        versions=versions(),
        threads=threads(),
    )


def data_record(
    ds: Dataset,
    source: DataSource,
    inputs: Sequence[tuple[str, Sequence[int | str], str]],
    output: str,
    labels: list[str] | None,
) -> DataRecord:
    """``RUN/data.json`` of a loaded data set (its preprocessing validated against the contract)."""
    return DataRecord(
        data=source,
        task=ds.task,
        num_classes=ds.num_classes,
        class_names=ds.class_names or labels,
        inputs=[TensorEntry(name=n, shape=list(s), dtype=d) for n, s, d in inputs],
        output=output,
        sample_shape=list(ds.sample_shape),
        preprocess=parse_preprocess(ds.preprocess, f"the preprocessing of data '{ds.name}'"),
        sizes=Sizes(train=len(ds.train), val=len(ds.val), test=len(ds.test)),
        notes=list(ds.notes),
    )


def write_run_files(
    run: Path,
    *,
    spec_text: str | None,
    cfg: TrainConfig,
    record: DataRecord,
    started: Invocation,
    spec_name: str,
    params: int,
) -> None:
    """``spec.yaml``, ``train.yaml``, ``data.json`` and ``run.json`` (this start appended to the
    record of earlier ones)."""

    folder = RunFolder(run)
    earlier: list[Invocation] = []
    if started.resume and (run / RUN_FILE).is_file():
        with contextlib.suppress(UsageError):
            earlier = list(folder.read_run().invocations)
    files: dict[Path, str] = {}
    if spec_text is not None:
        files[run / SPEC_FILE] = spec_text
    files[run / TRAIN_FILE] = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    files[run / DATA_FILE] = folder.text(record)
    record_of_run = RunRecord(spec_name=spec_name, params=params, invocations=[*earlier, started])
    files[run / RUN_FILE] = folder.text(record_of_run)
    atomic_write_files(files)  # each atomic, in this order, one folder flush (all durable before training)


# ---------------------------------------------------------------------------------------- ownership


def claim(run: Path, *, resume: bool) -> RunLock:
    """Create the folder if needed, take its lock, check it again under the lock (another process may
    have started a run meanwhile), and write the marker first. Returns the held lock."""
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {run}: cannot create the run folder ({exc.strerror})") from None
    lock = RunLock(run)
    try:
        lock.acquire()
    except OSError as exc:
        raise OutputError(f"--out {run}: cannot create the lock file {lock.path} ({exc.strerror})") from None
    try:
        check_out(run, resume=resume)
        folder = RunFolder(run)
        if not folder.marked:
            folder.write_marker(specc.__version__)
    except BaseException:
        lock.release()
        raise
    return lock


# ------------------------------------------------------------------------------------------- resume


def validate_resume(
    run: Path, *, cfg: TrainConfig, source: DataSource, model: torch.nn.Module, spec_text: str | None
) -> Path | None:
    """Check a ``--resume`` against the folder before anything in it changes; returns the checkpoint
    to resume from (None: nothing was trained yet, a fresh start is safe).

    Raises:
        UsageError: The run is finished and holds no checkpoint, or the spec, the parameters, the
            data or the settings differ from the run's (every difference is listed).
    """
    folder = RunFolder(run)
    if not folder.marked:
        return None
    latest = ckpt.find_latest_checkpoint(run)
    if latest is None:
        if (run / MODEL_FILE).exists():
            raise UsageError(
                f"--resume: {run} holds a finished model ({MODEL_FILE}, status "
                f"{folder.read_status() or 'unknown'}) and no valid checkpoint to continue from; it is "
                "left as it is. Train into another --out (or use --init-from to start from its weights)"
            )
        return None
    problems = _spec_differences(run, model, latest, spec_text)
    problems += _setting_differences(folder, cfg)
    problems += _data_differences(folder, source)
    if problems:
        shown = "\n  ".join(problems[:20]) + (
            f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        raise UsageError(
            f"--resume: this run does not continue {run} ({latest.name}); nothing was changed:\n  {shown}\n"
            "Resume with the run's spec, data and settings, or train into another --out"
        )
    return latest


def _spec_differences(run: Path, model: torch.nn.Module, latest: Path, spec_text: str | None) -> list[str]:
    try:
        saved = read_shapes(latest / ckpt.MODEL_FILE)
    except UsageError as exc:
        return [str(exc)]
    now_shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    out = [
        f"{k}: shape {saved[k]} in the checkpoint, {now_shapes[k]} now"
        for k in now_shapes
        if k in saved and saved[k] != now_shapes[k]
    ]
    out += [f"{k}: {now_shapes[k]} is new (not in the checkpoint)" for k in now_shapes if k not in saved]
    out += [
        f"{k}: {saved[k]} is in the checkpoint but not in the model" for k in saved if k not in now_shapes
    ]
    old = run / SPEC_FILE
    if not out and spec_text is not None and old.is_file():
        out += _tree_differences(_spec_tree(old.read_text(encoding="utf-8")), _spec_tree(spec_text))
    return out


def _spec_tree(text: str) -> Any:
    """A rendered spec as data, without its ``train:`` section (the settings are compared on their
    own, with the rules for what a resume may change) and without comments (the header names the
    spec's path, which may be given another way when a run is resumed)."""

    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(tree, dict):
        tree.pop("train", None)
    return tree


def _tree_differences(before: Any, after: Any, path: str = "spec") -> list[str]:
    """Where two rendered specs differ: the first differing entry of each differing key."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in [*before, *(k for k in after if k not in before)]:
            if before.get(key) != after.get(key):
                out += _tree_differences(before.get(key), after.get(key), f"{path}.{key}")
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        first = next(i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b)
        return _tree_differences(before[first], after[first], f"{path}[{first}]")
    return [f"{path}: {_short(before)} in the run, {_short(after)} now (the resolved spec differs)"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _setting_differences(folder: RunFolder, cfg: TrainConfig) -> list[str]:
    try:
        recorded = folder.read_train_config()
    except SpeccError as exc:  # a UsageError, or the ParseError of an edited file
        return [f"{folder.path / TRAIN_FILE} cannot be read: {exc}"]
    before, after = recorded.model_dump(mode="json"), cfg.model_dump(mode="json")
    out = []
    for key, was in before.items():
        is_ = after.get(key)
        if was == is_:
            continue
        if key in RESUMABLE and not (key in ("epochs", "max_steps") and cfg.schedule in LENGTH_SCHEDULES):
            continue
        why = (
            f" (schedule '{cfg.schedule}' depends on the run's length)"
            if key in ("epochs", "max_steps")
            else ""
        )
        out.append(f"train.{key}: {was!r} in the run, {is_!r} now{why}")
    return out


def _data_differences(folder: RunFolder, source: DataSource) -> list[str]:
    try:
        recorded = folder.read_data()
    except UsageError as exc:
        return [str(exc)]
    return recorded.data.differences(source)


# ------------------------------------------------------------------------------------ terminal state


def record_failure(run: Path, status: str, history: list[dict[str, Any]]) -> None:
    """Write ``metrics.json``'s failed status, even on a full disk: atomically if it can, else in
    place (rewriting a file needs no new blocks when it shrinks), else it says so on stderr."""

    text = json.dumps(nan_to_null({"status": status, "epochs": history, "final": None}), indent=2) + "\n"
    target = run / METRICS_JSON
    try:
        atomic_write_text(target, text)
        return
    except OSError:
        pass
    short = json.dumps({"status": status[:2000], "epochs": [], "final": None}) + "\n"
    try:
        with open(target, "r+" if target.exists() else "w", encoding="utf-8") as f:
            f.write(short)
            f.truncate()
    except OSError as exc:
        print(f"warning: cannot record the failure in {target}: {exc.strerror}", file=sys.stderr)


def as_output_error(exc: BaseException, run: Path) -> OutputError | None:
    """An I/O failure during a run as an OutputError naming the file (None: not an I/O failure)."""
    if isinstance(exc, OutputError):
        return exc
    why = ckpt.write_failure(exc)
    if why is None:
        return None
    name = getattr(exc, "filename", None)
    where = Path(name) if name else run
    return OutputError(f"cannot write {where}: {why}")
