"""Fit a data set to a model's inputs and outputs, and cut it into reproducible batches.

Batches: epoch ``e`` visits the training split in the order ``permutation(seed, e)`` (a pure function
of the two numbers), in global batches of ``batch_size``. A resumed run re-derives the permutation
and skips the ``position`` batches already done, so no sample is skipped or repeated. With ``world``
processes, rank ``r`` takes every ``world``-th sample of each global batch (all ranks hold the data).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specc.atomic import atomic_write_text
from specc.data import BOS_ID, PAD_ID, Dataset, Split, load_dataset
from specc.errors import DataError

DATA_FILE = "data.json"


@dataclass(frozen=True)
class ModelIO:
    """What training needs to know of a model: per-sample input shapes/dtypes and its first output."""

    input_names: tuple[str, ...]
    input_shapes: tuple[tuple[int | str, ...], ...]
    input_dtypes: tuple[str, ...]
    output_name: str
    output_shape: tuple[int | str, ...]

    @classmethod
    def from_graph(cls, graph: Any) -> ModelIO:
        out_name, out_type = next(iter(graph.output_types().items()))
        return cls(
            tuple(graph.inputs),
            tuple(tuple(t.shape) for t in graph.inputs.values()),
            tuple(t.dtype for t in graph.inputs.values()),
            out_name,
            tuple(out_type.shape),
        )


def _shape(s: tuple[int | str, ...]) -> str:
    return "(" + ", ".join(str(d) for d in s) + ("," if len(s) == 1 else "") + ")"


def load_for_model(
    source: str,
    io: ModelIO,
    *,
    seed: int,
    seq_len: int | None = None,
    num_samples: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> Dataset:
    """Load ``source`` shaped for the model's first input and check it fits the model's output."""
    ds = load_dataset(
        source,
        input_shape=io.input_shapes[0],
        input_dtype=io.input_dtypes[0],
        seed=seed,
        seq_len=seq_len,
        num_samples=num_samples,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )
    check_fit(ds, io)
    return ds


def check_fit(ds: Dataset, io: ModelIO) -> list[str]:
    """Refuse (before training) a data set whose targets cannot be the model's output; return notes."""
    out = io.output_shape
    where = f"the spec output '{io.output_name}' has shape {_shape(out)}"
    head = out[-1] if out else None
    notes: list[str] = []
    if ds.task == "seq2seq" and not _seq2seq_inputs(io):
        raise DataError(
            f"data '{ds.name}' is a seq2seq task: the spec needs 2 inputs (source tokens, decoder "
            f"input tokens), optionally a 3rd bool source mask, but has "
            f"{', '.join(f'{n} {d}' for n, d in zip(io.input_names, io.input_dtypes, strict=True))}"
        )
    if ds.task != "seq2seq" and len(io.input_names) != 1:
        raise DataError(
            f"data '{ds.name}' ({ds.task}) feeds one input but the spec has "
            f"{len(io.input_names)} ({', '.join(io.input_names)})"
        )
    if ds.task == "classification":
        if len(out) != 1 or not isinstance(head, int):
            raise DataError(
                f"data '{ds.name}' is classification: the model must output one logit per class, "
                f"shape (C,), but {where}"
            )
        notes += _class_notes(ds, head, where)
    elif ds.task == "regression":
        target = tuple(ds.train.y.shape[1:]) or (1,)
        if tuple(out) != target and not (len(ds.train.y.shape) == 1 and tuple(out) == (1,)):
            raise DataError(f"data '{ds.name}' has regression targets of shape {_shape(target)} but {where}")
    else:
        length = int(ds.train.y.shape[1])
        if len(out) != 2 or not isinstance(head, int) or (isinstance(out[0], int) and out[0] != length):
            raise DataError(
                f"data '{ds.name}' ({ds.task}) needs logits of shape ({length}, V) per sample but {where}"
            )
        if ds.task == "seq2seq":
            dec = io.input_shapes[1]
            if len(dec) != 1 or (isinstance(dec[0], int) and dec[0] != length):
                raise DataError(
                    f"data '{ds.name}': the decoder input '{io.input_names[1]}' must have shape "
                    f"({length},) (bos + target without its last token), got {_shape(dec)}"
                )
        notes += _class_notes(ds, head, where, unit="tokens in the vocabulary")
    return notes


def _seq2seq_inputs(io: ModelIO) -> bool:
    n = len(io.input_names)
    return n == 2 or (n == 3 and io.input_dtypes[2] == "bool")


def _class_notes(ds: Dataset, head: int, where: str, unit: str = "classes") -> list[str]:
    n = ds.num_classes or 0
    if n > head:
        raise DataError(f"data '{ds.name}' has {n} {unit} but {where}: it cannot predict them all")
    if n < head:
        return [f"data '{ds.name}' has {n} {unit}; {where}: the extra {head - n} are never targets"]
    return []


def write_data_json(run: Path, ds: Dataset, io: ModelIO, labels: list[str] | None) -> None:
    """Write ``RUN/data.json``: what the exporter embeds (preprocessing, class labels); see docs/training.md."""
    info = {
        "format": 1,
        "source": ds.name,
        "task": ds.task,
        "num_classes": ds.num_classes,
        "class_names": ds.class_names or labels,
        "inputs": [
            {"name": n, "shape": list(s), "dtype": d}
            for n, s, d in zip(io.input_names, io.input_shapes, io.input_dtypes, strict=True)
        ],
        "output": io.output_name,
        "sample_shape": list(ds.sample_shape),
        "preprocess": ds.preprocess,
        "sizes": {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)},
        "notes": ds.notes,
    }
    atomic_write_text(run / DATA_FILE, json.dumps(info, indent=2) + "\n")


# ------------------------------------------------------------------------------------------- tensors


@dataclass
class TensorSplit:
    """A split as tensors on the training device: model inputs and targets."""

    inputs: tuple[torch.Tensor, ...]
    target: torch.Tensor

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def take(self, idx: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        return tuple(x[idx] for x in self.inputs), self.target[idx]


_DTYPES = {
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
    "f16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "double": torch.float64,
}


def to_tensors(split: Split, task: str, io: ModelIO, device: torch.device) -> TensorSplit:
    """Model inputs and targets of a split.

    seq2seq: inputs ``(src, [bos] + y[:-1])`` (teacher forcing), plus ``src != pad`` when the spec has a
    third (bool) input; target ``y``.
    """
    x = torch.from_numpy(np.ascontiguousarray(split.x))
    y = torch.from_numpy(np.ascontiguousarray(split.y))
    if x.is_floating_point():
        x = x.to(_DTYPES.get(io.input_dtypes[0], torch.float32))
    if task == "regression" and y.dim() == 1:
        y = y[:, None]
    inputs: tuple[torch.Tensor, ...] = (x,)
    if task == "seq2seq":
        dec = torch.cat([torch.full((y.shape[0], 1), BOS_ID, dtype=y.dtype), y[:, :-1]], dim=1)
        inputs = (x, dec) if len(io.input_names) == 2 else (x, dec, x != PAD_ID)  # mask: True = real token
    return TensorSplit(tuple(t.to(device) for t in inputs), y.to(device))


# ------------------------------------------------------------------------------------------- batches


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The visiting order of epoch ``epoch``: a pure function of ``(seed, epoch)`` (CPU, int64)."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n, generator=gen)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def global_batch(perm: torch.Tensor, index: int, batch_size: int) -> torch.Tensor:
    return perm[index * batch_size : (index + 1) * batch_size]


def shard(idx: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's part of a global batch (every ``world``-th sample from ``rank``)."""
    return idx if world == 1 else idx[rank::world]
