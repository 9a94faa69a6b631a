"""Calibration of the simulated user to published search-log statistics.

`TARGETS` holds each statistic's published figure, its source (REFERENCES.md, "Real search-log
statistics") and the range the simulator must fall in with a production ranker. `play_sessions`
plays query sessions under a fixed top-K ranking; `calibration_statistics` measures the same
statistics on the simulated users (per query = per page shown); `fit_user_model` searches the click,
stopping and session parameters so that every statistic lands in its range. The fit sees only these
log statistics, never a reward or NDCG figure.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from envs.pages import Pages
from envs.simulation import GreedyPolicy, RandomPolicy, sessions_of
from envs.user_model import UserModel, UserModelConfig
from envs.world import ItemTruth

BAIDU = "Baidu-ULTR (Zou et al. 2022), philipphager/baidu-user-annotator-agreement"
BAIDU_EXAM = "Baidu-ULTR all-pairs intervention harvesting, Hager et al. SIGIR 2024"


@dataclass(frozen=True)
class Target:
    name: str
    published: float
    lo: float
    hi: float
    source: str

    def inside(self, value: float) -> bool:
        return self.lo <= value <= self.hi


def _targets() -> tuple[Target, ...]:
    ctr = (0.342, 0.194, 0.101, 0.074, 0.041)
    exam = (1.0, 0.674, 0.414, 0.293, 0.208, 0.171, 0.136, 0.117, 0.084, 0.058)
    out = [Target(f"ctr@{k + 1}", c, 0.7 * c, 1.3 * c, BAIDU) for k, c in enumerate(ctr)]
    out += [Target(f"exam@{k + 1}/exam@1", e, e - 0.07, e + 0.07, BAIDU_EXAM) for k, e in enumerate(exam)]
    out += [
        Target("no_click_rate", 0.534, 0.40, 0.60, BAIDU + " (sessions); AOL query rows 46.6 %"),
        Target("clicks_per_query", 0.69, 0.5, 0.9, BAIDU),
        Target("multi_click_rate", 0.131, 0.08, 0.18, BAIDU),
        Target(
            "top4_click_random_vs_production",
            -0.14,
            -0.25,
            -0.08,
            "Seznam vertical blending, Prochazka et al. SIGIR 2019",
        ),
        Target(
            "queries_per_session_random_vs_production",
            0.10,
            0.10,
            np.inf,
            "Bing, Kohavi et al. KDD 2012 (worse ranking raises queries by >= 10 %)",
        ),
    ]
    return tuple(out)


TARGETS = _targets()


@dataclass
class Played:
    """Per shown page of the played sessions (rows = pages, columns = positions)."""

    click: np.ndarray  # [n, K] bool
    examined: np.ndarray  # [n, K] bool
    satisfied: np.ndarray  # [n] bool
    n_sessions: int


def shown_slates(scores: np.ndarray, pages: Pages, k: int) -> np.ndarray:
    """Top-k candidate indices per page [P, k] by descending score (the simulator's greedy policy)."""
    return GreedyPolicy("production", lambda _: scores).rank(pages, k, np.random.default_rng(0)).ranking


def play_sessions(
    slates: np.ndarray,
    pages: Pages,
    truth: ItemTruth,
    config: UserModelConfig,
    sessions: int,
    seed: int,
    max_queries: int = 3,
) -> Played:
    """Play `sessions` query sessions (drawn with replacement) under fixed slates [P, K]."""
    rng = np.random.default_rng([seed, 21])
    model = UserModel(config)
    session_pages = sessions_of(pages)
    chosen = rng.integers(len(session_pages), size=sessions)
    lengths = np.array([len(session_pages[c]) for c in chosen])
    item = pages.offsets[:-1, None] + slates
    rel, att = truth.relevance[item], truth.attractiveness[item]
    mod = pages.modality[item]
    clicks, exams, sats = [], [], []
    active = np.arange(sessions)
    for t in range(max_queries):
        active = active[lengths[active] > t]
        if not len(active):
            break
        p = np.array([session_pages[chosen[s]][t] for s in active], np.int64)
        out = model.simulate(rel[p], att[p], mod[p], None, rng)
        clicks.append(out.click)
        exams.append(out.examined)
        sats.append(out.satisfied)
        active = active[out.reformulate]
    return Played(np.concatenate(clicks), np.concatenate(exams), np.concatenate(sats), sessions)


def calibration_statistics(production: Played, random: Played) -> dict[str, float]:
    """The `TARGETS` statistics of a production-ranked and a randomly ranked play of the same sessions."""
    c, e = production.click, production.examined
    n_clicks = c.sum(axis=1)
    stats = {f"ctr@{k + 1}": float(c[:, k].mean()) for k in range(min(5, c.shape[1]))}
    exam = e.mean(axis=0)
    stats |= {
        f"exam@{k + 1}/exam@1": float(exam[k] / max(exam[0], 1e-12)) for k in range(min(10, e.shape[1]))
    }
    stats["no_click_rate"] = float((n_clicks == 0).mean())
    stats["clicks_per_query"] = float(n_clicks.mean())
    stats["multi_click_rate"] = float((n_clicks > 1).mean())
    top4 = production.click[:, :4].any(axis=1).mean()
    top4_random = random.click[:, :4].any(axis=1).mean()
    stats["top4_click_random_vs_production"] = float(top4_random / max(top4, 1e-12) - 1.0)
    qps = len(production.click) / production.n_sessions
    qps_random = len(random.click) / random.n_sessions
    stats["queries_per_session_random_vs_production"] = float(qps_random / qps - 1.0)
    stats["queries_per_session"] = float(qps)
    stats["session_success_rate"] = float(production.satisfied.sum() / production.n_sessions)
    return stats


def random_slates(pages: Pages, k: int, seed: int) -> np.ndarray:
    """Uniformly random top-k candidate indices per page [P, k] (the simulator's random policy)."""
    return RandomPolicy().rank(pages, k, np.random.default_rng([seed, 22])).ranking


def measure(
    production_scores: np.ndarray,
    pages: Pages,
    truth: ItemTruth,
    config: UserModelConfig,
    sessions: int = 4000,
    seed: int = 0,
    k: int = 10,
) -> dict[str, float]:
    """Calibration statistics of `config` with `production_scores` as the production ranker."""
    prod = play_sessions(shown_slates(production_scores, pages, k), pages, truth, config, sessions, seed)
    rand = play_sessions(random_slates(pages, k, seed), pages, truth, config, sessions, seed)
    return calibration_statistics(prod, rand)


def report(stats: dict[str, float]) -> list[dict]:
    """Each target beside the simulated value: published figure, range, source, inside or not."""
    return [
        {
            "statistic": t.name,
            "simulated": stats[t.name],
            "published": t.published,
            "range": [t.lo, t.hi if np.isfinite(t.hi) else None],
            "inside": t.inside(stats[t.name]),
            "source": t.source,
        }
        for t in TARGETS
    ]


def calibration_loss(stats: dict[str, float]) -> float:
    """Squared distance to each published figure in units of its half-range, plus a large penalty
    for each statistic outside its range."""
    loss = 0.0
    for t in TARGETS:
        v = stats[t.name]
        half = (t.hi - t.lo) / 2 if np.isfinite(t.hi) else 0.1
        loss += ((v - t.published) / half) ** 2 / len(TARGETS)
        if not t.inside(v):
            loss += 10.0 + 100.0 * (min(abs(v - t.lo), abs(v - t.hi)) / half) ** 2
        else:  # a soft barrier: keep a quarter of the half-range to the nearest edge where possible
            margin = min(v - t.lo, t.hi - v) / half
            loss += 0.5 * (max(0.0, 0.25 - margin) / 0.25) ** 2
    return loss


# The parameters the fit moves, with the box it searches in. Examination keeps the published curve.
FIT_BOX: dict[str, tuple[float, float]] = {
    "click_bias": (-4.0, 0.5),
    "click_grade": (0.15, 1.0),  # clicks must follow perceived relevance, not presentation alone
    "click_attractiveness": (0.3, 1.5),  # presentation must matter: a click-only reward stays gameable
    "stop_after_satisfied": (0.0, 1.0),
    "reformulate_prob": (0.2, 0.95),
    "examination_top": (0.6, 1.0),
    "attention_scale": (0.0, 2.0),  # multiplies the base vertical attention (image, video, answer)
}
BASE_ATTENTION = (0.0, 0.15, 0.2, 0.1)


def _with(base: UserModelConfig, params: dict[str, float]) -> UserModelConfig:
    p = dict(params)
    scale = p.pop("attention_scale", None)
    if scale is not None:
        p["vertical_attention"] = tuple(min(1.0, scale * v) for v in BASE_ATTENTION)
    return dataclasses.replace(base, **p)


def fit_user_model(
    production_scores: np.ndarray,
    pages: Pages,
    truth: ItemTruth,
    base: UserModelConfig | None = None,
    trials: int = 200,
    sessions: int = 3000,
    seed: int = 0,
    progress: bool = False,
) -> tuple[UserModelConfig, dict[str, float], float]:
    """Random search then coordinate refinement in `FIT_BOX`, common random numbers throughout.
    Returns the best config, its statistics and its loss."""
    base = base or UserModelConfig()
    rng = np.random.default_rng([seed, 23])
    prod_slates = shown_slates(production_scores, pages, 10)
    rand_slates = random_slates(pages, 10, seed)

    def evaluate(params: dict[str, float]) -> tuple[float, dict[str, float]]:
        cfg = _with(base, params)
        prod = play_sessions(prod_slates, pages, truth, cfg, sessions, seed)
        rand = play_sessions(rand_slates, pages, truth, cfg, sessions, seed)
        stats = calibration_statistics(prod, rand)
        return calibration_loss(stats), stats

    best = {name: float(getattr(base, name)) for name in FIT_BOX if name != "attention_scale"}
    best["attention_scale"] = 1.0
    best_loss, best_stats = evaluate(best)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=trials, desc="fit user model", unit="trial", disable=None)
    for i in range(trials):
        scale = 1.0 if i < trials // 2 else 0.25 * (1 - i / trials) + 0.02
        cand = {}
        for name, (lo, hi) in FIT_BOX.items():
            v = best[name] + rng.normal(0.0, scale * (hi - lo) / 4)
            cand[name] = float(np.clip(v, lo, hi))
        loss, stats = evaluate(cand)
        if loss < best_loss:
            best, best_loss, best_stats = cand, loss, stats
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{best_loss:.3f}")
    if bar is not None:
        bar.close()
    return _with(base, best), best_stats, best_loss
