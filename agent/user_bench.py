"""`smar bench simulate`: is the simulated user a product check? Three parts, one report.

1. **Calibration**: with the SMAR reranker as the production ranker on the test split, each
   statistic of `envs.calibration.TARGETS` beside its published figure, range and source.
2. **Reward landscape ladder**: the true grade with growing noise (none up to a random order), plus
   random, merge and SMAR, each played on the same test sessions: reward per session and NDCG@10.
   A reward a ranking team can trust rises with NDCG (Spearman over the ladder) and pays a random
   order well below a perfect one.
3. **Speed**: the vectorised user model against the per-item reference (`envs.bench`).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from envs.atomic_io import write_json_atomic
from envs.calibration import TARGETS, measure, report
from envs.config_io import JsonConfig
from envs.reward import RewardConfig
from envs.simulation import GreedyPolicy, RandomPolicy, SimulationConfig, simulate
from envs.user_model import UserModelConfig
from pretrain.run import DEFAULT_RUN

NOISE_LADDER = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float64)
        order = np.argsort(a, kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=np.float64)
        for v in np.unique(a):
            tie = a == v
            r[tie] = r[tie].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / np.sqrt((rx**2).sum() * (ry**2).sum()))


def fixed_scorer(pages, scores: np.ndarray):
    """A scorer of any selection of `pages` from per-item scores fixed in advance (keyed by page and item)."""
    table = {(p, i): s for p, i, s in zip(pages.page_id[pages.page_of_item], pages.item_id, scores)}

    def score(batch) -> np.ndarray:
        keys = zip(batch.page_id[batch.page_of_item], batch.item_id)
        return np.fromiter((table[k] for k in keys), np.float64, batch.n_items)

    return score


def noisy_grade_scores(truth_relevance: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Scores = true grade + noise * N(0, 1) (noise 0 = sort by true grade)."""
    rng = np.random.default_rng([seed, 31])
    return truth_relevance.astype(np.float64) + noise * rng.standard_normal(len(truth_relevance))


def ladder(
    split, smar_scores: np.ndarray, merge_scores: np.ndarray, cfg: SimulationConfig, seeds: int
) -> list[dict]:
    """Reward per session and NDCG@10 of each ranking on the split's sessions, mean and std over seeds."""
    rows = []
    policies: list[tuple[str, float | None, object]] = [
        (f"grade+noise {s:g}", s, None) for s in NOISE_LADDER
    ] + [("random", None, "random"), ("merge", None, merge_scores), ("smar", None, smar_scores)]
    for name, noise, fixed in policies:
        rewards, ndcgs = [], []
        for seed in range(seeds):
            if noise is not None:
                scores = noisy_grade_scores(split.truth.relevance, noise, seed)
                policy = GreedyPolicy(name, fixed_scorer(split.pages, scores))
            elif isinstance(fixed, str):
                policy = RandomPolicy()
            else:
                policy = GreedyPolicy(name, fixed_scorer(split.pages, fixed))
            log = simulate(policy, split.pages, split.truth, dataclasses.replace(cfg, seed=seed))
            summary = log.summary()
            rewards.append(summary["mean_reward_per_session"])
            ndcgs.append(summary["mean_ndcg@10"])
        rows.append(
            {
                "policy": name,
                "noise": noise,
                "reward": float(np.mean(rewards)),
                "reward_std": float(np.std(rewards)),
                "ndcg@10": float(np.mean(ndcgs)),
            }
        )
    return rows


def ladder_checks(rows: list[dict]) -> dict:
    on_ladder = [r for r in rows if r["noise"] is not None] + [r for r in rows if r["policy"] == "random"]
    rho = spearman(np.array([r["ndcg@10"] for r in on_ladder]), np.array([r["reward"] for r in on_ladder]))
    perfect = next(r for r in rows if r["noise"] == 0.0)["reward"]
    random = next(r for r in rows if r["policy"] == "random")["reward"]
    return {
        "spearman_reward_vs_ndcg": {"value": rho, "pass": rho >= 0.95, "target": ">= 0.95"},
        "random_over_perfect": {
            "value": random / perfect,
            "pass": random <= 0.8 * perfect,
            "target": "<= 0.8",
        },
    }


def calibration(run, user: UserModelConfig, sessions: int, seeds: int) -> dict:
    """Calibration statistics on the test split (mean and std over seeds) beside the published figures."""
    test = run.split("test")
    smar, _ = run.reranker()
    scores = smar.score_pages(test.pages)
    per_seed = [measure(scores, test.pages, test.truth, user, sessions, seed=1_000 + s) for s in range(seeds)]
    mean = {k: float(np.mean([p[k] for p in per_seed])) for k in per_seed[0]}
    rows = report(mean)
    for r in rows:
        r["std"] = float(np.std([p[r["statistic"]] for p in per_seed]))
    return {
        "production_ranker": "SMAR reranker of " + str(run.root),
        "split": "test",
        "sessions_per_seed": sessions,
        "seeds": seeds,
        "statistics": rows,
        "all_inside": all(r["inside"] for r in rows),
        "extra": {k: mean[k] for k in mean if k not in {t.name for t in TARGETS}},
    }


