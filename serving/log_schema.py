"""The learning logs' columns and partition layout (serving.feedback_log writes and reads them).

Column names follow Open Bandit Pipeline where they map: `action` (candidate index shown at a
position), `position` (1-based), `pscore` (propensity), `reward` (click, in `explode_positions`).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.dataset as ds

IMPRESSIONS = "impressions"
FEEDBACK = "feedback"
TS = pa.timestamp("ms", tz="UTC")
f32 = pa.float32()

# Partition columns (model_version, hour) live in the paths, not in the files.
IMPRESSION_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("ts", TS),
        ("replica", pa.string()),
        ("page_id", pa.string()),
        ("policy", pa.string()),  # "greedy" | "plackett_luce"
        ("temperature", f32),  # 0 for greedy
        ("slate_log_prob", pa.float64()),  # log P(shown ranking); 0 for greedy
        ("query_features", pa.list_(f32)),
        ("user_features", pa.list_(f32)),
        # the full candidate page, in the order the client sent it
        ("item_id", pa.list_(pa.string())),
        ("modality", pa.list_(pa.string())),
        ("features", pa.list_(pa.list_(f32))),
        ("single_modal_score", pa.list_(f32)),
        # the shown ranking, one entry per position
        ("action", pa.list_(pa.int32())),  # candidate index shown at each position
        ("position", pa.list_(pa.int32())),  # 1..n
        ("score", pa.list_(f32)),  # model score of the shown item
        ("pscore", pa.list_(pa.float64())),  # P(item at this position | items above)
    ]
)
FEEDBACK_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("ts", TS),
        ("replica", pa.string()),
        ("item_id", pa.list_(pa.string())),
        ("click", pa.list_(pa.bool_())),
        ("dwell_s", pa.list_(f32)),
        # seconds an answer card was on screen (the evidence of an answer that satisfied without a
        # click, envs.viewport); NaN = not measured. Files written before it lack the column.
        ("viewport_s", pa.list_(f32)),
    ]
)
SCHEMAS = {IMPRESSIONS: IMPRESSION_SCHEMA, FEEDBACK: FEEDBACK_SCHEMA}
PARTITIONING = ds.partitioning(
    pa.schema([("model_version", pa.string()), ("hour", pa.int32())]), flavor="hive"
)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def hour_of(ts_ms: int) -> int:
    """YYYYMMDDHH (UTC) as an int: sortable, so `hour >= hour_of(since)` prunes partitions."""
    return int(datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y%m%d%H"))


def now_ms() -> int:
    return int(time.time() * 1000)


def safe_name(s: str) -> str:
    return _SAFE.sub("_", s)[:80] or "_"
