"""Evaluation as served: the explored scorer samples Plackett-Luce slates (Gumbel top-K), seeded."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from agent.evaluation import evaluate_policy, explored_scorer, served_reward


def test_explored_scorer_samples_the_plackett_luce_first_item():
    scores = np.array([1.0, 0.0, -1.0])
    page = SimpleNamespace(n_items=3)  # the scorer reads only the item count
    firsts = [int(np.argmax(explored_scorer(lambda _p: scores, 0.5, seed=s)(page))) for s in range(4000)]
    expected = np.exp(scores / 0.5) / np.exp(scores / 0.5).sum()
    np.testing.assert_allclose(np.bincount(firsts, minlength=3) / 4000, expected, atol=0.02)
    a, b = (explored_scorer(lambda _p: scores, 0.5, seed=7)(page) for _ in range(2))
    np.testing.assert_array_equal(a, b)  # seeded
    with pytest.raises(ValueError, match="temperature"):
        explored_scorer(lambda _p: scores, 0.0)


def test_served_reward_at_a_tiny_temperature_is_the_deterministic_reward(tiny_run):
    test = tiny_run.split("test")
    smar, _ = tiny_run.reranker()
    serp = {"n_max": 16, "slate_size": 5}
    det = evaluate_policy(smar, test.pages, test.truth, seed=0, repeats=2, serp=serp)["reward"]
    s0 = evaluate_policy(explored_scorer(smar, 1e-6, 0), test.pages, test.truth, seed=0, repeats=2, serp=serp)
    assert s0["reward"] == det
    wide = served_reward(smar, test.pages, test.truth, 1e6, samples=3, repeats=2, serp=serp)
    assert wide["samples"] == 3 and wide["std"] > 0  # near-uniform slates: each sample plays differently
