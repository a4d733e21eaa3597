"""The run folder of ``specc train``: its files, the records in them, its marker and its lock.

::

    RUN/.specc-run          marker, written first: this folder belongs to specc (format, creation)
    RUN/.specc-lock         fcntl lock held by the one process that trains into the folder
    RUN/spec.yaml           the resolved spec (``specc render``)
    RUN/train.yaml          the training config, every default filled in (loads with --config)
    RUN/run.json            RunRecord: every start of the run (absolute paths, versions, threads)
    RUN/data.json           DataRecord: the data source with every option that rebuilds its splits,
                            the task, labels, input shapes and the preprocessing
    RUN/train.log, metrics.csv, metrics.json, curves.png, model.safetensors
    RUN/checkpoints/step-00000120/{model.safetensors,state.pt,manifest.json}
    RUN/tokenizer.json      the Hugging Face tokenizer of an --init-from source that has one

Writer: :mod:`specc.train.runner` (rank 0), checkpoints :mod:`specc.train.checkpoint`. Readers:
``specc export`` (labels, preprocessing, the validation and calibration splits, the weights),
``specc eval``, ``specc weights``, ``specc train --from``, ``--init-from`` and ``--resume``.
Torch-free; the data layer is imported only when a split is rebuilt.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt

from specc.atomic import atomic_write_text, sha256_file
from specc.contracts.base import MAX_CONTRACT_BYTES, Contract, loads, parse
from specc.contracts.onnx_metadata import Task, TensorEntry
from specc.contracts.preprocess import Preprocess
from specc.errors import UsageError

if TYPE_CHECKING:
    from specc.data import Dataset
    from specc.lang.train_config import TrainConfig

log = logging.getLogger(__name__)

FORMAT = 2
MARKER_FILE = ".specc-run"
LOCK_FILE = ".specc-lock"
SPEC_FILE = "spec.yaml"
TRAIN_FILE = "train.yaml"
RUN_FILE = "run.json"
DATA_FILE = "data.json"
LOG_FILE = "train.log"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
CURVES_PNG = "curves.png"
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
CHECKPOINTS_DIR = "checkpoints"
TOKENIZER_FILE = "tokenizer.json"

# inside a checkpoint folder (RUN/checkpoints/step-00000120/)
CHECKPOINT_FORMAT = 2  # 1 (before the trainer parts) is converted on load by specc.train.checkpoint
CHECKPOINT_MODEL_FILE = "model.safetensors"  # the model state_dict, tied tensors stored once
CHECKPOINT_STATE_FILE = "state.pt"  # the training state, loadable with torch.load(weights_only=True)
MANIFEST_FILE = "manifest.json"  # {"step", "files": {name: sha256}, "complete": true, ...}, written last
CHECKPOINT_FILES = (CHECKPOINT_MODEL_FILE, CHECKPOINT_STATE_FILE)
_STEP_RE = re.compile(r"^step-(\d{8,})$")

Fraction = Annotated[float, Field(ge=0, lt=1)]


def now() -> str:
    """The current time, ISO 8601 with the UTC offset (seconds)."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------- records


