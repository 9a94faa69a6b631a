"""The event ledger: which impressions were served, and whether their feedback was already taken.

Why a single shared ledger (a one-replica Serve deployment, no CPU reservation) rather than state in
each Ranker replica or purely signed ids: feedback for an event served by replica A may reach replica
B, and "accepted once" needs one place that knows an event's feedback was already taken. The ledger
also remembers the shown item ids (so feedback naming an item that was never shown is refused) and
the model version (so feedback rows land in the right version partition). Ranker replicas register a
whole `@serve.batch` batch in one call that /rank does not wait for (see `EventLedger`).

Event ids are `<issued ms, base 36>.<secrets.token_urlsafe(18)>`: 144 random bits make them
unguessable; the visible issue time lets an expired id be told apart from a forged one even after
the ledger has evicted it. Feedback is claimed, written durably, then committed; a claim that is never
committed (the replica died mid-write) is released after `pending_timeout_s`, so the client's retry
is accepted rather than reported as a duplicate that was never logged.

The ledger is in memory: if its replica restarts, earlier events become unknown (feedback → 404).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from ray import serve

from serving.settings import LEDGER


def new_event_id(now_s: float | None = None) -> str:
    ms = int((time.time() if now_s is None else now_s) * 1000)
    return f"{_b36(ms)}.{secrets.token_urlsafe(18)}"


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def issued_s(event_id: str) -> float | None:
    """Issue time (epoch s) of a well-formed event id, else None."""
    head, sep, tail = event_id.partition(".")
    if not sep or not head or len(head) > 12 or len(tail) != 24:
        return None
    try:
        return int(head, 36) / 1000.0
    except ValueError:
        return None


def item_digest(item_ids: list[str]) -> bytes:
    """Shown item ids as sorted 8-byte BLAKE2b hashes: ~8 bytes per item held, not the strings."""
    return b"".join(sorted(hashlib.blake2b(i.encode(), digest_size=8).digest() for i in item_ids))


def _contains(digest: bytes, item_id: str) -> bool:
    h = hashlib.blake2b(item_id.encode(), digest_size=8).digest()
    lo, hi = 0, len(digest) // 8
    while lo < hi:  # binary search over the sorted 8-byte records
        mid = (lo + hi) // 2
        rec = digest[mid * 8 : mid * 8 + 8]
        if rec == h:
            return True
        if rec < h:
            lo = mid + 1
        else:
            hi = mid
    return False


@dataclass
class _Event:
    issued: float
    model_version: str
    items: bytes  # item_digest of the shown items
    state: str = "open"  # open | pending | done
    claimed_at: float = 0.0


class EventBook:
    """The ledger's logic, free of Ray (unit-tested directly)."""

    def __init__(self, ttl_s: float, max_events: int, pending_timeout_s: float = 10.0, clock=time.time):
        self.ttl_s = float(ttl_s)
        self.max_events = int(max_events)
        self.pending_timeout_s = float(pending_timeout_s)
        self.clock = clock
        self._events: OrderedDict[str, _Event] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def _evict(self) -> None:
        now = self.clock()
        while self._events:
            eid, ev = next(iter(self._events.items()))
            if len(self._events) > self.max_events or now - ev.issued > self.ttl_s:
                self._events.popitem(last=False)
            else:
                break

    def register(self, events: list[tuple[str, str, list[str]]]) -> int:
        """events: (event_id, model_version, shown item ids)."""
        for eid, version, items in events:
            issued = issued_s(eid)
            self._events[eid] = _Event(
                issued if issued is not None else self.clock(), version, item_digest(items)
            )
        self._evict()
        return len(events)

    def claim(self, event_id: str, item_ids: list[str]) -> dict:
        """status: accepted | duplicate | in_progress | unknown | expired | bad_item (with index)."""
        now = self.clock()
        ev = self._events.get(event_id)
        issued = issued_s(event_id)
        if ev is None:
            if issued is not None and now - issued > self.ttl_s and issued <= now:
                return {"status": "expired", "age_s": now - issued, "ttl_s": self.ttl_s}
            return {"status": "unknown"}
        if now - ev.issued > self.ttl_s:
            return {"status": "expired", "age_s": now - ev.issued, "ttl_s": self.ttl_s}
        if ev.state == "done":
            return {"status": "duplicate", "model_version": ev.model_version}
        if ev.state == "pending" and now - ev.claimed_at < self.pending_timeout_s:
            return {"status": "in_progress", "model_version": ev.model_version}
        for i, item in enumerate(item_ids):
            if not _contains(ev.items, item):
                return {"status": "bad_item", "index": i, "item_id": item}
        ev.state, ev.claimed_at = "pending", now
        return {"status": "accepted", "model_version": ev.model_version}

    def commit(self, event_id: str) -> None:
        ev = self._events.get(event_id)
        if ev is not None:
            ev.state = "done"

    def release(self, event_id: str) -> None:
        ev = self._events.get(event_id)
        if ev is not None and ev.state == "pending":
            ev.state = "open"


@serve.deployment(name=LEDGER, num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class EventLedger:
    """One replica by design (it is the shared state). Async methods run on the replica's event loop,
    one at a time between awaits, so the book needs no lock.

    Rankers register a batch's events without waiting for the ledger (the hop stays off /rank's
    latency); the registration is sent before the response, so feedback can only overtake it by
    milliseconds. A claim for a well-formed id issued within the last `grace_s` that is not yet
    registered therefore waits (up to `grace_s`) for its registration; a forged fresh id gets its
    404 after that wait, an old or malformed one at once.
    """

    def __init__(self, ttl_s: float = 3600.0, max_events: int = 200_000, grace_s: float = 2.0) -> None:
        self.book = EventBook(ttl_s, max_events)
        self.grace_s = float(grace_s)
        self._waiting: dict[str, asyncio.Event] = {}

    async def register(self, events: list[tuple[str, str, list[str]]]) -> int:
        n = self.book.register(events)
        for eid, _, _ in events:
            ev = self._waiting.pop(eid, None)
            if ev is not None:
                ev.set()
        return n

    async def claim(self, event_id: str, item_ids: list[str]) -> dict:
        res = self.book.claim(event_id, item_ids)
        issued = issued_s(event_id)
        now = self.book.clock()
        if (
            res["status"] == "unknown"
            and issued is not None
            and -self.grace_s <= now - issued <= self.grace_s
        ):
            ev = self._waiting.setdefault(event_id, asyncio.Event())
            try:
                await asyncio.wait_for(ev.wait(), timeout=self.grace_s)
            except TimeoutError:
                self._waiting.pop(event_id, None)
            res = self.book.claim(event_id, item_ids)
        return res

    async def commit(self, event_id: str) -> None:
        self.book.commit(event_id)

    async def release(self, event_id: str) -> None:
        self.book.release(event_id)

    async def size(self) -> int:
        return len(self.book)
