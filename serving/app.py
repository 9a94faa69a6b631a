"""The Ray Serve application: FastAPI ingress, dynamic batching, validation, logging, hot model swaps.

    POST /rank      page -> event_id, model_version, ranking (+ propensities when exploring)
    POST /feedback  event_id + per-item click/dwell -> accepted | duplicate (acked once durable)
    POST /rank/batch, /feedback/batch   several pages / events per request, each its own event
    GET  /healthz   liveness;  GET /version  model version + input contract;  GET /docs, /openapi.json

`build_app(args)` is the application builder named by `serving/config.yaml` (`serve run` / `serve
deploy`) and used by `smar serve`. The `Ranker` deployment holds the current `Scorer`; `reconfigure`
(Serve's in-place `user_config` update) loads and verifies a registry version off the event loop and
then swaps one reference, so in-flight batches finish on the model they started with and no replica
restarts. A version that fails to load is refused and the old one keeps serving.
"""

import asyncio
import concurrent.futures as cf
import contextlib
import os
import threading
import time
import zlib
from dataclasses import dataclass

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from pretrain.checkpoint import CheckpointError
from serving import replica_state, stages
from serving.batcher import Batcher
from serving.errors import document_body, error_response, install_error_handlers, parse_body, parse_rank
from serving.feedback_log import FEEDBACK, IMPRESSIONS, LogWriter, impression_row, now_ms
from serving.ledger import EventLedger
from serving.metrics import RouteMetrics, set_model_version
from serving.registry import Registry, RegistryError
from serving.schemas import (
    FeedbackBatchItem,
    FeedbackBatchRequest,
    FeedbackBatchResponse,
    FeedbackRequest,
    FeedbackResponse,
    FieldError,
    RankBatchRequest,
    RankBatchResponse,
    RankRequest,
    RankResponse,
    VersionResponse,
    check_feedback,
    check_rank,
    rank_response_json,
)
from serving.scoring import Prepared, Scorer
from serving.settings import RANKER, AppSettings, RuntimeConfig
from serving.stages import process_cpu_s, thread_time
from serving.tokens import EventSigner

REGISTER_EVERY_S = 0.02  # ledger registrations are sent in calls at most this often (Ranker._queue_register)
RETRY_AFTER_S = 1  # the Retry-After hint (seconds) of a 503 when the feedback log cannot be written

# State shared between a replica and its middlewares (the body limit, the Ranker for RankRoute) and
# the stage clocks are named through their modules (serving.replica_state, serving.stages): Serve
# pickles this class with copies of the module globals its methods name.