class DataSource(Contract):
    """A data source and every option of :func:`specc.data.load_dataset` that decides its splits:
    loading it again gives the same train/val/test samples with the same standardisation."""

    source: Annotated[str, Field(min_length=1)]
    input_shape: list[PositiveInt | str] | None
    input_dtype: str
    seed: NonNegativeInt
    val_fraction: Fraction
    test_fraction: Fraction
    seq_len: PositiveInt | None = None
    num_samples: PositiveInt | None = None
    label: str | None = Field(None, description="the label column of a table")

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`specc.data.load_dataset` (after the source); options left at
        None are not passed (a data layer without them loads the same splits)."""
        kw = self.model_dump(exclude={"source", "label"})
        kw["input_shape"] = tuple(self.input_shape) if self.input_shape is not None else None
        if self.label is not None:
            kw["label"] = self.label
        return kw

    def load(self) -> Dataset:
        """The data set with exactly the splits of the run (DataError when it cannot be read)."""
        from specc.data import load_dataset  # noqa: PLC0415 - the data layer only when a split is rebuilt

        return load_dataset(self.source, **self.load_kwargs())

    def differences(self, other: DataSource) -> list[str]:
        """``field: recorded vs now`` for every option that differs."""
        mine, theirs = self.model_dump(), other.model_dump()
        return [f"data.{k}: {mine[k]!r} in the run, {theirs[k]!r} now" for k in mine if mine[k] != theirs[k]]


class Sizes(Contract):
    train: NonNegativeInt
    val: NonNegativeInt
    test: NonNegativeInt


class DataRecord(Contract):
    """``RUN/data.json``: what the model was trained on and how its inputs were made."""

    format: Literal[2] = 2
    data: DataSource
    task: Task
    num_classes: PositiveInt | None = Field(description="classes, or the vocabulary size of token tasks")
    class_names: list[str] | None
    inputs: list[TensorEntry] = Field(description="per-sample shapes (no batch axis)")
    output: str
    sample_shape: list[NonNegativeInt]
    preprocess: Preprocess
    sizes: Sizes
    notes: list[str] = []


class Versions(Contract):
    specc: str
    python: str
    platform: str
    packages: dict[str, str] = Field(description="installed versions of the libraries a run depends on")


class Threads(Contract):
    torch_intra_op: PositiveInt | None = None
    torch_inter_op: PositiveInt | None = None
    cpu_count: PositiveInt | None = None
    env: dict[str, str] = Field(default={}, description="OMP_NUM_THREADS, MKL_NUM_THREADS, ... as set")


class Invocation(Contract):
    """One start of a run (the first, then every --resume); paths are absolute."""

    started: str
    spec: str
    data: str
    sets: list[str]
    scale: str | None
    config: str | None
    init_from: str | None
    init_strict: bool = Field(True, description="--init-from required every tensor to fit (--init-strict)")
    init_map: str | None = Field(None, description="the --init-map name table, None: chosen by the source")
    freeze: list[str]
    update_frozen_norms: bool = Field(False, description="frozen BatchNorm layers updated their statistics")
    resume: bool
    from_run: str | None = None
    device: str
    world_size: PositiveInt
    cwd: str
    host: str
    pid: PositiveInt
    versions: Versions
    threads: Threads


class RunRecord(Contract):
    """``RUN/run.json``: the spec's identity and every start of the run, oldest first."""

    format: Literal[2] = 2
    spec_name: str
    params: NonNegativeInt
    invocations: Annotated[list[Invocation], Field(min_length=1)]


class Marker(Contract):
    """``RUN/.specc-run``: written before anything else in a new run folder."""

    format: Literal[2] = 2
    created: str
    specc: str


class LockOwner(Contract):
    """What ``RUN/.specc-lock`` says about the process holding it."""

    pid: PositiveInt
    host: str
    since: str


# ----------------------------------------------------------------------------------------- sources


def absolute_source(source: str) -> str:
    """A data source with its path made absolute (``text:PATH`` too); named sources as they are."""
    prefix, sep, rest = source.partition(":")
    if sep and rest and len(prefix) > 1 and Path(rest).expanduser().exists():
        return f"{prefix}:{Path(rest).expanduser().absolute()}"
    path = Path(source).expanduser()
    return str(path.absolute()) if path.exists() else source


def absolute(path: Path | None) -> str | None:
    return str(path.expanduser().absolute()) if path is not None else None


# ----------------------------------------------------------------------------------------- folder


