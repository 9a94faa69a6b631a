"""Offline simulation: run a ranking policy through the simulated user and log the feedback.

A *policy* is any object with a `name` and `rank(pages, k, rng) -> Slates` (the shown top-K item
indices per page, each item's score, and the exact propensities). Sessions are drawn uniformly (with
replacement) from the split's query_ids; each session shows its reformulation pages in order until the
user is satisfied, abandons, or `max_queries` pages were shown. Pages are processed in batches across
sessions (all first queries, then all reformulations), so the policy and the user model both run
vectorised.

Logged feedback (one row per shown item; Open Bandit Pipeline-like names):
  event_id, session_id, query_index, page_id, model_version (policy name), item_id, modality (name),
  position (1-based), action (item index within the page), score, pscore, pscore_cascade,
  slate_logprob, click, dwell (seconds, 0 when not clicked), viewport (seconds an answer card was on
  screen, 0 for other items; >= the threshold exactly when the answer satisfied without a click,
  `envs.viewport`), satisfied (satisfied click or an answer that satisfied without a click), reward, and simulation-only truth: examined, relevance,
  attractiveness (analysis only; no learner may read them).

Propensities, exact for every policy here:
  pscore          P(a_k | a_1..a_{k-1}): the probability that the logging policy puts this item at
                  position k given the items it placed above. Uniform random: 1 / (N - k + 1);
                  Plackett-Luce: exp(s_a / T) / sum_{j not above} exp(s_j / T); greedy: 1.
  pscore_cascade  prod_{j <= k} pscore_j = P(the whole prefix a_1..a_k), the cascade weight.
  slate_logprob   log P(a_1..a_K) = sum_k log pscore_k (equal on every row of an impression).
The marginal P(item at position k) is not logged (it is exact only for uniform random, 1/N; for
Plackett-Luce it would be a Monte-Carlo estimate).

A per-page table is written alongside: session_id, query_index, page_id, model_version, n_shown,
clicks, satisfied, good_abandon, abandon, reformulate, reward, ndcg@10, consistency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from envs.atomic_io import write_json_atomic, write_parquet_atomic
from envs.config_io import JsonConfig
from envs.feedback_summary import plot_feedback, summarise
from envs.metrics import ndcg_at_k, shown_order_agreement
from envs.pages import MODALITIES, Pages, pad_items
from envs.reward import RewardConfig
from envs.user_model import UserModel, UserModelConfig, UserOutcome
from envs.world import ItemTruth


@dataclass
class Slates:
    """A policy's shown rankings for B pages. Positions past a page's candidate count hold -1."""

    ranking: np.ndarray  # [B, K] int64 item index within the page, -1 = empty position
    score: np.ndarray  # [B, K] float64 the policy's score of the shown item (NaN if it has none)
    pscore: np.ndarray  # [B, K] float64 exact P(a_k | a_<k) (NaN at empty positions)
    slate_logprob: np.ndarray  # [B] float64 exact log P(a_1..a_K)

    def validate(self, pages: Pages, k: int) -> None:
        b = len(pages)
        for name, arr in (("ranking", self.ranking), ("score", self.score), ("pscore", self.pscore)):
            if arr.shape != (b, k):
                raise ValueError(f"Slates.{name} has shape {arr.shape}, expected ({b}, {k})")
        if self.slate_logprob.shape != (b,):
            raise ValueError(f"Slates.slate_logprob has shape {self.slate_logprob.shape}, expected ({b},)")
        n_shown = np.minimum(pages.sizes, k)
        valid = np.arange(k) < n_shown[:, None]
        if ((self.ranking >= 0) != valid).any():
            raise ValueError("Slates.ranking must fill the first min(K, page size) positions and -1 after")
        if (self.ranking >= pages.sizes[:, None]).any():
            raise ValueError("Slates.ranking points past a page's candidates")
        r = np.where(valid, self.ranking, -1 - np.arange(k))  # distinct fillers
        if (np.sort(r, axis=1)[:, 1:] == np.sort(r, axis=1)[:, :-1]).any():
            raise ValueError("Slates.ranking repeats an item on a page")
        p = self.pscore[valid]
        if p.size and (np.isnan(p).any() or p.min() <= 0 or p.max() > 1 + 1e-9):
            raise ValueError("Slates.pscore must lie in (0, 1] at shown positions")


class Policy(Protocol):
    name: str

    def rank(self, pages: Pages, k: int, rng: np.random.Generator) -> Slates: ...


class RandomPolicy:
    """Uniformly random rankings: pscore at 1-based position k is exactly 1 / (N - k + 1)."""

    name = "random"

    def rank(self, pages: Pages, k: int, rng: np.random.Generator) -> Slates:
        sizes = pages.sizes
        n_max = int(sizes.max()) if len(sizes) else 1
        keys = rng.random((len(pages), n_max))
        keys[np.arange(n_max) >= sizes[:, None]] = 2.0  # padding sorts last
        order = np.argsort(keys, axis=1, kind="stable")[:, :k]
        if order.shape[1] < k:
            order = np.pad(order, ((0, 0), (0, k - order.shape[1])), constant_values=-1)
        pos = np.arange(k)
        valid = pos < np.minimum(sizes, k)[:, None]
        ranking = np.where(valid, order, -1).astype(np.int64)
        pscore = np.where(valid, 1.0 / np.maximum(sizes[:, None] - pos, 1), np.nan)
        logp = np.where(valid, np.log(np.where(valid, pscore, 1.0)), 0.0).sum(axis=1)
        return Slates(ranking, np.full((len(pages), k), np.nan), pscore, logp)


class GreedyPolicy:
    """Deterministic top-K by a scorer's per-item scores (ties by item index): every pscore is 1."""

    def __init__(self, name: str, scorer) -> None:
        self.name = name
        self.scorer = scorer  # callable Pages -> (T,) scores

    def rank(self, pages: Pages, k: int, rng: np.random.Generator) -> Slates:
        scores = np.asarray(self.scorer(pages), np.float64)
        n_max = int(pages.sizes.max())
        padded = pad_items(pages, scores, n_max, fill=-np.inf)
        order = np.argsort(-padded, axis=1, kind="stable")[:, :k]
        if order.shape[1] < k:
            order = np.pad(order, ((0, 0), (0, k - order.shape[1])))
        valid = np.arange(k) < np.minimum(pages.sizes, k)[:, None]
        ranking = np.where(valid, order, -1).astype(np.int64)
        shown = np.where(valid, np.take_along_axis(padded, np.maximum(ranking, 0), axis=1), np.nan)
        return Slates(ranking, shown, np.where(valid, 1.0, np.nan), np.zeros(len(pages)))


