"""Crash-safe training checkpoints for ``specc train``.

Layout inside a run folder::

    RUN/checkpoints/step-00000120/
        model.safetensors   model state_dict (tied tensors stored once, aliases in the header)
        state.pt            training state; loadable with torch.load(weights_only=True)
        manifest.json       {"step", "files": {name: sha256}, "complete": true, ...}, written last

A checkpoint is written into a hidden sibling folder ``.step-00000120.tmp-{pid}-{hex}``; every file
is fsynced, the manifest is written last, then the folder is renamed into place (atomic on POSIX)
and the parent folder is fsynced. A crash at any point leaves either no ``step-*`` folder or a
complete one; the hidden leftovers are removed by :func:`clean_stale`. :func:`find_latest_checkpoint`
still verifies every file's SHA-256, so a checkpoint damaged later (disk, copy) is skipped too.
The layout and the readers that find and validate a checkpoint are part of the run folder's contract
(:mod:`specc.contracts.run_folder`: export, ``specc weights`` and ``--init-from`` read them without
training code); this module writes checkpoints and loads their training state.

``state.pt`` maps names to states: the ``train_state`` given to :func:`save_checkpoint` plus
``"step"`` and, unless given, ``"rng"`` (see :func:`capture_rng_state`). The trainer stores
``optimizer`` and ``scheduler`` (their state dicts), ``config`` (the training config as JSON, for
reading) and one entry per part of the loop (:mod:`specc.train.parts`: ``progress``, ``sampler``,
``early_stopping``, ``grad_scaler``), each that part's ``state_dict()`` (:func:`part_states`,
:func:`load_parts`). Values must be plain python data or tensors (checked before writing).

Formats (``manifest.json``'s ``format``): 2 is the layout above. 1, written by specc 0.1.0 before
the trainer was split into parts, kept the loop's position in fixed keys (``epoch``, ``position``, ``grad_scaler`` and
an ``extra`` dict with the history, early stopping and running loss); :func:`load_checkpoint` converts
it to format 2 (:func:`_from_format_1`), so a run checkpointed before still resumes exactly. A format
newer than this specc reads is refused with the folder's name.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import random
import shutil
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from specc import __version__
from specc.atomic import (
    TEMP_PATTERN,
    clean_stale_temps,
    fsync_dir,
    fsync_file,
    pid_alive,
    sha256_file,
    temp_name,
    write_failure,
    writing,
)
from specc.contracts.run_folder import CHECKPOINT_FILES as _REQUIRED
from specc.contracts.run_folder import CHECKPOINT_FORMAT as FORMAT
from specc.contracts.run_folder import CHECKPOINT_MODEL_FILE as MODEL_FILE
from specc.contracts.run_folder import CHECKPOINT_STATE_FILE as STATE_FILE
from specc.contracts.run_folder import (
    CHECKPOINTS_DIR,
    MANIFEST_FILE,
    checkpoint_dir,
    find_latest_checkpoint,
    list_checkpoints,
)
from specc.contracts.run_folder import InvalidCheckpoint as _Invalid
from specc.contracts.run_folder import validate_checkpoint as _validate
from specc.errors import UsageError
from specc.lang.train_config import EarlyStopping as EarlyStoppingConfig
from specc.weights.store import read_state, split_ties, write_tensors

__all__ = [
    "CHECKPOINTS_DIR",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "STATE_FILE",
    "capture_rng_state",
    "checkpoint_dir",
    "clean_stale",
    "find_latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_parts",
    "part_states",
    "restore_rng_state",
    "save_checkpoint",
    "write_failure",
    "writing",
]

log = logging.getLogger(__name__)

# What torch.load(weights_only=True) accepts (checked before a save, so a resume never fails on it).
_LEAVES: tuple[type, ...] = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    torch.Tensor,
    torch.Size,
    torch.dtype,
    torch.device,
)
_CONTAINERS: tuple[type, ...] = (dict, OrderedDict, list, tuple, set)


def _specc_version() -> str:
    try:
        return importlib.metadata.version("specc")
    except importlib.metadata.PackageNotFoundError:
        return __version__


# ------------------------------------------------------------------------------------------------ RNG


def capture_rng_state() -> dict[str, Any]:
    """Captures the global RNG states of python ``random``, numpy, torch CPU and (if used) CUDA.

    numpy's legacy global generator is captured (``np.random.*``); ``np.random.default_rng``
    generators are objects of the caller and are not. Every value loads with ``weights_only=True``.

    Returns:
        ``{"python": ..., "numpy": {...}, "torch": ByteTensor[, "cuda": [ByteTensor, ...]]}``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    # An uninitialised CUDA has not drawn anything: its state follows from the seed alone.
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def _as_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restores RNG states captured by :func:`capture_rng_state`; absent keys are left alone.

    A CUDA state is restored on as many devices as both sides have; a mismatch is logged.

    Args:
        state: The dict :func:`capture_rng_state` returned (possibly after a save and load).
    """
    if "python" in state:
        random.setstate(_as_tuple(state["python"]))
    if "numpy" in state:
        np_state = state["numpy"]
        keys = np_state["keys"]
        keys_np = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        np.random.set_state(
            (
                str(np_state["kind"]),
                keys_np.astype(np.uint32),
                int(np_state["pos"]),
                int(np_state["has_gauss"]),
                float(np_state["cached_gaussian"]),
            )
        )
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda_states = state.get("cuda")
    if cuda_states:
        if not torch.cuda.is_available():
            log.warning("CUDA RNG state in the checkpoint not restored: CUDA is not available")
            return
        count = torch.cuda.device_count()
        if count != len(cuda_states):
            log.warning(
                "checkpoint has CUDA RNG states of %d devices, this machine %d", len(cuda_states), count
            )
        for device, cuda_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(torch.as_tensor(cuda_state, dtype=torch.uint8).cpu(), device)


# ------------------------------------------------------------------------------------------------ save


def _check_loadable(value: Any, where: str) -> None:
    """Raises TypeError where ``value`` holds something torch.load(weights_only=True) refuses."""
    if isinstance(value, _LEAVES):
        return
    if type(value) not in _CONTAINERS:
        raise TypeError(
            f"{where}: {type(value).__module__}.{type(value).__qualname__} cannot be loaded with "
            "torch.load(weights_only=True); store plain python data (dict/list/tuple/str/int/float/"
            "bool/None) or tensors"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _check_loadable(key, f"{where} key {key!r}")
            _check_loadable(item, f"{where}[{key!r}]")
    else:
        for index, item in enumerate(value):
            _check_loadable(item, f"{where}[{index}]")


def _write_model(path: Path, tensors: dict[str, torch.Tensor], aliases: dict[str, str]) -> None:
    write_tensors(path, tensors, aliases, atomic=False)  # the folder is published as a whole


def _write_state(path: Path, state: dict[str, Any]) -> None:
    torch.save(state, path)


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _publish(tmp: Path, final: Path) -> None:
    """Renames the finished temporary folder to ``final``, replacing an existing one."""
    old: Path | None = None
    if final.exists() or final.is_symlink():
        old = final.parent / temp_name(final.name)
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        raise
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_checkpoint(path: Path) -> None:
    # Rename first: a crash during the removal leaves a hidden leftover, not a half checkpoint.
    trash = path.parent / temp_name(path.name)
    try:
        os.rename(path, trash)
        shutil.rmtree(trash)
    except OSError as exc:
        log.warning("could not remove old checkpoint %s: %s", path, exc)


def _has_complete_manifest(path: Path) -> bool:
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and manifest.get("complete") is True


def _prune(run_dir: Path, keep: int, step: int, final: Path) -> None:
    """Keeps the ``keep`` newest complete checkpoints up to ``step`` (always ``final``)."""
    newer = [p for s, p in list_checkpoints(run_dir) if s > step]
    if newer:
        log.warning(
            "checkpoints of later steps than %d exist (%s); they are kept and find_latest_checkpoint prefers them",
            step,
            ", ".join(p.name for p in newer),
        )
    kept = 0
    removed = False
    for _, path in reversed([(s, p) for s, p in list_checkpoints(run_dir) if s <= step]):
        if path == final or (kept < keep and _has_complete_manifest(path)):
            kept += 1
        elif kept >= keep:
            _remove_checkpoint(path)
            removed = True
    if removed:
        fsync_dir(run_dir / CHECKPOINTS_DIR)


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    model_state: Mapping[str, torch.Tensor],
    train_state: Mapping[str, Any],
    keep: int | None = 3,
) -> Path:
    """Writes the checkpoint of ``step`` atomically, then removes old ones.

    Args:
        run_dir: Run folder (created if missing).
        step: Optimizer steps done (>= 0); names the folder ``step-{step:08d}``.
        model_state: The model's ``state_dict()``; tied tensors are stored once.
        train_state: Name → state: the optimizer's and scheduler's state dicts, the loop's parts
            (:func:`part_states`), anything else loadable with ``weights_only=True``.
            ``"step"`` is set to ``step``; ``"rng"`` defaults to :func:`capture_rng_state`.
        keep: How many complete checkpoints (the new one included) to keep; None keeps all.

    Returns:
        The new checkpoint folder.

    Raises:
        TypeError: A value cannot be stored (not a tensor in ``model_state``; not loadable with
            ``weights_only=True`` in ``train_state``). Nothing is written then.
        ValueError: Bad ``step`` or ``keep``, or ``train_state["step"]`` differs from ``step``.
        OutputError: A file could not be written (disk full, read-only, ...); the partial
            checkpoint is removed and the previous ones are untouched.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be an int >= 1 or None, got {keep!r}")
    state = dict(train_state)
    if state.setdefault("step", step) != step:
        raise ValueError(f"train_state['step'] is {state['step']!r} but the checkpoint is of step {step}")
    if "rng" not in state:
        state["rng"] = capture_rng_state()
    _check_loadable(state, "train_state")
    tensors, aliases = split_ties(model_state)  # checked before anything is written

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    root = run / CHECKPOINTS_DIR
    if not root.is_dir():
        root.mkdir()
        fsync_dir(run)
    final = checkpoint_dir(run, step)
    tmp = root / temp_name(final.name)
    with writing(final):
        tmp.mkdir()
    try:
        with writing(final):
            _write_model(tmp / MODEL_FILE, tensors, aliases)
            _write_state(tmp / STATE_FILE, state)
        files = {}
        for name in _REQUIRED:
            fsync_file(tmp / name)
            files[name] = sha256_file(tmp / name)
        manifest = {
            "format": FORMAT,
            "step": step,
            "files": files,
            "complete": True,
            "specc_version": _specc_version(),
        }
        with writing(final):
            _write_manifest(tmp / MANIFEST_FILE, manifest)
            fsync_dir(tmp)
            _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved checkpoint %s", final)
    if keep is not None:
        _prune(run, keep, step, final)
    return final


