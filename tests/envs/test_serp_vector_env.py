"""The batched SERP vector env against SerpEnv: exactly (one sub-env, equal RNG streams), per page
(the deterministic parts of every step), in distribution (many sessions on the two implementations,
a tolerance that a changed user model fails), and gymnasium's vector-env contract."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.utils.passive_env_checker import check_obs
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers.vector import DictInfoToList

import envs
from envs.metrics import ndcg_at_k, shown_order_agreement
from envs.serp_env import SerpEnv
from envs.serp_vector_env import STEP_KEYS, SerpVectorEnv

CFG = {"n_max": 16, "slate_size": 5}


@pytest.fixture(scope="module")
def scored(tiny_world):
    """Tiny-world traffic pages with single-modal scores filled, one page's left unknown."""
    split = tiny_world.traffic
    rng = np.random.default_rng(0)
    sm = (split.truth.relevance + rng.normal(0, 0.5, split.pages.n_items)).astype(np.float32)
    sm[split.pages.item_slice(3)] = np.nan  # a page without consistency
    return split.pages.with_items(single_modal_score=sm), split.truth


def sync_env(scored, n: int, cfg: dict = CFG) -> SyncVectorEnv:
    pages, truth = scored
    return SyncVectorEnv([lambda: SerpEnv(pages, truth, cfg) for _ in range(n)])


def random_slates(rng: np.random.Generator, n: int, k: int = 5, n_valid: int = 16) -> np.ndarray:
    return np.stack([rng.permutation(n_valid)[:k] for _ in range(n)])


def assert_same_step(ref, got, step: int) -> None:
    for name, a, b in zip(("obs", "reward", "terminated", "truncated"), ref[:4], got[:4]):
        assert data_equivalence(a, b, exact=True), (step, name)
    ri, gi = ref[4], got[4]
    assert set(ri) == set(gi), (step, set(ri) ^ set(gi))
    for key, v in ri.items():
        w = gi[key]
        if key == "position_rewards":  # SerpEnv's tuples (an object array) vs a float array
            v = np.array([x if m else (0.0,) * 5 for x, m in zip(v, ri["_position_rewards"])], np.float64)
        assert np.array_equal(np.asarray(v, w.dtype), w, equal_nan=w.dtype.kind == "f"), (step, key)


def test_one_env_reproduces_serp_env_draw_for_draw(scored):
    """num_envs=1: the same seed and actions give SerpEnv's obs, rewards, ends and infos exactly,
    across autoresets (reset steps included)."""
    pages, truth = scored
    ref, vec = sync_env(scored, 1), SerpVectorEnv(1, pages, truth, CFG)
    assert data_equivalence(ref.reset(seed=5), vec.reset(seed=5), exact=True)
    rng = np.random.default_rng(1)
    ends = 0
    for step in range(600):
        a = random_slates(rng, 1)
        r, g = ref.step(a), vec.step(a)
        assert_same_step(r, g, step)
        ends += bool(g[2][0] or g[3][0])
    assert ends > 100  # many sessions, each reset through the autoreset


