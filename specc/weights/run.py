"""Weights inside a ``specc train`` run folder: the final ``model.safetensors``, else the newest
valid checkpoint's (see :mod:`specc.train.checkpoint`)."""

from __future__ import annotations

import os
from pathlib import Path

from specc.errors import UsageError
from specc.train.checkpoint import find_latest_checkpoint
from specc.weights.store import MODEL_FILE

__all__ = ["find_run_weights"]


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
