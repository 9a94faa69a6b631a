"""`smar bench agent`'s summary of the reward landscape and its done-when checks, on given figures."""

from __future__ import annotations

import pytest

from agent.bench_report import checks, format_report, landscape


def _m(reward: float, consistency: float, ndcg: float, std: float = 0.0) -> dict:
    return {
        "reward": {"mean": reward, "std": std},
        "consistency": {"mean": consistency, "std": 0.0},
        "ndcg@10": {"mean": ndcg, "std": 0.0},
    }


METHODS = {
    "random": _m(0.15, 0.5, 0.3),
    "merge": _m(0.31, 1.0, 0.6),
    "smar": _m(0.40, 0.84, 0.735, std=0.004),
    "ppo_scratch": _m(0.20, 0.6, 0.4),
    "ppo_unconstrained": _m(0.43, 0.80, 0.74),
    "ppo_constrained": _m(0.44, 0.84, 0.73),
}
REFERENCES = {
    "smar_modality_offsets": {"reward": 0.40},
    "smar_modality_intent_offsets": {"reward": 0.46},
    "oracle_relevance": {"reward": 0.54},
    "truth_offsets": {"reward": 0.52},
    "fresh_network_seed0": {"reward": 0.9},  # not a reference of what a ranking earns: ignored
}


def test_landscape_names_the_best_feasible_and_the_best_reference():
    out = landscape(METHODS, REFERENCES)
    assert out["best_feasible_reference"] == "smar_modality_intent_offsets"
    assert out["best_feasible_gap_to_smar"] == pytest.approx(0.06)
    assert out["best_any_reference"] == "oracle_relevance"
    assert out["sort_by_true_grade_reward"] == 0.54 and out["smar_reward_std_over_seeds"] == 0.004


def test_checks_compare_against_half_the_feasible_gap():
    c = checks(METHODS, REFERENCES)
    half = c["constrained_closes_half_the_gap_to_the_feasible_reference"]
    assert half["feasible_reference"] == "smar_modality_intent_offsets"
    assert half["needed"] == pytest.approx(0.43) and half["pass"]
    assert half["gap_closed"] == pytest.approx(4 / 6)
    assert c["constrained_ndcg_ge_smar_minus_0.01"]["pass"]
    assert c["unconstrained_consistency_lt_constrained"]["pass"]
    assert c["scratch_reward_lt_constrained"]["pass"]
    worse = dict(METHODS, ppo_constrained=_m(0.42, 0.70, 0.70))
    c = checks(worse, REFERENCES)
    assert not c["constrained_closes_half_the_gap_to_the_feasible_reference"]["pass"]
    assert not c["constrained_ndcg_ge_smar_minus_0.01"]["pass"]
    assert not c["constrained_consistency_ge_0.95x_smar"]["pass"]


def test_format_report_prints_names_and_figures():
    methods = {
        k: {**v, "ctr": v["reward"], "satisfied_click_rate": v["reward"], "env_steps": 0}
        for k, v in METHODS.items()
    }
    refs = {
        k: {
            "reward": v["reward"],
            "ctr": 0.0,
            "satisfied_click_rate": 0.0,
            "ndcg@10": 0.5,
            "consistency": 0.5,
        }
        for k, v in REFERENCES.items()
    }
    report = {
        "methods": methods,
        "references": refs,
        "landscape": landscape(METHODS, REFERENCES),
        "checks": checks(METHODS, REFERENCES),
    }
    text = format_report(report)
    assert (
        "feasible_reference=smar_modality_intent_offsets" in text
        and "landscape best_any_reference: oracle_relevance" in text
    )
