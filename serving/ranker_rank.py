"""The ranking half of the `Ranker` deployment (serving.app): what POST /rank and /rank/batch do.

Requests are parsed and checked on the replica's event loop, gathered by the dynamic batcher, and
ranked, logged and rendered on the same loop. Event ids are issued before ranking and registered
with the ledger in the background (`_queue_register`).

Why not a compute thread beside the loop: torch releases the GIL around every operator and takes it
back afterwards, so a forward pass in a second thread competes for the GIL once per operator with a
loop that is parsing and answering requests. Measured on the 2-core bench machine (RESULTS.md,
"Serving"), that cost more CPU per request than it overlapped, and split the concurrent requests
into two half-size batches (one ranking while the other was parsed). Ranked inline, a batch holds
every request that is waiting (`serving.batcher`, settle rounds); the loop is busy for one batch's
forward at a time (milliseconds), which /feedback and /healthz wait out.
"""

import asyncio
from dataclasses import dataclass

from serving import stages
from serving.errors import parse_body, parse_rank
from serving.feedback_log import impression_row, now_ms
from serving.schemas import (
    FieldError,
    RankBatchRequest,
    RankRequest,
    check_rank,
    rank_response_json,
)
from serving.scoring import Prepared, Scorer
from serving.settings import RuntimeConfig
from serving.stages import thread_time

REGISTER_EVERY_S = 0.02  # ledger registrations are sent in calls at most this often (_queue_register)


@dataclass
class _Item:
    """One request travelling through the batch queue with the scorer it was validated against."""

    req: RankRequest
    prepared: Prepared
    scorer: Scorer


class RankerRanking:
    """/rank and /rank/batch, mixed into `serving.app.Ranker` (the routes are declared there) (which sets the state they use:
    settings, scorer, runtime, batcher, signer, ledger, impressions log, generator)."""

    async def _rank_items(self, items: list[_Item]) -> list[bytes]:
        """Rank a batch: register its events with the ledger, then score, log and render it.

        Event ids are issued first and queued for the ledger (not waited for; see `_queue_register`);
        a page's shown items are all its candidates, so the entry is known before ranking. The
        forward pass, the impression rows and the response bodies are made on the loop (module doc).
        Returns the response body per item.
        """
        t0 = thread_time()
        runtime = self.runtime
        ts = now_ms()
        eids = [self.signer.issue(it.scorer.version, ts / 1000) for it in items]
        events = [
            (eid, it.scorer.version, [c.item_id for c in it.req.candidates]) for eid, it in zip(eids, items)
        ]
        self._queue_register(events)
        stages.CLOCK.add("event_ids", thread_time() - t0)
        return self._rank_sync(items, eids, ts, runtime)

    def _queue_register(self, events: list[tuple[str, str, list[str]]]) -> None:
        """Send events to the ledger in calls at most every REGISTER_EVERY_S, with at most one call in
        flight: what queues meanwhile goes in the next one. A handle call costs CPU in the replica's loop and in the
        ledger for every call, so fewer, larger calls are cheaper (README, profile). Registration is off the response's critical path
        (see serving.ledger); feedback that arrives first for a verified id is still accepted."""
        self._register_queue.extend(events)
        if self._register_task is None or self._register_task.done():
            self._register_task = asyncio.ensure_future(self._register_loop())

    async def _register_loop(self) -> None:
        while self._register_queue:
            await asyncio.sleep(REGISTER_EVERY_S)  # off the request that queued it; gathers more
            events, self._register_queue = self._register_queue, []
            await self._register(events)

    async def _register(self, events: list[tuple[str, str, list[str]]]) -> None:
        try:
            await self.ledger.register.remote(events)
        except Exception as e:  # noqa: BLE001 - feedback for them: see serving.ledger (unknown but signed)
            self.register_errors += 1
            self.last_register_error = f"{type(e).__name__}: {e}"

    def _rank_sync(self, items: list[_Item], eids: list[str], ts: int, runtime: RuntimeConfig) -> list[bytes]:
        """Score (grouped by the scorer each request was validated with: a swap may land mid-batch),
        queue the impressions, render the responses."""
        out: list[bytes | None] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(id(it.scorer), []).append(i)
        rows = []
        for idx in groups.values():
            scorer = items[idx[0]].scorer
            ranked = scorer.rank(
                [items[i].prepared for i in idx], runtime.exploration, runtime.temperature, self.generator
            )
            t0 = thread_time()
            for i, r in zip(idx, ranked):
                it = items[i]
                rows.append(impression_row(eids[i], ts, self.replica, scorer.version, it.req, r, it.prepared))
            t1 = thread_time()
            for i, r in zip(idx, ranked):
                out[i] = rank_response_json(items[i].req, eids[i], scorer.version, r)
            stages.CLOCK.add("impression_rows", t1 - t0)
            stages.CLOCK.add("response_json", thread_time() - t1)
        self.impressions.append(rows)
        return out  # type: ignore[return-value]

    async def rank_body(self, body: bytes) -> bytes:
        """/rank: a request body to its response body (RankRoute and the FastAPI route both call this)."""
        t0 = thread_time()
        req = parse_rank(body)
        t1 = thread_time()
        scorer = self.scorer
        s = self.settings
        check_rank(
            req, scorer.feature_dims, scorer.query_dim, scorer.user_dim, s.max_candidates, s.max_item_id_len
        )
        t2 = thread_time()
        item = _Item(req, scorer.prepare(req), scorer)
        t3 = thread_time()
        stages.CLOCK.add("parse_validate", t1 - t0)
        stages.CLOCK.add("contract_check", t2 - t1)
        stages.CLOCK.add("feature_arrays", t3 - t2)
        if self.runtime.batching:
            out = await self.batcher.submit(item)
        else:
            out = (await self._rank_items([item]))[0]
        self.rank_requests += 1
        return out

    async def rank_batch_body(self, body: bytes) -> bytes:
        """/rank/batch: a request body to its response body (each page's /rank body, in order)."""
        req = parse_body(RankBatchRequest, body)
        scorer = self.scorer
        s = self.settings
        items = []
        for i, page in enumerate(req.pages):
            try:
                check_rank(
                    page,
                    scorer.feature_dims,
                    scorer.query_dim,
                    scorer.user_dim,
                    s.max_candidates,
                    s.max_item_id_len,
                )
            except FieldError as e:
                raise FieldError(("body", "pages", i, *e.loc[1:]), e.msg, e.status) from None
            items.append(_Item(page, scorer.prepare(page), scorer))
        bodies = await self._rank_items(items)  # each page's /rank response body (a RankResponse)
        return b'{"results":[' + b",".join(bodies) + b"]}"
