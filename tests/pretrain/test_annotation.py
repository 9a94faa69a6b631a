"""Budgeted annotation: the oracle is the only path to pool truth, the ledger counts every judgement,
the binary search is O(log n) and exact on monotone grades, anchor pairs are true preferences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.world import ItemTruth, Split
from pretrain.annotation import (
    AnnotationConfig,
    AnnotatorOracle,
    BudgetExceededError,
    anchor_page,
    annotate,
    annotate_all,
    boundary_search,
)


class CountingJudge:
    def __init__(self, grades):
        self.grades = list(grades)
        self.calls = []

    def __call__(self, i, kind="anchor"):
        self.calls.append(i)
        return self.grades[i]


@pytest.mark.parametrize("n", [1, 2, 7, 10, 100, 1000])
def test_boundary_search_log_judgements_and_exact(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        grades = np.sort(rng.integers(0, 5, n))[::-1]  # non-increasing along the order
        level = int(rng.integers(1, 5))
        judge = CountingJudge(grades)
        b = boundary_search(np.arange(n), level, judge)
        assert b == int((grades >= level).sum())
        assert len(judge.calls) <= math.ceil(math.log2(n + 1))


def _pool(tiny_world, scores=None):
    pool = tiny_world.pool
    rng = np.random.default_rng(0)
    s = rng.normal(size=pool.pages.n_items).astype(np.float32) if scores is None else scores
    return Split(pool.pages.with_items(single_modal_score=s), pool.truth)


def test_oracle_ledger_counts_every_judgement_and_refuses_beyond_budget(tiny_world):
    pool = _pool(tiny_world)
    n = pool.pages.n_items
    oracle = AnnotatorOracle(pool, 0.05)
    budget = math.floor(0.05 * n)
    for k in range(budget):
        g = oracle.judge(k % 5, kind="band")  # repeats are charged too: the oracle counts every ask
        assert g == pool.truth.relevance[k % 5]
    assert oracle.ledger.judgements == budget == len(oracle.ledger.log)
    assert len(oracle.ledger.unique_items) == min(5, budget)
    with pytest.raises(BudgetExceededError):
        oracle.judge(0)
    assert oracle.ledger.judgements == budget
    assert oracle.ledger.fraction == pytest.approx(budget / n)
    # the truth is not exposed as a public attribute
    assert not [a for a in vars(oracle) if "grade" in a.lower() and not a.startswith("_AnnotatorOracle__")]


@pytest.mark.parametrize("band", ["top", "middle", "bottom", "random"])
@pytest.mark.parametrize("anchors", [True, False])
def test_annotate_reveals_only_judged_items_within_budget(tiny_world, band, anchors):
    pool = _pool(tiny_world)
    cfg = AnnotationConfig(budget=0.3, band=band, anchors=anchors, anchor_share=0.5)
    oracle = AnnotatorOracle(pool, cfg.budget)
    ann = annotate(pool.pages, oracle, cfg)
    led = oracle.ledger
    rel = ann.pages.relevance
    labelled = np.nonzero(rel >= 0)[0]
    # every judgement is on the ledger, none repeated, none beyond budget, nothing else revealed
    assert led.judgements <= led.budget
    assert led.judgements == len(led.log) == len(led.unique_items) == len(labelled)
    assert set(labelled.tolist()) == led.unique_items
    assert (rel[labelled] == pool.truth.relevance[labelled]).all()
    assert (pool.pages.relevance == -1).all()  # the input pool stays hidden
    assert led.fraction == pytest.approx(len(labelled) / pool.pages.n_items)
    kinds = led.by_kind()
    assert ("anchor" in kinds) == (anchors and ann.anchored_pages > 0)
    assert ann.band_pages > 0


def test_middle_band_positions(tiny_world):
    pool = _pool(tiny_world)
    cfg = AnnotationConfig(budget=0.25, band="middle", band_start=0.25, anchors=False)
    ann = annotate(pool.pages, AnnotatorOracle(pool, 1.0), cfg)
    p = 0
    sl = pool.pages.item_slice(p)
    for mid in range(4):
        idx = np.nonzero(pool.pages.modality[sl] == mid)[0]
        order = idx[np.argsort(-pool.pages.single_modal_score[sl][idx], kind="stable")]
        labelled = np.nonzero(ann.pages.relevance[sl][order] >= 0)[0]
        assert labelled.tolist() == [1]  # 4 items, width round(0.25*4)=1, start floor(0.25*4)=1


def test_anchor_pairs_are_true_preferences_when_orders_are_right():
    # two modalities, grades non-increasing along each single-modal order
    grades = {0: 4, 1: 2, 2: 1, 3: 0, 4: 3, 5: 3, 6: 1, 7: 0}
    orders = {0: np.array([0, 1, 2, 3]), 1: np.array([4, 5, 6, 7])}
    judge = CountingJudge([grades[i] for i in range(8)])
    pairs, bounds = anchor_page(orders, judge, levels=2)
    assert bounds[4] == {0: 1, 1: 0} and bounds[3] == {0: 1, 1: 2}
    assert len(pairs) > 0
    for i, j in pairs:
        assert grades[int(i)] > grades[int(j)]
        assert (i < 4) != (j < 4)  # cross-modal only
    assert len(set(judge.calls)) <= 2 + 2 * 2 * math.ceil(math.log2(5))


def test_annotate_all_is_full_supervision_through_the_oracle(tiny_world):
    pool = _pool(tiny_world)
    oracle = AnnotatorOracle(pool, 1.0)
    ann = annotate_all(pool.pages, oracle)
    assert (ann.pages.relevance == pool.truth.relevance).all()
    assert oracle.ledger.fraction == 1.0
    with pytest.raises(BudgetExceededError):
        annotate_all(pool.pages, AnnotatorOracle(pool, 0.5))


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="band"):
        AnnotationConfig(band="middle-ish")
    with pytest.raises(ValueError, match="budget"):
        AnnotationConfig(budget=0.0)
    with pytest.raises(ValueError, match="single_modal_score"):
        from envs.world import WorldConfig, generate_world

        w = generate_world(WorldConfig(seed=1, queries=10, candidates_per_modality=2, single_modal_queries=4))
        annotate(w.pool.pages, AnnotatorOracle(w.pool, 0.5), AnnotationConfig(budget=0.5))


def test_truth_object_not_needed_after_oracle(tiny_world):
    """The oracle copies the truth it is given: later changes to the split cannot leak into it."""
    pool = _pool(tiny_world)
    truth = ItemTruth(pool.truth.relevance.copy(), pool.truth.attractiveness, pool.truth.preferred_modality)
    oracle = AnnotatorOracle(Split(pool.pages, truth), 1.0)
    want = int(truth.relevance[0])
    truth.relevance[:] = 9
    assert oracle.judge(0) == want
