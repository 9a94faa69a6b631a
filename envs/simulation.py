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
  slate_logprob, click, dwell (seconds, 0 when not clicked), satisfied (satisfied click or an answer
  that satisfied without a click), reward, and simulation-only truth: examined, relevance,
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

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from envs.atomic_io import write_json_atomic, write_parquet_atomic
from envs.metrics import ndcg_at_k, shown_order_agreement
from envs.pages import MAX_GRADE, MODALITIES, Pages, pad_items
from envs.reward import RewardConfig
from envs.user_model import UserModel, UserModelConfig
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
class SimulationConfig:
    sessions: int = 1000
    slate_size: int = 10
    max_queries: int = 3
    seed: int = 0
    batch_pages: int = 2048  # pages per policy/user-model call
    reward: RewardConfig = field(default_factory=RewardConfig)
    user: UserModelConfig = field(default_factory=UserModelConfig)

    def to_json(self) -> dict:
        return asdict(self)


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
    if cfg.sessions < 1:
        raise ValueError(f"SimulationConfig.sessions must be >= 1, got {cfg.sessions}")
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
            # Per-page metrics: true NDCG@10 of the shown list and consistency with single-modal scores.
            ndcg = np.empty(len(sess))
            cons = np.full(len(sess), np.nan)
            for i in range(len(sess)):
                sl = batch.item_slice(i)
                shown = slates.ranking[i][valid[i]]
                page_rel = truth.relevance[pages.offsets[page_idx[i]] : pages.offsets[page_idx[i] + 1]]
                ndcg[i] = ndcg_at_k(page_rel[shown], page_rel, 10)
                if sm_known[pages.offsets[page_idx[i]] : pages.offsets[page_idx[i] + 1]].all():
                    cons[i] = shown_order_agreement(shown, batch.single_modal_score[sl], batch.modality[sl])[
                        0
                    ]
            session_ids = np.array([f"{tag}-s{s:07d}" for s in sess], dtype=object)
            positions = np.broadcast_to(np.arange(1, k + 1), valid.shape)
            pscore = np.where(valid, slates.pscore, 1.0)
            cascade = np.cumprod(pscore, axis=1)
            r, c = np.nonzero(valid)
            cols = {
                "event_id": np.array([f"{session_ids[i]}-q{t}-p{j + 1}" for i, j in zip(r, c)], dtype=object),
                "session_id": session_ids[r],
                "query_index": np.full(len(r), t, np.int16),
                "page_id": batch.page_id[r],
                "model_version": np.full(len(r), policy.name, dtype=object),
                "item_id": batch.item_id[item[r, c]],
                "modality": np.asarray(MODALITIES, dtype=object)[mod[r, c]],
                "position": positions[r, c].astype(np.int16),
                "action": slates.ranking[r, c],
                "score": slates.score[r, c].astype(np.float64),
                "pscore": slates.pscore[r, c].astype(np.float64),
                "pscore_cascade": cascade[r, c],
                "slate_logprob": slates.slate_logprob[r].astype(np.float64),
                "click": out.click[r, c].astype(np.int8),
                "dwell": out.dwell[r, c],
                "satisfied": (out.satisfied_click | out.answer_satisfied)[r, c].astype(np.int8),
                "reward": item_reward[r, c],
                "examined": out.examined[r, c].astype(np.int8),
                "relevance": rel[r, c].astype(np.int8),
                "attractiveness": att[r, c].astype(np.float32),
            }
            for name, v in cols.items():
                rows.setdefault(name, []).append(v)
            pcols = {
                "session_id": session_ids,
                "query_index": np.full(len(sess), t, np.int16),
                "page_id": batch.page_id,
                "model_version": np.full(len(sess), policy.name, dtype=object),
                "n_shown": valid.sum(axis=1).astype(np.int16),
                "clicks": out.click.sum(axis=1).astype(np.int16),
                "satisfied": out.satisfied,
                "good_abandon": out.good_abandon,
                "abandon": out.abandon,
                "reformulate": out.reformulate,
                "reward": item_reward.sum(axis=1),
                "ndcg@10": ndcg,
                "consistency": cons,
            }
            for name, v in pcols.items():
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


