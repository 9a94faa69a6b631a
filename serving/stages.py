"""Per-stage CPU accounting of the /rank path (always on; a few clock reads per request).

Each stage is timed with `time.thread_time()` (CPU time of the calling thread, so time spent
waiting for the GIL or for I/O is not counted) and accumulated per process. The replica and the
FastAPI peer expose the totals and their process CPU time on `GET /healthz` ("stages",
"process_cpu_s"); `smar bench serve` takes the difference over a load run and divides by the
requests served, which gives one request's CPU by stage, and the process CPU not in any stage (the
HTTP server, ASGI/FastAPI, Serve's request wrapper, metrics) as the rest.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

thread_time = time.thread_time

# The stages, in request order (names are the profile table's rows).
STAGES = (
    "parse_validate",  # JSON -> RankRequest (pydantic-core, strict)
    "contract_check",  # lengths / caps / duplicates against the served model
    "feature_arrays",  # RankRequest -> numpy arrays (scoring.Scorer.prepare)
    "event_ids",  # signed event ids + the ledger registration call (one per batch)
    "batch_build",  # padding a batch into tensors
    "model_forward",  # the reranker's forward pass
    "propensities",  # greedy / Plackett-Luce sampling and exact per-position propensities
    "impression_rows",  # the log rows (numpy cells, no float lists)
    "response_json",  # the response body
    "log_write",  # Arrow table + Parquet + fsync, in the log writer thread (amortised)
)


class StageClock:
    """Thread-safe accumulator of CPU seconds per stage."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cpu_s: dict[str, float] = defaultdict(float)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.cpu_s[stage] += seconds

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self.cpu_s)


CLOCK = StageClock()  # one per process: the replica's (or the peer's) request path


def process_cpu_s() -> float:
    return time.process_time()
