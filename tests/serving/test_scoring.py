"""The served policy: greedy order, exact PL propensities via pretrain.plackett_luce, request prep."""

from __future__ import annotations

import numpy as np
import torch

from pretrain import plackett_luce as pl
from serving.client import page_request
from serving.schemas import RankRequest
from serving.scoring import Scorer


def _prepared(scorer, pages, pids, explore):
    return [scorer.prepare(RankRequest.model_validate(page_request(pages, p, explore=explore))) for p in pids]


def test_greedy_is_sorted_scores_with_unit_propensity(serving_ckpts, tiny_world):
    scorer = Scorer.load(serving_ckpts["a"].path)
    pages = tiny_world.traffic.pages
    ranked = scorer.rank(_prepared(scorer, pages, [0, 1, 2], explore=False))
    ref = scorer.model.score_pages(pages.select([0, 1, 2]))
    for i, r in enumerate(ranked):
        sl = pages.select([0, 1, 2]).item_slice(i)
        assert sorted(r.order.tolist()) == list(range(sl.stop - sl.start))
        assert np.all(np.diff(r.scores) <= 0)
        np.testing.assert_allclose(np.sort(r.scores)[::-1], np.sort(ref[sl])[::-1], rtol=1e-5, atol=1e-6)
        assert r.policy == "greedy" and r.slate_log_prob == 0.0 and np.all(r.pscore == 1.0)


def test_explored_propensities_are_exact(serving_ckpts, tiny_world):
    scorer = Scorer.load(serving_ckpts["a"].path)
    pages = tiny_world.traffic.pages
    prepared = _prepared(scorer, pages, [0, 1], explore=True) + _prepared(scorer, pages, [2], explore=False)
    gen = torch.Generator().manual_seed(3)
    ranked = scorer.rank(prepared, "plackett_luce", 0.7, gen)
    for p, r in zip(prepared[:2], ranked[:2]):
        assert r.explored and r.policy == "plackett_luce" and r.temperature == 0.7
        s, m = scorer.scores([p])
        logits = pl.masked_logits(s.double(), m, 0.7)
        ref = pl.stepwise_log_probs(logits, torch.from_numpy(r.order)[None])[0].exp().numpy()
        np.testing.assert_allclose(r.pscore, ref, rtol=1e-5)  # padding differs: float32 noise
        np.testing.assert_allclose(r.slate_log_prob, np.log(r.pscore).sum(), rtol=1e-9)
        assert r.pscore[-1] == 1.0 or abs(r.pscore[-1] - 1.0) < 1e-9  # the last item has no choice
    assert not ranked[2].explored


def test_exploration_setting_greedy_ignores_explore_flag(serving_ckpts, tiny_world):
    scorer = Scorer.load(serving_ckpts["a"].path)
    prepared = _prepared(scorer, tiny_world.traffic.pages, [0], explore=True)
    assert not scorer.rank(prepared, "greedy")[0].explored


def test_sampling_matches_pl_first_position_marginal(serving_ckpts, tiny_world):
    """The first shown item's frequency matches softmax(scores / T) (exact PL sampling)."""
    scorer = Scorer.load(serving_ckpts["a"].path)
    p = _prepared(scorer, tiny_world.traffic.pages, [0], explore=True)
    gen = torch.Generator().manual_seed(0)
    firsts = [scorer.rank(p * 50, "plackett_luce", 0.5, gen) for _ in range(20)]
    counts = np.bincount([r.order[0] for batch in firsts for r in batch], minlength=p[0].n) / 1000
    s, _ = scorer.scores(p)
    want = torch.softmax(s[0].double() / 0.5, 0).numpy()
    assert np.abs(counts - want).max() < 0.05
