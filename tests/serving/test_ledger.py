"""The event ledger's logic: unguessable ids, once-only claims, expiry vs unknown, shown items only."""

from __future__ import annotations

from serving.ledger import EventBook, issued_s, new_event_id


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_event_ids_are_unique_and_carry_issue_time():
    ids = {new_event_id(1_700_000_000.0) for _ in range(1000)}
    assert len(ids) == 1000
    eid = next(iter(ids))
    assert issued_s(eid) == 1_700_000_000.0
    assert len(eid.split(".")[1]) == 24  # 18 random bytes
    for bad in ("", "abc", "zz.", ".x", "!!.aaaaaaaaaaaaaaaaaaaaaaaa", "1." + "a" * 23):
        assert issued_s(bad) is None


def test_claim_once_then_duplicate_and_in_progress():
    clock = Clock(1000.0)
    book = EventBook(ttl_s=60, max_events=10, pending_timeout_s=5, clock=clock)
    eid = new_event_id(1000.0)
    book.register([(eid, "v1", ["a", "b"])])
    assert book.claim(eid, ["a"]) == {"status": "accepted", "model_version": "v1"}
    assert book.claim(eid, ["a"])["status"] == "in_progress"  # written but not yet committed
    book.commit(eid)
    assert book.claim(eid, ["a"])["status"] == "duplicate"


def test_released_or_stale_claims_can_be_retried():
    clock = Clock(1000.0)
    book = EventBook(ttl_s=60, max_events=10, pending_timeout_s=5, clock=clock)
    e1, e2 = new_event_id(1000.0), new_event_id(1000.0)
    book.register([(e1, "v1", ["a"]), (e2, "v1", ["a"])])
    assert book.claim(e1, [])["status"] == "accepted"
    book.release(e1)  # the write failed
    assert book.claim(e1, [])["status"] == "accepted"
    assert book.claim(e2, [])["status"] == "accepted"
    clock.t += 6  # the claiming replica died before committing
    assert book.claim(e2, [])["status"] == "accepted"


def test_unknown_expired_and_bad_items():
    clock = Clock(10_000.0)
    book = EventBook(ttl_s=60, max_events=10, clock=clock)
    eid = new_event_id(10_000.0)
    book.register([(eid, "v1", ["a", "b"])])
    assert book.claim(new_event_id(10_000.0), [])["status"] == "unknown"  # well formed, never served
    assert book.claim("forged", [])["status"] == "unknown"
    assert book.claim(eid, ["a", "zzz"]) == {"status": "bad_item", "index": 1, "item_id": "zzz"}
    clock.t += 61
    assert book.claim(eid, ["a"])["status"] == "expired"
    book.register([])  # eviction runs; the id still reads as expired from its issue time
    assert len(book) == 0
    assert book.claim(eid, ["a"])["status"] == "expired"


def test_capacity_bound_evicts_oldest():
    clock = Clock(0.0)
    book = EventBook(ttl_s=1e9, max_events=3, clock=clock)
    ids = [new_event_id(0.0) for _ in range(5)]
    book.register([(e, "v", ["a"]) for e in ids])
    assert len(book) == 3
    assert book.claim(ids[0], [])["status"] == "unknown"
    assert book.claim(ids[4], [])["status"] == "accepted"


def test_item_digest_membership():
    from serving.ledger import _contains, item_digest

    ids = [f"page-{i}-doc{i % 7}" for i in range(50)]
    d = item_digest(ids)
    assert len(d) == 8 * 50
    assert all(_contains(d, i) for i in ids)
    assert not any(_contains(d, f"other-{i}") for i in range(200))
    assert not _contains(item_digest([]), "x")


def test_ledger_claim_waits_for_an_in_flight_registration():
    import asyncio
    import time

    from serving.ledger import EventLedger

    ledger = EventLedger.func_or_class(ttl_s=60, max_events=10, grace_s=0.5)

    async def scenario():
        eid = new_event_id()
        claim = asyncio.ensure_future(ledger.claim(eid, ["a"]))  # feedback overtakes the registration
        await asyncio.sleep(0.05)
        await ledger.register([(eid, "v1", ["a", "b"])])
        assert (await claim)["status"] == "accepted"
        t0 = time.monotonic()
        assert (await ledger.claim(new_event_id(), []))["status"] == "unknown"  # forged, fresh: after grace
        assert 0.4 < time.monotonic() - t0 < 2.0
        t0 = time.monotonic()
        assert (await ledger.claim(new_event_id(time.time() - 30), []))["status"] == "unknown"  # old: at once
        assert (await ledger.claim("garbage", []))["status"] == "unknown"
        assert time.monotonic() - t0 < 0.2
        assert not ledger._waiting

    asyncio.run(scenario())


def test_book_survives_a_restart_accepted_once_then_duplicate(tmp_path):
    """The ledger's process dies and a new one opens the same file: nothing it acknowledged is lost."""
    clock = Clock(5000.0)
    path = tmp_path / "ledger.sqlite"
    book = EventBook(ttl_s=60, max_events=100, pending_timeout_s=5, clock=clock, path=path)
    served = [new_event_id(5000.0) for _ in range(3)]
    book.register([(e, "v1", ["a", "b"]) for e in served])
    assert book.claim(served[0], ["a"])["status"] == "accepted"
    book.commit(served[0])
    assert book.claim(served[1], ["a"])["status"] == "accepted"  # claimed, never committed (crash)
    del book  # no close(): as after SIGKILL, only what SQLite committed is there

    book = EventBook(ttl_s=60, max_events=100, pending_timeout_s=5, clock=clock, path=path)
    assert len(book) == 3
    assert book.claim(served[0], ["a"])["status"] == "duplicate"
    assert book.claim(served[1], ["a"])["status"] == "in_progress"
    assert book.claim(served[2], ["zzz"])["status"] == "bad_item"  # the shown items survived too
    assert book.claim(served[2], ["b"])["status"] == "accepted"
    book.commit(served[2])
    clock.t += 6  # the pending claim's writer is gone: a retry may take it
    assert book.claim(served[1], ["a"])["status"] == "accepted"
    book.close()
    book = EventBook(ttl_s=60, max_events=100, pending_timeout_s=5, clock=clock, path=path)
    assert book.claim(served[2], ["b"])["status"] == "duplicate"


def test_verified_id_whose_registration_was_lost_is_accepted_once(tmp_path):
    clock = Clock(5000.0)
    book = EventBook(ttl_s=60, max_events=100, clock=clock, path=tmp_path / "l.sqlite")
    eid = new_event_id(4990.0)
    assert book.claim(eid, ["a"])["status"] == "unknown"  # unsigned: not taken on trust
    res = book.claim(eid, ["a"], version="v7")  # the ingress verified its signature
    assert res == {"status": "accepted", "model_version": "v7", "items_checked": False}
    book.commit(eid)
    assert book.claim(eid, ["a"], version="v7")["status"] == "duplicate"
    book.register([(eid, "v7", ["a"])])  # a late registration does not reopen it
    assert book.claim(eid, ["a"], version="v7")["status"] == "duplicate"
    clock.t += 120
    assert book.claim(new_event_id(5000.0), [], version="v7")["status"] == "expired"
