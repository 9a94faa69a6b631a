"""Simulated live traffic against the Serve endpoint: users request rankings over HTTP and send feedback.

The users are the same model as the SERP environment (`envs.user_model.UserModel`): each session is a
query's reformulation pages; for each page the user looks at the top-K of the ranking the endpoint
actually returned, clicks and dwells, and the client posts that feedback. An unsatisfied user
reformulates (next page of the session) or abandons, as in the environment.

Two rewards are reported per impression:
  observed  what the logs can see and the online learner optimises: click and dwell-based satisfaction
            (the shared `envs.reward` definition on satisfied clicks); an answer that satisfies without a click is invisible.
  env       the environment's full reward (adds answer satisfaction), for comparison with `smar train`.
Every failed request (transport error or HTTP status >= 400) is counted, never retried silently.

With `batch` > 1 each client thread keeps that many sessions open and sends their current pages in one
POST /rank/batch and their feedback in one POST /feedback/batch (each page still its own event, logged
and answered as on /rank and /feedback); a session's pages stay in order and its user's randomness is
the same as in the one-page-per-request mode. Request bodies are encoded once per page and reused
(`bodies`), since traffic replays the same pages.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from agent.evaluation import session_page_lists
from envs.reward import RewardConfig
from envs.user_model import UserModel, UserModelConfig
from envs.world import Split


@dataclass
class TrafficStats:
    impressions: int = 0
    sessions: int = 0
    failed_requests: int = 0
    observed_reward: float = 0.0  # mean per impression
    observed_reward_se: float = 0.0  # its standard error
    env_reward: float = 0.0  # mean per impression
    clicks: int = 0
    satisfied_clicks: int = 0
    # Client-side wall time summed over threads: waiting on /rank, on /feedback, the rest (user model,
    # bodies); with several threads their sum exceeds the elapsed time.
    thread_seconds: dict[str, float] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # impressions served per model version
    errors: list[str] = field(default_factory=list)  # first few failure messages

    def to_json(self) -> dict:
        return asdict(self)


def run_traffic(
    url: str,
    split: Split,
    n_impressions: int,
    seed: int,
    slate_size: int = 10,
    concurrency: int = 4,
    reward: RewardConfig | None = None,
    user: UserModelConfig | None = None,
    explore: bool = True,
    stop: threading.Event | None = None,
    batch: int = 1,
    bodies: dict[int, bytes] | None = None,
) -> TrafficStats:
    """Drive `n_impressions` page requests (whole sessions, so a few more) through the endpoint at `url`."""
    from serving.client import RerankerClient, page_request

    reward = reward or RewardConfig()
    model = UserModel(user or UserModelConfig())
    pages, truth = split.pages, split.truth
    sessions = session_page_lists(pages)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sessions))
    # Each worker claims the next session; a session's RNG depends only on (seed, session number).
    lock = threading.Lock()
    state = {"next": 0, "impressions": 0}
    totals = Counter()
    stats = TrafficStats()

    def claim() -> int | None:
        with lock:
            if state["impressions"] >= n_impressions or (stop is not None and stop.is_set()):
                return None
            s = state["next"]
            state["next"] += 1
            return s

    def fail(msg: str) -> None:
        with lock:
            stats.failed_requests += 1
            if len(stats.errors) < 5:
                stats.errors.append(msg)

    bodies = {} if bodies is None else bodies

    def body(p: int) -> bytes:
        b = bodies.get(p)
        if b is None:
            b = bodies[p] = json.dumps(page_request(pages, p, explore=explore)).encode()
        return b

    def respond(p: int, q: int, res: dict, srng: np.random.Generator) -> tuple[list[dict], bool]:
        """The simulated user's feedback items on the served ranking of page p (query q of its session),
        recorded in the totals; True if the session ends here (satisfied or abandoned)."""
        sl = pages.item_slice(p)
        index = {str(pages.item_id[t]): t for t in range(sl.start, sl.stop)}
        shown_ids = [r["item_id"] for r in res["ranking"][:slate_size]]
        shown = np.array([index[i] for i in shown_ids])
        out = model.simulate(
            truth.relevance[shown][None],
            truth.attractiveness[shown][None],
            pages.modality[shown].astype(np.int64)[None],
            None,
            srng,
        )
        items = [
            {"item_id": i, "click": bool(out.click[0, k]), "dwell_s": float(out.dwell[0, k])}
            for k, i in enumerate(shown_ids)
        ]
        observed = float(reward.rewards(out.click, out.satisfied_click, q).sum())
        with lock:
            state["impressions"] += 1
            totals["observed"] += observed
            totals["observed_sq"] += observed**2
            totals["env"] += float(reward.item_rewards(out, q).sum())
            totals["clicks"] += int(out.click.sum())
            totals["satisfied"] += int(out.satisfied_click.sum())
            stats.versions[res["model_version"]] = stats.versions.get(res["model_version"], 0) + 1
        return items, bool(out.satisfied[0] or out.abandon[0])

    def open_session() -> list | None:
        """[session pages, next query index, rng] of the next session, or None when done."""
        s = claim()
        if s is None:
            return None
        with lock:
            stats.sessions += 1
        return [sessions[order[s % len(sessions)]], 0, np.random.default_rng([seed, s])]

    def worker() -> None:
        with RerankerClient(url) as client:
            while (sess := open_session()) is not None:
                session, _, srng = sess
                for q, p in enumerate(session):
                    try:
                        res = client.rank(page_request(pages, int(p), explore=explore))
                    except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                        fail(f"rank: {e}")
                        break
                    items, done = respond(int(p), q, res, srng)
                    try:
                        client.feedback(res["event_id"], items)
                    except Exception as e:  # noqa: BLE001
                        fail(f"feedback: {e}")
                    if done:
                        break

    def batch_worker() -> None:
        with RerankerClient(url) as client:
            active: list[list] = []
            exhausted = False
            while True:
                while not exhausted and len(active) < batch:
                    sess = open_session()
                    if sess is None:
                        exhausted = True
                    else:
                        active.append(sess)
                if not active:
                    return
                page_ids = [int(a[0][a[1]]) for a in active]
                payload = b'{"pages":[' + b",".join(body(p) for p in page_ids) + b"]}"
                t0 = time.perf_counter()
                try:
                    results = client.rank_batch(payload)
                except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                    fail(f"rank batch of {len(active)}: {e}")
                    active = []  # these sessions end, as a failed /rank ends one
                    continue
                t1 = time.perf_counter()
                events, keep = [], []
                for a, p, res in zip(active, page_ids, results):
                    items, done = respond(p, a[1], res, a[2])
                    events.append((res["event_id"], items))
                    a[1] += 1
                    if not done and a[1] < len(a[0]):
                        keep.append(a)
                t2 = time.perf_counter()
                try:
                    for out in client.feedback_batch(events):
                        if out["status"] not in ("accepted", "duplicate"):
                            fail(f"feedback {out['event_id']}: {out.get('code')} {out.get('detail')}")
                except Exception as e:  # noqa: BLE001
                    fail(f"feedback batch of {len(events)}: {e}")
                with lock:
                    totals["t_rank"] += t1 - t0
                    totals["t_user"] += t2 - t1
                    totals["t_feedback"] += time.perf_counter() - t2
                active = keep

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for f in [pool.submit(worker if batch <= 1 else batch_worker) for _ in range(concurrency)]:
            f.result()
    n = max(state["impressions"], 1)
    stats.impressions = state["impressions"]
    stats.observed_reward = totals["observed"] / n
    var = max(totals["observed_sq"] / n - stats.observed_reward**2, 0.0)
    stats.observed_reward_se = (var / n) ** 0.5
    stats.env_reward = totals["env"] / n
    stats.clicks = totals["clicks"]
    stats.satisfied_clicks = totals["satisfied"]
    stats.thread_seconds = {k: float(totals[f"t_{k}"]) for k in ("rank", "user", "feedback")}
    return stats
