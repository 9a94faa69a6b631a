"""HTTP request/response shapes and the checks that need the served model's input contract.

Pydantic (strict mode, finite floats only) rejects wrong types, NaN/inf, unknown modalities and empty
lists with FastAPI's usual 422 body, whose `loc` names the field. What depends on the loaded model
(feature lengths, the candidate cap, duplicate item ids) is checked by `check_rank` and raised as
`FieldError`, which the app renders in the same 422 shape. Nothing here touches torch or Ray.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from envs.pages import MODALITIES

Finite = Annotated[float, Field(allow_inf_nan=False)]
Modality = Literal[MODALITIES]  # type: ignore[valid-type]
MAX_VECTOR = 4096  # hard cap on any feature vector, before the model's own contract is checked
MAX_LIST = 4096  # hard cap on list lengths, before `max_candidates`
MAX_VIEWPORT_S = 86400.0  # a day on screen: anything longer is a client bug, not a reading


class FieldError(ValueError):
    """A request field that parses but breaks the served model's contract."""

    def __init__(self, loc: tuple, msg: str, status: int = 422) -> None:
        super().__init__(f"{'.'.join(str(x) for x in loc)}: {msg}")
        self.loc = loc
        self.msg = msg
        self.status = status

    def detail(self) -> list[dict]:
        return [{"loc": list(self.loc), "msg": self.msg, "type": "value_error"}]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True)


class Context(_Strict):
    features: list[Finite] = Field(max_length=MAX_VECTOR)


class Candidate(_Strict):
    item_id: str = Field(min_length=1, max_length=512)
    modality: Modality
    features: list[Finite] = Field(max_length=MAX_VECTOR)
    single_modal_score: Finite | None = None


class RankRequest(_Strict):
    query: Context
    user: Context
    candidates: list[Candidate] = Field(min_length=1, max_length=MAX_LIST)
    explore: bool = False
    page_id: str | None = Field(default=None, max_length=512)  # optional client tag, logged as is


class RankedItem(BaseModel):
    item_id: str
    position: int
    score: float
    propensity: float | None = None


class RankResponse(BaseModel):
    event_id: str
    model_version: str
    ranking: list[RankedItem]
    explored: bool = False
    slate_log_prob: float | None = None  # exact log P(shown ranking) when exploring


class ItemFeedback(_Strict):
    item_id: str = Field(min_length=1, max_length=512)
    click: bool
    dwell_s: Finite = Field(default=0.0, ge=0.0)
    # seconds the item (an answer card) was on screen; None = not measured (logged as NaN)
    viewport_s: Finite | None = Field(default=None, ge=0.0, le=MAX_VIEWPORT_S)


class FeedbackRequest(_Strict):
    event_id: str = Field(min_length=1, max_length=256)
    feedback: list[ItemFeedback] = Field(max_length=MAX_LIST)


class FeedbackResponse(BaseModel):
    event_id: str
    status: Literal["accepted", "duplicate"]
    model_version: str


MAX_BATCH = 256  # pages (or feedback events) per batch request; the body-size limit applies too


class RankBatchRequest(_Strict):
    """POST /rank/batch: several pages in one request (each ranked and logged as its own event)."""

    pages: list[RankRequest] = Field(min_length=1, max_length=MAX_BATCH)


class RankBatchResponse(BaseModel):
    results: list[RankResponse]


class FeedbackBatchRequest(_Strict):
    """POST /feedback/batch: feedback for several events in one request."""

    events: list[FeedbackRequest] = Field(min_length=1, max_length=MAX_BATCH)


class FeedbackBatchItem(BaseModel):
    """One event's outcome: accepted / duplicate as on /feedback, else the status code and the reason
    /feedback would have answered with (404 unknown, 410 expired, 409 in progress, 422, 503)."""

    event_id: str
    status: Literal["accepted", "duplicate", "error"]
    model_version: str | None = None
    code: int | None = None
    detail: str | None = None


class FeedbackBatchResponse(BaseModel):
    results: list[FeedbackBatchItem]


class Contract(BaseModel):
    model_version: str
    feature_dims: dict[str, int]
    query_dim: int
    user_dim: int
    max_candidates: int


class VersionResponse(Contract):
    sha256: str
    exploration: str
    temperature: float
    batching: bool
    replica: str
    last_reload_error: str | None = None


