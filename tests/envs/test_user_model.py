"""User model: golden click-model maths, vectorised-vs-reference agreement, behavioural properties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.pages import MODALITY_ID
from envs.user_model import (
    UserModel,
    UserModelConfig,
    dwell_log_params,
    examination_probabilities,
    satisfied_click_probability,
    simulate_reference,
)

DOC, IMAGE, VIDEO, ANSWER = (MODALITY_ID[m] for m in ("doc", "image", "video", "answer"))
GOLDEN = UserModelConfig(
    eta=1.0, vertical_attention=(0.0, 0.4, 0.6, 0.2), attention_decay=0.5, attention_radius=1
)


# ----------------------------------------------------------------------------- golden maths
def test_examination_pbm_and_vertical_attention_golden():
    e = examination_probabilities(np.array([[DOC, IMAGE, DOC, DOC], [DOC, IMAGE, VIDEO, DOC]]), None, GOLDEN)
    # Row 0: PBM 1/k, one image at position 2 pulls itself (beta(0) = 1) and neighbours (beta(1) = 0.5):
    #   pos 2: 1/2 + (1 - 1/2) * 0.4 = 0.7;  pos 3: 1/3 + (2/3) * 0.5 * 0.4 = 0.4667;  pos 4: out of reach.
    np.testing.assert_allclose(e[0], [1.0, 0.7, 1 / 3 + 2 / 3 * 0.2, 0.25], atol=1e-6)
    # Row 1: two verticals combine as independent attention sources:
    #   pos 2: 1 - 0.5 * (1 - 0.4) * (1 - 0.5 * 0.6) = 0.79;  pos 3: 1 - (2/3) * 0.4 * 0.8;  pos 4: 1 - 0.75 * 0.7.
    np.testing.assert_allclose(e[1], [1.0, 0.79, 1 - 2 / 3 * 0.4 * 0.8, 1 - 0.75 * 0.7], atol=1e-6)


def test_examination_eta_and_padding():
    cfg = UserModelConfig(eta=0.5, vertical_attention=(0.0, 0.5, 0.0, 0.0), attention_radius=1)
    e = examination_probabilities(np.array([[DOC, IMAGE, DOC]]), np.array([[True, False, True]]), cfg)
    # The padded image neither gets examined nor pulls attention.
    np.testing.assert_allclose(e[0], [1.0, 0.0, (1 / 3) ** 0.5], atol=1e-6)


def test_dwell_lognormal_parameters_golden():
    mu, sigma = dwell_log_params(np.array([0, 2, 4]), np.array([DOC, DOC, VIDEO]), UserModelConfig())
    np.testing.assert_allclose(mu, [2.0, 2.0 + 0.55 * 2, 2.3 + 0.6 * 4])
    np.testing.assert_allclose(sigma, [0.75, 0.75, 0.8])
    # P(dwell >= 30 s) for a doc of grade 3: 1 - Phi((ln 30 - 3.65) / 0.75) = Phi(0.3318) = 0.630
    assert satisfied_click_probability(3, DOC, UserModelConfig()) == pytest.approx(0.6300, abs=5e-4)
    assert satisfied_click_probability(0, DOC, UserModelConfig()) < 0.05


def test_vectorised_dwell_and_examination_match_the_formulas():
    """With no stopping, every examined+attractive item is clicked: rates and dwell moments are exact."""
    cfg = UserModelConfig(stop_after_satisfied=0.0, vertical_attention=(0.0, 0.4, 0.6, 0.2))
    b = 40000
    mod = np.tile([[DOC, IMAGE, VIDEO, DOC]], (b, 1))
    rel = np.tile([[3, 1, 4, 0]], (b, 1))
    out = UserModel(cfg).simulate(rel, np.ones((b, 4)), mod, None, np.random.default_rng(0))
    expected = examination_probabilities(mod[:1], None, cfg)[0]
    np.testing.assert_allclose(out.examined.mean(0), expected, atol=4 * 0.5 / math.sqrt(b))
    assert (out.click == out.examined).all()  # attractiveness 1: examined means clicked
    mu, sigma = dwell_log_params(rel[0], mod[0], cfg)
    for k in range(4):
        d = np.log(out.dwell[out.click[:, k], k])
        assert d.mean() == pytest.approx(mu[k], abs=4 * sigma[k] / math.sqrt(len(d)))
        assert d.std() == pytest.approx(sigma[k], rel=0.03)
    assert (out.satisfied_click == (out.dwell >= 30.0)).mean() > 0.9999
    assert (out.dwell[~out.click] == 0).all()


def test_cascade_stop_hides_later_positions():
    """A certain satisfying click at position 1 with certain stopping: nothing below is examined."""
    cfg = UserModelConfig(stop_after_satisfied=1.0, dwell_mu0=(10.0,) * 4, dwell_sigma=(0.01,) * 4)
    b = 1000
    out = UserModel(cfg).simulate(
        np.full((b, 5), 4), np.ones((b, 5)), np.zeros((b, 5), int), None, np.random.default_rng(1)
    )
    assert out.click[:, 0].all() and out.satisfied_click[:, 0].all()
    assert not out.examined[:, 1:].any()
    assert out.satisfied.all() and not out.reformulate.any() and not out.abandon.any()


def test_session_decision_probabilities():
    """Nobody is ever examined past position 1 and nothing satisfies: reformulate ~ reformulate_prob."""
    cfg = UserModelConfig(reformulate_prob=0.3, attractiveness_scale=0.0)
    b = 20000
    out = UserModel(cfg).simulate(
        np.zeros((b, 3)), np.ones((b, 3)), np.zeros((b, 3)), None, np.random.default_rng(2)
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
    bug = UserModelConfig(dwell_mu0=tuple(x + 0.3 for x in UserModelConfig().dwell_mu0))
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
    """CTR falls with position; image/video beat docs at equal relevance, attractiveness and position;
    relevant answers near the top satisfy without clicks; relevance raises satisfied clicks."""
    b = 30000
    m = UserModel()
    rng = np.random.default_rng(20)
    # Position: all docs, same relevance and attractiveness.
    out = m.simulate(np.full((b, 10), 2), np.full((b, 10), 0.5), np.full((b, 10), DOC), None, rng)
    ctr = out.click.mean(0)
    assert all(ctr[i] > ctr[i + 1] for i in range(9)), ctr
    # Modality at equal relevance, attractiveness and position: one tested item at position 3
    # among docs.
    ctr_at3 = {}
    for name, mid in (("doc", DOC), ("image", IMAGE), ("video", VIDEO)):
        mod = np.full((b, 10), DOC)
        mod[:, 2] = mid
        o = m.simulate(np.full((b, 10), 2), np.full((b, 10), 0.5), mod, None, rng)
        ctr_at3[name] = o.click[:, 2].mean()
    assert ctr_at3["image"] > ctr_at3["doc"] + 0.03 and ctr_at3["video"] > ctr_at3["image"], ctr_at3
    # Answers: a grade-4 answer at position 1 satisfies without a click on most pages.
    mod = np.full((b, 10), DOC)
    mod[:, 0] = ANSWER
    rel = np.full((b, 10), 1)
    rel[:, 0] = 4
    o = m.simulate(rel, np.full((b, 10), 0.3), mod, None, rng)
    assert o.answer_satisfied[:, 0].mean() == pytest.approx(0.8, abs=0.02)  # examined surely, p = 0.8
    assert not (o.answer_satisfied & o.click).any()
    assert o.good_abandon.mean() > 0.3
    # The same answer at position 5 is out of the good-abandonment zone.
    mod2 = np.full((b, 10), DOC)
    mod2[:, 4] = ANSWER
    assert not m.simulate(rel, np.full((b, 10), 0.3), mod2, None, rng).answer_satisfied.any()
    # Relevance drives satisfaction, attractiveness drives clicks.
    hi = m.simulate(np.full((b, 3), 4), np.full((b, 3), 0.3), np.zeros((b, 3)), None, rng)
    lo = m.simulate(np.full((b, 3), 0), np.full((b, 3), 0.9), np.zeros((b, 3)), None, rng)
    assert lo.click.mean() > hi.click.mean()
    assert hi.satisfied.mean() > lo.satisfied.mean() + 0.1
