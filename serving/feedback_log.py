"""Logging for learning: served impressions and accepted feedback, appended to partitioned Parquet.

Layout (hive partitions, so pyarrow.dataset prunes by version and hour)::

    LOG_DIR/impressions/model_version=V/hour=YYYYMMDDHH/part-<ts_ms>-<replica>-<seq>.parquet
    LOG_DIR/feedback/model_version=V/hour=YYYYMMDDHH/part-<ts_ms>-<replica>-<seq>.parquet

Every writer puts its replica tag in its file names, so replicas never collide. A file is written
through `envs.atomic_io.atomic_path`: under a dot-prefixed temporary name, fsynced, renamed into place
and the folder fsynced, so readers (which skip dot files) never see a partial file, a renamed file
survives a crash, and a failed write leaves no temporary behind.

Durability contract (tested in tests/serving/test_feedback_log.py):
- Feedback is group-committed: `LogWriter.append` returns a future that resolves only after the file
  holding those rows is durable, and the app acknowledges feedback only then. A crash loses no
  acknowledged feedback.
- Impressions are not waited on (ranking latency matters more): a crash of a replica loses at most
  the impressions it served in the last `impression_max_age_s` seconds, and never more than
  `impression_max_rows` of them. Feedback whose impression was lost is dropped by `read_logs`.
- A graceful shutdown (`close`) flushes everything.

The columns and the partition layout are in serving.log_schema.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from envs.atomic_io import atomic_path
from serving.log_schema import (
    FEEDBACK,
    IMPRESSIONS,
    PARTITIONING,
    SCHEMAS,
    TS,
    f32,
    hour_of,
    now_ms,
    safe_name,
)
from serving.stages import CLOCK, thread_time


class LogWriter:
    """Buffered, partitioned, atomic Parquet appender for one log kind in one process.

    Rows are dicts with the kind's schema columns plus `model_version` (partition key) and `ts`
    (epoch ms). A daemon thread flushes when `max_rows` rows are buffered or the oldest row is
    `max_age_s` old. `append` returns a future resolved once the rows are durable on disk.
    """

    def __init__(
        self,
        log_dir: str | Path,
        kind: str,
        replica: str,
        max_rows: int,
        max_age_s: float,
        stage: str | None = None,
    ) -> None:
        if kind not in SCHEMAS:
            raise ValueError(f"kind must be one of {sorted(SCHEMAS)}, got {kind!r}")
        self.root = Path(log_dir) / kind
        self.kind = kind
        self.schema = SCHEMAS[kind]
        self.replica = safe_name(replica)
        self.max_rows = max(1, int(max_rows))
        self.max_age_s = float(max_age_s)
        self.stage = stage  # a serving.stages name: the writes' CPU is accounted there
        self._rows: list[dict[str, Any]] = []
        self._futures: list[cf.Future] = []
        self._oldest = 0.0
        self._seq = 0
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()  # `flush()` from another thread vs the flusher thread
        self._closed = False
        self.files_written = 0
        self.rows_written = 0
        self.last_error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=f"logwriter-{kind}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer side
    def append(self, rows: list[dict[str, Any]]) -> cf.Future:
        fut: cf.Future = cf.Future()
        if not rows:
            fut.set_result(0)
            return fut
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.kind} log writer is closed")
            first = not self._rows
            if first:
                self._oldest = time.monotonic()
            self._rows.extend(rows)
            self._futures.append(fut)
            if first or len(self._rows) >= self.max_rows:
                self._cond.notify()  # start the age timer / flush a full buffer
        return fut

    def flush(self) -> None:
        """Write everything buffered now (from any thread) and wait for it."""
        with self._cond:
            rows, futs = self._take()
        self._write(rows, futs)

    def close(self) -> None:
        """Graceful shutdown: stop the thread, flush the rest. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)
        self.flush()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() or self._closed

    # ------------------------------------------------------------------ flusher side
    def _take(self) -> tuple[list[dict[str, Any]], list[cf.Future]]:
        rows, futs = self._rows, self._futures
        self._rows, self._futures = [], []
        return rows, futs

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._rows:
                        wait = self.max_age_s - (time.monotonic() - self._oldest)
                        if len(self._rows) >= self.max_rows or wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                if self._closed:
                    return
                rows, futs = self._take()
            self._write(rows, futs)

    def _write(self, rows: list[dict[str, Any]], futs: list[cf.Future]) -> None:
        with self._write_lock:
            t0 = thread_time()
            self._write_locked(rows, futs)
            if self.stage is not None:
                CLOCK.add(self.stage, thread_time() - t0)

    def _write_locked(self, rows: list[dict[str, Any]], futs: list[cf.Future]) -> None:
        if not rows:
            for f in futs:
                f.set_result(0)
            return
        try:
            groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
            for r in rows:
                groups[(r["model_version"], hour_of(r["ts"]))].append(r)
            for (version, hour), part in groups.items():
                self._write_file(version, hour, part)
            self.rows_written += len(rows)
            for f in futs:
                f.set_result(len(rows))
        except BaseException as e:  # noqa: BLE001 - surfaced to every waiter; the thread keeps going
            self.last_error = e
            for f in futs:
                f.set_exception(e)

    def _write_file(self, version: str, hour: int, rows: list[dict[str, Any]]) -> Path:
        folder = self.root / f"model_version={safe_name(version)}" / f"hour={hour}"
        folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"part-{now_ms()}-{self.replica}-{os.getpid()}-{self._seq:06d}.parquet"
        table = pa.Table.from_arrays(
            [_column(f.type, [r.get(f.name) for r in rows]) for f in self.schema], schema=self.schema
        )
        with atomic_path(folder / name) as tmp:
            # No dictionary pages: the columns are mostly unique floats, and building dictionaries
            # was the largest share of the write's CPU.
            pq.write_table(table, tmp, compression="zstd", compression_level=1, use_dictionary=False)
        self.files_written += 1
        return folder / name