@dataclass(frozen=True)
class SimulationConfig(JsonConfig):
    sessions: int = 1000
    slate_size: int = 10
    max_queries: int = 3
    seed: int = 0
    batch_pages: int = 2048  # pages per policy/user-model call
    reward: RewardConfig = field(default_factory=RewardConfig)
    user: UserModelConfig = field(default_factory=UserModelConfig)

    def __post_init__(self) -> None:
        for name in ("sessions", "slate_size", "max_queries", "batch_pages"):
            if getattr(self, name) < 1:
                raise ValueError(f"SimulationConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class SimulationLog:
    """Logged feedback (one row per shown item) and per-page outcomes, as Arrow tables."""

    feedback: pa.Table
    pages: pa.Table
    config: SimulationConfig
    policy: str

    def summary(self) -> dict:
        return summarise(self.feedback, self.pages)

    def write(self, out: str | Path, plots: bool = True) -> dict[str, Path]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "feedback": write_parquet_atomic(self.feedback, out / "feedback.parquet"),
            "pages": write_parquet_atomic(self.pages, out / "pages.parquet"),
        }
        summary = {"policy": self.policy, "config": self.config.to_json(), **self.summary()}
        paths["summary"] = write_json_atomic(out / "summary.json", summary)
        if plots:
            paths.update(plot_feedback(self.feedback, out))
        return paths


