"""The network of a ``specc train`` run folder with its weights (``specc.load_run``)."""

from __future__ import annotations

import os
from pathlib import Path

from specc.contracts.run_folder import RunFolder
from specc.nn import CompiledModel, build
from specc.weights import load_file

__all__ = ["load_run"]


def load_run(run: str | os.PathLike[str]) -> CompiledModel:
    """The network of a ``specc train`` run folder (its resolved ``spec.yaml``) with the run's weights
    (the final ones, else the newest valid checkpoint's), every tensor checked, in eval mode.

    Raises:
        UsageError: Not a run folder, or weights that do not fit its spec.
    """
    folder = RunFolder(Path(run))
    model = build(folder.spec_source(), seed=0)
    load_file(model, folder.weights_file())
    return model.eval()
