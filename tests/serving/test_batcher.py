"""serving.batcher: no wait when idle, what queued during a batch is the next batch, results go to
their callers, errors reach every caller of the failed batch, the size cap holds."""

from __future__ import annotations

import asyncio

import pytest

from serving.batcher import Batcher


def run(coro):
    return asyncio.run(coro)


class BusyModel:
    """A batch function that records every batch it is given, holds the batch [0] until `release` is
    set (the model is busy with it) and returns each item times `scale`."""

    def __init__(self, scale: int = 1) -> None:
        self.seen: list[list[int]] = []
        self.release = asyncio.Event()
        self.scale = scale

    async def __call__(self, items):
        self.seen.append(list(items))
        if items == [0]:
            await self.release.wait()
        return [x * self.scale for x in items]


def test_lone_request_runs_at_once_and_queued_ones_form_the_next_batch():
    fn = BusyModel(scale=10)

    async def main():
        b = Batcher(fn, max_batch_size=4)
        first = asyncio.ensure_future(b.submit(0))
        await asyncio.sleep(0.01)
        assert fn.seen == [[0]]  # taken alone, at once (no window)
        rest = [asyncio.ensure_future(b.submit(i)) for i in range(1, 7)]
        await asyncio.sleep(0.01)
        fn.release.set()
        out = await asyncio.gather(first, *rest)
        return out, b.stats()

    out, stats = run(main())
    assert out == [x * 10 for x in range(7)]
    assert fn.seen == [[0], [1, 2, 3, 4], [5, 6]]  # queued while busy, capped at max_batch_size
    assert stats["batches"] == 3 and stats["items"] == 7 and stats["size_counts"] == {"1": 1, "2": 1, "4": 1}


def test_an_error_reaches_every_caller_of_its_batch_and_the_worker_goes_on():
    async def main():
        async def fn(items):
            if -1 in items:
                raise ValueError("bad batch")
            return items

        b = Batcher(fn, max_batch_size=8)
        bad = await asyncio.gather(b.submit(-1), return_exceptions=True)
        good = await b.submit(5)
        return bad, good

    bad, good = run(main())
    assert isinstance(bad[0], ValueError) and good == 5


def test_cancelled_requests_are_dropped_before_the_batch_runs():
    fn = BusyModel()

    async def main():
        b = Batcher(fn, max_batch_size=8)
        first = asyncio.ensure_future(b.submit(0))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(b.submit(1))
        kept = asyncio.ensure_future(b.submit(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        fn.release.set()
        return await asyncio.gather(first, kept)

    assert run(main()) == [0, 2]
    assert fn.seen == [[0], [2]]


@pytest.mark.parametrize("wait_s", [0.05])
def test_optional_wait_holds_a_partial_batch_open(wait_s):
    fn = BusyModel()  # never given [0]: never busy

    async def main():
        b = Batcher(fn, max_batch_size=8, max_wait_s=wait_s)
        a = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(wait_s / 5)
        c = asyncio.ensure_future(b.submit(2))
        return await asyncio.gather(a, c)

    assert run(main()) == [1, 2]
    assert fn.seen == [[1, 2]]


@pytest.mark.parametrize("settle, batches", [(0, [[0], [1, 2, 3]]), (1, [[0, 1, 2, 3]])])
def test_settle_rounds_take_requests_still_being_parsed(settle, batches):
    """With `fn` on the loop nothing queues during a batch: requests that reach `submit` one loop
    iteration later (still being parsed) join the batch only when the worker settles first."""
    fn = BusyModel()  # released up front: it never holds a batch

    async def main():
        b = Batcher(fn, max_batch_size=8, settle_rounds=settle)
        fn.release.set()

        async def late(i):
            await asyncio.sleep(0)  # one iteration behind, like a request whose body is parsed next
            return await b.submit(i)

        return await asyncio.gather(b.submit(0), *(late(i) for i in (1, 2, 3)))

    assert run(main()) == [0, 1, 2, 3]
    assert fn.seen == batches
