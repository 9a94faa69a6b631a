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

Where the rest is: the FastAPI app and its middlewares in serving.ingress, what /rank and /feedback
do in serving.ranker_rank and serving.ranker_feedback (mixins of `Ranker`), the event ledger
deployment in serving.ledger.
"""

import asyncio
import os
import zlib

import torch
from fastapi import Request
from fastapi.responses import Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from pretrain.checkpoint import CheckpointError
from serving import replica_state, stages
from serving.batcher import Batcher
from serving.feedback_log import FEEDBACK, IMPRESSIONS, LogWriter
from serving.ingress import fastapi_app
from serving.ledger import EventLedger
from serving.metrics import set_model_version
from serving.ranker_feedback import RankerFeedback
from serving.ranker_rank import RankerRanking
from serving.registry import Registry, RegistryError
from serving.schemas import (
    FeedbackBatchRequest,
    FeedbackBatchResponse,
    FeedbackRequest,
    FeedbackResponse,
    RankBatchResponse,
    RankResponse,
    VersionResponse,
)
from serving.scoring import Scorer
from serving.settings import RANKER, AppSettings, RankerDeployment, RuntimeConfig
from serving.stages import process_cpu_s
from serving.tokens import EventSigner

# State shared between a replica and its middlewares (the body limit, the Ranker for RankRoute) and
# the stage clocks are named through their modules (serving.replica_state, serving.stages): Serve
# pickles this class with copies of the module globals its methods name. The routes are declared on
# this class, not on its mixins: Serve rewrites each route's signature on the function object, which
# travels to the replicas with this class (the mixins' methods are imported there afresh).


_DEPLOYMENT = RankerDeployment()  # the deploy config states the same (tests/serving/test_settings.py)


@serve.deployment(
    name=RANKER,
    num_replicas=_DEPLOYMENT.num_replicas,
    max_ongoing_requests=_DEPLOYMENT.max_ongoing_requests,
    max_queued_requests=_DEPLOYMENT.max_queued_requests,
    ray_actor_options={"num_cpus": _DEPLOYMENT.num_cpus},
    user_config=RuntimeConfig().to_dict(),
    health_check_period_s=5,
    graceful_shutdown_timeout_s=20,
)
@serve.ingress(fastapi_app)
class Ranker(RankerRanking, RankerFeedback):
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
        runtime = RuntimeConfig()
        self.batcher = Batcher(
            self._rank_items,
            runtime.max_batch_size,
            runtime.batch_wait_timeout_s,
            runtime.batch_settle_rounds,
        )
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
        self.batcher.configure(
            runtime.max_batch_size, runtime.batch_wait_timeout_s, runtime.batch_settle_rounds
        )
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

    # ------------------------------------------------------------------ routes
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
        return Response(await self.rank_batch_body(await request.body()), media_type="application/json")

    @fastapi_app.post(
        "/feedback",
        response_model=FeedbackResponse,
        responses={404: {"description": "unknown event_id"}, 410: {"description": "expired event_id"}},
    )
    async def feedback(self, req: FeedbackRequest) -> FeedbackResponse:
        return await self.accept_feedback(req)

    @fastapi_app.post("/feedback/batch", response_model=FeedbackBatchResponse)
    async def feedback_batch(self, req: FeedbackBatchRequest) -> FeedbackBatchResponse:
        """Feedback for several events: each is checked and claimed as on /feedback, the accepted ones
        are written in one group commit; every event gets its own outcome (never a silent drop)."""
        return await self.accept_feedback_batch(req)

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
