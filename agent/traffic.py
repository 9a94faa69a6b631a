"""Simulated live traffic against the Serve endpoint: users request rankings over HTTP and send feedback.

The users are the same model as the SERP environment (`envs.user_model.UserModel`): each session is a
query's reformulation pages; for each page the user looks at the top-K of the ranking the endpoint
actually returned, clicks and dwells (and reads answer cards: their viewport time), and the client
posts that feedback. An unsatisfied user reformulates (next page of the session) or abandons, as in
the environment.

Two rewards are reported per impression:
  observed  what the logs can see and the online learner optimises: the shared `envs.reward` definition
            on the logged evidence (`envs.reward.observed_satisfying`: satisfied clicks by dwell, answers
            satisfied without a click by viewport time), with the session's query index.
  env       the environment's reward from the simulator's truth, for comparison with `smar train`;
            equal to `observed` (the evidence is exact in the simulator), kept as the check.
Every failed request (transport error or HTTP status >= 400) is counted, never retried silently.

With `batch` > 1 each client thread keeps that many sessions open and sends their current pages in one
POST /rank/batch and their feedback in one POST /feedback/batch (each page still its own event, logged
and answered as on /rank and /feedback); a session's pages stay in order and its user's randomness is
the same as in the one-page-per-request mode. Request bodies are encoded once per page and reused
(`bodies`), since traffic replays the same pages.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from agent.evaluation import session_page_lists
from envs.reward import RewardConfig, logged_satisfying
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
    viewport_satisfied: int = 0  # unclicked answers whose logged viewport reached the threshold
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
    run = _TrafficRun(
        url, split, n_impressions, seed, slate_size, reward or RewardConfig(), user, explore, stop, bodies
    )
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        worker = run.worker if batch <= 1 else functools.partial(run.batch_worker, batch)
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return run.finish()


class _TrafficRun:
    """The shared state of one `run_traffic` call: its client threads claim sessions, play them and
    add their figures to the totals under one lock."""

    def __init__(
        self,
        url: str,
        split: Split,
        n_impressions: int,
        seed: int,
        slate_size: int,
        reward: RewardConfig,
        user: UserModelConfig | None,
        explore: bool,
        stop: threading.Event | None,
        bodies: dict[int, bytes] | None,
    ) -> None:
        self.url, self.n_impressions, self.seed, self.slate_size = url, n_impressions, seed, slate_size
        self.reward, self.explore, self.stop = reward, explore, stop
        self.model = UserModel(user or UserModelConfig())
        self.pages, self.truth = split.pages, split.truth
        self.sessions = session_page_lists(self.pages)
        self.order = np.random.default_rng(seed).permutation(len(self.sessions))
        # Each worker claims the next session; a session's RNG depends only on (seed, session number).
        self.lock = threading.Lock()
        self.next_session = 0
        self.impressions = 0
        self.totals: Counter = Counter()
        self.stats = TrafficStats()
        self.bodies = {} if bodies is None else bodies

    def claim(self) -> int | None:
        with self.lock:
            if self.impressions >= self.n_impressions or (self.stop is not None and self.stop.is_set()):
                return None
            s = self.next_session
            self.next_session += 1
            return s

    def fail(self, msg: str) -> None:
        with self.lock:
            self.stats.failed_requests += 1
            if len(self.stats.errors) < 5:
                self.stats.errors.append(msg)

    def body(self, p: int) -> bytes:
        """Page p's encoded /rank request, encoded once and reused."""
        from serving.client import page_request

        b = self.bodies.get(p)
        if b is None:
            b = self.bodies[p] = json.dumps(page_request(self.pages, p, explore=self.explore)).encode()
        return b

    def respond(self, p: int, q: int, res: dict, srng: np.random.Generator) -> tuple[list[dict], bool]:
        """The simulated user's feedback items on the served ranking of page p (query q of its session),
        recorded in the totals; True if the session ends here (satisfied or abandoned)."""
        from serving.client import feedback_items

        pages, truth = self.pages, self.truth
        sl = pages.item_slice(p)
        index = {str(pages.item_id[t]): t for t in range(sl.start, sl.stop)}
        shown_ids = [r["item_id"] for r in res["ranking"][: self.slate_size]]
        shown = np.array([index[i] for i in shown_ids])
        mod = pages.modality[shown].astype(np.int64)[None]
        out = self.model.simulate(
            truth.relevance[shown][None], truth.attractiveness[shown][None], mod, None, srng
        )
        items = feedback_items(shown_ids, out.click[0], out.dwell[0], mod[0], out.viewport[0])
        sat = logged_satisfying(self.model.config, out.click, out.dwell, mod, out.viewport)
        observed = float(self.reward.rewards(out.click, sat, q).sum())
        with self.lock:
            self.impressions += 1
            self.totals["observed"] += observed
            self.totals["observed_sq"] += observed**2
            self.totals["env"] += float(self.reward.item_rewards(out, q).sum())
            self.totals["clicks"] += int(out.click.sum())
            self.totals["satisfied"] += int(out.satisfied_click.sum())
            self.totals["viewport_satisfied"] += int((sat & ~out.click).sum())
            versions = self.stats.versions
            versions[res["model_version"]] = versions.get(res["model_version"], 0) + 1
        return items, bool(out.satisfied[0] or out.abandon[0])

    def open_session(self) -> list | None:
        """[session pages, next query index, rng] of the next session, or None when done."""
        s = self.claim()
        if s is None:
            return None
        with self.lock:
            self.stats.sessions += 1
        return [self.sessions[self.order[s % len(self.sessions)]], 0, np.random.default_rng([self.seed, s])]

    def worker(self) -> None:
        """One client thread, one /rank and one /feedback request per impression."""
        from serving.client import RerankerClient, page_request

        with RerankerClient(self.url) as client:
            while (sess := self.open_session()) is not None:
                session, _, srng = sess
                for q, p in enumerate(session):
                    try:
                        res = client.rank(page_request(self.pages, int(p), explore=self.explore))
                    except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                        self.fail(f"rank: {e}")
                        break
                    items, done = self.respond(int(p), q, res, srng)
                    try:
                        client.feedback(res["event_id"], items)
                    except Exception as e:  # noqa: BLE001
                        self.fail(f"feedback: {e}")
                    if done:
                        break

    def batch_worker(self, batch: int) -> None:
        """One client thread keeping `batch` sessions open: their current pages share one /rank/batch
        request and their feedback one /feedback/batch request per step."""
        from serving.client import RerankerClient

        with RerankerClient(self.url) as client:
            active: list[list] = []
            exhausted = False
            while True:
                while not exhausted and len(active) < batch:
                    sess = self.open_session()
                    if sess is None:
                        exhausted = True
                    else:
                        active.append(sess)
                if not active:
                    return
                active = self.batch_step(client, active)

    def batch_step(self, client, active: list[list]) -> list[list]:
        """One step of the open sessions: rank their pages, respond, send feedback; those still open."""
        page_ids = [int(a[0][a[1]]) for a in active]
        payload = b'{"pages":[' + b",".join(self.body(p) for p in page_ids) + b"]}"
        t0 = time.perf_counter()
        try:
            results = client.rank_batch(payload)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            self.fail(f"rank batch of {len(active)}: {e}")
            return []  # these sessions end, as a failed /rank ends one
        t1 = time.perf_counter()
        events, keep = [], []
        for a, p, res in zip(active, page_ids, results):
            items, done = self.respond(p, a[1], res, a[2])
            events.append((res["event_id"], items))
            a[1] += 1
            if not done and a[1] < len(a[0]):
                keep.append(a)
        t2 = time.perf_counter()
        try:
            for out in client.feedback_batch(events):
                if out["status"] not in ("accepted", "duplicate"):
                    self.fail(f"feedback {out['event_id']}: {out.get('code')} {out.get('detail')}")
        except Exception as e:  # noqa: BLE001
            self.fail(f"feedback batch of {len(events)}: {e}")
        with self.lock:
            self.totals["t_rank"] += t1 - t0
            self.totals["t_user"] += t2 - t1
            self.totals["t_feedback"] += time.perf_counter() - t2
        return keep

    def finish(self) -> TrafficStats:
        """The totals as per-impression means (and the observed reward's standard error)."""
        stats, totals = self.stats, self.totals
        n = max(self.impressions, 1)
        stats.impressions = self.impressions
        stats.observed_reward = totals["observed"] / n
        var = max(totals["observed_sq"] / n - stats.observed_reward**2, 0.0)
        stats.observed_reward_se = (var / n) ** 0.5
        stats.env_reward = totals["env"] / n
        stats.clicks = totals["clicks"]
        stats.satisfied_clicks = totals["satisfied"]
        stats.viewport_satisfied = totals["viewport_satisfied"]
        stats.thread_seconds = {k: float(totals[f"t_{k}"]) for k in ("rank", "user", "feedback")}
        return stats