# ------------------------------------------------------------------------------------------------ load


def load_checkpoint(
    path: str | os.PathLike[str], *, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Loads a checkpoint folder onto the CPU.

    Args:
        path: A ``step-*`` folder.
        verify: Checks the files' SHA-256 against the manifest (skip if just checked by
            :func:`find_latest_checkpoint`).

    Returns:
        ``(model_state, train_state)``; tied names share one tensor again; ``train_state`` has
        ``"step"`` and ``"rng"`` (pass it to :func:`restore_rng_state`), in format 2 (a format-1
        trainer checkpoint is converted).

    Raises:
        UsageError: The folder is missing, incomplete or corrupt, or of format 1 and not convertible.
    """
    folder = Path(path)
    try:
        manifest = _validate(folder, verify_hashes=verify)
    except _Invalid as exc:
        raise UsageError(f"{folder}: {exc}") from None

    try:
        tensors = read_state(folder / MODEL_FILE)[0]
    except UsageError as exc:
        raise UsageError(f"{folder}: {exc}") from None

    try:
        state = torch.load(folder / STATE_FILE, weights_only=True, map_location="cpu")
    except Exception as exc:  # zip, unpickling and weights_only errors all land here
        raise UsageError(f"{folder}: cannot read {STATE_FILE}: {exc}") from None
    if not isinstance(state, dict):
        raise UsageError(f"{folder}: {STATE_FILE} does not hold a dict")
    if manifest.get("format", FORMAT) == 1:
        try:
            state = _from_format_1(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(
                f"{folder}: {STATE_FILE} of checkpoint format 1 cannot be converted to format {FORMAT} "
                f"({type(exc).__name__}: {exc}); resume it with the specc that wrote it, or train into "
                "a new --out"
            ) from None
    return tensors, state


class Stateful(Protocol):
    """A part whose state a checkpoint stores by name (as ``torch.distributed.checkpoint``'s)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def part_states(parts: Mapping[str, Stateful]) -> dict[str, Any]:
    """``{name: part.state_dict()}``: the parts' entries of a checkpoint's ``train_state``."""
    return {name: part.state_dict() for name, part in parts.items()}


def load_parts(path: str | os.PathLike[str], state: Mapping[str, Any], parts: Mapping[str, Stateful]) -> None:
    """Load each part from its entry of a checkpoint's state (as :func:`load_checkpoint` returns it).

    Raises:
        UsageError: An entry is missing or does not fit its part; names the checkpoint folder.
    """
    for name, part in parts.items():
        if name not in state:
            raise UsageError(f"{path}: {STATE_FILE} has no state of the training loop's '{name}'")
        try:
            part.load_state_dict(state[name])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise UsageError(
                f"{path}: the '{name}' state in {STATE_FILE} does not fit ({type(exc).__name__}: {exc})"
            ) from None


def _from_format_1(state: dict[str, Any]) -> dict[str, Any]:
    """Format 1 (fixed keys, the loop's counters in ``extra``) → format 2 (one entry per part).

    Early stopping's best value was stored negated when higher is better (as a "lower is better"
    score); format 2 stores the metric's own value, so the sign comes back from the config the
    checkpoint recorded. A format-1 state not written by the trainer (no ``extra`` history) is
    returned as it is.
    """
    extra = state.get("extra")
    if not isinstance(extra, dict) or "history" not in extra:
        return state
    best = extra["best"]
    if best is not None:
        es = json.loads(extra["config"]).get("early_stopping")
        if es is not None and EarlyStoppingConfig.model_validate_json(json.dumps(es)).higher_is_better:
            best = -best
    kept = {k: state[k] for k in ("step", "rng", "optimizer", "scheduler")}
    return {
        **kept,
        "config": extra["config"],
        "progress": {
            "step": state["step"],
            "history": extra["history"],
            "loss_sum": extra["loss_sum"],
            "loss_count": extra["loss_count"],
        },
        "sampler": {"epoch": state["epoch"], "position": state["position"]},
        "early_stopping": {
            "best": best,
            "best_epoch": extra.get("best_epoch"),
            "bad_epochs": extra["bad_epochs"],
            "stopped": extra["stopped_early"],
        },
        "grad_scaler": state.get("grad_scaler") or {},
    }


# ----------------------------------------------------------------------------------------------- clean


def clean_stale(run_dir: str | os.PathLike[str], *, skip_live: bool = True) -> list[Path]:
    """Removes leftovers of interrupted saves: hidden temporary folders and files.

    Call at the start of a run. Valid or invalid ``step-*`` folders are never touched.

    Args:
        run_dir: Run folder (a missing one is fine).
        skip_live: Keeps leftovers whose writer process (another one than this) still runs.

    Returns:
        The removed paths.
    """
    run = Path(run_dir)
    removed = clean_stale_temps(run, skip_live=skip_live)
    root = run / CHECKPOINTS_DIR
    if not root.is_dir():
        return removed
    removed += clean_stale_temps(root, skip_live=skip_live)
    found = False
    for entry in sorted(root.iterdir()):
        match = TEMP_PATTERN.match(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        if skip_live and pid_alive(int(match["pid"])):
            log.info("keeping %s: its writer (pid %s) still runs", entry, match["pid"])
            continue
        try:
            shutil.rmtree(entry)
        except OSError as exc:
            log.warning("could not remove stale checkpoint folder %s: %s", entry, exc)
            continue
        found = True
        removed.append(entry)
        log.info("removed stale checkpoint folder %s", entry)
    if found:
        fsync_dir(root)
    return removed
