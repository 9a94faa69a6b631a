"""The event ledger: which impressions were served, and whether their feedback was already taken.

Two pieces, so that acceptance survives restarts (issue #18):
- **Signed event ids** (serving.tokens): the id itself proves the app served the event and carries its
  issue time and model version. The ingress replica verifies it before any hop, so a forged or altered
  id gets its 404 (and an old one its 410) from any replica, also one started after a crash.
- **A durable book** (this module): one SQLite database in WAL mode under the app's `state_dir`,
  owned by a one-replica `EventLedger` deployment. It records the shown item ids (so feedback naming
  an item that was never shown is refused) and each event's claim state (open → pending → done), so
  "accepted once" holds across the ledger's, a ranker's or the whole app's restart: a restarted ledger
  reopens the same file. WAL with `synchronous=NORMAL` makes a committed transaction survive a process
  kill (it is in the OS page cache and the WAL); only a machine crash can lose the last ones.

Why not purely one or the other: signed ids alone cannot say "already taken" (every replica would
need the same memory), and a store alone would refuse feedback for events whose registration was lost
in a crash (it is sent off /rank's critical path, see `EventLedger`). Together: a signed id the book
does not know (registration lost) is still accepted once, with the item check skipped, and recorded.

Feedback is claimed, written durably, then committed; a claim that is never committed (the replica
died mid-write) is released after `pending_timeout_s`, so the client's retry is accepted rather than
reported as a duplicate that was never logged. That retry can leave a second copy of the feedback in
the logs; `serving.feedback_log.read_logs` keeps the earliest per event (dedup where logs are read).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import sqlite3
import time
from pathlib import Path

from ray import serve

from serving.settings import LEDGER
from serving.tokens import b36

BOOK_FILE = "ledger.sqlite"
PID_FILE = "ledger.pid"


def new_event_id(now_s: float | None = None) -> str:
    """An unsigned id in the old two-part format (the peer's impressions; forged-id tests)."""
    ms = int((time.time() if now_s is None else now_s) * 1000)
    return f"{b36(ms)}.{secrets.token_urlsafe(18)}"


def issued_s(event_id: str) -> float | None:
    """Issue time (epoch s) of a well-formed event id (unsigned two-part or signed four-part), else None.
    Well-formed is not authentic: `serving.tokens.EventSigner.verify` decides that."""
    parts = event_id.split(".")
    head = parts[0]
    if len(parts) == 2:
        if len(parts[1]) != 24:
            return None
    elif len(parts) != 4 or not all(parts[1:]):
        return None
    if not head or len(head) > 12:
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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    issued REAL NOT NULL,
    version TEXT NOT NULL,
    items BLOB,               -- item_digest of the shown items; NULL when the registration was lost
    state TEXT NOT NULL DEFAULT 'open',   -- open | pending | done
    claimed_at REAL NOT NULL DEFAULT 0
);  -- with a rowid: the insertion order breaks ties of `issued` on eviction
CREATE INDEX IF NOT EXISTS events_issued ON events (issued);
"""


class EventBook:
    """The ledger's logic, free of Ray (unit-tested directly). `path` None = an in-memory database."""

    def __init__(
        self,
        ttl_s: float,
        max_events: int,
        pending_timeout_s: float = 10.0,
        clock=time.time,
        path: str | Path | None = None,
    ):
        self.ttl_s = float(ttl_s)
        self.max_events = int(max_events)
        self.pending_timeout_s = float(pending_timeout_s)
        self.clock = clock
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # one connection, used from the replica's event loop only (Serve may build us on another thread)
        self.db = sqlite3.connect(
            ":memory:" if path is None else str(path), isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # durable against a process kill (see module doc)
        self.db.executescript(_SCHEMA)
        self._since_evict = 0
        self._count = len(self)  # approximate between evictions (a conflict-update counts as a row)

    def close(self) -> None:
        self.db.close()

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def _evict(self) -> None:
        now = self.clock()
        db = self.db
        db.execute("DELETE FROM events WHERE issued < ?", (now - self.ttl_s,))
        over = len(self) - self.max_events
        if over > 0:
            db.execute(
                "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events ORDER BY issued, rowid LIMIT ?)",
                (over,),
            )
        self._count = len(self)

    def register(self, events: list[tuple[str, str, list[str]]]) -> int:
        """events: (event_id, model_version, shown item ids). One transaction per call."""
        now = self.clock()
        rows = []
        for eid, version, items in events:
            issued = issued_s(eid)
            rows.append((eid, issued if issued is not None else now, version, item_digest(items)))
        db = self.db
        db.execute("BEGIN")
        # a feedback that overtook a lost registration inserted the row already (items NULL): fill them
        db.executemany(
            "INSERT INTO events (event_id, issued, version, items) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(event_id) DO UPDATE SET items = excluded.items WHERE items IS NULL",
            rows,
        )
        db.execute("COMMIT")
        self._since_evict += len(rows)
        self._count += len(rows)
        if self._since_evict >= 256 or self._count > self.max_events or not rows:
            self._since_evict = 0
            self._evict()
        return len(events)

    def _get(self, event_id: str):
        return self.db.execute(
            "SELECT issued, version, items, state, claimed_at FROM events WHERE event_id = ?", (event_id,)
        ).fetchone()

    def claim(self, event_id: str, item_ids: list[str], version: str | None = None) -> dict:
        """status: accepted | duplicate | in_progress | unknown | expired | bad_item (with index).

        `version`: the model version read from a verified signed id. When given and the book has no
        row for the id (its registration was lost in a crash), the event is taken as served: a row is
        inserted and claimed, with the shown-item check skipped."""
        now = self.clock()
        row = self._get(event_id)
        issued = issued_s(event_id)
        if row is None:
            if issued is not None and now - issued > self.ttl_s and issued <= now:
                return {"status": "expired", "age_s": now - issued, "ttl_s": self.ttl_s}
            if version is None or issued is None:
                return {"status": "unknown"}
            self.db.execute(
                "INSERT INTO events (event_id, issued, version, items, state, claimed_at) "
                "VALUES (?, ?, ?, NULL, 'pending', ?)",
                (event_id, issued, version, now),
            )
            return {"status": "accepted", "model_version": version, "items_checked": False}
        ev_issued, ev_version, items, state, claimed_at = row
        if now - ev_issued > self.ttl_s:
            return {"status": "expired", "age_s": now - ev_issued, "ttl_s": self.ttl_s}
        if state == "done":
            return {"status": "duplicate", "model_version": ev_version}
        if state == "pending" and now - claimed_at < self.pending_timeout_s:
            return {"status": "in_progress", "model_version": ev_version}
        if items is not None:
            for i, item in enumerate(item_ids):
                if not _contains(items, item):
                    return {"status": "bad_item", "index": i, "item_id": item}
        self.db.execute(
            "UPDATE events SET state = 'pending', claimed_at = ? WHERE event_id = ?", (now, event_id)
        )
        return {"status": "accepted", "model_version": ev_version}

    def commit(self, event_id: str) -> None:
        self.db.execute("UPDATE events SET state = 'done' WHERE event_id = ?", (event_id,))

    def release(self, event_id: str) -> None:
        self.db.execute(
            "UPDATE events SET state = 'open' WHERE event_id = ? AND state = 'pending'", (event_id,)
        )


@serve.deployment(name=LEDGER, num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class EventLedger:
    """One replica by design (it owns the book's file). Async methods run on the replica's event loop,
    one at a time between awaits, so the book needs no lock; SQLite calls are sub-millisecond here.

    Rankers register a batch's events without waiting for the ledger (the hop stays off /rank's
    latency); the registration is queued before the response and sent within tens of milliseconds,
    in calls that gather a replica's recent events (`Ranker._queue_register`), so feedback can only
    overtake it by that much. A claim for an id issued within the last `grace_s` that is not yet registered
    therefore waits (up to `grace_s`) for its registration, so its items can be checked; after that a
    verified signed id is accepted unchecked and an unsigned one is unknown.
    """

    def __init__(
        self,
        ttl_s: float = 3600.0,
        max_events: int = 200_000,
        grace_s: float = 2.0,
        state_dir: str | None = None,
    ) -> None:
        path = None if state_dir is None else Path(state_dir) / BOOK_FILE
        self.book = EventBook(ttl_s, max_events, path=path)
        if state_dir is not None:  # who owns the book now (operators; the fault tests' SIGKILL)
            tmp = Path(state_dir) / f".{PID_FILE}.{os.getpid()}"
            tmp.write_text(str(os.getpid()))
            tmp.replace(Path(state_dir) / PID_FILE)
        self.grace_s = float(grace_s)
        self._waiting: dict[str, asyncio.Event] = {}

    async def register(self, events: list[tuple[str, str, list[str]]]) -> int:
        n = self.book.register(events)
        for eid, _, _ in events:
            ev = self._waiting.pop(eid, None)
            if ev is not None:
                ev.set()
        return n

    async def claim(self, event_id: str, item_ids: list[str], version: str | None = None) -> dict:
        issued = issued_s(event_id)
        now = self.book.clock()
        fresh = issued is not None and -self.grace_s <= now - issued <= self.grace_s
        if fresh and self.book._get(event_id) is None:
            ev = self._waiting.setdefault(event_id, asyncio.Event())
            try:
                await asyncio.wait_for(ev.wait(), timeout=self.grace_s)
            except TimeoutError:
                self._waiting.pop(event_id, None)
        return self.book.claim(event_id, item_ids, version)

    async def commit(self, event_id: str) -> None:
        self.book.commit(event_id)

    async def release(self, event_id: str) -> None:
        self.book.release(event_id)

    # Batched forms (POST /feedback/batch): one hop for many events, each handled as by its single form.
    async def claim_many(self, claims: list[tuple[str, list[str], str | None]]) -> list[dict]:
        return list(await asyncio.gather(*(self.claim(*c) for c in claims)))

    async def commit_many(self, event_ids: list[str]) -> None:
        for e in event_ids:
            self.book.commit(e)

    async def release_many(self, event_ids: list[str]) -> None:
        for e in event_ids:
            self.book.release(e)

    async def size(self) -> int:
        return len(self.book)
