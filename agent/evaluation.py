"""Deterministic evaluation of a ranking policy on held-out sessions of the simulated SERP.

A deterministic policy's slate depends only on the page, so every page is scored once (in one batched
pass) and the slate is the top-K by score; the simulator then plays each held-out session `repeats`
times from one seeded RNG stream. Every method evaluated with the same pages, sessions, seed and
repeats faces the same users, so methods are compared side by side.

Reported (means over what they name):
  reward                the session return (sum of page rewards, envs.serp_env.RewardConfig)
  ctr                   clicks per shown item (clicks / K per page)
  satisfied_click_rate  satisfied clicks (dwell >= 30 s) per shown item
  ndcg@10               true NDCG@10 of the shown slate against all candidates
  consistency           within-modality agreement of the slate with the single-modal scores
                        (envs.metrics.shown_order_agreement; pages without single-modal scores skipped)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from envs.pages import Pages
from envs.serp_env import SerpConfig, SerpEnv
from envs.world import ItemTruth

Scorer = Callable[[Pages], np.ndarray]
SESSION_METRICS = ("reward", "ctr", "satisfied_click_rate", "ndcg@10", "consistency")


def as_scorer(policy: Any) -> Scorer:
    """A `pages -> (T,) scores` function from a reranker, a checkpoint folder, a scorer object or a callable."""
    from pretrain.reranker import WholePageReranker

    if isinstance(policy, str | Path):
        from pretrain.checkpoint import load_checkpoint

        policy, _ = load_checkpoint(policy)
    if isinstance(policy, WholePageReranker):
        net = policy
        return net.score_pages
    if hasattr(policy, "score"):
        return policy.score
    if callable(policy):
        return policy
    raise TypeError(f"cannot evaluate a {type(policy).__name__}: pass a reranker, checkpoint path or scorer")


def explored_scorer(policy: Any, temperature: float, seed: int = 0) -> Scorer:
    """Scores whose top-K is one Plackett-Luce sample from PL(scores / temperature) per page (Gumbel
    top-K), seeded: evaluating it plays the policy as the endpoint serves it while exploring."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    base = as_scorer(policy)

    def score(pages: Pages) -> np.ndarray:
        gumbel = np.random.default_rng(seed).gumbel(size=pages.n_items)
        return np.asarray(base(pages), np.float64) / temperature + gumbel

    return score


def served_reward(
    policy: Any,
    pages: Pages,
    truth: ItemTruth,
    temperature: float,
    samples: int = 3,
    repeats: int = 2,
    serp: SerpConfig | dict | None = None,
) -> dict[str, float]:
    """Session reward of the policy as served with exploration at `temperature`: the mean over `samples`
    seeded Plackett-Luce slates per page, each played `repeats` times. The deterministic top-K that
    `evaluate_policy` plays is what the policy ranks; this is what users of an exploring endpoint see."""
    rewards = [
        evaluate_policy(
            explored_scorer(policy, temperature, s), pages, truth, seed=s, repeats=repeats, serp=serp
        )["reward"]
        for s in range(samples)
    ]
    return {"mean": float(np.mean(rewards)), "std": float(np.std(rewards)), "samples": samples}


def random_scorer(seed: int = 0) -> Scorer:
    """The `random` baseline: i.i.d. uniform scores (a uniformly random slate per page), seeded."""

    def score(pages: Pages) -> np.ndarray:
        return np.random.default_rng(seed).random(pages.n_items).astype(np.float32)

    return score


def topk_slates(scores: np.ndarray, pages: Pages, k: int) -> list[np.ndarray]:
    """Per page, the K slots (item positions within the page) of highest score; ties by position."""
    out = []
    for p in range(len(pages)):
        s = np.asarray(scores[pages.item_slice(p)], np.float64)
        out.append(np.argsort(-s, kind="stable")[:k])
    return out


def session_page_lists(pages: Pages) -> list[np.ndarray]:
    """Pages of each session (one query_id, page order), sessions in order of first appearance: the
    SerpEnv's numbering, so `reset(options={"session": s})` plays `session_page_lists(pages)[s]`."""
    qids, first, inverse = np.unique(pages.query_id.astype(str), return_index=True, return_inverse=True)
    return [np.flatnonzero(inverse == i) for i in np.argsort(first)]


