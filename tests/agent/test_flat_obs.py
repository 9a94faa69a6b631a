"""Flat observations at the RLlib boundary (agent.flat_obs): the same values as the SerpEnv Dict, in the
envs RLlib builds and through the RL module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from agent import flat_obs
from agent.ppo_config import RLlibSerpEnv, RLlibSerpVectorEnv
from agent.rl_module import SCORES, RerankerPolicyModule
from envs.serp_env import SerpEnv
from envs.serp_vector_env import SerpVectorEnv
from pretrain.checkpoint import save_checkpoint
from pretrain.reranker import RerankerConfig, WholePageReranker

SERP = {"n_max": 16, "slate_size": 5}


@pytest.fixture(scope="module")
def env_config(tiny_world):
    return {"pages": tiny_world.traffic.pages, "truth": tiny_world.traffic.truth, "serp": SERP}


def test_flatten_round_trip_and_space(tiny_world):
    env = SerpEnv(tiny_world.traffic.pages, tiny_world.traffic.truth, SERP)
    space, obs = env.observation_space, env.reset(seed=0)[0]
    x = flat_obs.flatten(obs)
    assert flat_obs.flat_space(space).contains(x)
    back = flat_obs.unflatten(torch.as_tensor(np.stack([x, x])), flat_obs.layout(space))
    assert list(back) == list(flat_obs.OBS_KEYS)
    for k, v in obs.items():
        assert back[k].is_contiguous() and torch.equal(back[k][1], torch.as_tensor(v)), k
    with pytest.raises(ValueError, match="width"):
        flat_obs.unflatten(torch.zeros(2, x.shape[0] + 1), flat_obs.layout(space))


def test_rllib_envs_return_the_dict_observations_flat(env_config):
    """Draw for draw, the envs RLlib builds return flatten() of the Dict envs' observations."""
    plain = {"pages": env_config["pages"], "truth": env_config["truth"], "config": SERP}
    vec, flat_vec = SerpVectorEnv(4, **plain), RLlibSerpVectorEnv(env_config | {"num_envs": 4})
    assert flat_vec.single_observation_space == flat_obs.flat_space(vec.single_observation_space)
    o, fo = vec.reset(seed=3)[0], flat_vec.reset(seed=3)[0]
    actions = np.tile(np.arange(SERP["slate_size"]), (4, 1))
    for _ in range(6):
        np.testing.assert_array_equal(fo, flat_obs.flatten(o, batch_dims=1))
        assert flat_vec.observation_space.contains(fo)
        o, r, *_ = vec.step(actions)
        fo, fr, *_ = flat_vec.step(actions)
        np.testing.assert_array_equal(fr, r)
    one, flat_one = SerpEnv(**plain), RLlibSerpEnv(env_config)
    np.testing.assert_array_equal(flat_one.reset(seed=1)[0], flat_obs.flatten(one.reset(seed=1)[0]))
    np.testing.assert_array_equal(flat_one.step(actions[0])[0], flat_obs.flatten(one.step(actions[0])[0]))


def test_module_on_flat_observations_equals_the_dict(tiny_world, env_config, tmp_path):
    """The module gives bit-identical outputs on a flat batch and on the Dict batch."""
    torch.manual_seed(0)
    net = WholePageReranker(RerankerConfig.for_pages(tiny_world.traffic.pages, hidden=16, heads=2, layers=1))
    net.fit_normalizer(tiny_world.traffic.pages)
    save_checkpoint(net, tmp_path / "reranker")
    vec = SerpVectorEnv(6, env_config["pages"], env_config["truth"], SERP)
    obs = vec.reset(seed=0)[0]
    mc = {"checkpoint": str(tmp_path / "reranker"), "layout_noise": 1.0}
    spaces = {
        "dict": vec.single_observation_space,
        "flat": flat_obs.flat_space(vec.single_observation_space),
    }
    batches = {
        "dict": {Columns.OBS: {k: torch.as_tensor(v) for k, v in obs.items()}},
        "flat": {Columns.OBS: torch.as_tensor(flat_obs.flatten(obs, batch_dims=1))},
    }
    outs = {}
    for name, space in spaces.items():
        config = mc | ({flat_obs.LAYOUT_KEY: flat_obs.layout(spaces["dict"])} if name == "flat" else {})
        module = RerankerPolicyModule(
            observation_space=space, action_space=vec.single_action_space, model_config=config
        )
        torch.manual_seed(1)
        explore = module.forward_exploration(batches[name])
        train = module.forward_train(
            batches[name] | {k: v for k, v in explore.items() if k.startswith("layout")}
        )
        outs[name] = (explore, train, module.compute_values(batches[name]))
    for a, b in zip(outs["dict"][:2], outs["flat"][:2]):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert SCORES in outs["flat"][1] and torch.equal(outs["dict"][2], outs["flat"][2])
    with pytest.raises(ValueError, match="obs_layout"):
        RerankerPolicyModule(
            observation_space=spaces["flat"], action_space=vec.single_action_space, model_config=mc
        )
