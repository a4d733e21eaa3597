"""Fit a data set to a model's inputs and outputs, and feed it through torch's ``DataLoader``.

Batches: epoch ``e`` visits the training split in the order ``permutation(seed, e)`` (a pure function
of the two numbers), in global batches of ``batch_size``. The sampler's state is the cursor
``(epoch, position)``, position being the batches of the epoch already trained on; a resumed run
loads it, re-derives the permutation and starts there, so no sample is skipped or repeated. With
``world`` processes, rank ``r`` takes every ``world``-th sample of each global batch (the
DistributedSampler equivalent). The sampler runs in the main process and hands ``(epoch, sample)``
pairs to the loader's workers; a sample's augmentation depends on those alone, so the number of
workers never changes a run.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from specc.data import BOS_ID, PAD_ID, Augmenter, Dataset, Split, load_dataset
from specc.errors import DataError


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
    **options: Any,
) -> Dataset:
    """Load ``source`` shaped for the model's first input and check it fits the model's output
    (``options``: further keywords of :func:`specc.data.load_dataset`)."""
    ds = load_dataset(
        source,
        input_shape=io.input_shapes[0],
        input_dtype=io.input_dtypes[0],
        seed=seed,
        seq_len=seq_len,
        num_samples=num_samples,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        **options,
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
        target = ds.train.target_shape or (1,)
        if tuple(out) != target and not (not ds.train.target_shape and tuple(out) == (1,)):
            raise DataError(f"data '{ds.name}' has regression targets of shape {_shape(target)} but {where}")
    else:
        length = ds.train.target_shape[0]
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


# ------------------------------------------------------------------------------------------- loading

Item = tuple[int, int]  # (epoch, position in the split): what the samplers hand the workers
Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]  # model inputs, target


def model_arrays(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], task: str, io: ModelIO) -> tuple[Any, ...]:
    """A batch of samples as the model's inputs and the target (numpy).

    seq2seq: inputs ``(src, [bos] + y[:-1])`` (teacher forcing), plus ``src != pad`` when the spec has a
    third (bool) input; regression targets get a trailing axis of 1 when they have none.
    """
    if task == "regression" and y.ndim == 1:
        y = y[:, None]
    if task != "seq2seq":
        return (x, y)
    dec = np.concatenate([np.full((y.shape[0], 1), BOS_ID, dtype=y.dtype), y[:, :-1]], axis=1)
    if len(io.input_names) == 2:
        return (x, dec, y)
    return (x, dec, x != PAD_ID, y)  # mask: True = real token


@dataclass(frozen=True)
class LoadFailure:
    """A data error met in a loader worker, carried to the main process (raised there without the
    worker's traceback)."""

    message: str


class SplitDataset(torch.utils.data.Dataset[Any]):
    """A :class:`~specc.data.Split` as a map-style torch ``Dataset`` of whole batches.

    Indices are ``(epoch, position)`` pairs; ``__getitems__`` reads a batch at once (one fancy index
    for in-memory splits, one decode per sample for lazy ones) and augments each sample from
    ``(seed, epoch, sample)`` alone, so workers and resuming change nothing.
    """

    def __init__(self, split: Split, task: str, io: ModelIO, aug: Augmenter | None = None) -> None:
        self.split, self.task, self.io, self.aug = split, task, io, aug

    def __len__(self) -> int:
        return len(self.split)

    def __getitems__(self, items: list[Item]) -> tuple[Any, ...] | LoadFailure:
        epoch = items[0][0] if items else 0
        idx = np.asarray([i for _, i in items if i >= 0], dtype=np.int64)
        try:
            x, y = self.split.take(idx, self.aug, epoch)
        except DataError as e:
            return LoadFailure(str(e))
        return model_arrays(x, y, self.task, self.io)

    def __getitem__(self, item: Item) -> tuple[Any, ...] | LoadFailure:
        return self.__getitems__([item])


def collate(batch: Any) -> tuple[torch.Tensor, ...] | LoadFailure:
    """numpy arrays -> tensors (zero copy); a failure passes through."""
    if isinstance(batch, LoadFailure):
        return batch
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in batch)