def _rollouts(
    policy: Any,
    pages: Pages,
    truth: ItemTruth,
    sessions: list[int] | np.ndarray | None,
    seed: int,
    repeats: int,
    serp: SerpConfig | dict | None,
) -> dict[str, np.ndarray]:
    """Play the deterministic top-K policy: per-episode returns [repeats, sessions] (session order as
    given) and per-page ctr / satisfied-click rate / NDCG@10 / consistency (NaN where unscored)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    env = SerpEnv(pages=pages, truth=truth, config=serp)
    k = env.config.slate_size
    scores = np.asarray(as_scorer(policy)(pages), np.float32)
    if scores.shape != (pages.n_items,):
        raise ValueError(f"scorer returned shape {scores.shape}, expected ({pages.n_items},)")
    session_pages = session_page_lists(pages)
    if len(session_pages) != env.n_sessions:
        raise RuntimeError(f"{len(session_pages)} sessions here, SerpEnv has {env.n_sessions}")
    slates = topk_slates(scores, pages, k)
    sessions = np.arange(env.n_sessions) if sessions is None else np.asarray(sessions, np.int64)
    returns, ctr, sat, ndcg, cons = [], [], [], [], []
    env.reset(seed=seed)
    for _ in range(repeats):
        for s in sessions:
            env.reset(options={"session": int(s)})
            total, done, t = 0.0, False, 0
            while not done:
                p = session_pages[s][t]
                _, r, term, trunc, info = env.step(slates[p])
                if info["page_id"] != pages.page_id[p]:  # the env's session order is the contract
                    raise RuntimeError(
                        f"session {s}: env showed {info['page_id']}, expected {pages.page_id[p]}"
                    )
                t += 1
                total += r
                done = term or trunc
                ctr.append(info["clicks"] / k)
                sat.append(info["satisfied_clicks"] / k)
                ndcg.append(info["ndcg@10"])
                cons.append(info.get("consistency", float("nan")))
            returns.append(total)
    return {
        "returns": np.asarray(returns, np.float64).reshape(repeats, len(sessions)),
        "ctr": np.asarray(ctr, np.float64),
        "satisfied_click_rate": np.asarray(sat, np.float64),
        "ndcg@10": np.asarray(ndcg, np.float64),
        "consistency": np.asarray(cons, np.float64),
    }


def evaluate_policy(
    policy: Any,
    pages: Pages,
    truth: ItemTruth,
    sessions: list[int] | np.ndarray | None = None,
    seed: int = 0,
    repeats: int = 5,
    serp: SerpConfig | dict | None = None,
) -> dict[str, float]:
    """Mean metrics of the deterministic top-K policy over `sessions` (default: all) x `repeats`.

    `policy`: a WholePageReranker, a checkpoint folder, an object with `.score(pages)`, or a callable.
    Returns {metric: mean} for SESSION_METRICS plus "episodes" and "pages" (counts).
    """
    r = _rollouts(policy, pages, truth, sessions, seed, repeats, serp)
    cons = r["consistency"][~np.isnan(r["consistency"])]
    return {
        "reward": float(np.mean(r["returns"].ravel())),
        "ctr": float(np.mean(r["ctr"])),
        "satisfied_click_rate": float(np.mean(r["satisfied_click_rate"])),
        "ndcg@10": float(np.mean(r["ndcg@10"])),
        "consistency": float(np.mean(cons)) if len(cons) else float("nan"),
        "episodes": int(r["returns"].size),
        "pages": len(r["ctr"]),
    }


def session_returns(
    policy: Any,
    pages: Pages,
    truth: ItemTruth,
    sessions: list[int] | np.ndarray | None = None,
    seed: int = 0,
    repeats: int = 5,
    serp: SerpConfig | dict | None = None,
) -> np.ndarray:
    """The episodes `evaluate_policy` plays with the same arguments, as returns [repeats, sessions]
    (sessions in `session_page_lists` order, or as given): its "reward" is their mean."""
    return _rollouts(policy, pages, truth, sessions, seed, repeats, serp)["returns"]