@dataclass(frozen=True)
class Ragged:
    """A list of float vectors as one flat array and the vectors' lengths (a list<list<float>> cell
    built without Python floats)."""

    values: np.ndarray  # (sum(lengths),)
    lengths: np.ndarray  # (k,)


def _offsets(lengths: np.ndarray) -> pa.Array:
    out = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=out[1:])
    return pa.array(out, pa.int32())


def _column(typ: pa.DataType, values: list[Any]) -> pa.Array:
    """One Arrow column from row cells: numpy cells (1-D arrays, `Ragged`) are concatenated into
    the list's values buffer, so a page's floats never become Python objects; other cells go
    through `pa.array`."""
    if values and pa.types.is_list(typ):
        if all(isinstance(v, Ragged) for v in values):
            inner = pa.ListArray.from_arrays(
                _offsets(np.concatenate([v.lengths for v in values])),
                pa.array(np.concatenate([v.values for v in values]), typ.value_type.value_type),
            )
            return pa.ListArray.from_arrays(_offsets(np.array([len(v.lengths) for v in values])), inner)
        if all(isinstance(v, np.ndarray) for v in values):
            return pa.ListArray.from_arrays(
                _offsets(np.array([len(v) for v in values])),
                pa.array(np.concatenate(values), typ.value_type),
            )
    return pa.array(values, typ)


def impression_row(
    event_id: str, ts: int, replica: str, version: str, req: Any, r: Any, prepared: Any = None
) -> dict[str, Any]:
    """An impression log row from a RankRequest and its scoring.Ranked. With the request's
    `scoring.Prepared` arrays the page's features are logged from them (no Python float lists)."""
    if prepared is not None:
        lengths = prepared.lengths
        width = prepared.features.shape[1]
        keep = np.arange(width)[None, :] < lengths[:, None]
        features: Any = Ragged(prepared.features[keep], lengths)
        query, user = prepared.query, prepared.user
    else:
        features = [c.features for c in req.candidates]
        query, user = req.query.features, req.user.features
    return {
        "event_id": event_id,
        "ts": ts,
        "model_version": version,
        "replica": replica,
        "page_id": req.page_id,
        "policy": r.policy,
        "temperature": r.temperature,
        "slate_log_prob": r.slate_log_prob,
        "query_features": query,
        "user_features": user,
        "item_id": [c.item_id for c in req.candidates],
        "modality": [c.modality for c in req.candidates],
        "features": features,
        "single_modal_score": [c.single_modal_score for c in req.candidates],
        "action": np.asarray(r.order, np.int32),
        "position": np.arange(1, len(r.order) + 1, dtype=np.int32),
        "score": np.asarray(r.scores, np.float32),
        "pscore": np.asarray(r.pscore, np.float64),
    }