def sessions_of(pages: Pages) -> list[np.ndarray]:
    """Page indices of each query_id (in page order), sessions in order of first appearance."""
    _, first, inverse = np.unique(pages.query_id.astype(str), return_index=True, return_inverse=True)
    groups = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse))
    per_q = np.split(groups, bounds[:-1])
    return [per_q[i] for i in np.argsort(first)]


def simulate(
    policy: Policy,
    pages: Pages,
    truth: ItemTruth,
    config: SimulationConfig | None = None,
    progress: bool = False,
) -> SimulationLog:
    """Run `config.sessions` simulated user sessions with `policy` as the logging policy."""
    cfg = config or SimulationConfig()
    if len(truth.relevance) != pages.n_items:
        raise ValueError(f"truth has {len(truth.relevance)} items, pages have {pages.n_items}")
    rng = np.random.default_rng([cfg.seed, 4])
    user = UserModel(cfg.user)
    k = cfg.slate_size
    sessions = sessions_of(pages)
    chosen = rng.integers(len(sessions), size=cfg.sessions)
    sm_known = ~np.isnan(pages.single_modal_score)
    tag = f"{policy.name}-{cfg.seed}"
    rows: dict[str, list[np.ndarray]] = {}
    page_rows: dict[str, list[np.ndarray]] = {}
    active = np.arange(cfg.sessions)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.sessions, desc=f"simulate {policy.name}", unit="session", disable=None)
    for t in range(cfg.max_queries):
        n_before = len(active)
        active = active[[t < len(sessions[chosen[s]]) for s in active]]
        if len(active) == 0:
            break
        still = np.zeros(len(active), bool)
        for lo in range(0, len(active), cfg.batch_pages):
            sess = active[lo : lo + cfg.batch_pages]
            page_idx = np.array([sessions[chosen[s]][t] for s in sess], np.int64)
            batch = pages.select(page_idx)
            slates = policy.rank(batch, k, rng)
            slates.validate(batch, k)
            valid = slates.ranking >= 0
            item = batch.offsets[:-1, None] + np.maximum(slates.ranking, 0)  # index into batch items
            global_item = pages.offsets[page_idx][:, None] + np.maximum(slates.ranking, 0)
            rel = truth.relevance[global_item]
            att = truth.attractiveness[global_item]
            mod = batch.modality[item]
            out = user.simulate(rel, att, mod, valid, rng)
            item_reward = cfg.reward.item_rewards(out, t)
            ndcg, cons = _page_metrics(pages, page_idx, batch, slates.ranking, valid, truth, sm_known)
            session_ids = np.array([f"{tag}-s{s:07d}" for s in sess], dtype=object)
            shown = _Shown(batch, slates, valid, item, mod, rel, att, out, item_reward, t, policy.name)
            for name, v in _feedback_columns(shown, session_ids).items():
                rows.setdefault(name, []).append(v)
            for name, v in _page_columns(shown, session_ids, ndcg, cons).items():
                page_rows.setdefault(name, []).append(v)
            still[lo : lo + len(sess)] = out.reformulate
        active = active[still] if t < cfg.max_queries - 1 else active[:0]
        if bar is not None:
            bar.update(n_before - len(active))
    if bar is not None:
        bar.update(bar.total - bar.n)  # sessions whose pages ran out
        bar.close()
    feedback = pa.table({name: _arrow(np.concatenate(v)) for name, v in rows.items()})
    page_table = pa.table({name: _arrow(np.concatenate(v)) for name, v in page_rows.items()})
    return SimulationLog(feedback, page_table, cfg, policy.name)


def _arrow(v: np.ndarray) -> pa.Array:
    return pa.array(v.tolist(), pa.string()) if v.dtype == object else pa.array(v)


