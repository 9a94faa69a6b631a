"""A small HTTP client for the reranker app (tests, the demo, the online-update loop, the benchmark).

`page_request(pages, p)` turns page p of a `Pages` batch into the /rank request body (true feature
length per modality, NaN single-modal scores sent as null), so simulator pages go over the wire as is.
"""

from __future__ import annotations

import math
from typing import Any

import httpx
import numpy as np

from envs.pages import MODALITIES, Pages


class ServeError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


def page_request(pages: Pages, p: int, explore: bool = False, n_max: int | None = None) -> dict[str, Any]:
    """The /rank body for page `p` (its first `n_max` candidates when given)."""
    sl = pages.item_slice(p)
    idx = np.arange(sl.start, sl.stop)[: n_max if n_max is not None else None]
    cands = []
    for t in idx:
        m = MODALITIES[int(pages.modality[t])]
        s = float(pages.single_modal_score[t])
        cands.append(
            {
                "item_id": str(pages.item_id[t]),
                "modality": m,
                "features": pages.features[t, : pages.feature_dims[m]].astype(float).tolist(),
                "single_modal_score": None if math.isnan(s) else s,
            }
        )
    return {
        "query": {"features": pages.query_features[p].astype(float).tolist()},
        "user": {"features": pages.user_features[p].astype(float).tolist()},
        "candidates": cands,
        "explore": bool(explore),
        "page_id": str(pages.page_id[p]),
    }


class RerankerClient:
    """Synchronous client. `rank(page)` / `feedback(event_id, items)` / `version()` / `healthz()`."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RerankerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _json(self, r: httpx.Response) -> Any:
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = r.text
            raise ServeError(r.status_code, body)
        return r.json()

    def rank(self, page: dict[str, Any]) -> dict[str, Any]:
        """POST /rank with a request body (see `page_request`)."""
        return self._json(self.http.post("/rank", json=page))

    def feedback(self, event_id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        """POST /feedback; items: [{"item_id", "click", "dwell_s", optional "viewport_s"}]."""
        return self._json(self.http.post("/feedback", json={"event_id": event_id, "feedback": items}))

    def rank_batch(self, pages: list[dict[str, Any]] | bytes) -> list[dict[str, Any]]:
        """POST /rank/batch: one result per page, in order (pages as `page_request` bodies, or the
        already encoded body `{"pages": [...]}`)."""
        if isinstance(pages, bytes):
            r = self.http.post("/rank/batch", content=pages, headers={"content-type": "application/json"})
        else:
            r = self.http.post("/rank/batch", json={"pages": pages})
        return self._json(r)["results"]

    def feedback_batch(self, events: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
        """POST /feedback/batch with (event_id, items) pairs: one outcome per event, in order
        (status accepted / duplicate, or error with the code /feedback would have answered)."""
        body = {"events": [{"event_id": e, "feedback": items} for e, items in events]}
        return self._json(self.http.post("/feedback/batch", json=body))["results"]

    def version(self) -> dict[str, Any]:
        return self._json(self.http.get("/version"))

    def healthz(self) -> dict[str, Any]:
        return self._json(self.http.get("/healthz"))


def feedback_items(
    item_ids: list[str],
    click: np.ndarray,
    dwell: np.ndarray,
    modality: np.ndarray,
    viewport: np.ndarray | None = None,
) -> list[dict]:
    """/feedback body items for the shown items, in shown order: click, dwell seconds, and for answer
    cards their viewport seconds (`viewport_s`: how long the card was on screen, the evidence of an
    answer that satisfied without a click) when `viewport` is given."""
    answer = MODALITIES.index("answer")
    items = []
    for k, i in enumerate(item_ids):
        item = {"item_id": i, "click": bool(click[k]), "dwell_s": float(dwell[k])}
        if viewport is not None and int(modality[k]) == answer:
            item["viewport_s"] = float(viewport[k])
        items.append(item)
    return items