@dataclass(frozen=True)
class RunFolder:
    """A run folder's paths and typed readers (writers: :mod:`specc.train.runner`)."""

    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def marked(self) -> bool:
        """The folder carries the specc marker (it was made by ``specc train``)."""
        return (self.path / MARKER_FILE).is_file()

    @property
    def holds_run(self) -> bool:
        """Checkpoints or final weights exist: starting afresh would overwrite a run."""
        return (self.path / CHECKPOINTS_DIR).exists() or (self.path / MODEL_FILE).exists()

    def foreign_entries(self) -> list[str]:
        """Entries of an existing folder other than our lock file (empty: nothing to lose)."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE)

    @property
    def tokenizer(self) -> Path | None:
        """``tokenizer.json``, the Hugging Face tokenizer that came with ``--init-from`` (None: none)."""
        file = self.path / TOKENIZER_FILE
        return file if file.is_file() else None

    def _read_json(self, name: str) -> Any:
        file = self.path / name
        try:
            if file.stat().st_size > MAX_CONTRACT_BYTES:
                raise UsageError(f"{file} is larger than {MAX_CONTRACT_BYTES:,} bytes")
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"{self.path} is not a complete run folder: {name} is missing") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {file}: {exc}") from None
        return loads(text, str(file))

    def read_data(self) -> DataRecord:
        """``data.json``; a record of an older specc (format 1, without the split options) is refused."""
        raw = self._read_json(DATA_FILE)
        if isinstance(raw, dict) and raw.get("format", FORMAT) != FORMAT:
            raise UsageError(
                f"{self.path / DATA_FILE} is format {raw.get('format')!r} (an older specc, which did not "
                f"record the seed and split fractions); this specc reads format {FORMAT}: train the run again "
                f"(or give --weights {self.path / MODEL_FILE} alone: no labels or preprocessing then)"
            )
        return parse(DataRecord, raw, str(self.path / DATA_FILE))

    def read_run(self) -> RunRecord:
        return parse(RunRecord, self._read_json(RUN_FILE), str(self.path / RUN_FILE))

    def read_status(self) -> str | None:
        """``metrics.json``'s status (``running``, ``completed``, ``failed: ...``), None if unreadable."""
        with contextlib.suppress(UsageError):
            raw = self._read_json(METRICS_JSON)
            return raw.get("status") if isinstance(raw, dict) and isinstance(raw.get("status"), str) else None
        return None

    def spec_source(self) -> Path:
        """The run's resolved spec (``spec.yaml``, a valid spec that checks to the run's graph)."""
        resolved = self.path / SPEC_FILE
        if not resolved.is_file():
            raise UsageError(f"{self.path} is not a complete run folder: {SPEC_FILE} is missing")
        return resolved

    def weights_file(self) -> Path:
        """The run's weights: the final ``model.safetensors``, else the newest valid checkpoint's.

        Raises:
            UsageError: The folder has neither final weights nor a valid checkpoint.
        """
        final = self.path / MODEL_FILE
        if final.is_file():
            return final
        latest = find_latest_checkpoint(self.path)
        if latest is None:
            raise UsageError(f"run folder {self.path} has no {MODEL_FILE} and no valid checkpoint")
        return latest / CHECKPOINT_MODEL_FILE

    def read_train_config(self) -> TrainConfig:
        from specc.lang.train_config import load_train_config  # noqa: PLC0415 - the spec language only for train.yaml

        file = self.path / TRAIN_FILE
        if not file.is_file():
            raise UsageError(f"{self.path} is not a complete run folder: {TRAIN_FILE} is missing")
        return load_train_config(None, str(file), file)

    # -- writers (rank 0 of specc train only) ----------------------------------------------------

    @staticmethod
    def text(record: Contract) -> str:
        """A record as its file holds it (indented JSON)."""
        return record.model_dump_json(indent=2) + "\n"

    def write(self, name: str, record: Contract) -> None:
        atomic_write_text(self.path / name, self.text(record))

    def write_marker(self, specc_version: str) -> None:
        """The marker, durable (file and folder flushed by the atomic write) before anything else."""
        self.write(MARKER_FILE, Marker(created=now(), specc=specc_version))


def check_out(folder: Path, *, resume: bool) -> None:
    """Refuse an ``--out`` specc must not write into (no side effects; called before any work).

    Accepted: a path that does not exist yet (its nearest existing parent writable), an empty
    folder, or a folder carrying the specc marker (with ``resume``, or holding no run yet).
    """
    run = RunFolder(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} exists and is not a folder")
    if folder.is_dir():
        if not run.marked and run.foreign_entries():
            shown = ", ".join(run.foreign_entries()[:5])
            raise UsageError(
                f"--out {folder} is not a specc run folder (no {MARKER_FILE} marker) and is not empty "
                f"({shown}{', ...' if len(run.foreign_entries()) > 5 else ''}); specc trains only into a "
                "new or empty folder or one of its own run folders, so that no file of yours is replaced"
            )
        if run.marked and run.holds_run and not resume:
            held = [n for n in (CHECKPOINTS_DIR, MODEL_FILE) if (folder / n).exists()]
            raise UsageError(
                f"--out {folder} already holds a run ({', '.join(held)}); pass --resume to continue it "
                "or choose another --out"
            )
        return
    existing = folder.absolute()
    while not existing.exists():  # fail now, before loading data, if the folder cannot be made
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(
            f"--out {folder}: cannot create the run folder ({existing} is not a writable folder)"
        )


