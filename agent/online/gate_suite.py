"""The gate measured on candidates of known true value: its false-publish and true-publish rates.

    python -m agent.online.gate_suite [--holdout N] [--draws D] [--out FILE]

A small cascade world where every policy's value is computed exactly (no simulation noise in the
truth): C contexts, N candidates per page, K shown positions; the user examines position k with
probability 1/(k+1)^0.5 ... (PBM-like), clicks an examined item with its attractiveness, is satisfied by
a click with the item's satisfaction probability and then stops (cascade), as in the user simulator.
Per position the reward is 0.1 x click + 1.0 x satisfied click (the default observed reward's shape).

The serving policy is Plackett-Luce on random scores; candidate(t) = serving + t x (good - serving),
where `good` leans toward items of high expected reward. For each target ratio (1.01 .. 1.10 better,
0.90 .. 0.99 worse) t is found by bisection on the *exact* value (every top-K ranking enumerated), so
each candidate's true value relative to serving is known to 1e-6. Each candidate is then gated `draws`
times on independent held-out logs of the serving policy (the same `agent.gate.value_check` the loop
calls, with a DR reward model fitted on a separate training log): a worse candidate published is a
false publish, a better one published a true publish.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from agent.gate import GateConfig, value_check
from agent.ope import PositionModalityRewardModel, cascade_terms
from envs.atomic_io import write_json_atomic
from pretrain.plackett_luce import masked_logits, sample_topk, stepwise_log_probs


@dataclass(frozen=True)
class SuiteConfig:
    contexts: int = 40
    n_items: int = 8
    slate: int = 4
    holdout: int = 3000  # held-out impressions per gate decision (the loop's 10,000 x 0.3)
    train: int = 3000  # impressions the DR reward model is fitted on
    draws: int = 5  # independent held-out logs per candidate
    # Each candidate also moves by this much (score units, per item) in its own random direction that the
    # bisection then compensates: a real update changes the policy in many directions, not only the one
    # that changes its value, and that spread is what makes importance weights noisy.
    nuisance: float = 0.5
    ratios: tuple[float, ...] = (
        *(1 + 0.01 * i for i in range(1, 11)),
        *(1 - 0.01 * i for i in range(1, 11)),
    )
    seed: int = 0


class CascadeWorld:
    """Contexts with per-item attractiveness / satisfaction; exact values of PL policies by enumeration."""

    def __init__(self, cfg: SuiteConfig) -> None:
        rng = np.random.default_rng([cfg.seed, 7])
        c, n, k = cfg.contexts, cfg.n_items, cfg.slate
        self.cfg = cfg
        self.attr = rng.uniform(0.15, 0.8, (c, n))
        self.sat = rng.uniform(0.05, 0.9, (c, n))
        self.exam = 1.0 / np.sqrt(np.arange(1, k + 1))
        self.modality = np.arange(n) % 4  # four "modalities" for the DR reward model
        self.serving = rng.normal(0.0, 1.0, (c, n))
        item_value = self.attr * (0.1 + self.sat)
        self.good = 3.0 * (item_value - item_value.mean(1, keepdims=True)) / item_value.std()
        self.perms = np.array(list(itertools.permutations(range(n), k)), np.int64)  # [R, K]
        # Expected page reward of every ranking in every context: [C, R].
        a = self.attr[:, self.perms] * self.exam  # click prob at k if reached
        s = self.sat[:, self.perms]
        reach = np.cumprod(np.concatenate([np.ones((c, len(self.perms), 1)), 1 - a * s], 2)[:, :, :-1], 2)
        self.ranking_value = (reach * a * (0.1 + s)).sum(2)

    def value(self, scores: np.ndarray) -> float:
        """Exact expected page reward of PL(scores), contexts uniform."""
        logits = torch.from_numpy(scores).double()  # [C, N]
        perms = torch.from_numpy(self.perms)
        logp = torch.zeros(len(scores), len(self.perms), dtype=torch.float64)
        remaining = logits[:, None, :].expand(-1, len(self.perms), -1).clone()
        for pos in range(self.cfg.slate):
            a = perms[:, pos].expand(len(scores), -1)[..., None]
            logp += (remaining.gather(2, a) - torch.logsumexp(remaining, 2, keepdim=True)).squeeze(2)
            remaining = remaining.scatter(2, a, float("-inf"))
        return float((logp.exp().numpy() * self.ranking_value).sum(1).mean())

    def candidate(self, ratio: float, seed: int) -> tuple[np.ndarray, float]:
        """Scores whose exact value is `ratio` x serving's: serving plus a random nuisance move, plus a
        step t along serving -> good found by bisection on the exact value."""
        v0 = self.value(self.serving)
        base = self.serving + self.cfg.nuisance * np.random.default_rng([self.cfg.seed, 11, seed]).normal(
            0.0, 1.0, self.serving.shape
        )

        def f(t: float) -> float:  # increasing in t: the step leans toward `good`
            return self.value(base + t * (self.good - self.serving)) / v0 - ratio

        lo, hi = -0.5, 0.5  # widened until f(lo) < 0 < f(hi)
        while f(hi) < 0:
            hi *= 2
        while f(lo) > 0:
            lo *= 2
        for _ in range(25):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
        scores = base + (lo + hi) / 2 * (self.good - self.serving)
        return scores, self.value(scores) / v0

    def log(self, n: int, seed: int):
        """n impressions logged by the serving policy: (ctx, ranking, logged_logp, reward [n, K])."""
        rng = np.random.default_rng(seed)
        ctx = rng.integers(0, self.cfg.contexts, n)
        mask = torch.ones(n, self.cfg.n_items, dtype=torch.bool)
        logits = masked_logits(torch.from_numpy(self.serving[ctx]).float(), mask)
        ranking = sample_topk(logits, self.cfg.slate, generator=torch.Generator().manual_seed(seed))
        logged_logp = stepwise_log_probs(logits, ranking).double().numpy()
        r = ranking.numpy()
        a = self.attr[ctx[:, None], r] * self.exam
        s = self.sat[ctx[:, None], r]
        click = rng.random(a.shape) < a
        satisfied = click & (rng.random(a.shape) < s)
        reached = np.cumprod(np.concatenate([np.ones((n, 1), bool), ~satisfied[:, :-1]], 1), 1).astype(bool)
        reward = np.where(reached, 0.1 * click + 1.0 * satisfied, 0.0)
        return ctx, ranking, logged_logp, reward

    def gate_terms(self, scores: np.ndarray, q, n: int, seed: int):
        """The gate's per-impression terms (agent.ope.cascade_terms) of candidate `scores` on n fresh
        impressions logged by serving, with reward model q."""
        ctx, ranking, logged_logp, reward = self.log(n, seed=seed)
        return cascade_terms(
            torch.from_numpy(scores[ctx]).float(),
            torch.ones(n, self.cfg.n_items, dtype=torch.bool),
            torch.from_numpy(np.broadcast_to(self.modality, (n, self.cfg.n_items)).copy()),
            ranking,
            logged_logp,
            reward,
            q,
            1.0,
        )


def run_suite(cfg: SuiteConfig | None = None, gate_cfg: GateConfig | None = None) -> dict:
    cfg = cfg or SuiteConfig()
    gate_cfg = gate_cfg or GateConfig()
    world = CascadeWorld(cfg)
    ctx_t, rank_t, _, rew_t = world.log(cfg.train, seed=cfg.seed * 1000 + 999)
    q = PositionModalityRewardModel.fit(world.modality[rank_t.numpy()], rew_t)
    rows = []
    for ci, ratio in enumerate(cfg.ratios):
        scores, true_ratio = world.candidate(ratio, seed=ci)
        for d in range(cfg.draws):
            terms = world.gate_terms(scores, q, cfg.holdout, seed=cfg.seed * 1000 + ci * 50 + d)
            publish, diff, _, serving = value_check(terms, gate_cfg, report_estimates=False)
            rows.append(
                {
                    "candidate": ci,
                    "true_ratio": true_ratio,
                    "better": true_ratio > 1,
                    "draw": d,
                    "publish": bool(publish),
                    "diff_mean": diff["mean"],
                    "lcb": diff["lcb"],
                    "serving_logged": serving.value,
                }
            )
    better = [r for r in rows if r["better"]]
    worse = [r for r in rows if not r["better"]]
    by_ratio = {}
    for r in rows:
        by_ratio.setdefault(round(r["true_ratio"], 3), []).append(r["publish"])
    return {
        "true_publish_rate": float(np.mean([r["publish"] for r in better])),
        "false_publish_rate": float(np.mean([r["publish"] for r in worse])),
        "decisions": len(rows),
        "candidates": len(cfg.ratios),
        "serving_value": world.value(world.serving),
        "publish_rate_by_true_ratio": {k: float(np.mean(v)) for k, v in sorted(by_ratio.items())},
        "config": {**asdict(cfg), "gate": gate_cfg.to_json()},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = SuiteConfig()
    p.add_argument("--holdout", type=int, default=d.holdout)
    p.add_argument("--draws", type=int, default=d.draws)
    p.add_argument("--alpha", type=float, default=GateConfig().alpha)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    res = run_suite(
        SuiteConfig(holdout=a.holdout, draws=a.draws, seed=a.seed), GateConfig(alpha=a.alpha, seed=a.seed)
    )
    print(
        f"gate suite: {res['candidates']} candidates x {a.draws} held-out logs of {a.holdout} impressions: "
        f"false-publish {res['false_publish_rate']:.1%}, true-publish {res['true_publish_rate']:.1%}"
    )
    for k, v in res["publish_rate_by_true_ratio"].items():
        print(f"  true value {k:.3f} x serving: published {v:.0%}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(a.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