class RankRoute:
    """Pure ASGI middleware: POST /rank straight to the Ranker, without FastAPI's routing, request
    object, dependency solving and response classes (the route is still declared on the FastAPI app
    for OpenAPI and answers the same if this is bypassed). Inside
    BodyLimit and RouteMetrics, so the size limit and the metrics apply as before."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        ranker = replica_state.INGRESS.get("ranker")
        if (
            ranker is None
            or scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"][len(scope.get("root_path", "")) :] != "/rank"
        ):
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        ranker.rank_route_requests += 1
        try:
            body = await ranker.rank_body(b"".join(chunks))
        except (RequestValidationError, FieldError) as e:
            return await error_response(e)(scope, receive, send)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Pure ASGI middleware: refuse bodies over the limit with 413 before they are parsed."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = replica_state.LIMITS["max_body_bytes"]
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > limit:
                return await _too_large(limit, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _BodyTooLargeError
            return msg

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLargeError:
            await _too_large(limit, None, send)


class _BodyTooLargeError(Exception):
    pass


async def _too_large(limit: int, receive, send) -> None:
    resp = JSONResponse(
        {"detail": [{"loc": ["body"], "msg": f"request body exceeds {limit} bytes", "type": "too_large"}]},
        status_code=413,
    )
    await resp({"type": "http"}, receive, send)


fastapi_app = FastAPI(
    title="SMAR whole-page reranker",
    description="Ranks a page of mixed-modality candidates; logs impressions and feedback for learning.",
    version="1",
)
fastapi_app.add_middleware(RankRoute)
fastapi_app.add_middleware(BodyLimit)
fastapi_app.add_middleware(RouteMetrics)  # outermost: counts 413s too


install_error_handlers(fastapi_app)
document_body(fastapi_app, "/rank", RankRequest)
document_body(fastapi_app, "/rank/batch", RankBatchRequest)


# Defined before the deployment class: Serve serialises the class (and the module globals its methods
# name) when the decorator runs, at import, so a helper defined below it would be missing in replicas.
def _unavailable(msg: str) -> JSONResponse:
    return JSONResponse(
        {"detail": [{"loc": ["body"], "msg": msg, "type": "unavailable"}]},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


@dataclass
class _Item:
    """One request travelling through the batch queue with the scorer it was validated against."""

    req: RankRequest
    prepared: Prepared
    scorer: Scorer


@serve.deployment(
    name=RANKER,
    num_replicas=1,
    max_ongoing_requests=64,
    max_queued_requests=512,
    ray_actor_options={"num_cpus": 1},
    user_config=RuntimeConfig().to_dict(),
    health_check_period_s=5,
    graceful_shutdown_timeout_s=20,
)
@serve.ingress(fastapi_app)
class Ranker:
    def __init__(self, ledger: DeploymentHandle, settings: dict) -> None:
        torch.set_num_threads(1)  # a replica is sized at <= 1 CPU; more threads only contend
        self.settings = AppSettings.from_dict(settings)
        replica_state.LIMITS["max_body_bytes"] = self.settings.max_body_bytes
        self.ledger = ledger
        self.signer = EventSigner.from_dir(self.settings.state_dir)  # the same key file for every replica
        self.registry = Registry(self.settings.registry)
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - constructed outside Serve (not used in the product)
            self.replica = f"pid{os.getpid()}"
        self._compute = threading.Lock()
        self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="rank")  # the compute thread
        runtime = RuntimeConfig()
        self.batcher = Batcher(self._rank_items, runtime.max_batch_size, runtime.batch_wait_timeout_s)
        self._register_queue: list[tuple[str, str, list[str]]] = []
        self._register_task: asyncio.Future | None = None
        self.register_errors = 0
        self.rank_requests = 0  # /rank requests ranked (for per-request figures from /healthz)
        self.rank_route_requests = 0  # of which RankRoute took (the rest came through FastAPI's route)
        self.last_register_error: str | None = None
        self.generator = torch.Generator().manual_seed(self.settings.seed ^ zlib.crc32(self.replica.encode()))
        logs = self.settings.logs
        self.impressions = LogWriter(
            self.settings.log_dir,
            IMPRESSIONS,
            self.replica,
            logs.impression_max_rows,
            logs.impression_max_age_s,
            stage="log_write",
        )
        self.feedbacks = LogWriter(
            self.settings.log_dir, FEEDBACK, self.replica, logs.feedback_max_rows, logs.feedback_max_age_s
        )
        self.runtime = runtime
        self.scorer: Scorer | None = None
        self.last_reload_error: str | None = None
        replica_state.INGRESS["ranker"] = self  # serves once Serve calls reconfigure and opens the port

    # ------------------------------------------------------------------ in-place updates
    async def reconfigure(self, user_config: dict) -> None:
        """Apply a new user_config: load + verify the wanted version off-loop, then swap the reference.

        On the first call (replica start) a failure is fatal, so a bad deploy never serves. Later a
        failure is recorded (`/version` shows it) and the current model keeps serving.
        """
        try:
            runtime = RuntimeConfig.from_dict(user_config)
            scorer = await asyncio.to_thread(self._resolve, runtime)  # file I/O and hashing off the loop
        except (CheckpointError, RegistryError, OSError, ValueError, TypeError) as e:
            if self.scorer is None:
                raise
            self.last_reload_error = f"{type(e).__name__}: {e}"
            return
        self.batcher.configure(runtime.max_batch_size, runtime.batch_wait_timeout_s)
        self.scorer, self.runtime, self.last_reload_error = scorer, runtime, None  # the swap
        set_model_version(scorer.version)

    def _resolve(self, runtime: RuntimeConfig) -> Scorer:
        """The scorer for `runtime.version` (or the registry pointer): the current one if unchanged,
        else loaded and verified against the checksum the registry recorded."""
        entry = self.registry.entry(runtime.version) if runtime.version else self.registry.current()
        if entry is None:
            raise RegistryError(
                f"registry {self.registry.root} has no current version: publish a checkpoint first"
            )
        scorer = self.scorer
        if scorer is not None and scorer.ckpt.sha256 == entry.sha256:
            return scorer
        loaded = Scorer.load(entry.path)
        if loaded.ckpt.sha256 != entry.sha256:
            raise CheckpointError(f"{entry.path}: checksum differs from the registry's record")
        return loaded

    def check_health(self) -> None:
        if self.scorer is None:
            raise RuntimeError("no model loaded")
        for w in (self.impressions, self.feedbacks):
            if not w.alive:
                raise RuntimeError(f"{w.kind} log writer thread died: {w.last_error!r}")

    def __del__(self) -> None:
        """Serve calls this on graceful shutdown: flush both logs."""
        for name in ("impressions", "feedbacks"):
            w = getattr(self, name, None)
            if w is not None:
                w.close()

    # ------------------------------------------------------------------ ranking
    async def _rank_items(self, items: list[_Item]) -> list[bytes]:
        """Rank a batch: register its events with the ledger, then score, log and render it off-loop.

        Event ids are issued first and queued for the ledger (not waited for; see `_queue_register`);
        a page's shown items are all its candidates, so the entry is known before ranking. The forward pass, the impression rows and the response bodies are made in
        the replica's compute thread (torch releases the GIL), so the loop keeps reading and
        parsing the next requests meanwhile. Returns the response body per item.
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
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._rank_sync, items, eids, ts, runtime)

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
            with self._compute:  # one forward at a time per replica; the generator is not thread-safe
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

    @fastapi_app.post("/rank", response_model=RankResponse)
    async def rank(self, request: Request) -> Response:
        # Rendered by rank_response_json and returned as bytes, so FastAPI does not validate the
        # response model again; `response_model` still documents the shape in OpenAPI.
        return Response(await self.rank_body(await request.body()), media_type="application/json")

    @fastapi_app.post("/rank/batch", response_model=RankBatchResponse)
    async def rank_batch(self, request: Request) -> Response:
        """Several pages in one request: each is checked, ranked, logged and answered as on /rank (its
        own event id), in one forward pass; a page that breaks the contract fails the whole request
        with a 422 naming it (`body.pages.<i>...`)."""
        req = parse_body(RankBatchRequest, await request.body())
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
        return Response(b'{"results":[' + b",".join(bodies) + b"]}", media_type="application/json")

    # ------------------------------------------------------------------ feedback
    def _check_feedback(self, req: FeedbackRequest) -> str:
        """The checks that need no state (contract, signature, age): the event's model version from its
        verified signed id, or FieldError (422 / 404 / 410)."""
        check_feedback(req, self.settings.max_candidates)
        token = self.signer.verify(req.event_id)  # forged / altered ids stop here, with no hop
        if token is None:
            raise FieldError(("body", "event_id"), "unknown event (never served by this app)", 404)
        age = time.time() - token.issued_s
        if age > self.settings.event_ttl_s:
            raise FieldError(
                ("body", "event_id"),
                f"expired: issued {age:.0f}s ago, ttl {self.settings.event_ttl_s:.0f}s",
                410,
            )
        return token.model_version

    def _claimed(self, req: FeedbackRequest, res: dict) -> FeedbackResponse | dict:
        """The ledger's answer to a claim: a FeedbackResponse for a duplicate, the log row to write for
        an accepted claim (then commit, or release if writing fails), else FieldError (4xx)."""
        status = res["status"]
        if status == "unknown":
            raise FieldError(("body", "event_id"), "unknown event (never served by this app)", 404)
        if status == "expired":
            raise FieldError(
                ("body", "event_id"), f"expired: issued {res['age_s']:.0f}s ago, ttl {res['ttl_s']:.0f}s", 410
            )
        if status == "bad_item":
            raise FieldError(
                ("body", "feedback", res["index"], "item_id"),
                f"{res['item_id']!r} was not shown in this event",
            )
        if status == "in_progress":
            raise FieldError(("body", "event_id"), "feedback for this event is being written; retry", 409)
        if status == "duplicate":
            return FeedbackResponse(
                event_id=req.event_id, status="duplicate", model_version=res["model_version"]
            )
        return {
            "event_id": req.event_id,
            "ts": now_ms(),
            "model_version": res["model_version"],
            "replica": self.replica,
            "item_id": [f.item_id for f in req.feedback],
            "click": [f.click for f in req.feedback],
            "dwell_s": [f.dwell_s for f in req.feedback],
        }

    async def _write_feedback(self, rows: list[dict]) -> str | None:
        """Write claimed rows durably (one group commit), then commit their claims; on a storage
        failure release them and return the reason (the client retries later)."""
        try:
            await asyncio.wrap_future(self.feedbacks.append(rows))  # acknowledged only once durable
        except Exception as e:  # noqa: BLE001 - storage failure: let the client retry later
            with contextlib.suppress(Exception):  # else the claims lapse after pending_timeout_s
                if len(rows) == 1:
                    await self.ledger.release.remote(rows[0]["event_id"])
                else:
                    await self.ledger.release_many.remote([row["event_id"] for row in rows])
            return f"feedback log unavailable ({e}); retry"
        # Already durable in the log. If the commit is lost, a retry after the pending timeout may log
        # it twice, and read_logs keeps the earliest copy.
        with contextlib.suppress(Exception):
            if len(rows) == 1:
                await self.ledger.commit.remote(rows[0]["event_id"])
            else:
                await self.ledger.commit_many.remote([row["event_id"] for row in rows])
        return None

    @fastapi_app.post(
        "/feedback",
        response_model=FeedbackResponse,
        responses={404: {"description": "unknown event_id"}, 410: {"description": "expired event_id"}},
    )
    async def feedback(self, req: FeedbackRequest) -> FeedbackResponse:
        version = self._check_feedback(req)
        items = [f.item_id for f in req.feedback]
        try:
            res = await self.ledger.claim.remote(req.event_id, items, version)
        except Exception as e:  # noqa: BLE001 - the ledger is restarting: nothing was taken, retry
            return _unavailable(f"event ledger unavailable ({type(e).__name__}); retry")
        row = self._claimed(req, res)
        if isinstance(row, FeedbackResponse):
            return row
        failure = await self._write_feedback([row])
        if failure is not None:
            return _unavailable(failure)
        return FeedbackResponse(event_id=req.event_id, status="accepted", model_version=row["model_version"])

    @fastapi_app.post("/feedback/batch", response_model=FeedbackBatchResponse)
    async def feedback_batch(self, req: FeedbackBatchRequest) -> FeedbackBatchResponse:
        """Feedback for several events: each is checked and claimed as on /feedback, the accepted ones
        are written in one group commit; every event gets its own outcome (never a silent drop)."""

        def error(ev: FeedbackRequest, code: int, detail: str) -> FeedbackBatchItem:
            return FeedbackBatchItem(event_id=ev.event_id, status="error", code=code, detail=detail)

        got: list = [None] * len(req.events)
        todo: list[tuple[int, str]] = []
        for i, ev in enumerate(req.events):
            try:
                todo.append((i, self._check_feedback(ev)))
            except FieldError as e:
                got[i] = error(ev, e.status, str(e))
        if todo:
            claims = [
                (req.events[i].event_id, [f.item_id for f in req.events[i].feedback], v) for i, v in todo
            ]
            try:
                answers = await self.ledger.claim_many.remote(claims)
            except Exception as e:  # noqa: BLE001 - the ledger is restarting: nothing was taken, retry
                answers = None
                for i, _ in todo:
                    got[i] = error(
                        req.events[i], 503, f"event ledger unavailable ({type(e).__name__}); retry"
                    )
            for (i, _), res in zip(todo, answers or []):
                try:
                    got[i] = self._claimed(req.events[i], res)
                except FieldError as e:
                    got[i] = error(req.events[i], e.status, str(e))
        rows = [g for g in got if isinstance(g, dict)]
        failure = await self._write_feedback(rows) if rows else None
        out = []
        for ev, g in zip(req.events, got):
            if isinstance(g, FeedbackBatchItem):
                out.append(g)
            elif isinstance(g, FeedbackResponse):
                out.append(FeedbackBatchItem(**g.model_dump()))
            elif failure is not None:
                out.append(error(ev, 503, failure))
            else:
                out.append(
                    FeedbackBatchItem(
                        event_id=ev.event_id, status="accepted", model_version=g["model_version"]
                    )
                )
        return FeedbackBatchResponse(results=out)

    # ------------------------------------------------------------------ introspection
    @fastapi_app.get("/healthz")
    async def healthz(self) -> dict:
        return {
            "status": "ok",
            "model_version": self.scorer.version if self.scorer else None,
            "replica": self.replica,
            "pid": os.getpid(),
            "batches": self.batcher.stats(),
            "process_cpu_s": process_cpu_s(),
            "stages": stages.CLOCK.snapshot(),
            "rank_requests": self.rank_requests,
            "rank_route_requests": self.rank_route_requests,
        }

    @fastapi_app.get("/version", response_model=VersionResponse)
    async def version(self) -> VersionResponse:
        sc = self.scorer
        return VersionResponse(
            model_version=sc.version,
            feature_dims=sc.feature_dims,
            query_dim=sc.query_dim,
            user_dim=sc.user_dim,
            max_candidates=self.settings.max_candidates,
            sha256=sc.ckpt.sha256,
            exploration=self.runtime.exploration,
            temperature=self.runtime.temperature,
            batching=self.runtime.batching,
            replica=self.replica,
            last_reload_error=self.last_reload_error,
        )


def build_app(args: dict | None = None) -> serve.Application:
    """Application builder (config.yaml `import_path: serving.app:build_app`, `args:` = AppSettings)."""
    settings = AppSettings.from_dict(args).resolved()
    ledger = EventLedger.bind(settings.event_ttl_s, settings.max_events, 2.0, settings.state_dir)
    return Ranker.bind(ledger, settings.to_dict())
