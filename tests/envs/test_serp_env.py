"""The gymnasium SERP environment: contract, checker, determinism, invalid actions, vector envs."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401 - registers smar/Serp-v0
from envs.serp_env import SerpConfig, SerpEnv


@pytest.fixture(scope="module")
def scored(tiny_world):
    """Tiny-world traffic pages with single-modal scores filled (as a pretrain run provides)."""
    split = tiny_world.traffic
    rng = np.random.default_rng(0)
    sm = (split.truth.relevance + rng.normal(0, 0.5, split.pages.n_items)).astype(np.float32)
    return split.pages.with_items(single_modal_score=sm), split.truth


def make(scored, **cfg):
    pages, truth = scored
    return gym.make("smar/Serp-v0", pages=pages, truth=truth, config={"n_max": 16, "slate_size": 5, **cfg})


def test_registration_does_not_import_torch():
    code = "import sys, envs, gymnasium as gym; gym.make('smar/Serp-v0'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_passes_env_checker(scored):
    env = make(scored)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbounded feature Boxes are intended
        check_env(env.unwrapped)


def test_observation_contract(scored):
    pages, _ = scored
    env = make(scored)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"features", "modality", "mask", "single_modal_score", "query", "user"}
    assert obs["features"].shape == (16, pages.features.shape[1]) and obs["features"].dtype == np.float32
    assert obs["mask"].sum() == 16  # tiny world: 4 modalities x 4 candidates
    assert env.observation_space.contains(obs)
    assert env.action_space.shape == (5,) and (env.action_space.nvec == 16).all()
    p = list(pages.page_id).index(info["page_id"])
    np.testing.assert_allclose(obs["single_modal_score"], pages.single_modal_score[pages.item_slice(p)])


def test_default_env_has_unknown_single_modal_scores():
    env = SerpEnv()
    obs, _ = env.reset(seed=1)
    assert obs["mask"].sum() == 40 and (obs["single_modal_score"] == 0).all()
    _, _, _, _, info = env.step(np.arange(10))
    assert "consistency" not in info  # unknown, and a NaN would break check_env's determinism test


def test_check_env_passes_on_the_default_env_as_a_user_builds_it():
    check_env(gym.make("smar/Serp-v0").unwrapped)


def run_episodes(env, seed, n=20):
    trace = []
    obs, info = env.reset(seed=seed)
    for _ in range(n):
        done = False
        while not done:
            a = env.action_space.sample()
            obs, r, term, trunc, info = env.step(a)
            trace.append((info["page_id"], tuple(a), r, term, trunc, info["clicks"], info["dwell"]))
            done = term or trunc
        obs, info = env.reset()
    return trace


def test_seeded_runs_reproduce(scored):
    a = make(scored)
    b = make(scored)
    a.action_space.seed(3)
    b.action_space.seed(3)
    assert run_episodes(a, 7) == run_episodes(b, 7)
    c = make(scored)
    c.action_space.seed(3)
    assert run_episodes(c, 8) != run_episodes(a, 7)


def test_episode_is_a_session(scored):
    env = make(scored, max_queries=2)
    env.action_space.seed(0)
    lengths, outcomes = [], set()
    for ep in range(200):
        env.reset(seed=ep)
        qid = None
        for t in range(10):
            _, r, term, trunc, info = env.step(env.action_space.sample())
            q = info["page_id"].rsplit("-", 1)[0]
            assert qid in (None, q) and info["query_index"] == t  # same intent, pages in order
            qid = q
            assert r >= 0 and 0 <= info["ndcg@10"] <= 1 and 0 <= info["consistency"] <= 1
            if term:
                assert info["satisfied"] or info["abandoned"]
                outcomes.add("satisfied" if info["satisfied"] else "abandoned")
            if trunc:
                assert info["reformulated"] and t + 1 == 2
                outcomes.add("truncated")
            if term or trunc:
                lengths.append(t + 1)
                break
    assert max(lengths) == 2 and outcomes == {"satisfied", "abandoned", "truncated"}


@pytest.mark.parametrize(
    "action, match",
    [
        ([0, 1, 2, 3, 3], "repeats"),
        ([0, 1, 2, 3, 16], r"\[0, 16\)"),
        ([0, 1, 2, 3, -1], r"\[0, 16\)"),
        ([0, 1, 2, 3], "shape"),
        ([0.5, 1, 2, 3, 4], "integer"),
    ],
)
def test_invalid_actions_raise(scored, action, match):
    env = make(scored)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.unwrapped.step(np.array(action))


def test_masked_slot_raises(tiny_world):
    split = tiny_world.traffic
    env = SerpEnv(split.pages, split.truth, SerpConfig(n_max=20, slate_size=5))
    obs, _ = env.reset(seed=0)
    assert obs["mask"][16:].sum() == 0
    with pytest.raises(ValueError, match="masked slot"):
        env.step(np.array([0, 1, 2, 3, 17]))


def test_sync_vector_env(scored):
    pages, truth = scored
    fns = [
        lambda: gym.make("smar/Serp-v0", pages=pages, truth=truth, config={"n_max": 16, "slate_size": 5})
        for _ in range(3)
    ]
    venv = gym.vector.SyncVectorEnv(fns)
    obs, _ = venv.reset(seed=11)
    assert obs["features"].shape[0] == 3
    venv.single_action_space.seed(0)
    total = 0.0
    for _ in range(12):
        # The batched MultiDiscrete space samples repeats; valid slates come from the single space.
        obs, r, term, trunc, info = venv.step(np.stack([venv.single_action_space.sample() for _ in range(3)]))
        assert r.shape == (3,) and "page_id" in info  # a reset step (autoreset) has no clicks
        total += r.sum()
    assert total > 0
    venv.close()


def test_named_rewards(scored):
    """The env pays the named reward: `clicks` pays each click; `success` pays gamma^rank of the
    first satisfying event on the first page, delta times that after one reformulation."""
    pages, truth = scored
    cfg = {"n_max": 16, "slate_size": 5, "reward": {"name": "clicks"}}
    env = gym.make("smar/Serp-v0", pages=pages, truth=truth, config=cfg)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(30):
        _, r, term, trunc, info = env.step(env.action_space.sample())
        assert r == info["clicks"]
        if term or trunc:
            env.reset()
    cfg["reward"] = "success"
    env = gym.make("smar/Serp-v0", pages=pages, truth=truth, config=cfg)
    env.reset(seed=0)
    env.action_space.seed(0)
    seen = set()
    for _ in range(300):
        _, r, term, trunc, info = env.step(env.action_space.sample())
        if r > 0:
            rank = round(np.log(r / 0.5 ** info["query_index"]) / np.log(0.9))
            assert r == pytest.approx(0.9**rank * 0.5 ** info["query_index"], rel=1e-5)
            assert info["satisfied"] and term
            seen.add(info["query_index"])
        else:
            assert not info["satisfied"]
        if term or trunc:
            env.reset()
    assert seen
