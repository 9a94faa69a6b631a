"""Prometheus metrics per route and model version, through Ray's metrics pipeline.

`RouteMetrics` is a pure ASGI middleware on the Ranker's FastAPI app: for every request it records the
route, the model version the replica served it with, and the status code, in Ray Serve's own metric
types (`ray.serve.metrics`, which add the deployment, replica and application tags). Ray exports them
with its other metrics on each node's metrics agent, in Prometheus text format, as
`ray_smar_requests_total`, `ray_smar_request_errors_total` (status >= 400) and
`ray_smar_request_latency_ms` (histogram). Scrape address: `http://<node>:<metrics_export_port>/metrics`
(`ray start --head --metrics-export-port=8080` fixes it; `metrics_scrape_address()` reads it from a
connected driver). Routes are a fixed set (anything else is "other"), so label cardinality is bounded.
"""

from __future__ import annotations

import asyncio
import time

ROUTES = (
    "/rank",
    "/rank/batch",
    "/feedback",
    "/feedback/batch",
    "/version",
    "/healthz",
    "/docs",
    "/openapi.json",
)
LATENCY_MS_BOUNDARIES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000]
_STATE: dict = {"model_version": "none"}  # set by the replica on every swap


def set_model_version(version: str) -> None:
    _STATE["model_version"] = version


FLUSH_S = 1.0  # counters are summed in-process and added to Ray's counters this often


class RouteMetrics:
    """Counts per (route, model version, status) are summed in a dict and handed to Ray's counters
    at most every FLUSH_S (one `inc(n)` per tag set, from a timer on the event loop), because every
    Ray metric record costs the replica's loop noticeable CPU (README). Latencies are kept in a list
    per (route, model version) and observed from the same timer (Ray has no bulk observe, so one
    record each, as Serve does for its own histograms), off the request's path."""

    def __init__(self, app) -> None:
        self.app = app
        self._m = None
        self._pending: dict[tuple[str, str, str], int] = {}
        self._latencies: dict[tuple[str, str], list[float]] = {}
        self._timer = None

    def _metrics(self):
        if self._m is None:  # created lazily, inside the replica process (Ray must be connected)
            from ray.serve.metrics import Counter, Histogram

            keys = ("route", "model_version", "status")
            self._m = (
                Counter(
                    "smar_requests", description="HTTP requests by route/model version/status", tag_keys=keys
                ),
                Counter("smar_request_errors", description="HTTP requests answered >= 400", tag_keys=keys),
                Histogram(
                    "smar_request_latency_ms",
                    description="time in the ingress app per request (ms)",
                    boundaries=LATENCY_MS_BOUNDARIES,
                    tag_keys=("route", "model_version"),
                ),
            )
        return self._m

    def flush(self) -> None:
        self._timer = None
        pending, self._pending = self._pending, {}
        latencies, self._latencies = self._latencies, {}
        try:
            requests, errors, latency = self._metrics()
            for (route, version, code), n in pending.items():
                tags = {"route": route, "model_version": version, "status": code}
                requests.inc(n, tags)
                if int(code) >= 400:
                    errors.inc(n, tags)
            for (route, version), values in latencies.items():
                tags = {"route": route, "model_version": version}
                for ms in values:
                    latency.observe(ms, tags)
        except Exception:  # noqa: BLE001 - metrics must never fail a request (e.g. outside Ray)
            pass

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            route = path if path in ROUTES else "other"
            version = _STATE["model_version"]
            key = (route, version, str(status["code"]))
            self._pending[key] = self._pending.get(key, 0) + 1
            self._latencies.setdefault((route, version), []).append(1000 * (time.perf_counter() - t0))
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)


def metrics_scrape_address() -> str | None:
    """The local node's Prometheus endpoint, from a driver connected to Ray (None if unknown)."""
    try:
        import ray

        node = ray._private.worker.global_worker.node
        return f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"
    except Exception:  # noqa: BLE001 - not connected
        return None
