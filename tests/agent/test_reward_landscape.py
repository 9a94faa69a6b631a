"""The bench's reward-landscape references: the session subset and the offset grid search."""

from __future__ import annotations

import itertools

import numpy as np

from agent.evaluation import evaluate_policy, session_page_lists
from agent.reward_landscape import best_offsets, head_sessions

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


def test_best_offsets_is_the_argmax_of_its_grid(tiny_run):
    split = tiny_run.split("traffic")
    pages, truth = head_sessions(split.pages, split.truth, 20)
    base = truth.relevance.astype(np.float32)
    grid = (0.0, 50.0)
    off, reward = best_offsets(lambda _p: base, pages, truth, SERP, grid, repeats=2, seed=4)
    assert off[0] == 0.0 and set(off[1:]) <= set(grid)
    rewards = {}
    for combo in itertools.product(grid, repeat=3):
        o = np.array([0.0, *combo], np.float32)
        s = base + o[pages.modality]
        rewards[combo] = evaluate_policy(lambda _p, s=s: s, pages, truth, seed=4, repeats=2, serp=SERP)[
            "reward"
        ]
    assert reward == max(rewards.values()) == rewards[tuple(off[1:])]
    assert len(set(rewards.values())) > 1  # the offsets change what users see and earn
