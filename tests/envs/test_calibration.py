"""Calibration statistics: golden values on hand-made plays, and the targets' ranges."""

from __future__ import annotations

import numpy as np
import pytest

from envs.calibration import TARGETS, Played, calibration_loss, calibration_statistics, report


def _played(click_rows, n_sessions, exam_rows=None):
    c = np.array(click_rows, bool)
    e = np.array(exam_rows, bool) if exam_rows is not None else np.ones_like(c)
    return Played(c, e, np.zeros(len(c), bool), n_sessions)


def test_statistics_golden():
    # 4 production pages of 10 positions in 2 sessions; 6 random pages in 2 sessions.
    z = [0] * 10
    prod = _played([[1] + [0] * 9, [1, 1] + [0] * 8, z, [0, 0, 0, 0, 1] + [0] * 5], 2)
    rand = _played([[1] + [0] * 9, z, z, z, z, z], 2)
    s = calibration_statistics(prod, rand)
    assert s["ctr@1"] == pytest.approx(0.5) and s["ctr@2"] == pytest.approx(0.25) and s["ctr@5"] == 0.25
    assert s["no_click_rate"] == pytest.approx(0.25)
    assert s["clicks_per_query"] == pytest.approx(1.0)
    assert s["multi_click_rate"] == pytest.approx(0.25)
    # top-4 click: production 2/4, random 1/6 -> (1/6) / (1/2) - 1
    assert s["top4_click_random_vs_production"] == pytest.approx(1 / 3 - 1)
    # queries per session: production 2, random 3 -> +50 %
    assert s["queries_per_session_random_vs_production"] == pytest.approx(0.5)
    assert s["exam@1/exam@1"] == 1.0


def test_targets_are_the_published_ranges():
    t = {x.name: x for x in TARGETS}
    assert t["ctr@1"].published == 0.342 and t["ctr@1"].lo == pytest.approx(0.342 * 0.7)
    assert t["exam@2/exam@1"].lo == pytest.approx(0.674 - 0.07)
    assert (t["no_click_rate"].lo, t["no_click_rate"].hi) == (0.40, 0.60)
    assert t["queries_per_session_random_vs_production"].lo == 0.10
    assert len(TARGETS) == 5 + 10 + 5


def test_loss_and_report_flag_outside_values():
    inside = {x.name: x.published for x in TARGETS}
    inside["queries_per_session_random_vs_production"] = 0.2
    assert all(r["inside"] for r in report(inside))
    outside = dict(inside, no_click_rate=0.9)
    assert not next(r for r in report(outside) if r["statistic"] == "no_click_rate")["inside"]
    assert calibration_loss(outside) > calibration_loss(inside) + 10


def test_default_user_lands_inside_every_range_with_a_smar_quality_ranker():
    """On another world seed, with a production ranker of SMAR's quality (true grade + noise 1.5:
    NDCG@10 about 0.73), the default user model's statistics fall inside every published range."""
    from envs.calibration import measure
    from envs.user_model import UserModelConfig
    from envs.world import WorldConfig, generate_world

    test = generate_world(WorldConfig(seed=3, queries=300, single_modal_queries=10)).test
    rng = np.random.default_rng(0)
    scores = test.truth.relevance + 1.5 * rng.standard_normal(len(test.truth.relevance))
    stats = measure(scores, test.pages, test.truth, UserModelConfig(), sessions=6000, seed=1)
    outside = [(r["statistic"], round(r["simulated"], 3)) for r in report(stats) if not r["inside"]]
    assert not outside, outside