# ------------------------------------------------------------------------------------ checkpoints


class InvalidCheckpoint(Exception):
    """A checkpoint folder fails validation; the message says why."""


def checkpoint_dir(run_dir: str | os.PathLike[str], step: int) -> Path:
    """Returns the folder of the checkpoint of ``step``: ``RUN/checkpoints/step-{step:08d}``."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"step-{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Lists the ``step-*`` folders of a run (valid or not), oldest step first.

    Args:
        run_dir: Run folder.

    Returns:
        ``(step, folder)`` pairs sorted by step.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_RE.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match[1]), entry))
    return sorted(found)


def validate_checkpoint(path: Path, *, verify_hashes: bool = True) -> dict[str, Any]:
    """Checks a checkpoint folder; returns its manifest.

    Raises:
        InvalidCheckpoint: Missing, incomplete, of a newer format, or a file missing or corrupt.
    """
    if not path.is_dir():
        raise InvalidCheckpoint("not a checkpoint folder (missing or not a folder)")
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidCheckpoint(f"no {MANIFEST_FILE} (incomplete or not a checkpoint)") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise InvalidCheckpoint(f"unreadable {MANIFEST_FILE}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("complete") is not True:
        raise InvalidCheckpoint(f"{MANIFEST_FILE} does not mark the checkpoint complete")
    fmt = manifest.get("format", CHECKPOINT_FORMAT)
    if not isinstance(fmt, int) or fmt > CHECKPOINT_FORMAT:
        raise InvalidCheckpoint(
            f"checkpoint format {fmt!r} is newer than this specc reads ({CHECKPOINT_FORMAT})"
        )
    step = manifest.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise InvalidCheckpoint(f"{MANIFEST_FILE} has no integer step")
    match = _STEP_RE.match(path.name)
    if match and int(match[1]) != step:
        raise InvalidCheckpoint(f"{MANIFEST_FILE} says step {step}, the folder name step {int(match[1])}")
    files = manifest.get("files")
    if not isinstance(files, dict) or any(name not in files for name in CHECKPOINT_FILES):
        raise InvalidCheckpoint(f"{MANIFEST_FILE} does not list {', '.join(CHECKPOINT_FILES)}")
    for name, digest in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise InvalidCheckpoint(f"{MANIFEST_FILE} lists a bad file name {name!r}")
        file = path / name
        if not file.is_file():
            raise InvalidCheckpoint(f"{name} is missing")
        if verify_hashes:
            try:
                actual = sha256_file(file)
            except OSError as exc:
                raise InvalidCheckpoint(f"{name} is unreadable: {exc}") from None
            if actual != digest:
                raise InvalidCheckpoint(
                    f"{name} is corrupt (SHA-256 {actual[:12]}..., manifest {str(digest)[:12]}...)"
                )
    return manifest


def find_latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """Returns the newest valid checkpoint of a run, or None.

    Valid: manifest present and complete, every listed file present with the recorded SHA-256.
    Invalid ones are skipped with a logged warning.

    Args:
        run_dir: Run folder.
    """
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            validate_checkpoint(path)
        except InvalidCheckpoint as exc:
            log.warning("skipping checkpoint %s: %s", path, exc)
            continue
        return path
    return None


# ------------------------------------------------------------------------------------------- lock


class RunLock:
    """An exclusive ``fcntl.flock`` on ``RUN/.specc-lock`` for the life of a run.

    The kernel releases it when the holder exits (even by SIGKILL), so a lock is never stale; the
    file's content (:class:`LockOwner`) only tells a refused process who holds it.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise a UsageError naming its owner (pid, host, since)."""
        import fcntl  # noqa: PLC0415 - POSIX only: readers of a run folder import this module anywhere

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise UsageError(
                f"run folder {self.path.parent} is in use by {self._owner()}; wait for it to finish "
                "or choose another --out"
            ) from None
        self._fd = fd
        owner = LockOwner(pid=os.getpid(), host=socket.gethostname(), since=now())
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.model_dump_json().encode(), 0)
        os.fsync(fd)

    def _owner(self) -> str:
        try:
            owner = LockOwner.model_validate_json(self.path.read_bytes()[:4096])
        except (OSError, ValueError):
            return f"another process (lock {self.path})"
        return f"process {owner.pid} on {owner.host} (since {owner.since}; lock {self.path})"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
