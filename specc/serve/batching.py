"""Dynamic batching: requests that arrive close together run as one onnxruntime call.

One :class:`Batcher` per model. Requests wait in a bounded queue; a worker task takes the oldest
request and every queued request with the same per-sample shapes (the sizes of all axes but the
batch axis, so that nothing is padded), up to ``max_batch`` rows. If fewer rows are queued, it
waits for more until ``max_delay_s`` after the oldest request arrived. The batch runs on the
model's own inference thread (onnxruntime releases the GIL), and each request gets its own rows of
every output back. While one batch runs, new requests queue up and form the next one, so under load
batches fill without waiting.

A batch whose onnxruntime call fails is retried request by request, so that one bad request (a
token id past the embedding, say) fails alone instead of taking its batch-mates with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from specc.serve.metrics import Metrics

Feeds = dict[str, NDArray[Any]]
Outputs = dict[str, NDArray[Any]]
RunFn = Callable[[Feeds], Outputs]


class QueueFull(Exception):
    """The model's queue holds ``max_queue`` requests already."""


@dataclass
class _Job:
    feeds: Feeds
    rows: int
    key: tuple[tuple[int, ...], ...]
    future: asyncio.Future[Outputs]
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Queue, merge and run the requests of one model (see the module docstring).

    ``run`` is called on the inference thread with merged feeds (batch axis first in every input)
    and must return outputs whose first axis is the batch axis. ``max_batch=1`` serves every
    request alone (no merging).
    """

    def __init__(
        self,
        name: str,
        run: RunFn,
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self._run = run
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._metrics = metrics
        self._pending: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # one thread per model: its onnxruntime calls never overlap (intra-op threads do the parallel work)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"specc-serve-{name}")

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Finish every queued request, then stop the worker and the inference thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self.executor.shutdown(wait=True)

    # -- submitting ------------------------------------------------------------------------------

    async def submit(self, feeds: Feeds) -> Outputs:
        """Queue one request (checked feeds, batch axis first) and wait for its outputs."""
        if self._closing:
            raise QueueFull("the server is shutting down")
        if len(self._pending) >= self.max_queue:
            self._metrics.rejected.labels(self.name).inc()
            raise QueueFull(f"the queue of model '{self.name}' is full ({self.max_queue} requests waiting)")
        first = next(iter(feeds.values()))
        job = _Job(
            feeds=feeds,
            rows=int(first.shape[0]) if first.ndim else 1,
            key=tuple(a.shape[1:] for a in feeds.values()),
            future=asyncio.get_running_loop().create_future(),
        )
        self._pending.append(job)
        self._metrics.queue_depth.labels(self.name).set(len(self._pending))
        self._wakeup.set()
        return await job.future

    # -- worker ----------------------------------------------------------------------------------

    def _queued_rows(self, key: tuple[tuple[int, ...], ...]) -> int:
        return sum(j.rows for j in self._pending if j.key == key)

    async def _wait_for_batch(self) -> None:
        """Wait until a full batch is queued or the oldest request has waited ``max_delay_s``."""
        oldest = self._pending[0]
        while not self._closing and self._queued_rows(oldest.key) < self.max_batch:
            remaining = oldest.arrived + self.max_delay_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _take(self) -> list[_Job]:
        """The oldest request and the next ones of the same shapes, up to ``max_batch`` rows."""
        first = self._pending.popleft()
        jobs, rows, kept = [first], first.rows, deque[_Job]()
        while self._pending:
            job = self._pending.popleft()
            if job.key == first.key and rows + job.rows <= self.max_batch:
                jobs.append(job)
                rows += job.rows
            else:
                kept.append(job)
        self._pending = kept
        self._metrics.queue_depth.labels(self.name).set(len(self._pending))
        return jobs

    async def _loop(self) -> None:
        while True:
            while not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._wait_for_batch()
            await self._run_jobs(self._take())

    async def _run_jobs(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.executor, self._run_merged, [j.feeds for j in jobs])
        except Exception as exc:  # noqa: BLE001 - delivered to the requests, never kills the worker
            if len(jobs) == 1:
                _deliver(jobs[0], exc)
                return
            for job in jobs:  # find the request that failed; the others still get their answers
                await self._run_jobs([job])
            return
        for job, result in zip(jobs, results, strict=True):
            _deliver(job, result)

    def _run_merged(self, feeds: list[Feeds]) -> list[Outputs]:
        """On the inference thread: concatenate, run once, split back per request."""
        rows = [next(iter(f.values())).shape[0] for f in feeds]
        merged = feeds[0] if len(feeds) == 1 else {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
        start = time.perf_counter()
        outputs = self._run(merged)
        self._metrics.inference.labels(self.name).observe(time.perf_counter() - start)
        total = sum(rows)
        self._metrics.batch_size.labels(self.name).observe(total)
        self._metrics.batch_requests.labels(self.name).observe(len(feeds))
        if len(feeds) == 1:
            return [outputs]
        for key, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != total:
                raise RuntimeError(
                    f"output '{key}' of a batch of {total} has shape {value.shape}; cannot split it"
                )
        bounds = np.cumsum([0, *rows])
        return [{k: v[a:b] for k, v in outputs.items()} for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _deliver(job: _Job, result: Mapping[str, NDArray[Any]] | BaseException) -> None:
    if job.future.done():  # the client went away and the request was cancelled
        return
    if isinstance(result, BaseException):
        job.future.set_exception(result)
    else:
        job.future.set_result(dict(result))
