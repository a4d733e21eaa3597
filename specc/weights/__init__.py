"""Tensors in and out of any ``nn.Module``: one safetensors convention with tied tensors
(:mod:`~specc.weights.store`), checked loading (:mod:`~specc.weights.fit`), name maps of published
checkpoints (:mod:`~specc.weights.maps`) and reading a weights source: a Hugging Face folder, a
state-dict file or a run folder (:mod:`~specc.weights.sources`).

The low layer: torch, safetensors and the run folder's contract only, never :mod:`specc.nn` or
:mod:`specc.train`, so both build on it (``save_weights``, checkpoints, ``--init-from``). What builds
a spec's network to put weights into it (``specc.load_run``, ``specc weights import/export``) is
:mod:`specc.pretrained`, one layer up.
"""

from specc.weights.fit import LoadReport, load_file, load_state
from specc.weights.store import (
    complete_ties,
    read_metadata,
    read_state,
    split_ties,
    write_state,
    write_tensors,
)

__all__ = [
    "LoadReport",
    "complete_ties",
    "load_file",
    "load_state",
    "read_metadata",
    "read_state",
    "split_ties",
    "write_state",
    "write_tensors",
]
