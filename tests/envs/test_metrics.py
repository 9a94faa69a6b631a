"""NDCG against an independent implementation, and its properties on random pages (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.metrics import ndcg_at_k, ndcg_of_scores


def oracle_ndcg(scores: list[float], grades: list[int], k: int) -> float:
    """Textbook NDCG@k with exponential gains, written from the definition in plain Python
    (the same convention as sklearn.metrics.ndcg_score on 2^g - 1 gains, ties by index)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    dcg = sum((2 ** grades[i] - 1) / math.log2(r + 2) for r, i in enumerate(order[:k]))
    ideal = sum((2**g - 1) / math.log2(r + 2) for r, g in enumerate(sorted(grades, reverse=True)[:k]))
    return 1.0 if ideal == 0 else dcg / ideal


def test_golden_page():
    # grades in shown order 3, 0, 2: DCG = 7/1 + 0 + 3/2 = 8.5; ideal 3, 2, 0 = 7 + 3/log2(3)
    assert ndcg_at_k(np.array([3, 0, 2]), np.array([3, 0, 2]), 3) == 8.5 / (7 + 3 / math.log2(3))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-5, 5, allow_nan=False), st.integers(0, 4)), min_size=1, max_size=30),
    st.integers(1, 12),
)
def test_matches_the_oracle_and_stays_in_unit_interval(items, k):
    scores = [s for s, _ in items]
    grades = [g for _, g in items]
    got = ndcg_of_scores(np.array(scores), np.array(grades), k)
    assert math.isclose(got, oracle_ndcg(scores, grades, k), rel_tol=1e-12, abs_tol=1e-12)
    assert 0.0 <= got <= 1.0 + 1e-12
    # Sorting by the grades themselves is ideal.
    assert math.isclose(ndcg_of_scores(np.array(grades, float), np.array(grades), k), 1.0)


def test_shown_order_agreement_rows_equals_the_per_list_agreement():
    from envs.metrics import shown_order_agreement, shown_order_agreement_rows

    rng = np.random.default_rng(3)
    k, n_items = 6, 12
    reference = rng.integers(0, 4, (50, n_items)).astype(np.float64)  # ties on purpose
    modality = rng.integers(0, 3, (50, n_items))
    shown = np.stack([rng.permutation(n_items)[:k] for _ in range(50)])
    rows = np.take_along_axis(reference, shown, 1), np.take_along_axis(modality, shown, 1)
    got = shown_order_agreement_rows(*rows)
    want = np.array([shown_order_agreement(shown[b], reference[b], modality[b])[0] for b in range(50)])
    np.testing.assert_allclose(got, want, equal_nan=True)
