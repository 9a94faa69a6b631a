"""User model: golden click-model maths, vectorised-vs-reference agreement, behavioural properties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.pages import MODALITY_ID
from envs.user_model import (
    UserModel,
    UserModelConfig,
    click_probability,
    dwell_log_params,
    examination_probabilities,
    satisfied_click_probability,
)
from envs.user_model_reference import simulate_reference

DOC, IMAGE, VIDEO, ANSWER = (MODALITY_ID[m] for m in ("doc", "image", "video", "answer"))
CERTAIN_CLICK = 30.0  # click_bias: every examined result is clicked
GOLDEN = UserModelConfig(
    position_examination=(1.0, 1 / 2, 1 / 3, 1 / 4),
    examination_top=1.0,
    vertical_attention=(0.0, 0.4, 0.6, 0.2),
    attention_decay=0.5,
    attention_radius=1,
)


# ----------------------------------------------------------------------------- golden maths
def test_examination_table_and_vertical_attention_golden():
    e = examination_probabilities(np.array([[DOC, IMAGE, DOC, DOC], [DOC, IMAGE, VIDEO, DOC]]), None, GOLDEN)
    # Row 0: base 1/k, one image at position 2 pulls itself (beta(0) = 1) and neighbours (beta(1) = 0.5):
    #   pos 2: 1/2 + (1 - 1/2) * 0.4 = 0.7;  pos 3: 1/3 + (2/3) * 0.5 * 0.4 = 0.4667;  pos 4: out of reach.
    np.testing.assert_allclose(e[0], [1.0, 0.7, 1 / 3 + 2 / 3 * 0.2, 0.25], atol=1e-6)
    # Row 1: two verticals combine as independent attention sources:
    #   pos 2: 1 - 0.5 * (1 - 0.4) * (1 - 0.5 * 0.6) = 0.79;  pos 3: 1 - (2/3) * 0.4 * 0.8;  pos 4: 1 - 0.75 * 0.7.
    np.testing.assert_allclose(e[1], [1.0, 0.79, 1 - 2 / 3 * 0.4 * 0.8, 1 - 0.75 * 0.7], atol=1e-6)


def test_examination_table_scale_extension_and_padding():
    cfg = UserModelConfig(
        position_examination=(1.0, 0.8, 0.4), examination_top=0.5, vertical_attention=(0.0, 0.5, 0.0, 0.0)
    )
    # Past the table the last ratio (0.4 / 0.8) continues.
    np.testing.assert_allclose(cfg.examination(5), 0.5 * np.array([1.0, 0.8, 0.4, 0.2, 0.1]))
    e = examination_probabilities(np.array([[DOC, IMAGE, DOC]]), np.array([[True, False, True]]), cfg)
    # The padded image neither gets examined nor pulls attention.
    np.testing.assert_allclose(e[0], [0.5, 0.0, 0.2], atol=1e-6)
    # The default is the published Baidu-ULTR curve.
    np.testing.assert_allclose(
        UserModelConfig().examination(10) / UserModelConfig().examination_top,
        [1, 0.674, 0.414, 0.293, 0.208, 0.171, 0.136, 0.117, 0.084, 0.058],
    )


def test_dwell_parameters_and_satisfaction_golden():
    cfg = UserModelConfig(dwell_sigma=(0.8, 0.7, 0.9, 0.75), satisfied_dwell_s=(30.0, 15.0, 60.0, 20.0))
    mu, sigma = dwell_log_params(np.array([3, 3, 0]), np.array([DOC, VIDEO, DOC]), cfg)
    # mu = ln(threshold) + sigma * Phi^-1(sat[g]); sat[3] = 7/16 -> Phi^-1(0.4375) = -0.157311
    np.testing.assert_allclose(
        mu,
        [math.log(30) - 0.8 * 0.157311, math.log(60) - 0.9 * 0.157311, math.log(30) + 0.8 * -2.053749],
        atol=1e-5,
    )
    np.testing.assert_allclose(sigma, [0.8, 0.9, 0.8])
    for m in (DOC, IMAGE, VIDEO, ANSWER):  # the same satisfaction per grade whatever the modality
        for g, p in enumerate(cfg.satisfaction_by_grade):
            assert satisfied_click_probability(g, m, cfg) == pytest.approx(p, abs=1e-6)
    assert cfg.satisfaction_by_grade == pytest.approx((0.02, 1 / 16, 3 / 16, 7 / 16, 15 / 16))


def test_click_probability_golden():
    cfg = UserModelConfig(click_bias=-1.0, click_grade=0.5, click_attractiveness=2.0)
    # sigmoid(-1 + 0.5 * 2 + 2 * logit(0.5)) = sigmoid(0) = 0.5; sigmoid(-1 + 0 + 2 * logit(0.8)) = ...
    p = click_probability(np.array([2, 0]), np.array([0.5, 0.8]), cfg)
    np.testing.assert_allclose(p, [0.5, 1 / (1 + math.exp(-(-1 + 2 * math.log(4))))], atol=1e-9)


def test_satisfaction_per_click_does_not_depend_on_modality():
    """At equal grade and position, P(satisfied | click) differs across modalities by at most 0.05,
    although each modality has its own dwell distribution and threshold (the simulated model)."""
    b = 40000
    m = UserModel(UserModelConfig(click_bias=CERTAIN_CLICK, examination_top=1.0, stop_after_satisfied=0.0))
    rng = np.random.default_rng(7)
    for g in range(5):
        rates = []
        for mid in (DOC, IMAGE, VIDEO, ANSWER):
            out = m.simulate(np.full((b, 1), g), np.full((b, 1), 0.5), np.full((b, 1), mid), None, rng)
            clicked = out.click[:, 0] & ~out.answer_satisfied[:, 0]
            rates.append(out.satisfied_click[clicked, 0].mean())
        assert max(rates) - min(rates) <= 0.05, (g, rates)
    # Dwell itself does differ by modality (video is watched longer than images are glanced at).
    dw = []
    for mid in (IMAGE, VIDEO):
        out = m.simulate(np.full((b, 1), 2), np.full((b, 1), 0.5), np.full((b, 1), mid), None, rng)
        dw.append(np.median(out.dwell[out.click]))
    assert dw[1] > 2 * dw[0]


def test_vectorised_dwell_and_examination_match_the_formulas():
    """With no stopping and certain clicks, rates and dwell moments are exact."""
    cfg = UserModelConfig(
        stop_after_satisfied=0.0, vertical_attention=(0.0, 0.4, 0.6, 0.2), click_bias=CERTAIN_CLICK
    )
    b = 40000
    mod = np.tile([[DOC, IMAGE, VIDEO, DOC]], (b, 1))
    rel = np.tile([[3, 1, 4, 0]], (b, 1))
    out = UserModel(cfg).simulate(rel, np.full((b, 4), 0.5), mod, None, np.random.default_rng(0))
    expected = examination_probabilities(mod[:1], None, cfg)[0]
    np.testing.assert_allclose(out.examined.mean(0), expected, atol=4 * 0.5 / math.sqrt(b))
    assert (out.click == out.examined).all()  # certain clicks: examined means clicked
    mu, sigma = dwell_log_params(rel[0], mod[0], cfg)
    for k in range(4):
        d = np.log(out.dwell[out.click[:, k], k])
        assert d.mean() == pytest.approx(mu[k], abs=4 * sigma[k] / math.sqrt(len(d)))
        assert d.std() == pytest.approx(sigma[k], rel=0.03)
    threshold = np.asarray(cfg.satisfied_dwell_s)[mod]
    assert (out.satisfied_click == (out.dwell >= threshold)).mean() > 0.9999
    assert (out.dwell[~out.click] == 0).all()


def test_cascade_stop_hides_later_positions():
    """A certain satisfying click at position 1 with certain stopping: nothing below is examined."""
    cfg = UserModelConfig(
        stop_after_satisfied=1.0,
        satisfaction_by_grade=(0.02, 0.1, 0.2, 0.5, 1 - 1e-9),
        dwell_sigma=(0.05,) * 4,
        click_bias=CERTAIN_CLICK,
        examination_top=1.0,
    )
    b = 1000
    out = UserModel(cfg).simulate(
        np.full((b, 5), 4), np.full((b, 5), 0.5), np.zeros((b, 5), int), None, np.random.default_rng(1)
    )
    assert out.click[:, 0].all() and out.satisfied_click[:, 0].all()
    assert not out.examined[:, 1:].any()
    assert out.satisfied.all() and not out.reformulate.any() and not out.abandon.any()


def test_session_decision_probabilities():
    """Nothing is ever clicked and nothing satisfies: reformulate ~ reformulate_prob."""
    cfg = UserModelConfig(reformulate_prob=0.3, click_bias=-CERTAIN_CLICK)
    b = 20000
    out = UserModel(cfg).simulate(
        np.zeros((b, 3)), np.full((b, 3), 0.5), np.zeros((b, 3)), None, np.random.default_rng(2)
    )
    assert not out.satisfied.any()
    assert out.reformulate.mean() == pytest.approx(0.3, abs=0.015)
    assert (out.reformulate ^ out.abandon).all()


def test_bad_inputs_raise():
    m = UserModel()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="relevance"):
        m.simulate(np.full((2, 3), 5), np.ones((2, 3)), np.zeros((2, 3)), None, rng)
    with pytest.raises(ValueError, match="attractiveness"):
        m.simulate(np.zeros((2, 3)), np.full((2, 3), 1.5), np.zeros((2, 3)), None, rng)
    with pytest.raises(ValueError, match="modality"):
        m.simulate(np.zeros((2, 3)), np.ones((2, 3)), np.full((2, 3), 4), None, rng)
    with pytest.raises(ValueError, match="shape"):
        m.simulate(np.zeros((2, 3)), np.ones((2, 4)), np.zeros((2, 3)), None, rng)
    with pytest.raises(ValueError, match="reformulate_prob"):
        UserModelConfig(reformulate_prob=1.5)
    with pytest.raises(ValueError, match="vertical_attention"):
        UserModelConfig(vertical_attention=(0.1, 0.2))


def test_padding_is_never_examined_or_clicked():
    rng = np.random.default_rng(3)
    b, k = 2000, 6
    valid = rng.random((b, k)) < 0.7
    rel = np.where(valid, rng.integers(0, 5, (b, k)), -7)  # junk on padding must be ignored
    out = UserModel().simulate(rel, np.where(valid, 0.9, 9.0), rng.integers(0, 4, (b, k)), valid, rng)
    assert not (out.examined & ~valid).any() and not (out.click & ~valid).any()


# ----------------------------------------------------------------------------- agreement
def _random_slates(b: int, k: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    mod = rng.integers(0, 4, (b, k))
    rel = rng.integers(0, 5, (b, k))
    att = rng.beta(2, 2, (b, k))
    valid = rng.random((b, k)) < 0.95
    return rel, att, mod, valid


def test_vectorised_agrees_with_reference_in_distribution():
    """Same inputs, independent seeds: per-position CTR, examination, dwell quantiles and page-level
    rates agree within ~4 standard errors (a wrong band, a missed stop or a wrong dwell centre breaks it)."""
    b = 25000
    rel, att, mod, valid = _random_slates(b)
    v = UserModel().simulate(rel, att, mod, valid, np.random.default_rng(10))
    r = simulate_reference(rel, att, mod, valid, np.random.default_rng(11))
    se = lambda p: 4.5 * math.sqrt(2 * p * (1 - p) / b) + 1e-4  # noqa: E731 - difference of two means
    for name in ("examined", "click", "satisfied_click", "answer_satisfied"):
        pv, pr = getattr(v, name).mean(0), getattr(r, name).mean(0)
        for k in range(rel.shape[1]):
            assert abs(pv[k] - pr[k]) < se(pr[k]), (name, k, pv[k], pr[k])
    for name in ("satisfied", "good_abandon", "abandon", "reformulate"):
        pv, pr = getattr(v, name).mean(), getattr(r, name).mean()
        assert abs(pv - pr) < se(pr), (name, pv, pr)
    for q in (0.1, 0.5, 0.9):
        qv, qr = np.quantile(v.dwell[v.click], q), np.quantile(r.dwell[r.click], q)
        assert abs(math.log(qv / qr)) < 0.04, (q, qv, qr)
    # Per modality CTR as well (the vertical-attention and attractiveness paths).
    for m in range(4):
        pv, pr = v.click[mod == m].mean(), r.click[mod == m].mean()
        assert abs(pv - pr) < se(pr), (m, pv, pr)


def test_agreement_test_can_fail():
    """The same comparison flags a model whose dwell centre is off by 0.3 (a plausible bug)."""
    b = 25000
    rel, att, mod, valid = _random_slates(b, seed=1)
    bug = UserModelConfig(
        satisfied_dwell_s=tuple(x * math.exp(0.3) for x in UserModelConfig().satisfied_dwell_s)
    )
    v = UserModel(bug).simulate(rel, att, mod, valid, np.random.default_rng(12))
    r = simulate_reference(rel, att, mod, valid, np.random.default_rng(13))
    assert abs(math.log(np.quantile(v.dwell[v.click], 0.5) / np.quantile(r.dwell[r.click], 0.5))) > 0.04


def test_seeded_runs_reproduce():
    rel, att, mod, valid = _random_slates(3000, seed=2)
    a = UserModel().simulate(rel, att, mod, valid, np.random.default_rng(5))
    b = UserModel().simulate(rel, att, mod, valid, np.random.default_rng(5))
    for name in ("examined", "click", "dwell", "satisfied", "reformulate"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


# ----------------------------------------------------------------------------- behavioural properties
def test_default_config_properties():
    """CTR falls with position; more attractive results and higher grades draw more clicks; relevant
    answers near the top satisfy without clicks; relevance, not attractiveness, drives satisfaction."""
    b = 30000
    m = UserModel()
    rng = np.random.default_rng(20)
    out = m.simulate(np.full((b, 10), 2), np.full((b, 10), 0.5), np.full((b, 10), DOC), None, rng)
    ctr = out.click.mean(0)
    assert all(ctr[i] > ctr[i + 1] for i in range(9)), ctr
    hi_att = m.simulate(np.full((b, 3), 2), np.full((b, 3), 0.9), np.zeros((b, 3)), None, rng)
    assert hi_att.click.mean() > out.click[:, :3].mean() + 0.02
    hi_rel = m.simulate(np.full((b, 3), 4), np.full((b, 3), 0.5), np.zeros((b, 3)), None, rng)
    assert hi_rel.click.mean() > out.click[:, :3].mean() + 0.02
    # Answers: a grade-4 answer at position 1 satisfies without a click when examined.
    mod = np.full((b, 10), DOC)
    mod[:, 0] = ANSWER
    rel = np.full((b, 10), 1)
    rel[:, 0] = 4
    o = m.simulate(rel, np.full((b, 10), 0.3), mod, None, rng)
    p = UserModelConfig().answer_satisfy_prob[4] * UserModelConfig().examination_top
    assert o.answer_satisfied[:, 0].mean() == pytest.approx(p, abs=0.02)
    assert not (o.answer_satisfied & o.click).any()
    assert o.good_abandon.mean() > 0.2
    mod2 = np.full((b, 10), DOC)
    mod2[:, 4] = ANSWER
    assert not m.simulate(rel, np.full((b, 10), 0.3), mod2, None, rng).answer_satisfied.any()
    # An attractive irrelevant result draws clicks that do not satisfy (a click reward is gameable).
    bait = m.simulate(np.full((b, 3), 0), np.full((b, 3), 0.97), np.zeros((b, 3)), None, rng)
    good = m.simulate(np.full((b, 3), 4), np.full((b, 3), 0.2), np.zeros((b, 3)), None, rng)
    assert bait.click.mean() > good.click.mean()
    assert good.satisfied.mean() > bait.satisfied.mean() + 0.1
