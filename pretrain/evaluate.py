"""Test-split evaluation of any scorer: NDCG@10, NDCG@5, MRR@10, MRR@1 and candidate consistency.

MRR@1 is the share of pages whose top item is relevant (grade >= 3, `envs.metrics.mrr_at_k`'s
threshold): the metric of the SMAR paper's Baidu table.

Metrics come from `envs.metrics` (one implementation for every stage). `candidate_consistency` is the
mean over pages of the within-modality pairwise agreement between the scorer's order of ALL the page's
candidates and the single-modal rankers' (Kendall-tau style, in [0, 1]): how much of each single-modal
order a method keeps. It is not `consistency` (agent.evaluation, the RL and online reports), which
compares only the pairs inside the shown top-K, what a user sees; the two differ for the same model.
"""

from __future__ import annotations

import numpy as np

from envs.metrics import mrr_at_k, ndcg_of_scores, within_modality_agreement
from envs.pages import Pages

RANKING_METRICS = ("ndcg@10", "ndcg@5", "mrr@10", "mrr@1", "candidate_consistency")
# The key an older run.json / report.json used for a metric (read back, never written).
LEGACY_KEYS = {"candidate_consistency": "consistency"}


def evaluate_scores(scores: np.ndarray, pages: Pages, relevance: np.ndarray) -> dict[str, float]:
    """Mean per-page metrics of ranking each page by `scores` (T,) against `relevance` (T,).

    Candidate consistency uses `pages.single_modal_score` as the reference (NaN if it is not filled).
    """
    scores = np.asarray(scores, np.float64)
    if scores.shape != (pages.n_items,):
        raise ValueError(f"scores have shape {scores.shape}, pages hold {pages.n_items} items")
    if (np.asarray(relevance) < 0).any():
        raise ValueError("evaluation needs a grade for every item; field 'relevance' has -1")
    ref = pages.single_modal_score
    has_ref = not np.isnan(ref).any()
    n10, n5, mrr, mrr1, cons = [], [], [], [], []
    for p in range(len(pages)):
        sl = pages.item_slice(p)
        s, r = scores[sl], np.asarray(relevance[sl])
        n10.append(ndcg_of_scores(s, r, 10))
        n5.append(ndcg_of_scores(s, r, 5))
        order = np.argsort(-s, kind="stable")
        mrr.append(mrr_at_k(r[order], 10))
        mrr1.append(mrr_at_k(r[order], 1))
        if has_ref:
            agree, n = within_modality_agreement(s, ref[sl], pages.modality[sl])
            if n:
                cons.append(agree)
    return {
        "ndcg@10": float(np.mean(n10)),
        "ndcg@5": float(np.mean(n5)),
        "mrr@10": float(np.mean(mrr)),
        "mrr@1": float(np.mean(mrr1)),
        "candidate_consistency": float(np.mean(cons)) if cons else float("nan"),
    }


def format_table(rows: dict[str, dict], title: str = "") -> str:
    """A fixed-width table: rows name -> {"annotation_fraction": f, metric: float or {"mean","std"}}
    (a row an older run wrote under a LEGACY_KEYS name is shown under the current one)."""
    width = {m: max(18, len(m) + 2) for m in RANKING_METRICS}
    head = f"{'method':<26}{'annot.':>8}" + "".join(f"{m:>{width[m]}}" for m in RANKING_METRICS)
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for name, row in rows.items():
        cells = []
        for m in RANKING_METRICS:
            v = row.get(m, row.get(LEGACY_KEYS.get(m, m)))
            if isinstance(v, dict):
                cells.append(f"{v['mean']:.4f} ± {v['std']:.4f}".rjust(width[m]))
            elif v is None:
                cells.append("-".rjust(width[m]))
            else:
                cells.append(f"{v:.4f}".rjust(width[m]))
        frac = row.get("annotation_fraction", 0.0)
        lines.append(f"{name:<26}{frac:>8.1%}" + "".join(cells))
    return "\n".join(lines)