# ---------------------------------------------------------------------------- summary and plots
def _np(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if pa.types.is_string(col.type):
        return np.asarray(col.to_pylist(), dtype=object)
    return col.to_numpy()


def standardised_ctr(feedback: pa.Table, reference: str = "doc", max_position: int = 10) -> dict[str, float]:
    """CTR per modality re-weighted to the reference modality's (position, grade) mix.

    Direct standardisation: comparing modalities at *equal relevance and equal position*, so a
    difference is what the user model does with the modality itself (attention, attractiveness).
    """
    mod = _np(feedback, "modality")
    pos = _np(feedback, "position")
    rel = _np(feedback, "relevance")
    click = _np(feedback, "click")
    keep = pos <= max_position
    cell = (pos - 1) * (MAX_GRADE + 1) + rel
    n_cells = max_position * (MAX_GRADE + 1)
    ref = keep & (mod == reference)
    weight = np.bincount(cell[ref], minlength=n_cells).astype(float)
    out = {}
    for m in MODALITIES:
        sel = keep & (mod == m)
        n = np.bincount(cell[sel], minlength=n_cells)
        c = np.bincount(cell[sel], weights=click[sel], minlength=n_cells)
        ok = (n > 0) & (weight > 0)
        out[m] = float((c[ok] / n[ok] * weight[ok]).sum() / weight[ok].sum()) if ok.any() else float("nan")
    return out


def summarise(feedback: pa.Table, pages: pa.Table) -> dict:
    click = _np(feedback, "click").astype(bool)
    pos = _np(feedback, "position")
    mod = _np(feedback, "modality")
    reward = _np(feedback, "reward")
    sess = _np(feedback, "session_id")
    dwell = _np(feedback, "dwell")
    satisfied_row = _np(feedback, "satisfied").astype(bool)
    k = int(pos.max()) if len(pos) else 0
    n_pos = np.bincount(pos, minlength=k + 1)[1:]
    c_pos = np.bincount(pos, weights=click, minlength=k + 1)[1:]
    p_sess = _np(pages, "session_id")
    p_sat = _np(pages, "satisfied")
    p_ab = _np(pages, "abandon")
    # A session ends on its last page (highest query_index): satisfied, abandoned, or out of queries.
    qi = _np(pages, "query_index").astype(np.int64)
    key = np.unique(p_sess, return_inverse=True)[1].astype(np.int64) if len(p_sess) else np.zeros(0, np.int64)
    max_qi = np.full(int(key.max()) + 1 if len(key) else 0, -1, np.int64)
    np.maximum.at(max_qi, key, qi)
    last = qi == max_qi[key]
    n_sessions = int(last.sum())
    is_answer = mod == "answer"
    answer_sat_no_click = satisfied_row & ~click
    cons = _np(pages, "consistency")
    ndcg = _np(pages, "ndcg@10")
    sat_click = satisfied_row & click
    return {
        "sessions": n_sessions,
        "pages": len(p_sess),
        "impressions": len(click),
        "ctr": float(click.mean()) if len(click) else float("nan"),
        "ctr_by_position": (c_pos / np.maximum(n_pos, 1)).round(4).tolist(),
        "ctr_by_modality": {
            m: float(click[mod == m].mean()) if (mod == m).any() else float("nan") for m in MODALITIES
        },
        "ctr_standardised_to_doc": standardised_ctr(feedback),
        "satisfied_click_rate": float(sat_click.sum() / max(click.sum(), 1)),
        "mean_dwell_s": float(dwell[click].mean()) if click.any() else float("nan"),
        "answer_satisfactions_without_click": int(answer_sat_no_click[is_answer].sum()),
        "good_abandonment_rate": float(_np(pages, "good_abandon").mean()),
        "page_satisfaction_rate": float(p_sat.mean()),
        "session_success_rate": float(p_sat[last].mean()) if n_sessions else float("nan"),
        "abandonment_rate": float(p_ab[last].mean()) if n_sessions else float("nan"),
        "pages_per_session": len(p_sess) / max(n_sessions, 1),
        "mean_reward_per_session": float(reward.sum() / max(n_sessions, 1)),
        "mean_reward_per_page": float(reward.sum() / max(len(p_sess), 1)),
        "mean_ndcg@10": float(ndcg.mean()) if len(ndcg) else float("nan"),
        "mean_consistency": float(np.nanmean(cons)) if np.isfinite(cons).any() else float("nan"),
        "distinct_sessions_logged": len(set(sess.tolist())),
    }


def format_summary(summary: dict, title: str | None = None) -> str:
    return format_side_by_side({title or "policy": summary})


def format_side_by_side(summaries: dict[str, dict]) -> str:
    """A table with one column per policy (for `smar simulate` and the demo)."""
    names = list(summaries)
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, fn) -> None:
        rows.append((label, [fn(summaries[n]) for n in names]))

    def f(v: float, p: int = 3) -> str:
        return "nan" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{p}f}"

    add("sessions / pages", lambda s: f"{s['sessions']} / {s['pages']}")
    add("CTR", lambda s: f(s["ctr"]))
    k = max(len(s["ctr_by_position"]) for s in summaries.values())
    for i in range(k):
        add(
            f"  CTR @ position {i + 1}",
            lambda s, i=i: f(s["ctr_by_position"][i]) if i < len(s["ctr_by_position"]) else "",
        )
    for m in MODALITIES:
        add(
            f"  CTR {m} (raw / std. to doc)",
            lambda s, m=m: f"{f(s['ctr_by_modality'][m])} / {f(s['ctr_standardised_to_doc'][m])}",
        )
    add("satisfied-click rate", lambda s: f(s["satisfied_click_rate"]))
    add("answers satisfying w/o click", lambda s: str(s["answer_satisfactions_without_click"]))
    add("good abandonment (pages)", lambda s: f(s["good_abandonment_rate"]))
    add("session success", lambda s: f(s["session_success_rate"]))
    add("abandonment (sessions)", lambda s: f(s["abandonment_rate"]))
    add("pages per session", lambda s: f(s["pages_per_session"], 2))
    add("mean reward / session", lambda s: f(s["mean_reward_per_session"]))
    add("mean NDCG@10 (true)", lambda s: f(s["mean_ndcg@10"]))
    add("mean consistency", lambda s: f(s["mean_consistency"]))
    w0 = max(len(r[0]) for r in rows) + 2
    widths = [max(len(n), *(len(r[1][i]) for r in rows)) + 2 for i, n in enumerate(names)]
    lines = [" " * w0 + "".join(f"{n:>{w}}" for n, w in zip(names, widths))]
    lines += [f"{label:<{w0}}" + "".join(f"{v:>{w}}" for v, w in zip(vals, widths)) for label, vals in rows]
    return "\n".join(lines)


