"""Opportunistic batching: a request never waits for a batch to fill while the model is idle.

`@serve.batch` waits up to `batch_wait_timeout_s` after a batch's first request for more to arrive,
and its collection loop does not wait for the previous batch to finish, so a batch holds what
arrived in that window (ray/serve/batching.py `wait_for_batch`, `_process_batches`). At concurrency
1 every request pays the whole window; with a window of 0 batches shrink to one.

`Batcher` forms batches from what queued while the previous batch ran: one worker task awaits the
async `fn` on up to `max_batch_size` queued items, and whatever arrives meanwhile is the next batch.
An idle model takes a lone request at once; a busy one gets full batches, as large as the load
makes them. Calls of `fn` never overlap.

When `fn` runs on the event loop itself (the Ranker ranks inline: serving.ranker_rank), nothing can
queue while a batch runs; the requests that arrived meanwhile wait in the socket buffers and are
read and parsed over the next loop iterations. So before taking a batch the worker yields to the
loop until `settle_rounds` consecutive iterations add no request (or the batch is full): the batch
then holds every request that was already on its way, at the cost of a few loop iterations (tens of
microseconds) for a lone request. `max_wait_s` > 0 additionally holds a batch open for that long
when it is not full (off by default).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64]


class Batcher:
    def __init__(
        self,
        fn: Callable[[list[Any]], Awaitable[list[Any]]],
        max_batch_size: int,
        max_wait_s: float = 0.0,
        settle_rounds: int = 0,
    ) -> None:
        self.fn = fn
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_s)
        self.settle_rounds = int(settle_rounds)
        self._queue: collections.deque[tuple[Any, asyncio.Future]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.batches = 0
        self.items = 0
        self.size_counts: dict[int, int] = collections.Counter()

    def configure(self, max_batch_size: int, max_wait_s: float, settle_rounds: int) -> None:
        self.max_batch_size, self.max_wait_s = int(max_batch_size), float(max_wait_s)
        self.settle_rounds = int(settle_rounds)

    async def submit(self, item: Any) -> Any:
        """Queue one item and wait for its result (the exception `fn` raised for its batch)."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._run())
        fut = loop.create_future()
        self._queue.append((item, fut))
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            if self.max_wait_s > 0 and len(self._queue) < self.max_batch_size:
                await asyncio.sleep(self.max_wait_s)
            await self._settle()
            batch: list[tuple[Any, asyncio.Future]] = []
            while self._queue and len(batch) < self.max_batch_size:
                item, fut = self._queue.popleft()
                if not fut.done():  # a cancelled request (client gone) is dropped here
                    batch.append((item, fut))
            if not batch:
                continue
            self.batches += 1
            self.items += len(batch)
            self.size_counts[len(batch)] += 1
            try:
                results = await self.fn([it for it, _ in batch])
            except Exception as e:  # noqa: BLE001 - every caller in the batch gets the error
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_result(res)

    async def _settle(self) -> None:
        """Yield to the loop until `settle_rounds` iterations in a row queue nothing new."""
        quiet, n = 0, len(self._queue)
        while quiet < self.settle_rounds and n < self.max_batch_size:
            await asyncio.sleep(0)  # one loop iteration: ready sockets are read, their requests parsed
            quiet = quiet + 1 if len(self._queue) == n else 0
            n = len(self._queue)

    def stats(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "mean_batch_size": self.items / self.batches if self.batches else 0.0,
            "size_counts": {str(k): v for k, v in sorted(self.size_counts.items())},
        }
