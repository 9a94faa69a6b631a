"""Golden tests for the named rewards: a hand-computed page for each."""

from __future__ import annotations

import numpy as np
import pytest

from envs.reward import RewardConfig, observed_satisfying

# One page of 5 positions: clicks at 1, 3, 4; the click at 3 satisfies; position 5 is an answer that
# satisfied without a click.
CLICK = np.array([[1, 0, 1, 1, 0]], bool)
SAT = np.array([[0, 0, 1, 0, 1]], bool)


def test_success_is_first_satisfying_event_discounted_by_rank_and_reformulations():
    r = RewardConfig(name="success", gamma=0.9, delta=0.5)
    np.testing.assert_allclose(r.rewards(CLICK, SAT), [[0, 0, 0.81, 0, 0]], atol=1e-7)  # 2 results above it
    np.testing.assert_allclose(r.rewards(CLICK, SAT, 2), [[0, 0, 0.81 * 0.25, 0, 0]], atol=1e-7)
    # Per page query index; an unsatisfied page earns nothing.
    two = r.rewards(np.vstack([CLICK, CLICK]), np.vstack([SAT, np.zeros_like(SAT)]), np.array([1, 0]))
    np.testing.assert_allclose(two.sum(axis=1), [0.405, 0.0], atol=1e-7)


def test_clicks_satisfied_err():
    np.testing.assert_allclose(RewardConfig(name="clicks").rewards(CLICK, SAT), [[1, 0, 1, 1, 0]])
    # satisfied (the previous default): 0.1 per click + 1 per satisfying event
    np.testing.assert_allclose(
        RewardConfig(name="satisfied").rewards(CLICK, SAT), [[0.1, 0, 1.1, 0.1, 1]], atol=1e-7
    )
    np.testing.assert_allclose(RewardConfig(name="err").rewards(CLICK, SAT), [[0, 0, 1 / 3, 0, 0]], atol=1e-7)


def test_padding_earns_nothing_and_bad_config_raises():
    valid = np.array([[1, 1, 0, 1, 1]], bool)
    np.testing.assert_allclose(
        RewardConfig().rewards(CLICK, SAT, 0, valid), [[0, 0, 0, 0, 0.9**4]], atol=1e-7
    )
    with pytest.raises(ValueError, match="unknown reward"):
        RewardConfig(name="dwell")
    with pytest.raises(ValueError, match="gamma"):
        RewardConfig(gamma=1.5)
    with pytest.raises(ValueError, match="RewardConfig: unknown setting .gama."):
        RewardConfig.from_json({"name": "success", "gama": 0.9})
    assert RewardConfig.from_json("clicks") == RewardConfig(name="clicks")


def test_observed_satisfying_uses_each_modality_threshold():
    click = np.array([[1, 1, 1, 0]], bool)
    dwell = np.array([[31.0, 16.0, 50.0, 99.0]])
    mod = np.array([[0, 1, 2, 0]])  # doc 30 s, image 15 s, video 60 s
    got = observed_satisfying(click, dwell, mod, np.array([30.0, 15.0, 60.0, 20.0]))
    np.testing.assert_array_equal(got, [[True, True, False, False]])