# ---------------------------------------------------------------------------- fast /rank decoding
# The same RankRequest contract as msgspec Structs: decoding + validating a page costs a fraction of
# pydantic's time, and parsing was the largest single cost in the replica's event loop (README).
# The accepted inputs are pydantic's: msgspec accepts a subset of what the pydantic model accepts (finite floats
# via bounds, the same strict types, lengths and literals), and anything msgspec refuses is parsed
# again by pydantic, which then either accepts it or raises its usual error naming the field
# (`serving.errors.parse_rank`). A test checks both on every bad-input class and on valid pages.
_F = Annotated[float, msgspec.Meta(ge=-1.7976931348623157e308, le=1.7976931348623157e308)]


class FastContext(msgspec.Struct):
    features: Annotated[list[_F], msgspec.Meta(max_length=MAX_VECTOR)]


class FastCandidate(msgspec.Struct):
    item_id: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    modality: Modality
    features: Annotated[list[_F], msgspec.Meta(max_length=MAX_VECTOR)]
    single_modal_score: _F | None = None


class FastRankRequest(msgspec.Struct):
    query: FastContext
    user: FastContext
    candidates: Annotated[list[FastCandidate], msgspec.Meta(min_length=1, max_length=MAX_LIST)]
    explore: bool = False
    page_id: Annotated[str, msgspec.Meta(max_length=512)] | None = None


RANK_DECODER = msgspec.json.Decoder(FastRankRequest)


def check_rank(
    req: RankRequest,
    feature_dims: dict[str, int],
    query_dim: int,
    user_dim: int,
    max_candidates: int,
    max_item_id_len: int,
) -> None:
    """Raise FieldError (naming the field) if `req` does not fit the served model's contract."""
    if len(req.query.features) != query_dim:
        raise FieldError(
            ("body", "query", "features"), f"expected {query_dim} values, got {len(req.query.features)}"
        )
    if len(req.user.features) != user_dim:
        raise FieldError(
            ("body", "user", "features"), f"expected {user_dim} values, got {len(req.user.features)}"
        )
    if len(req.candidates) > max_candidates:
        raise FieldError(
            ("body", "candidates"), f"at most {max_candidates} candidates, got {len(req.candidates)}"
        )
    seen: set[str] = set()
    for i, c in enumerate(req.candidates):
        if len(c.item_id) > max_item_id_len:
            raise FieldError(("body", "candidates", i, "item_id"), f"longer than {max_item_id_len} chars")
        if c.item_id in seen:
            raise FieldError(("body", "candidates", i, "item_id"), f"duplicate item_id {c.item_id!r}")
        seen.add(c.item_id)
        d = feature_dims[c.modality]
        if len(c.features) != d:
            raise FieldError(
                ("body", "candidates", i, "features"),
                f"modality {c.modality!r} expects {d} values, got {len(c.features)}",
            )


def check_feedback(req: FeedbackRequest, max_items: int) -> None:
    if len(req.feedback) > max_items:
        raise FieldError(("body", "feedback"), f"at most {max_items} items, got {len(req.feedback)}")
    seen: set[str] = set()
    for i, f in enumerate(req.feedback):
        if f.item_id in seen:
            raise FieldError(("body", "feedback", i, "item_id"), f"duplicate item_id {f.item_id!r}")
        seen.add(f.item_id)


def rank_response_json(req: RankRequest, event_id: str, version: str, r: Any) -> bytes:
    """The /rank response body (a `RankResponse`) for a request and its `scoring.Ranked`, serialised
    from plain lists by pydantic-core in one call (propensities only when exploring). Building a
    `RankedItem` model per position cost more than the rest of the response."""
    ids = [req.candidates[a].item_id for a in r.order.tolist()]
    scores = r.scores.tolist()
    if r.explored:
        props: list = r.pscore.tolist()
    else:
        props = [None] * len(ids)
    ranking = [
        {"item_id": i, "position": k, "score": s, "propensity": p}
        for k, (i, s, p) in enumerate(zip(ids, scores, props), start=1)
    ]
    return to_json(
        {
            "event_id": event_id,
            "model_version": version,
            "ranking": ranking,
            "explored": bool(r.explored),
            "slate_log_prob": float(r.slate_log_prob) if r.explored else None,
        }
    )
