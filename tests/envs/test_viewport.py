"""Answer viewport time: the logged evidence of good abandonment (envs.viewport)."""

from __future__ import annotations

import numpy as np
import pytest

from envs.pages import MODALITY_ID
from envs.reward import RewardConfig, observed_satisfying
from envs.user_model import UserModel, UserModelConfig, satisfied_dwell_thresholds
from envs.user_model_reference import simulate_reference
from envs.viewport import answer_viewport_threshold, probit, recycled_uniform

ANSWER = MODALITY_ID["answer"]


def _pages(seed: int, b: int, k: int = 10):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 5, (b, k)), rng.random((b, k)), rng.integers(0, 4, (b, k))


def test_probit_and_recycled_uniform_golden():
    q = np.array([0.5, 0.975, 0.01, 1e-6])
    np.testing.assert_allclose(probit(q), [0.0, 1.959963985, -2.326347874, -4.753424309], atol=1e-7)
    edges = np.array([[0.0, 0.2, 0.5, 1.0]] * 3)
    np.testing.assert_allclose(recycled_uniform(np.array([0.1, 0.35, 0.75]), edges), [0.5, 0.5, 0.5])


def test_viewport_is_exact_evidence_and_draws_no_new_randomness():
    rel, att, mod = _pages(7, 300)
    out = UserModel().simulate(rel, att, mod, None, np.random.default_rng(3))
    # The clicks and dwell of this seed are those the user model gave before viewport time existed.
    assert int(out.click.sum()) == 209 and int(out.examined.sum()) == 675
    assert float(out.dwell.astype(np.float64).sum()) == pytest.approx(9318.70854741335, rel=1e-12)
    thr = answer_viewport_threshold(UserModelConfig())
    answer = mod == ANSWER
    assert ((out.viewport[answer] >= thr) == out.answer_satisfied[answer]).all()
    assert (out.viewport[answer] > 0).all() and (out.viewport[~answer] == 0).all()
    # Relevant answers are viewed longer (the direction Lagun et al. 2014 report).
    med = [np.median(out.viewport[answer & (rel == g)]) for g in (0, 4)]
    assert med[1] > 2 * med[0]


@pytest.mark.parametrize("simulate", ["vectorised", "reference"])
def test_observed_reward_equals_the_true_reward(simulate):
    """What a log sees (click, dwell, viewport) gives exactly the reward the simulator's truth does."""
    cfg = UserModelConfig()
    rel, att, mod = _pages(11, 400 if simulate == "vectorised" else 150)
    rng = np.random.default_rng(5)
    if simulate == "vectorised":
        out = UserModel(cfg).simulate(rel, att, mod, None, rng)
    else:
        out = simulate_reference(rel, att, mod, None, rng, cfg)
    thr = satisfied_dwell_thresholds(cfg)
    seen = observed_satisfying(out.click, out.dwell, mod, thr, out.viewport, answer_viewport_threshold(cfg))
    assert (seen == (out.satisfied_click | out.answer_satisfied)).all() and out.answer_satisfied.any()
    reward = RewardConfig()
    np.testing.assert_array_equal(reward.rewards(out.click, seen, 1), reward.item_rewards(out, 1))
    # Without the viewport (an older log), answers satisfied without a click are not seen.
    blind = observed_satisfying(out.click, out.dwell, mod, thr)
    assert (blind == out.satisfied_click).all()
    nan_view = np.full(out.viewport.shape, np.nan)
    assert (observed_satisfying(out.click, out.dwell, mod, thr, nan_view, 5.0) == blind).all()
