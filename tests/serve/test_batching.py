"""The dynamic batcher on its own: merging, splitting, shape groups, the bounded queue, failure
isolation and draining. The "model" is a numpy function that records every call it gets."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from specc.serve.batching import Batcher, Feeds, Outputs, QueueFull
from specc.serve.metrics import Metrics


class Recorder:
    """y = 2x + row-sum, per sample; remembers the batch size of every call; can be told to fail."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.delay_s = delay_s
        self.release = threading.Event()
        self.release.set()

    def __call__(self, feeds: Feeds) -> Outputs:
        self.release.wait(5)
        x = feeds["x"]
        self.calls.append(int(x.shape[0]))
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": 2 * x, "s": x.reshape(x.shape[0], -1).sum(axis=1)}


def batcher(run: Recorder, **kw: Any) -> Batcher:
    options: dict[str, Any] = {"max_batch": 8, "max_delay_s": 0.05, "max_queue": 64} | kw
    return Batcher("m", run, metrics=Metrics(), **options)


async def _gather(b: Batcher, xs: list[np.ndarray]) -> list[Outputs | BaseException]:
    b.start()
    try:
        return await asyncio.gather(*(b.submit({"x": x}) for x in xs), return_exceptions=True)
    finally:
        await b.stop()


def test_concurrent_requests_merge_up_to_max_batch_and_split_back() -> None:
    run = Recorder()
    xs = [np.full((rows, 3), i, np.float32) for i, rows in enumerate([1, 2, 3, 1, 4, 2, 1])]
    results = asyncio.run(_gather(batcher(run), xs))
    for x, out in zip(xs, results, strict=True):
        assert not isinstance(out, BaseException)
        np.testing.assert_array_equal(out["y"], 2 * x)
        np.testing.assert_array_equal(out["s"], x.sum(axis=1))
    assert sum(run.calls) == 14 and max(run.calls) <= 8 and len(run.calls) < len(xs)


def test_max_batch_one_runs_each_request_alone() -> None:
    run = Recorder()
    xs = [np.ones((1, 2), np.float32) * i for i in range(5)]
    asyncio.run(_gather(batcher(run, max_batch=1), xs))
    assert run.calls == [1] * 5


def test_requests_of_other_shapes_are_never_merged() -> None:
    run = Recorder()
    xs = [np.ones((1, 3 + i % 2), np.float32) * i for i in range(6)]
    results = asyncio.run(_gather(batcher(run), xs))
    for x, out in zip(xs, results, strict=True):
        assert not isinstance(out, BaseException)
        np.testing.assert_array_equal(out["y"], 2 * x)
    assert sorted(run.calls) == [3, 3]


def test_a_failing_request_fails_alone() -> None:
    run = Recorder()
    xs = [np.ones((1, 2), np.float32) * (-1 if i == 2 else i) for i in range(5)]
    results = asyncio.run(_gather(batcher(run), xs))
    assert isinstance(results[2], ValueError)
    for i in (0, 1, 3, 4):
        out = results[i]
        assert not isinstance(out, BaseException)
        np.testing.assert_array_equal(out["y"], 2 * xs[i])
    assert run.calls[0] == 5 and run.calls[1:] == [1] * 5  # the merged call, then one by one


def test_full_queue_refuses_at_once_and_stop_drains_the_rest() -> None:
    run = Recorder()
    run.release.clear()  # the first batch blocks on the inference thread

    async def scenario() -> tuple[list[Any], BaseException | None]:
        b = batcher(run, max_batch=1, max_queue=2)
        b.start()
        first = asyncio.ensure_future(b.submit({"x": np.zeros((1, 1), np.float32)}))
        await asyncio.sleep(0.05)  # taken by the worker, running (blocked)
        queued = [asyncio.ensure_future(b.submit({"x": np.full((1, 1), i, np.float32)})) for i in (1, 2)]
        await asyncio.sleep(0.01)
        refused: BaseException | None = None
        try:
            await b.submit({"x": np.zeros((1, 1), np.float32)})
        except QueueFull as e:
            refused = e
        run.release.set()
        await b.stop()  # finishes the queued requests before returning
        return [f.result() for f in (first, *queued)], refused

    outs, refused = asyncio.run(scenario())
    assert isinstance(refused, QueueFull) and "2 requests waiting" in str(refused)
    assert [float(o["y"][0, 0]) for o in outs] == [0.0, 2.0, 4.0]


def test_a_lone_request_waits_at_most_the_delay() -> None:
    run = Recorder()

    async def one() -> float:
        b = batcher(run, max_delay_s=0.2)
        b.start()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await b.submit({"x": np.ones((1, 2), np.float32)})
        took = loop.time() - start
        await b.stop()
        return took

    took = asyncio.run(one())
    assert 0.15 <= took < 2.0 and run.calls == [1]


def test_submit_after_stop_is_refused() -> None:
    async def scenario() -> None:
        b = batcher(Recorder())
        b.start()
        await b.stop()
        with pytest.raises(QueueFull, match="shutting down"):
            await b.submit({"x": np.ones((1, 2), np.float32)})

    asyncio.run(scenario())
