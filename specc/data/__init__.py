"""Torch-free data layer of ``specc train``: named, synthetic and user data sets as splits of numpy
samples, held in memory or read on demand (image files, tar shards, memory-mapped arrays, text).

This package never imports torch; the torch ``Dataset``/``DataLoader`` adapters live in
:mod:`specc.train.batches`.
"""

from __future__ import annotations

from specc.data.augment import Augmenter, make_augmenter, resize_bilinear
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
    Task,
    load_dataset,
    make_seq2seq,
)
from specc.data.splits import ArraySplit, DataBudget, Split, split_indices

__all__ = [
    "ArraySplit",
    "Augmenter",
    "DataBudget",
    "make_augmenter",
    "split_indices",
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
