"""The fast /rank decoder accepts exactly what the pydantic model accepts, with the same result,
and every bad-input class still gets pydantic's error naming the field."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError

from serving.client import page_request
from serving.errors import parse_body, parse_rank
from serving.malformed import bad_cases, body_text
from serving.schemas import RANK_DECODER, RankRequest

BAD = bad_cases(20)


def _same(fast, slow: RankRequest) -> None:
    assert msgspec.to_builtins(fast) == slow.model_dump()


@pytest.mark.parametrize("explore", [False, True])
def test_valid_pages_decode_the_same(tiny_world, explore):
    pages = tiny_world.traffic.pages
    for p in range(min(10, len(pages.page_id))):
        raw = json.dumps(page_request(pages, p, explore=explore)).encode()
        fast = RANK_DECODER.decode(raw)  # the fast path itself, not the fallback
        _same(fast, RankRequest.model_validate_json(raw))
        _same(parse_rank(raw), RankRequest.model_validate_json(raw))


def test_ints_for_floats_and_optional_fields(tiny_world):
    body = page_request(tiny_world.traffic.pages, 0)
    body["candidates"][0]["features"] = [1] * len(body["candidates"][0]["features"])
    body.pop("page_id")
    body.pop("explore")
    raw = json.dumps(body).encode()
    _same(RANK_DECODER.decode(raw), RankRequest.model_validate_json(raw))


def _errs(e: RequestValidationError) -> list[tuple]:
    return [(tuple(x["loc"]), x["msg"], x["type"]) for x in e.errors()]  # "input" may hold a NaN


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_get_pydantics_error(tiny_world, case):
    make, status, field = BAD[case]
    if status != 422:
        pytest.skip("refused before parsing (body size)")
    raw = body_text(make(page_request(tiny_world.traffic.pages, 2))).encode()
    try:
        want = parse_body(RankRequest, raw)
    except RequestValidationError as e:
        want = _errs(e)
    try:
        got = parse_rank(raw)
    except RequestValidationError as e:
        got = _errs(e)
    if isinstance(want, RankRequest):  # contract errors (lengths, duplicates) come later, in check_rank
        _same(got, want)
    else:
        assert got == want
        assert any(field in map(str, loc) for loc, _, _ in got) or field == "body"


def test_feedback_items_carry_viewport_for_answer_cards_only():
    from envs.pages import MODALITIES
    from serving.client import feedback_items
    from serving.schemas import FeedbackRequest

    doc, answer = MODALITIES.index("doc"), MODALITIES.index("answer")
    items = feedback_items(
        ["d", "a"],
        np.array([True, False]),
        np.array([31.5, 0.0]),
        np.array([doc, answer]),
        np.array([0.0, 7.25]),
    )
    assert items == [
        {"item_id": "d", "click": True, "dwell_s": 31.5},
        {"item_id": "a", "click": False, "dwell_s": 0.0, "viewport_s": 7.25},
    ]
    assert "viewport_s" not in feedback_items(["a"], [False], [0.0], [answer])[0]  # no viewport given
    FeedbackRequest.model_validate(
        {"event_id": "e", "feedback": items}
    )  # the endpoint's own schema takes them
