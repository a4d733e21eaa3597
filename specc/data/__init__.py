"""Torch-free data layer of ``specc train``: named, synthetic and user data sets as numpy splits.

The torch augmentations live in :mod:`specc.data.augment` (import it directly; this package never
imports torch).
"""

from __future__ import annotations

from specc.data.datasets import (
    ACCEPTED_SOURCES,
    BOS_ID,
    EOS_ID,
    FIRST_SYMBOL_ID,
    NAMED_SOURCES,
    PAD_ID,
    SKLEARN_SOURCES,
    SYNTHETIC_SOURCES,
    SYNTHETIC_VOCAB_SIZE,
    TASKS,
    Dataset,
    Split,
    Task,
    load_dataset,
    make_seq2seq,
    resize_bilinear,
)

__all__ = [
    "ACCEPTED_SOURCES",
    "BOS_ID",
    "EOS_ID",
    "FIRST_SYMBOL_ID",
    "NAMED_SOURCES",
    "PAD_ID",
    "SKLEARN_SOURCES",
    "SYNTHETIC_SOURCES",
    "SYNTHETIC_VOCAB_SIZE",
    "TASKS",
    "Dataset",
    "Split",
    "Task",
    "load_dataset",
    "make_seq2seq",
    "resize_bilinear",
]