def plot(rows: list[dict], path: Path, reward: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    lad = [r for r in rows if r["noise"] is not None]
    ax.plot(
        [r["ndcg@10"] for r in lad],
        [r["reward"] for r in lad],
        "o-",
        color="tab:blue",
        label="true grade + noise",
    )
    for r in lad:
        ax.annotate(
            f"{r['noise']:g}",
            (r["ndcg@10"], r["reward"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    for r, c in zip([r for r in rows if r["noise"] is None], ("tab:gray", "tab:orange", "tab:green")):
        ax.errorbar(r["ndcg@10"], r["reward"], yerr=r["reward_std"], fmt="s", color=c, label=r["policy"])
    ax.set_xlabel("NDCG@10 (true grades)")
    ax.set_ylabel(f"reward per session ({reward})")
    ax.set_title("reward landscape on test sessions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class SimulateBenchConfig(JsonConfig):
    """Every setting of `smar bench simulate` (`--bench.FIELD`; the output folder is `--out`)."""

    out: str = "results/simulate"
    run: str = DEFAULT_RUN  # pretrain run (trained there first if missing)
    user: UserModelConfig = field(default_factory=UserModelConfig)  # the simulated user (every part)
    reward: RewardConfig = field(default_factory=RewardConfig)  # the product reward (the ladder)
    sessions: int = 4000  # sessions per seed (calibration and ladder)
    seeds: int = 3
    pages: int = 20000  # speed part: shown slates per implementation
    repeats: int = 15  # speed part: timed repeats of the vectorised model
    seed: int = 0  # speed part

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=SimulateBenchConfig.out, help="folder for report.json and the plots")
    p.add_class_arguments(SimulateBenchConfig, "bench", skip={"out"})


def run(args: argparse.Namespace) -> int:
    from pretrain.run import open_or_pretrain

    cfg = replace(args.bench, out=args.out)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    run_ = open_or_pretrain(cfg.run)
    cal = calibration(run_, cfg.user, cfg.sessions, cfg.seeds)
    _print_calibration(cal, cfg)
    rows, checks = _ladder_part(run_, cfg)
    speed = _speed_part(cfg)
    report_ = {
        "user_model": cfg.user.to_json(),
        "reward": cfg.reward.to_json(),
        "calibration": cal,
        "ladder": rows,
        "ladder_checks": checks,
        "speed": speed,
    }
    write_json_atomic(out / "report.json", report_)
    p = plot(rows, out / "reward_landscape.png", cfg.reward.name)
    print(f"wrote {out / 'report.json'} and {p}")
    return 0


def _print_calibration(cal: dict, cfg: SimulateBenchConfig) -> None:
    print(
        "calibration: SMAR reranker as the production ranker, test split, "
        f"{cfg.seeds} seeds x {cfg.sessions} sessions"
    )
    print(f"  {'statistic':<42}{'simulated':>10}{'published':>11}  {'range':<16}in   source")
    for r in cal["statistics"]:
        hi = "inf" if r["range"][1] is None else f"{r['range'][1]:.3f}"
        print(
            f"  {r['statistic']:<42}{r['simulated']:>10.3f}{r['published']:>11.3f}  "
            f"[{r['range'][0]:.3f}, {hi}]".ljust(16)
            + f"{'yes' if r['inside'] else 'NO':<5}{r['source']}"
        )


def _ladder_part(run_, cfg: SimulateBenchConfig) -> tuple[list[dict], dict]:
    """Part 2: the reward landscape ladder on the test sessions, printed, with its checks."""
    test = run_.split("test")
    smar, _ = run_.reranker()
    sim = SimulationConfig(sessions=cfg.sessions, reward=cfg.reward, user=cfg.user)
    rows = ladder(test, smar.score_pages(test.pages), run_.merge().score(test.pages), sim, cfg.seeds)
    checks = ladder_checks(rows)
    print(f"\nreward landscape ({cfg.reward.name} reward), test sessions:")
    print(f"  {'policy':<20}{'reward/session':>16}{'NDCG@10':>10}")
    for r in rows:
        print(f"  {r['policy']:<20}{r['reward']:>10.4f} ± {r['reward_std']:.4f}{r['ndcg@10']:>10.3f}")
    for name, c in checks.items():
        print(f"  {name}: {c['value']:.3f} (target {c['target']}) {'PASS' if c['pass'] else 'FAIL'}")
    return rows, checks


def _speed_part(cfg: SimulateBenchConfig) -> dict:
    """Part 3: the vectorised user model against the per-item reference (envs.bench)."""
    from envs.bench import run_bench as speed_bench

    speed = speed_bench(cfg.pages, cfg.repeats, cfg.seed, cfg.user)
    print(
        f"\nuser model speed: vectorised {speed['pages_per_s']['vectorised']:,.0f} pages/s, "
        f"reference {speed['pages_per_s']['reference']:,.0f} pages/s ({speed['speedup']:.0f}x)"
    )
    return speed
