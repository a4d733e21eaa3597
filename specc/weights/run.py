"""Weights inside a ``specc train`` run folder: the final ``model.safetensors``, else the newest
valid checkpoint's (see :mod:`specc.train.checkpoint`)."""

from __future__ import annotations

import os
from pathlib import Path

from specc.errors import UsageError
from specc.nn import CompiledModel, build
from specc.train.checkpoint import find_latest_checkpoint
from specc.weights.fit import load_state
from specc.weights.store import MODEL_FILE, complete_ties, read_state

__all__ = ["SPEC_FILE", "find_run_weights", "load_run"]

SPEC_FILE = "spec.yaml"


def find_run_weights(run: str | os.PathLike[str]) -> Path:
    """A run folder's weights file.

    Raises:
        UsageError: The folder has neither final weights nor a valid checkpoint.
    """
    folder = Path(run)
    final = folder / MODEL_FILE
    if final.is_file():
        return final
    latest = find_latest_checkpoint(folder)
    if latest is None:
        raise UsageError(f"run folder {folder} has no {MODEL_FILE} and no valid checkpoint")
    return latest / MODEL_FILE


def load_run(run: str | os.PathLike[str]) -> CompiledModel:
    """The network of a ``specc train`` run folder (its resolved ``spec.yaml``) with the run's weights,
    every tensor checked, in eval mode.

    Raises:
        UsageError: Not a run folder, or weights that do not fit its spec.
    """
    folder = Path(run)
    spec = folder / SPEC_FILE
    if not spec.is_file():
        raise UsageError(f"{folder} is not a run folder of `specc train` (no {SPEC_FILE})")
    model = build(spec, seed=0)
    weights = find_run_weights(folder)
    load_state(model, complete_ties(model, read_state(weights)[0]), weights)
    return model.eval()
