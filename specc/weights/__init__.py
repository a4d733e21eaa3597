"""Weights in and out of specc networks: one safetensors convention with tied tensors
(:mod:`~specc.weights.store`), checked loading (:mod:`~specc.weights.fit`), name maps of published
checkpoints (:mod:`~specc.weights.maps`), import from Hugging Face folders and state-dict files
(:mod:`~specc.weights.sources`) and export as a Hugging Face folder (:mod:`~specc.weights.hf_export`).

This package's root holds only the torch + safetensors layer that :mod:`specc.train.checkpoint`
builds on; :mod:`~specc.weights.run` (weights in a run folder) sits above the checkpoints.
"""

from specc.weights.fit import LoadReport, load_state
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
    "load_state",
    "read_metadata",
    "read_state",
    "split_ties",
    "write_state",
    "write_tensors",
]