def plot_feedback(feedback: pa.Table, out: str | Path) -> dict[str, Path]:
    """CTR by position per modality, and the dwell distribution per true relevance grade."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    mod = _np(feedback, "modality")
    pos = _np(feedback, "position")
    click = _np(feedback, "click")
    rel = _np(feedback, "relevance")
    dwell = _np(feedback, "dwell")
    k = int(pos.max()) if len(pos) else 1
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in MODALITIES:
        sel = mod == m
        n = np.bincount(pos[sel], minlength=k + 1)[1:]
        c = np.bincount(pos[sel], weights=click[sel], minlength=k + 1)[1:]
        ok = n > 0
        ax.plot(np.arange(1, k + 1)[ok], (c[ok] / n[ok]), marker="o", label=m)
    ax.set_xlabel("position")
    ax.set_ylabel("CTR")
    ax.set_title("CTR by position per modality")
    ax.legend()
    fig.tight_layout()
    p1 = out / "ctr_by_position.png"
    fig.savefig(p1, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    clicked = click.astype(bool)
    bins = np.logspace(0, np.log10(max(float(dwell[clicked].max()) if clicked.any() else 10.0, 10.0)), 40)
    for g in range(MAX_GRADE + 1):
        d = dwell[clicked & (rel == g)]
        if len(d):
            ax.hist(d, bins=bins, histtype="step", density=True, label=f"grade {g} (n={len(d)})")
    ax.axvline(30.0, color="k", linestyle="--", linewidth=1, label="30 s")
    ax.set_xscale("log")
    ax.set_xlabel("dwell (s)")
    ax.set_ylabel("density")
    ax.set_title("Dwell after a click, per true relevance grade")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p2 = out / "dwell_by_grade.png"
    fig.savefig(p2, dpi=100)
    plt.close(fig)
    return {"plot_ctr": p1, "plot_dwell": p2}