@dataclass
class _Shown:
    """One batch of shown slates and what the simulated user did on them (the logging step's input)."""

    batch: Pages
    slates: Slates
    valid: np.ndarray  # [B, K] a real item is shown
    item: np.ndarray  # [B, K] index into the batch's items
    mod: np.ndarray  # [B, K] modality ids
    rel: np.ndarray  # [B, K] true grades (simulation-only columns)
    att: np.ndarray  # [B, K] true attractiveness
    out: UserOutcome
    item_reward: np.ndarray  # [B, K]
    query_index: int
    policy: str


def _page_metrics(
    pages: Pages,
    page_idx: np.ndarray,
    batch: Pages,
    ranking: np.ndarray,
    valid: np.ndarray,
    truth: ItemTruth,
    sm_known: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """True NDCG@10 of each shown list, and its consistency with the single-modal scores (NaN if unknown)."""
    ndcg = np.empty(len(page_idx))
    cons = np.full(len(page_idx), np.nan)
    for i, p in enumerate(page_idx):
        lo, hi = pages.offsets[p], pages.offsets[p + 1]
        shown = ranking[i][valid[i]]
        page_rel = truth.relevance[lo:hi]
        ndcg[i] = ndcg_at_k(page_rel[shown], page_rel, 10)
        if sm_known[lo:hi].all():
            sl = batch.item_slice(i)
            cons[i] = shown_order_agreement(shown, batch.single_modal_score[sl], batch.modality[sl])[0]
    return ndcg, cons


def _feedback_columns(s: _Shown, session_ids: np.ndarray) -> dict[str, np.ndarray]:
    """One row per shown item (the logged-feedback schema of the module docstring)."""
    sl, out = s.slates, s.out
    positions = np.broadcast_to(np.arange(1, s.valid.shape[1] + 1), s.valid.shape)
    cascade = np.cumprod(np.where(s.valid, sl.pscore, 1.0), axis=1)
    r, c = np.nonzero(s.valid)
    t = s.query_index
    return {
        "event_id": np.array([f"{session_ids[i]}-q{t}-p{j + 1}" for i, j in zip(r, c)], dtype=object),
        "session_id": session_ids[r],
        "query_index": np.full(len(r), t, np.int16),
        "page_id": s.batch.page_id[r],
        "model_version": np.full(len(r), s.policy, dtype=object),
        "item_id": s.batch.item_id[s.item[r, c]],
        "modality": np.asarray(MODALITIES, dtype=object)[s.mod[r, c]],
        "position": positions[r, c].astype(np.int16),
        "action": sl.ranking[r, c],
        "score": sl.score[r, c].astype(np.float64),
        "pscore": sl.pscore[r, c].astype(np.float64),
        "pscore_cascade": cascade[r, c],
        "slate_logprob": sl.slate_logprob[r].astype(np.float64),
        "click": out.click[r, c].astype(np.int8),
        "dwell": out.dwell[r, c],
        "viewport": out.viewport[r, c],
        "satisfied": (out.satisfied_click | out.answer_satisfied)[r, c].astype(np.int8),
        "reward": s.item_reward[r, c],
        "examined": out.examined[r, c].astype(np.int8),
        "relevance": s.rel[r, c].astype(np.int8),
        "attractiveness": s.att[r, c].astype(np.float32),
    }


def _page_columns(
    s: _Shown, session_ids: np.ndarray, ndcg: np.ndarray, cons: np.ndarray
) -> dict[str, np.ndarray]:
    """One row per shown page."""
    n, out = len(session_ids), s.out
    return {
        "session_id": session_ids,
        "query_index": np.full(n, s.query_index, np.int16),
        "page_id": s.batch.page_id,
        "model_version": np.full(n, s.policy, dtype=object),
        "n_shown": s.valid.sum(axis=1).astype(np.int16),
        "clicks": out.click.sum(axis=1).astype(np.int16),
        "satisfied": out.satisfied,
        "good_abandon": out.good_abandon,
        "abandon": out.abandon,
        "reformulate": out.reformulate,
        "reward": s.item_reward.sum(axis=1),
        "ndcg@10": ndcg,
        "consistency": cons,
    }
