"""The publish gate: a lower confidence bound of the paired candidate-minus-serving difference."""

from __future__ import annotations

import numpy as np

from agent.gate import GateConfig, decide, value_check
from agent.online.gate_suite import CascadeWorld, SuiteConfig, run_suite
from agent.ope import PositionModalityRewardModel, paired_difference

CFG = SuiteConfig(contexts=20, draws=1)


def _terms(world: CascadeWorld, ratio: float, seed: int = 0):
    scores, true_ratio = world.candidate(ratio, seed=seed)
    ctx_t, rank_t, _, rew_t = world.log(CFG.train, seed=999)
    q = PositionModalityRewardModel.fit(world.modality[rank_t.numpy()], rew_t)
    return world.gate_terms(scores, q, CFG.holdout, seed=seed + 1), true_ratio


def test_candidates_have_the_true_value_asked_for() -> None:
    world = CascadeWorld(CFG)
    for ratio in (0.9, 0.99, 1.01, 1.1):
        _, true_ratio = world.candidate(ratio, seed=3)
        assert abs(true_ratio - ratio) < 1e-4


def test_paired_difference_bound_is_below_the_mean_and_pairs() -> None:
    rng = np.random.default_rng(0)
    serving = rng.normal(1.0, 1.0, 4000)
    candidate = serving + 0.02 + rng.normal(0.0, 0.05, 4000)  # shares the users' noise
    d = paired_difference(candidate, serving, alpha=0.05, n_boot=500)
    assert d["lo95"] < d["lcb"] < d["mean"] < d["hi95"]
    assert d["lcb"] > 0.015  # pairing cancels the shared noise (unpaired se would be ~0.022)


def test_gate_rejects_on_value() -> None:
    terms, _ = _terms(CascadeWorld(CFG), 0.95)
    ok, diff, _, _ = value_check(terms, GateConfig())
    publish, reasons = decide(diff, consistency=0.9, consistency_target=0.8, cfg=GateConfig())
    assert not ok and not publish
    assert len(reasons) == 1 and "lower bound" in reasons[0]
    assert diff["lcb"] < 0


def test_gate_rejects_on_consistency_and_publishes_a_clear_winner() -> None:
    terms, _ = _terms(CascadeWorld(CFG), 1.10)
    ok, diff, _, _ = value_check(terms, GateConfig())
    assert ok and diff["lcb"] > 0
    publish, reasons = decide(diff, consistency=0.7, consistency_target=0.8, cfg=GateConfig())
    assert not publish and len(reasons) == 1 and "consistency" in reasons[0]
    publish, reasons = decide(diff, consistency=0.85, consistency_target=0.8, cfg=GateConfig())
    assert publish and "consistency ok" in reasons[0]


def test_gate_suite_false_and_true_publish_rates() -> None:
    res = run_suite(CFG, GateConfig(n_boot=500))
    assert res["candidates"] >= 20 and res["decisions"] == 20
    assert res["false_publish_rate"] <= 0.10
    assert res["true_publish_rate"] >= 0.50
