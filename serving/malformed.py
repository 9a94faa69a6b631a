"""Every class of bad /rank input, as bodies built from a valid one, with the status it must get.

Used by the app tests, the fault tests and `smar bench serve`'s malformed load. `bad_cases(n_max)`
returns {name: (make(body) -> dict | bytes, status, field named in the error)}; `n_max` is the
deployment's `max_candidates` (the oversized page has one more candidate).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

HUGE_PAD = 2 << 20  # bytes of padding in the over-limit body (the limit is 1 MiB by default)


def _mut(f: Callable[[dict], Any]) -> Callable[[dict], dict]:
    """A case that edits a copy of a valid body in place."""

    def apply(body: dict) -> dict:
        body = copy.deepcopy(body)
        f(body)
        return body

    return apply


def _raw(text_fn: Callable[[str], str]) -> Callable[[dict], bytes]:
    return lambda body: text_fn(json.dumps(body)).encode()


def bad_cases(n_max: int) -> dict[str, tuple[Callable[[dict], dict | bytes], int, str]]:
    return {
        "features_not_a_list": (
            _mut(lambda b: b["candidates"][0].__setitem__("features", "abc")),
            422,
            "features",
        ),
        "bool_features": (
            _mut(lambda b: b["candidates"][0].__setitem__("features", [True] * 24)),
            422,
            "features",
        ),
        "item_id_not_str": (_mut(lambda b: b["candidates"][1].__setitem__("item_id", 5)), 422, "item_id"),
        "explore_not_bool": (_mut(lambda b: b.__setitem__("explore", "yes")), 422, "explore"),
        "unknown_modality": (
            _mut(lambda b: b["candidates"][0].__setitem__("modality", "podcast")),
            422,
            "modality",
        ),
        "wrong_feature_length": (
            _mut(lambda b: b["candidates"][2]["features"].append(1.0)),
            422,
            "features",
        ),
        "nan": (_raw(lambda s: s.replace('"features": [', '"features": [NaN, ', 1)), 422, "features"),
        "infinity": (
            _raw(lambda s: s.replace('"features": [', '"features": [-Infinity, ', 1)),
            422,
            "features",
        ),
        "overflow_to_inf": (
            _raw(lambda s: s.replace('"features": [', '"features": [1e999, ', 1)),
            422,
            "features",
        ),
        "nan_score": (
            _raw(lambda s: s.replace('"single_modal_score": ', '"single_modal_score": NaN, "x": ', 1)),
            422,
            "single_modal_score",
        ),
        "empty_candidates": (_mut(lambda b: b.__setitem__("candidates", [])), 422, "candidates"),
        "oversized_candidates": (
            _mut(
                lambda b: b.__setitem__(
                    "candidates", [dict(b["candidates"][0], item_id=f"x{i}") for i in range(n_max + 1)]
                )
            ),
            422,
            "candidates",
        ),
        "duplicate_item_ids": (
            _mut(lambda b: b["candidates"][1].__setitem__("item_id", b["candidates"][0]["item_id"])),
            422,
            "item_id",
        ),
        "query_length": (
            _mut(lambda b: b["query"].__setitem__("features", b["query"]["features"][:-1])),
            422,
            "query",
        ),
        "missing_user": (_mut(lambda b: b.__delitem__("user")), 422, "user"),
        "not_json": (lambda b: b"{this is not json", 422, "body"),
        "not_an_object": (lambda b: b"[1, 2, 3]", 422, "body"),
        "huge_body": (lambda b: json.dumps({**b, "pad": "x" * HUGE_PAD}).encode(), 413, "body"),
    }


def body_text(payload: dict | bytes) -> str:
    """The request body as text (what goes on the wire)."""
    return payload.decode() if isinstance(payload, bytes) else json.dumps(payload)


def mixed_specs(valid: list[dict], n_max: int, malformed_every: int = 10) -> list[dict]:
    """Load-generator specs (serving/loadgen.py): the valid bodies, with every `malformed_every`-th
    request a bad one, every class in turn. Each spec carries its class and expected status."""
    cases = bad_cases(n_max)
    names = sorted(cases)
    specs: list[dict] = []
    k = 0
    # enough valid bodies that every class appears once per cycle
    n = max(len(valid), len(names) * (malformed_every - 1))
    for i in range(n):
        specs.append({"path": "/rank", "body": json.dumps(valid[i % len(valid)]), "class": "valid"})
        if (i + 1) % (malformed_every - 1) == 0:
            name = names[k % len(names)]
            make, status, _ = cases[name]
            specs.append(
                {
                    "path": "/rank",
                    "body": body_text(make(valid[k % len(valid)])),
                    "class": name,
                    "expect": status,
                }
            )
            k += 1
    return specs
