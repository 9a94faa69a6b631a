"""Parquet logging: size/time flush bounds (the crash-loss bound), durable acks, atomic files,
per-replica names, shutdown flush, and read_logs joins / filters."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pyarrow.dataset as ds
import pytest

from serving.feedback_log import (
    FEEDBACK,
    IMPRESSIONS,
    LogWriter,
    explode_positions,
    hour_of,
    impression_row,
    now_ms,
    read_logs,
)
from serving.ledger import new_event_id
from serving.schemas import RankRequest

REQ = RankRequest.model_validate(
    {
        "query": {"features": [0.1, 0.2]},
        "user": {"features": [1.0]},
        "candidates": [
            {"item_id": "a", "modality": "doc", "features": [1.0, 2.0], "single_modal_score": 0.5},
            {"item_id": "b", "modality": "image", "features": [3.0], "single_modal_score": None},
            {"item_id": "c", "modality": "video", "features": [4.0, 5.0, 6.0]},
        ],
        "page_id": "p0",
    }
)


def ranked(order, pscore=(0.5, 0.8, 1.0)):
    return SimpleNamespace(
        order=np.asarray(order),
        scores=np.asarray([3.0, 2.0, 1.0], np.float32),
        pscore=np.asarray(pscore),
        slate_log_prob=float(np.log(pscore).sum()),
        policy="plackett_luce",
        temperature=1.0,
    )


def imp(eid, version="v1", ts=None, order=(2, 0, 1)):
    return impression_row(eid, ts or now_ms(), "r1", version, REQ, ranked(order))


def fb(eid, version="v1", ts=None, items=("c",), clicks=(True,), dwell=(12.5,)):
    return {
        "event_id": eid,
        "ts": ts or now_ms(),
        "model_version": version,
        "replica": "r2",
        "item_id": list(items),
        "click": list(clicks),
        "dwell_s": list(dwell),
    }


def files(root):
    return sorted(p for p in root.rglob("*.parquet"))


def test_time_bound_flushes_without_close(tmp_path):
    """What a crash can lose is bounded: rows older than max_age_s are already on disk."""
    w = LogWriter(tmp_path, IMPRESSIONS, "rep-1", max_rows=10_000, max_age_s=0.2)
    w.append([imp(new_event_id()) for _ in range(3)])
    time.sleep(0.6)
    got = files(tmp_path / IMPRESSIONS)
    assert len(got) == 1 and "rep-1" in got[0].name
    assert ds.dataset(got[0]).count_rows() == 3
    w.close()


def test_size_bound_flushes_promptly(tmp_path):
    w = LogWriter(tmp_path, IMPRESSIONS, "r", max_rows=5, max_age_s=1000)
    fut = w.append([imp(new_event_id()) for _ in range(5)])
    assert fut.result(timeout=5) == 5
    assert len(files(tmp_path / IMPRESSIONS)) == 1
    w.close()


def test_ack_future_resolves_only_when_durable(tmp_path):
    w = LogWriter(tmp_path, FEEDBACK, "r", max_rows=100, max_age_s=0.05)
    fut = w.append([fb(new_event_id())])
    fut.result(timeout=5)
    assert len(files(tmp_path / FEEDBACK)) == 1  # on disk (fsynced, renamed) when the future resolves
    assert not list((tmp_path / FEEDBACK).rglob(".*"))  # no temporary left behind
    w.close()


def test_close_flushes_everything_and_refuses_more(tmp_path):
    w = LogWriter(tmp_path, IMPRESSIONS, "r", max_rows=10_000, max_age_s=1000)
    w.append([imp(new_event_id()) for _ in range(7)])
    w.close()
    assert sum(ds.dataset(f).count_rows() for f in files(tmp_path / IMPRESSIONS)) == 7
    with pytest.raises(RuntimeError, match="closed"):
        w.append([imp(new_event_id())])
    w.close()  # idempotent


def test_two_replicas_never_collide(tmp_path):
    ws = [LogWriter(tmp_path, IMPRESSIONS, f"rep{i}", max_rows=1, max_age_s=1000) for i in range(2)]
    for _ in range(3):
        for w in ws:
            w.append([imp(new_event_id())]).result(timeout=5)
    names = [f.name for f in files(tmp_path / IMPRESSIONS)]
    assert len(names) == len(set(names)) == 6
    for w in ws:
        w.close()


def test_read_logs_join_alignment_and_partitions(tmp_path):
    wi = LogWriter(tmp_path, IMPRESSIONS, "r1", 1000, 1000)
    wf = LogWriter(tmp_path, FEEDBACK, "r2", 1000, 1000)
    e1, e2 = new_event_id(), new_event_id()
    wi.append([imp(e1, order=(2, 0, 1)), imp(e2)])
    first = fb(e1, items=("c", "a"), clicks=(True, False), dwell=(12.5, 0.0))
    wf.append([first, fb(e1, ts=now_ms() + 5, clicks=(False,))])  # a replayed duplicate row: earliest wins
    wi.close()
    wf.close()
    parts = {p.parent.parent.name + "/" + p.parent.name for p in files(tmp_path / IMPRESSIONS)}
    assert parts == {f"model_version=v1/hour={hour_of(now_ms())}"}
    t = read_logs(tmp_path)
    assert t.num_rows == 2
    row = {r["event_id"]: r for r in t.to_pylist()}
    r1 = row[e1]
    assert r1["action"] == [2, 0, 1] and r1["position"] == [1, 2, 3]
    assert r1["click"] == [1, 0, -1]  # shown c, a, b; b not mentioned
    assert r1["dwell_s"][0] == 12.5 and np.isnan(r1["dwell_s"][2])
    assert r1["features"][2] == [4.0, 5.0, 6.0] and r1["single_modal_score"][1] is None
    assert r1["model_version"] == "v1" and r1["page_id"] == "p0"
    assert row[e2]["click"] is None and row[e2]["feedback_ts"] is None
    obp = explode_positions(t).to_pylist()
    assert len(obp) == 6
    top = [r for r in obp if r["event_id"] == e1 and r["position"] == 1][0]
    assert top["action"] == 2 and top["item_id"] == "c" and top["modality"] == "video"
    assert top["reward"] == 1 and top["pscore"] == 0.5


def test_read_logs_since_ts_and_since_version(tmp_path):
    wi = LogWriter(tmp_path, IMPRESSIONS, "r", 1000, 1000)
    base = now_ms() - 3 * 3600 * 1000  # three hours ago: other hour partitions
    e_old, e_v2, e_v3 = new_event_id(), new_event_id(), new_event_id()
    wi.append([imp(e_old, "v1", base), imp(e_v2, "v2", base + 3600_000), imp(e_v3, "v3", base + 7200_000)])
    wi.close()
    assert read_logs(tmp_path).num_rows == 3
    assert set(read_logs(tmp_path, since_ts=(base + 1000) / 1000)["event_id"].to_pylist()) == {e_v2, e_v3}
    assert set(read_logs(tmp_path, since_version="v2")["event_id"].to_pylist()) == {e_v2, e_v3}
    assert read_logs(tmp_path, since_version="never").num_rows == 0
    assert read_logs(tmp_path / "nothing").num_rows == 0


def test_viewport_logged_and_old_feedback_files_without_it_still_load(tmp_path):
    """viewport_s is aligned with the shown positions like dwell_s; a feedback file written before the
    column existed reads as NaN (unknown), which the observed reward counts as not satisfying."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from serving.log_schema import FEEDBACK_SCHEMA

    wi = LogWriter(tmp_path, IMPRESSIONS, "r1", 1000, 1000)
    e_old, e_new = new_event_id(), new_event_id()
    wi.append([imp(e_old), imp(e_new)])
    wi.close()
    old_schema = pa.schema([f for f in FEEDBACK_SCHEMA if f.name != "viewport_s"])
    old = fb(e_old, items=("c", "a"), clicks=(False, False), dwell=(0.0, 0.0))
    old["ts"] = pa.scalar(old["ts"], pa.int64()).cast(pa.timestamp("ms", tz="UTC")).as_py()
    part = tmp_path / FEEDBACK / "model_version=v1" / f"hour={hour_of(now_ms())}"
    part.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist([{k: old[k] for k in old_schema.names}], old_schema), part / "part-0-old.parquet"
    )
    wf = LogWriter(tmp_path, FEEDBACK, "r2", 1000, 1000)
    new = fb(e_new, items=("c", "a"), clicks=(False, True), dwell=(0.0, 3.0))
    wf.append([{**new, "viewport_s": [7.5, float("nan")]}])
    wf.close()
    rows = {r["event_id"]: r for r in read_logs(tmp_path).to_pylist()}
    assert all(np.isnan(v) for v in rows[e_old]["viewport_s"]) and rows[e_old]["click"] == [0, 0, -1]
    assert rows[e_new]["viewport_s"][0] == 7.5 and np.isnan(rows[e_new]["viewport_s"][1])
    flat = explode_positions(read_logs(tmp_path)).to_pylist()
    assert sorted(r["viewport_s"] for r in flat if r["viewport_s"] == r["viewport_s"]) == [7.5]


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), 1e9, "7"])
def test_feedback_viewport_must_be_a_plausible_number(bad):
    from pydantic import ValidationError

    from serving.schemas import FeedbackRequest

    ok = {"event_id": "e", "feedback": [{"item_id": "a", "click": False, "viewport_s": 4.0}]}
    assert FeedbackRequest.model_validate(ok).feedback[0].viewport_s == 4.0
    assert (
        FeedbackRequest.model_validate({"event_id": "e", "feedback": [{"item_id": "a", "click": False}]})
        .feedback[0]
        .viewport_s
        is None
    )
    with pytest.raises(ValidationError, match="viewport_s"):
        FeedbackRequest.model_validate(
            {"event_id": "e", "feedback": [{"item_id": "a", "click": False, "viewport_s": bad}]}
        )