# ---------------------------------------------------------------------------- reading
def _dataset(log_dir: str | Path, kind: str) -> ds.Dataset | None:
    root = Path(log_dir) / kind
    if not root.exists():
        return None
    # The full schema, not the first file's: a column added later (viewport_s) reads as null from
    # files written before it.
    schema = SCHEMAS[kind].append(pa.field("model_version", pa.string())).append(pa.field("hour", pa.int32()))
    return ds.dataset(root, format="parquet", schema=schema, partitioning=PARTITIONING)


def _read(log_dir: str | Path, kind: str, since_ts_ms: int | None) -> pa.Table:
    data = _dataset(log_dir, kind)
    empty = SCHEMAS[kind].append(pa.field("model_version", pa.string())).append(pa.field("hour", pa.int32()))
    if data is None or not data.files:
        return empty.empty_table()
    flt = None
    if since_ts_ms is not None:
        flt = (ds.field("hour") >= hour_of(since_ts_ms)) & (
            ds.field("ts") >= pa.scalar(since_ts_ms, type=pa.int64()).cast(TS)
        )
    return data.to_table(filter=flt)


def _ts_ms(since_ts: float | datetime | None) -> int | None:
    """since_ts: epoch seconds or an aware datetime."""
    if since_ts is None:
        return None
    if isinstance(since_ts, datetime):
        return int(since_ts.timestamp() * 1000)
    return int(float(since_ts) * 1000)


def read_logs(
    log_dir: str | Path, since_ts: float | datetime | None = None, since_version: str | None = None
) -> pa.Table:
    """Impressions joined with their feedback, one row per impression, sorted by ts.

    `since_ts` (epoch seconds or aware datetime) keeps impressions served at or after that time.
    `since_version` keeps everything served since version V went live: impressions with ts >= the
    first impression logged under V (V itself and whatever came after it); empty if V never served.
    Both filters combine. Feedback columns are aligned with the shown positions: `click` (int8: 1/0,
    -1 = the feedback did not mention that item; null list = no feedback yet), `dwell_s` and
    `viewport_s` (float32, NaN = unknown, e.g. feedback files written before viewport_s), `feedback_ts`. Duplicate feedback rows for an event (possible only after a crash
    between writing and confirming) are collapsed to the earliest.
    """
    since_ms = _ts_ms(since_ts)
    if since_version is not None:
        imp_all = _dataset(log_dir, IMPRESSIONS)
        if imp_all is None or not imp_all.files:
            return _join(_read(log_dir, IMPRESSIONS, None), _read(log_dir, FEEDBACK, None))
        first = imp_all.to_table(columns=["ts"], filter=ds.field("model_version") == since_version)["ts"]
        if len(first) == 0:
            return _join(_read(log_dir, IMPRESSIONS, None).slice(0, 0), _read(log_dir, FEEDBACK, None))
        v_ms = int(pc.min(first).cast(pa.int64()).as_py())
        since_ms = v_ms if since_ms is None else max(since_ms, v_ms)
    imps = _read(log_dir, IMPRESSIONS, since_ms)
    fb = _read(log_dir, FEEDBACK, since_ms)
    return _join(imps, fb)