def test_each_step_is_serp_env_on_its_page(scored):
    """num_envs=8: every live sub-env's step is SerpEnv's on the page it shows (obs, NDCG,
    consistency, reward = sum of position rewards, the success reward's values) and its sessions
    follow SerpEnv's logic (pages in session order, truncation, termination, autoreset)."""
    pages, truth = scored
    vec = SerpVectorEnv(8, pages, truth, CFG)
    single = vec.single_env
    obs, info = vec.reset(seed=0)
    sessions = list(info["session"])
    t = np.zeros(8, int)
    done = np.zeros(8, bool)
    rng = np.random.default_rng(2)
    gamma, delta = single.config.reward.gamma, single.config.reward.delta
    for _ in range(300):
        a = random_slates(rng, 8)
        obs, rew, term, trunc, info = vec.step(a)
        for i in range(8):
            if done[i]:  # autoreset: a new session's first page, reward 0, no step keys
                assert rew[i] == 0 and not term[i] and not trunc[i] and info["_session"][i]
                assert not any(info["_" + k][i] for k in STEP_KEYS)
                sessions[i], t[i], done[i] = info["session"][i], 0, False
                p = single._sessions[sessions[i]][0]
            else:
                p = single._sessions[sessions[i]][t[i]]
                assert info["page_id"][i] == pages.page_id[p] and info["query_index"][i] == t[i]
                size = int(single._sizes[p])
                rel = single._rel[p, a[i]]
                assert info["ndcg@10"][i] == ndcg_at_k(rel, single._rel[p, :size], 10)
                assert info["ndcg@k"][i] == ndcg_at_k(rel, single._rel[p, :size], 5)
                if p == 3:
                    assert not info["_consistency"][i]
                else:
                    want = shown_order_agreement(a[i], single._sm_raw[p, :size], single._mod_int[p, :size])[0]
                    assert np.array_equal(info["consistency"][i], want, equal_nan=True)
                pos = info["position_rewards"][i]
                assert np.isclose(pos.sum(), rew[i], atol=1e-6)
                if rew[i] > 0:  # success: gamma^rank of the first satisfying event, delta per reformulation
                    k = int(np.flatnonzero(pos)[0])
                    assert np.isclose(rew[i], gamma**k * delta ** t[i]) and info["satisfied"][i]
                assert term[i] == (info["satisfied"][i] or info["abandoned"][i])
                t[i] += 1
                last = t[i] >= min(len(single._sessions[sessions[i]]), single.config.max_queries)
                assert trunc[i] == (not term[i] and last)
                done[i] = term[i] or trunc[i]
                if not done[i]:
                    p = single._sessions[sessions[i]][t[i]]
            want_obs = single._obs(p)
            for key, v in want_obs.items():
                assert np.array_equal(obs[key][i], v), key


