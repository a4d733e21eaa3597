"""Weights inside a ``specc train`` run folder (:class:`~specc.contracts.run_folder.RunFolder`): the
final ``model.safetensors``, else the newest valid checkpoint's (see :mod:`specc.train.checkpoint`)."""

from __future__ import annotations

import os
from pathlib import Path

from specc.contracts.run_folder import MODEL_FILE, RunFolder
from specc.errors import UsageError
from specc.nn import CompiledModel, build
from specc.train.checkpoint import MODEL_FILE as CHECKPOINT_MODEL_FILE
from specc.train.checkpoint import find_latest_checkpoint
from specc.weights.fit import load_state
from specc.weights.store import complete_ties, read_state

__all__ = ["find_run_weights", "load_run"]


def find_run_weights(run: str | os.PathLike[str]) -> Path:
    """A run folder's weights file.

    Raises:
        UsageError: The folder has neither final weights nor a valid checkpoint.
    """
    folder = RunFolder(Path(run))
    final = folder.file(MODEL_FILE)
    if final.is_file():
        return final
    latest = find_latest_checkpoint(folder.path)
    if latest is None:
        raise UsageError(f"run folder {folder.path} has no {MODEL_FILE} and no valid checkpoint")
    return latest / CHECKPOINT_MODEL_FILE


def load_run(run: str | os.PathLike[str]) -> CompiledModel:
    """The network of a ``specc train`` run folder (its resolved ``spec.yaml``) with the run's weights,
    every tensor checked, in eval mode.

    Raises:
        UsageError: Not a run folder, or weights that do not fit its spec.
    """
    folder = RunFolder(Path(run))
    model = build(folder.spec_source(), seed=0)
    weights = find_run_weights(folder.path)
    load_state(model, complete_ties(model, read_state(weights)[0]), weights)
    return model.eval()