def _join(imps: pa.Table, fb: pa.Table) -> pa.Table:
    imps = imps.sort_by([("ts", "ascending"), ("event_id", "ascending")])
    # earliest feedback per event
    by_event: dict[str, tuple[int, dict[str, tuple[bool, float, float]], Any]] = {}
    if fb.num_rows:
        fb = fb.sort_by([("ts", "ascending")])
        views = fb["viewport_s"].to_pylist()  # _read gives the full schema: older files read as null
        for eid, ts, items, clicks, dwells, view in zip(
            fb["event_id"].to_pylist(),
            fb["ts"].to_pylist(),
            fb["item_id"].to_pylist(),
            fb["click"].to_pylist(),
            fb["dwell_s"].to_pylist(),
            views,
        ):
            if eid not in by_event:
                view = [float("nan")] * len(items) if view is None else view
                by_event[eid] = (ts, dict(zip(items, zip(clicks, dwells, view))), None)
    clicks_col, dwell_col, view_col, fts_col = [], [], [], []
    for eid, items, action in zip(
        imps["event_id"].to_pylist(), imps["item_id"].to_pylist(), imps["action"].to_pylist()
    ):
        got = by_event.get(eid)
        if got is None:
            clicks_col.append(None)
            dwell_col.append(None)
            view_col.append(None)
            fts_col.append(None)
            continue
        ts, fmap, _ = got
        shown = [items[a] for a in action]
        clicks_col.append([(1 if fmap[i][0] else 0) if i in fmap else -1 for i in shown])
        dwell_col.append([float(fmap[i][1]) if i in fmap else float("nan") for i in shown])
        view_col.append([_nan_none(fmap[i][2]) if i in fmap else float("nan") for i in shown])
        fts_col.append(ts)
    out = imps.append_column("click", pa.array(clicks_col, pa.list_(pa.int8())))
    out = out.append_column("dwell_s", pa.array(dwell_col, pa.list_(f32)))
    out = out.append_column("viewport_s", pa.array(view_col, pa.list_(f32)))
    return out.append_column("feedback_ts", pa.array(fts_col, TS))


def _nan_none(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def explode_positions(logs: pa.Table) -> pa.Table:
    """OBP-style rows, one per (impression, shown position), from a `read_logs` table.

    Columns: event_id, ts, model_version, policy, position, action, item_id, modality, score, pscore
    (per-position conditional propensity), slate_log_prob, reward (click 1/0, -1 unknown), dwell_s,
    viewport_s.
    """
    n = np.array([len(a) for a in logs["action"].to_pylist()], np.int64)
    rep = np.repeat(np.arange(logs.num_rows), n)
    cols: dict[str, Any] = {}
    for c in ("event_id", "ts", "model_version", "policy", "slate_log_prob"):
        cols[c] = logs[c].take(pa.array(rep))
    action = np.concatenate(
        [np.asarray(a, np.int64) for a in logs["action"].to_pylist()] or [np.zeros(0, np.int64)]
    )
    cols["position"] = pa.array(
        np.concatenate([np.arange(1, k + 1) for k in n] or [np.zeros(0, np.int64)]), pa.int32()
    )
    cols["action"] = pa.array(action, pa.int32())
    items = logs["item_id"].to_pylist()
    mods = logs["modality"].to_pylist()
    cols["item_id"] = pa.array([items[r][a] for r, a in zip(rep, action)], pa.string())
    cols["modality"] = pa.array([mods[r][a] for r, a in zip(rep, action)], pa.string())
    cols["score"] = pa.array(
        np.concatenate(
            [np.asarray(s, np.float32) for s in logs["score"].to_pylist()] or [np.zeros(0, np.float32)]
        )
    )
    cols["pscore"] = pa.array(
        np.concatenate([np.asarray(s, np.float64) for s in logs["pscore"].to_pylist()] or [np.zeros(0)])
    )
    clicks = logs["click"].to_pylist()
    cols["reward"] = pa.array(
        [(-1 if clicks[r] is None else clicks[r][k]) for r, k in zip(rep, cols["position"].to_numpy() - 1)],
        pa.int8(),
    )
    for name in ("dwell_s", "viewport_s"):
        per = logs[name].to_pylist()
        cols[name] = pa.array(
            [
                (float("nan") if per[r] is None else per[r][k])
                for r, k in zip(rep, cols["position"].to_numpy() - 1)
            ],
            f32,
        )
    return pa.table(cols)