class TrainBatches(torch.utils.data.Sampler[list[Item]]):
    """This rank's part of each global batch of an epoch, and where the loop stands in that order.

    Its state is the cursor ``(epoch, position)``: the epoch whose order :meth:`__iter__` follows and
    the batches of it the loop has consumed (:meth:`advance`). Iterating starts at ``position``, so a
    sampler loaded from a checkpoint's :meth:`state_dict` hands out exactly the batches not yet
    trained on. The cursor moves only when the loop says a batch is done, never when the loader's
    workers prefetch one. It is iterated in the main process, so the cursor reaches persistent
    workers too.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.steps = steps_per_epoch(n, batch_size)  # global batches per epoch
        self.epoch = 0
        self.position = 0

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        self.epoch, self.position = epoch, position

    def advance(self) -> None:
        """The loop has trained on the next batch of the epoch."""
        self.position += 1

    def next_epoch(self) -> None:
        self.epoch, self.position = self.epoch + 1, 0

    @property
    def epoch_done(self) -> bool:
        return self.position >= self.steps

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.set_epoch(int(state["epoch"]), int(state["position"]))

    def __len__(self) -> int:
        return self.steps - self.position

    def __iter__(self) -> Iterator[list[Item]]:
        epoch, start = self.epoch, self.position  # fixed for this pass; advance() moves the cursor only
        perm = epoch_permutation(self.seed, epoch, self.n)
        for b in range(start, self.steps):
            mine = shard(global_batch(perm, b, self.batch_size), self.rank, self.world).tolist()
            yield [(epoch, i) for i in mine] or [(epoch, -1)]  # -1: an empty share


class EvalBatches(torch.utils.data.Sampler[list[Item]]):
    """Samples ``rank, rank + world, ...`` in order, ``size`` at a time; ``uniform``: every rank gets
    the same number of batches (FSDP: each forward is a collective)."""

    def __init__(self, n: int, size: int, rank: int, world: int, uniform: bool) -> None:
        mine = np.arange(rank, n, world)
        if uniform:
            self.parts = np.array_split(mine, -(-math.ceil(n / world) // size)) if n else []
        else:
            self.parts = [mine[i : i + size] for i in range(0, len(mine), size)]

    def __len__(self) -> int:
        return len(self.parts)

    def __iter__(self) -> Iterator[list[Item]]:
        for p in self.parts:
            yield [(0, int(i)) for i in p] or [(0, -1)]


def resolve_workers(num_workers: int | None, split: Split, world: int) -> int:
    """``num_workers`` or, when None, 0 for data held in memory and a few processes for data decoded
    on demand (leaving a core per training process)."""
    if num_workers is not None:
        return num_workers
    if not split.lazy:
        return 0
    return max(1, min(4, (os.cpu_count() or 2) // max(world, 1) - 1))


def _quiet_worker(worker_id: int) -> None:
    """Loader workers leave SIGINT/SIGTERM to the main process, which stops at a step boundary and
    saves; the workers end with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(
    dataset: SplitDataset,
    sampler: torch.utils.data.Sampler[list[Item]],
    workers: int,
    *,
    prefetch_factor: int = 2,
    pin_memory: bool = False,
    persistent: bool = False,
) -> torch.utils.data.DataLoader[Any]:
    """A ``DataLoader`` over ``dataset`` in the batches ``sampler`` gives (order kept with workers)."""
    kw: dict[str, Any] = {}
    if workers > 0:
        kw = {
            "prefetch_factor": prefetch_factor,
            "persistent_workers": persistent,
            "worker_init_fn": _quiet_worker,
        }
        if "fork" in multiprocessing.get_all_start_methods():
            kw["multiprocessing_context"] = "fork"  # no pickling of (memory-mapped) data
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        generator=torch.Generator(),  # the loader's own seed draw must not move the global RNG
        **kw,
    )


def unpack(batch: tuple[torch.Tensor, ...] | LoadFailure, device: torch.device, io: ModelIO) -> Batch:
    """A collated batch on ``device`` (float inputs in the spec's float dtype); raises a worker's
    data error."""
    if isinstance(batch, LoadFailure):
        raise DataError(batch.message)
    *xs, y = (t.to(device, non_blocking=True) for t in batch)
    if xs[0].is_floating_point():
        xs[0] = xs[0].to(_DTYPES.get(io.input_dtypes[0], torch.float32))
    return tuple(xs), y


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