def _session_stats(venv, n_envs: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    """Per-episode and per-page samples of a fixed deterministic policy (top-K by slot order)."""
    venv = DictInfoToList(venv)
    venv.reset(seed=seed)
    a = np.tile(np.arange(5), (n_envs, 1))
    ret = np.zeros(n_envs)
    length = np.zeros(n_envs, int)
    out: dict[str, list] = {k: [] for k in ("return", "length", "terminated", "clicks", "satisfied")}
    out.update({k: [] for k in ("reformulated", "abandoned", "position_rewards", "dwell")})
    for _ in range(steps):
        _, r, term, trunc, infos = venv.step(a)
        for i, info in enumerate(infos):
            if "clicks" not in info:
                continue  # an autoreset step
            ret[i] += r[i]
            length[i] += 1
            for k in ("clicks", "satisfied", "reformulated", "abandoned", "dwell"):
                out[k].append(float(info[k]))
            out["position_rewards"].append(np.asarray(info["position_rewards"], float))
            if term[i] or trunc[i]:
                out["return"].append(ret[i])
                out["length"].append(length[i])
                out["terminated"].append(float(term[i]))
                ret[i], length[i] = 0.0, 0
    stats = {k: np.asarray(v, float) for k, v in out.items() if k != "position_rewards"}
    pos = np.stack(out["position_rewards"])
    for k in range(pos.shape[1]):
        stats[f"pos{k}"] = pos[:, k]
    for n in (1, 2, 3):
        stats[f"len{n}"] = (stats["length"] == n).astype(float)
    return stats


def _z_scores(a: dict, b: dict) -> dict[str, float]:
    z = {}
    for k in a:
        se = np.sqrt(a[k].var() / len(a[k]) + b[k].var() / len(b[k]))
        z[k] = abs(a[k].mean() - b[k].mean()) / max(se, 1e-12)
    return z


def test_statistics_match_serp_env_and_a_changed_user_fails(scored):
    """Sessions on SerpVectorEnv (one RNG for 16 sub-envs) and on 16 SerpEnvs (one RNG each) under the
    same policy: every mean (return, episode length and end, clicks, satisfaction, reformulation,
    abandonment, dwell, the reward at each position) agrees within 4.5 standard errors; the same test
    against SerpEnvs whose user reformulates a little less (0.46 -> 0.40) fails."""
    pages, truth = scored
    n, steps = 16, 1500
    ref = _session_stats(sync_env(scored, n), n, steps, seed=1)
    got = _session_stats(SerpVectorEnv(n, pages, truth, CFG), n, steps, seed=2)
    assert len(got["return"]) > 9_000
    z = _z_scores(ref, got)
    assert max(z.values()) < 4.5, z
    other = dict(CFG, user={"reformulate_prob": 0.40})
    changed = _session_stats(sync_env(scored, n, other), n, steps, seed=3)
    assert max(_z_scores(changed, got).values()) > 4.5


def test_gymnasium_vector_contract(scored):
    """Spaces are SerpEnv's batched, the autoreset mode is next-step, seeded resets and steps
    reproduce, observations pass gymnasium's checks, infos have SyncVectorEnv's keys and masks, and
    the registry builds it with vectorization_mode="vector_entry_point"."""
    pages, truth = scored
    vec = gym.make_vec(
        envs.SERP_ENV_ID,
        num_envs=4,
        vectorization_mode="vector_entry_point",
        pages=pages,
        truth=truth,
        config=CFG,
    )
    assert isinstance(vec.unwrapped, SerpVectorEnv) and vec.num_envs == 4
    assert vec.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    single = SerpEnv(pages, truth, CFG)
    assert vec.single_observation_space == single.observation_space
    assert vec.single_action_space == single.action_space
    assert vec.observation_space == gym.vector.utils.batch_space(single.observation_space, 4)
    first = vec.reset(seed=3)
    assert data_equivalence(first, vec.reset(seed=3), exact=True)
    rng = np.random.default_rng(4)
    actions = [random_slates(rng, 4) for _ in range(12)]
    runs = []
    for _ in range(2):
        vec.reset(seed=3)
        runs.append([vec.step(a) for a in actions])
    assert data_equivalence(runs[0], runs[1], exact=True)
    # per sub-env (as RLlib reads them, through DictInfoToList): SerpEnv's reset or step info keys
    reset_keys = set(single.reset(seed=0)[1])
    step_keys = set(single.step(np.arange(5))[4]) | {"consistency"}
    to_list = DictInfoToList(vec)
    for obs, *_, info in runs[0]:
        assert vec.observation_space.contains(obs)
        for i, sub in enumerate(to_list._convert_info_to_list(info)):
            check_obs({k: v[i] for k, v in obs.items()}, vec.single_observation_space, "step")
            assert set(sub) == reset_keys or set(sub) - {"consistency"} == step_keys - {"consistency"}
            assert ("consistency" in sub) == (
                set(sub) != reset_keys and info["page_id"][i] != pages.page_id[3]
            )
    vec.close()


def test_invalid_actions_raise_and_reset_steps_ignore_the_action(scored):
    pages, truth = scored
    vec = SerpVectorEnv(2, pages, truth, CFG)
    with pytest.raises(RuntimeError, match="reset"):
        vec.step(np.zeros((2, 5), int))
    vec.reset(seed=0)
    good = np.array([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    for bad, match in (
        (good[:1], "shape"),
        (np.array([[0, 1, 2, 3, 3], [0, 1, 2, 3, 4]]), "repeats a slot"),
        (np.array([[0, 1, 2, 3, 16], [0, 1, 2, 3, 4]]), r"\[0, 16\)"),
        (good + 0.5, "integer"),
    ):
        with pytest.raises(ValueError, match=match):
            vec.step(bad)
    small = SerpVectorEnv(1, pages, truth, {"n_max": 20, "slate_size": 5})
    small.reset(seed=0)
    with pytest.raises(ValueError, match="masked slot"):
        small.step(np.array([[0, 1, 2, 3, 17]]))
    # an episode ends, then the autoreset step ignores its action (as SyncVectorEnv does)
    done = False
    while not done:
        *_, term, trunc, _ = small.step(np.array([[0, 1, 2, 3, 4]]))
        done = term[0] or trunc[0]
    _, r, *_, info = small.step(np.array([[0, 1, 2, 3, 19]]))
    assert r[0] == 0 and info["_session"][0]
    with pytest.raises(ValueError, match="one int seed"):
        small.reset(seed=[1])
