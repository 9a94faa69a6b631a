"""Ranking metrics in numpy, shared by every stage (envs is the lowest layer).

Gains are exponential (2^rel - 1) with log2 discounts, as in the SMAR authors' evaluation code.
"""

from __future__ import annotations

import numpy as np


def dcg_at_k(relevance_in_shown_order: np.ndarray, k: int) -> float:
    rel = np.asarray(relevance_in_shown_order, np.float64)[:k]
    return float(np.sum((2.0**rel - 1.0) / np.log2(np.arange(2, len(rel) + 2))))


def ndcg_at_k(relevance_in_shown_order: np.ndarray, all_relevance: np.ndarray, k: int) -> float:
    """NDCG@k of a shown order against the ideal order of all candidates (1.0 if nothing is relevant)."""
    ideal = dcg_at_k(np.sort(np.asarray(all_relevance))[::-1], k)
    if ideal <= 0:
        return 1.0
    return dcg_at_k(relevance_in_shown_order, k) / ideal


def ndcg_of_scores(scores: np.ndarray, relevance: np.ndarray, k: int) -> float:
    """NDCG@k of ranking one page's candidates by descending score (ties broken by index)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return ndcg_at_k(np.asarray(relevance)[order], relevance, k)


def mrr_at_k(relevance_in_shown_order: np.ndarray, k: int, threshold: int = 3) -> float:
    """Reciprocal rank of the first item with grade >= threshold within the top k (0 if none)."""
    rel = np.asarray(relevance_in_shown_order)[:k]
    hits = np.nonzero(rel >= threshold)[0]
    return 0.0 if len(hits) == 0 else 1.0 / (hits[0] + 1)


def within_modality_agreement(
    order_scores: np.ndarray, reference_scores: np.ndarray, modality: np.ndarray
) -> tuple[float, int]:
    """Pairwise agreement between two scorings, over same-modality pairs only.

    Returns (fraction of concordant pairs, number of pairs compared). Pairs tied in the reference are
    skipped; a tie in `order_scores` counts half. Kendall-tau style, in [0, 1]; 1 = same order within
    every modality. Over all of a page's candidates this is `candidate_consistency` (pretrain.evaluate);
    over the shown top-K (`shown_order_agreement`) it is `consistency`, what the SMAR constraint asks for.
    """
    s = np.asarray(order_scores, np.float64)
    r = np.asarray(reference_scores, np.float64)
    m = np.asarray(modality)
    same = (m[:, None] == m[None, :]) & np.triu(np.ones((len(m), len(m)), bool), 1)
    dr = np.sign(r[:, None] - r[None, :])
    ds = np.sign(s[:, None] - s[None, :])
    valid = same & (dr != 0) & ~np.isnan(dr)
    n = int(valid.sum())
    if n == 0:
        return float("nan"), 0
    agree = np.where(ds == dr, 1.0, np.where(ds == 0, 0.5, 0.0))
    return float(agree[valid].mean()), n


def shown_order_agreement(
    shown: np.ndarray, reference_scores: np.ndarray, modality: np.ndarray
) -> tuple[float, int]:
    """Within-modality agreement of a shown top-K list (item indices, best first) with the reference.

    Only pairs where both items were shown are compared: position gives the order. This is the product's
    `consistency` (the env info, agent.evaluation, the RL, online and serving reports).
    """
    shown = np.asarray(shown)
    pos_score = -np.arange(len(shown), dtype=np.float64)
    return within_modality_agreement(
        pos_score, np.asarray(reference_scores)[shown], np.asarray(modality)[shown]
    )


def shown_order_agreement_rows(reference: np.ndarray, modality: np.ndarray) -> np.ndarray:
    """`shown_order_agreement` of many shown lists at once: row b holds the reference scores [B, K] and
    modalities [B, K] of one list's items in shown order (no NaN). Per row: the fraction of
    same-modality pairs, reference untied, that the shown order puts in the reference's order; NaN
    without such a pair."""
    k = reference.shape[1]
    upper = np.triu(np.ones((k, k), bool), 1)
    diff = reference[:, :, None] - reference[:, None, :]
    pairs = (modality[:, :, None] == modality[:, None, :]) & upper & (diff != 0)
    n_pairs = pairs.sum(axis=(1, 2))
    concordant = (pairs & (diff > 0)).sum(axis=(1, 2))
    return np.where(n_pairs > 0, concordant / np.maximum(n_pairs, 1), np.nan)
