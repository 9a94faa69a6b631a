"""The feedback half of the `Ranker` deployment (serving.app): what POST /feedback and /feedback/batch do.

A feedback is checked without state first (contract, signed id, age), then claimed in the event
ledger, written durably to the feedback log and only then acknowledged; a storage failure releases
the claim and answers 503 so the client retries.
"""

import asyncio
import contextlib
import time

from fastapi.responses import JSONResponse

from serving.feedback_log import now_ms
from serving.ingress import unavailable
from serving.schemas import (
    FeedbackBatchItem,
    FeedbackBatchRequest,
    FeedbackBatchResponse,
    FeedbackRequest,
    FeedbackResponse,
    FieldError,
    check_feedback,
)


class RankerFeedback:
    """/feedback and /feedback/batch, mixed into `serving.app.Ranker` (the routes are declared there) (which sets the state they use:
    settings, signer, ledger, feedback log, replica name)."""

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
            "viewport_s": [float("nan") if f.viewport_s is None else f.viewport_s for f in req.feedback],
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

    async def accept_feedback(self, req: FeedbackRequest) -> FeedbackResponse | JSONResponse:
        """/feedback: claim, write durably, then acknowledge (503 + Retry-After if the ledger or the log is down)."""
        version = self._check_feedback(req)
        items = [f.item_id for f in req.feedback]
        try:
            res = await self.ledger.claim.remote(req.event_id, items, version)
        except Exception as e:  # noqa: BLE001 - the ledger is restarting: nothing was taken, retry
            return unavailable(f"event ledger unavailable ({type(e).__name__}); retry")
        row = self._claimed(req, res)
        if isinstance(row, FeedbackResponse):
            return row
        failure = await self._write_feedback([row])
        if failure is not None:
            return unavailable(failure)
        return FeedbackResponse(event_id=req.event_id, status="accepted", model_version=row["model_version"])

    async def accept_feedback_batch(self, req: FeedbackBatchRequest) -> FeedbackBatchResponse:
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
