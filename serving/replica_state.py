"""Process-wide state of a Ranker replica that its ASGI middlewares read.

It lives in an importable module on purpose: Serve pickles the deployment class in serving/app.py
together with copies of the module globals its methods name, so a dict defined in serving/app.py
and written by the replica's constructor is not the dict its FastAPI middlewares see. A module is
pickled by reference, so `replica_state.LIMITS` is the same object for both.
"""

from __future__ import annotations

from typing import Any

from serving.settings import AppSettings

LIMITS: dict[str, int] = {"max_body_bytes": AppSettings().max_body_bytes}  # set by each replica
INGRESS: dict[str, Any] = {}  # {"ranker": the replica's Ranker}, for app.RankRoute
