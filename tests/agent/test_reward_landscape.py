"""The bench's reward-landscape references: the session subset, the offset sweep, the per-intent
ranking of candidates and the references themselves on a tiny run."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from agent import reward_landscape as rl
from agent.evaluation import evaluate_policy, session_page_lists, session_returns
from agent.reward_landscape import (
    head_sessions,
    layout_gradient,
    offset_sweep,
    session_intents,
    top_by_intent,
)
from envs.pages import MODALITY_ID
from envs.serp_env import RewardConfig, SerpConfig
from envs.world import ItemTruth

SERP = {"n_max": 16, "slate_size": 5}


def test_head_sessions_keeps_whole_sessions_with_their_truth(tiny_run):
    split = tiny_run.split("traffic")
    pages, truth = head_sessions(split.pages, split.truth, 3)
    sessions = session_page_lists(split.pages)[:3]
    assert len(pages) == sum(len(s) for s in sessions)
    assert list(pages.page_id) == list(split.pages.page_id[np.sort(np.concatenate(sessions))])
    for p in range(len(pages)):
        src = int(np.flatnonzero(split.pages.page_id == pages.page_id[p])[0])
        np.testing.assert_array_equal(
            truth.relevance[pages.item_slice(p)], split.truth.relevance[split.pages.item_slice(src)]
        )
        np.testing.assert_array_equal(
            truth.attractiveness[pages.item_slice(p)], split.truth.attractiveness[split.pages.item_slice(src)]
        )
        assert truth.preferred_modality[p] == split.truth.preferred_modality[src]


def test_session_returns_are_the_episodes_evaluate_policy_averages(tiny_run):
    test = tiny_run.split("test")
    smar, _ = tiny_run.reranker()
    r = session_returns(smar, test.pages, test.truth, seed=5, repeats=3, serp=SERP)
    assert r.shape == (3, len(session_page_lists(test.pages)))
    ev = evaluate_policy(smar, test.pages, test.truth, seed=5, repeats=3, serp=SERP)
    assert ev["reward"] == float(np.mean(r.ravel())) and ev["episodes"] == r.size


def test_offset_sweep_plays_every_grid_point(tiny_run):
    split = tiny_run.split("traffic")
    pages, truth = head_sessions(split.pages, split.truth, 20)
    n = len(session_page_lists(pages))
    base = truth.relevance.astype(np.float32)
    grid = (0.0, 50.0)
    combos, returns = offset_sweep(lambda _p: base, pages, truth, SERP, grid, repeats=2, seed=4)
    assert combos.shape == (8, 4) and returns.shape == (8, 2, n)
    assert [tuple(c[1:]) for c in combos] == list(itertools.product(grid, repeat=3))
    assert not combos[:, 0].any()  # doc is the reference modality
    for c, r in zip(combos, returns):
        s = base + c[pages.modality]
        ev = evaluate_policy(lambda _p, s=s: s, pages, truth, seed=4, repeats=2, serp=SERP)
        assert ev["reward"] == float(np.mean(r.ravel()))
    assert len({float(r.mean()) for r in returns}) > 1  # the offsets change what users see and earn


def test_top_by_intent_ranks_candidates_on_each_intents_sessions():
    rng = np.random.default_rng(0)
    returns = rng.random((6, 2, 9))
    intents = np.array([0, 0, 1, 1, 1, 3, 3, 0, 1])  # intent 2 absent
    top = top_by_intent(returns, intents, 3)
    assert len(top) == 4 and len(top[2]) == 0
    for g in (0, 1, 3):
        means = returns[:, :, intents == g].mean(axis=(1, 2))
        assert list(top[g]) == list(np.argsort(-means)[:3])
    # a candidate that is best on intent 3's sessions only is ranked first there, not elsewhere
    returns[4][:, intents == 3] += 10.0
    returns[4][:, intents != 3] -= 10.0
    top = top_by_intent(returns, intents, 3)
    assert top[3][0] == 4 and 4 not in top[0] and 4 not in top[1]


def test_session_intents_follow_the_session_order(tiny_run):
    split = tiny_run.split("traffic")
    intents = session_intents(split.pages, split.truth)
    sessions = session_page_lists(split.pages)
    assert len(intents) == len(sessions)
    assert all(split.truth.preferred_modality[p] == intents[i] for i, s in enumerate(sessions) for p in s)


def test_reference_policies_on_a_tiny_run(tiny_run, monkeypatch):
    # a small grid and second stage keep the test fast; the mechanics are the bench's
    monkeypatch.setattr(rl, "OFFSET_GRID", (0.0, 30.0))
    monkeypatch.setattr(rl, "TRUTH_OFFSET_GRID", (0.0, 5.0))
    monkeypatch.setattr(rl, "REFINE_TOP", 2)
    monkeypatch.setattr(rl, "REFINE_REPEATS", 2)
    smar, _ = tiny_run.reranker()
    out = rl.reference_policies(tiny_run, smar, SERP, seed=3, repeats=1, fresh_seeds=1)
    assert set(out) == {
        "smar_modality_offsets",
        "smar_modality_intent_offsets",
        "smar_attractiveness_offsets",
        "smar_attractiveness_intent_offsets",
        "oracle_relevance",
        "truth_offsets",
        "fresh_network_seed0",
    }
    fixed, by_intent = out["smar_modality_offsets"], out["smar_modality_intent_offsets"]
    assert len(fixed["offsets"]) == 4 and np.shape(by_intent["offsets"]) == (4, 4)
    assert set(np.ravel(by_intent["offsets"])) <= {0.0, 30.0}
    assert fixed["search_base_reward"] == by_intent["search_base_reward"]
    assert len(out["smar_attractiveness_intent_offsets"]["attractiveness_weight"]) == 4
    for m in out.values():
        assert np.isfinite(m["reward"]) and 0.0 <= m["ndcg@10"] <= 1.0


@pytest.mark.parametrize("layout_noise", [0.0, 1.0])
def test_layout_gradient_points_to_the_modality_that_earns(tiny_run, layout_noise):
    """Only clicks pay and only videos are ever clicked: moving videos up is the one direction that
    earns, so its gradient component is positive and clear, and the components sum to 0, whether
    the items' Plackett-Luce noise or a Gaussian layout noise explores."""
    split = tiny_run.split("traffic")
    video = split.pages.modality == MODALITY_ID["video"]
    truth = ItemTruth(split.truth.relevance, video.astype(np.float32), split.truth.preferred_modality)
    serp = SerpConfig(n_max=16, slate_size=5, reward=RewardConfig(name="clicks"))
    flat = np.zeros(split.pages.n_items, np.float32)
    kw = dict(temperature=1.0, batch=256, repeats=20, layout_noise=layout_noise)
    g = layout_gradient(flat, split.pages, truth, serp, **kw)
    grad, z = np.array(g["gradient"]), np.array(g["z_per_batch"])
    assert np.argmax(grad) == MODALITY_ID["video"] and z[MODALITY_ID["video"]] > 3
    assert abs(grad.sum()) < 1e-6 and g["pages"] == 20 * len(split.pages)
    again = layout_gradient(flat, split.pages, truth, serp, **kw)
    assert again == g  # seeded


def test_intent_readability_reads_the_intent_from_the_page_context():
    from envs.world import WorldConfig, generate_world

    w = generate_world(WorldConfig(seed=3, queries=150, candidates_per_modality=2, single_modal_queries=10))
    got = rl.intent_readability(w.traffic, w.test)
    assert got == rl.intent_readability(w.traffic, w.test)  # deterministic
    assert got["test_accuracy"] > got["test_majority_share"] + 0.3  # the features carry the intent
    # with the intents shuffled across the training pages, nothing is learnt beyond chance
    t = w.traffic.truth
    shuffled = ItemTruth(
        t.relevance, t.attractiveness, np.random.default_rng(0).permutation(t.preferred_modality)
    )
    blind = rl.intent_readability(type(w.traffic)(w.traffic.pages, shuffled), w.test)
    assert blind["test_accuracy"] < got["test_accuracy"] - 0.3
