"""What to export: a spec compiled to torch, with weights from a file or a ``specc train`` run folder.

A run folder holds ``model.safetensors`` (or ``checkpoints/step-*/model.safetensors``), the spec and
``data.json`` (``{"preprocess": {...}, "class_names": [...], "task": ..., "source": ...}``); the
data record supplies the labels, preprocessing and task written into the ONNX metadata, and the
validation split for the accuracy checks of ``--int8``/``--fp16``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from specc.errors import UsageError
from specc.nn import CompiledModel, build

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
DATA_FILE = "data.json"
_ALIASES_KEY = "specc.aliases"


@dataclass
class RunInfo:
    """What a run folder says about the data (empty when exporting a bare weights file)."""

    folder: Path | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocess(self) -> dict[str, Any] | None:
        pre = self.data.get("preprocess")
        return pre if isinstance(pre, dict) else None

    @property
    def class_names(self) -> list[str] | None:
        names = self.data.get("class_names")
        return [str(n) for n in names] if isinstance(names, list) else None

    @property
    def task(self) -> str | None:
        task = self.data.get("task")
        return task if isinstance(task, str) else None


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
) -> Source:
    """Build ``spec`` and load ``weights`` (a ``.safetensors`` file or a run folder) into it."""
    model = build(Path(spec), sets=sets, scale=scale, seed=seed)
    if weights is None:
        log.warning("no --weights given: exporting the freshly initialised network (seed %d)", seed)
        return Source(model, None, RunInfo())
    path = Path(weights)
    run = RunInfo()
    if path.is_dir():
        run = RunInfo(path, read_data_json(path))
        path = find_weights(path)
    elif not path.is_file():
        raise UsageError(f"weights not found: {path}")
    load_weights(model, path)
    return Source(model, path, run)


def read_data_json(run: Path) -> dict[str, Any]:
    file = run / DATA_FILE
    if not file.is_file():
        log.warning("run folder %s has no %s: no labels or preprocessing in the metadata", run, DATA_FILE)
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read {file}: {e}") from e
    if not isinstance(data, dict):
        raise UsageError(f"{file}: expected a JSON object")
    return data


def find_weights(run: Path) -> Path:
    """``RUN/model.safetensors``, else the newest valid checkpoint's weights."""
    direct = run / MODEL_FILE
    if direct.is_file():
        return direct
    from specc.train.checkpoint import find_latest_checkpoint

    latest = find_latest_checkpoint(run)
    if latest is None:
        raise UsageError(f"run folder {run} has no {MODEL_FILE} and no valid checkpoint")
    return latest / MODEL_FILE


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a safetensors state_dict (tied tensors may be stored once) strictly; never ``torch.load``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
        aliases = json.loads(header.get(_ALIASES_KEY, "{}"))
    except Exception as e:  # safetensors raises its own error types
        raise UsageError(f"cannot read weights {path}: {e}") from e
    for alias, target in (aliases or {}).items():
        if target in tensors:
            tensors[alias] = tensors[target]
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise UsageError(f"weights {path} do not fit the spec: {e}") from e
    missing = [k for k in missing if not _tied_to_loaded(model, k, tensors)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:8])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:8])}")
        raise UsageError(f"weights {path} do not fit the spec: {'; '.join(parts)}")


def _tied_to_loaded(model: torch.nn.Module, key: str, loaded: dict[str, torch.Tensor]) -> bool:
    """A key safetensors' ``save_model`` dropped because it shares storage with a loaded one."""
    state = model.state_dict(keep_vars=True)
    ptr = state[key].data_ptr()
    return any(state[k].data_ptr() == ptr for k in loaded if k in state and k != key)
