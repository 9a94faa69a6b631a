"""The FastAPI ingress of the Serve app: the app object, its pure-ASGI middlewares and error handlers.

The `Ranker` deployment (serving.app) is declared on `fastapi_app` with its routes; their work is in
serving.ranker_rank and serving.ranker_feedback. State a middleware needs from the replica (the body
limit, the Ranker for RankRoute) is named through serving.replica_state.
"""

import inspect

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from serving import replica_state
from serving.errors import document_body, error_response, install_error_handlers
from serving.metrics import RouteMetrics
from serving.schemas import FieldError, RankBatchRequest, RankRequest

RETRY_AFTER_S = 1  # the Retry-After hint (seconds) of a 503 when the feedback log cannot be written


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


# FastAPI >= 0.16x checks for OpenTelemetry providers on every request unless told not to; the app
# has its own metrics (serving.metrics) and no OpenTelemetry setup, so the check is switched off.
_NO_TELEMETRY = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI).parameters
    else {}
)
fastapi_app = FastAPI(
    title="SMAR whole-page reranker",
    description="Ranks a page of mixed-modality candidates; logs impressions and feedback for learning.",
    version="1",
    **_NO_TELEMETRY,
)
fastapi_app.add_middleware(RankRoute)
fastapi_app.add_middleware(BodyLimit)
fastapi_app.add_middleware(RouteMetrics)  # outermost: counts 413s too


install_error_handlers(fastapi_app)
document_body(fastapi_app, "/rank", RankRequest)
document_body(fastapi_app, "/rank/batch", RankBatchRequest)


def unavailable(msg: str) -> JSONResponse:
    """A 503 with a Retry-After hint: a dependency (ledger, feedback log) is down; the client retries."""
    return JSONResponse(
        {"detail": [{"loc": ["body"], "msg": msg, "type": "unavailable"}]},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
