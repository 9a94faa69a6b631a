"""The RLModule: SMAR checkpoint in, exact SMAR policy at step 0, value head outside the scoring path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from agent.distribution import PlackettLuceTopK
from agent.learner_connectors import ValueInputs
from agent.rl_module import SCORES, VALUE_INPUTS, RerankerPolicyModule, scratch_model_config
from envs.serp_env import SerpEnv
from pretrain import plackett_luce as pl
from pretrain.checkpoint import CheckpointError, save_checkpoint
from pretrain.reranker import RerankerConfig, WholePageReranker


@pytest.fixture(scope="module")
def env(tiny_world):
    return SerpEnv(tiny_world.traffic.pages, tiny_world.traffic.truth, {"n_max": 16, "slate_size": 5})


@pytest.fixture(scope="module")
def checkpoint(tiny_world, tmp_path_factory):
    torch.manual_seed(0)
    net = WholePageReranker(RerankerConfig.for_pages(tiny_world.traffic.pages, hidden=16, heads=2, layers=1))
    net.fit_normalizer(tiny_world.traffic.pages)
    path = tmp_path_factory.mktemp("ck") / "reranker"
    save_checkpoint(net, path)
    return path, net.eval()


def _module(env, model_config) -> RerankerPolicyModule:
    return RerankerPolicyModule(
        observation_space=env.observation_space, action_space=env.action_space, model_config=model_config
    )


def _batch(env, n: int = 6) -> dict:
    obs = []
    env.reset(seed=0)
    for s in range(n):
        o, _ = env.reset(options={"session": s})
        obs.append(o)
    return {Columns.OBS: {k: torch.as_tensor(np.stack([o[k] for o in obs])) for k in obs[0]}}


def test_initial_policy_is_exactly_the_checkpoint(env, checkpoint):
    path, net = checkpoint
    module = _module(env, {"checkpoint": str(path), "temperature": 0.5})
    batch = _batch(env)
    o = batch[Columns.OBS]
    out = module.forward_inference(batch)
    logits = out[Columns.ACTION_DIST_INPUTS]
    with torch.no_grad():
        expected = net(o["features"], o["modality"], o["mask"], o["query"], o["user"]) / 0.5
    real = o["mask"].bool()
    torch.testing.assert_close(logits[real], expected[real])
    assert (logits[~real] == pl.NEG).all()
    assert isinstance(module.get_inference_action_dist_cls().from_logits(logits), PlackettLuceTopK)
    # The value head starts at exactly zero.
    assert (module.compute_values(batch) == 0).all()
    # Deterministic action = top-K real slots by score.
    det = module.get_inference_action_dist_cls().from_logits(logits).to_deterministic().sample()
    assert det.shape == (6, 5) and bool(real.gather(1, det).all())


def test_value_head_is_outside_the_scoring_path(env, checkpoint):
    module = _module(env, {"checkpoint": str(checkpoint[0])})
    rer = {id(p) for p in module.reranker.parameters()}
    assert not rer & {id(p) for p in module.value_head.parameters()}
    batch = _batch(env)
    module.compute_values(batch).pow(2).sum().add(module.value_head[-1].bias.sum()).backward()
    assert all(p.grad is None for p in module.reranker.parameters())
    out = module.forward_train(batch)
    assert SCORES in out and out[SCORES].requires_grad


def test_value_inputs_column_and_sampling_without_graph_change_nothing(env, checkpoint):
    module = _module(env, {"checkpoint": str(checkpoint[0])})
    with torch.no_grad():
        torch.nn.init.normal_(module.value_head[-1].weight)  # values that are not all 0
    batch = _batch(env)
    values = module.compute_values(batch)
    cached = ValueInputs()(rl_module={"p": module}, batch={"p": dict(batch)}, episodes=[])["p"]
    assert VALUE_INPUTS in cached and torch.equal(module.compute_values(cached), values)
    # sampling builds no autograd graph, and its logits are the training forward's, bit for bit
    sampled = module.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS]
    trained = module.forward_train(batch)[Columns.ACTION_DIST_INPUTS]
    assert not sampled.requires_grad and trained.requires_grad
    assert torch.equal(sampled, trained.detach())


def test_scratch_modules_are_identical_on_every_worker(env, tiny_world):
    mc = scratch_model_config(tiny_world.traffic.pages, seed=3, hidden=16, heads=2, layers=1)
    a, b = _module(env, mc), _module(env, mc)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    ref = WholePageReranker(RerankerConfig.from_json(mc["reranker_config"]))
    ref.fit_normalizer(tiny_world.traffic.pages)
    torch.testing.assert_close(a.reranker.feat_std, ref.feat_std)
    c = _module(env, {**mc, "seed": 4})
    assert not torch.equal(a.reranker.head[0].weight, c.reranker.head[0].weight)


def test_bad_configs_fail_clearly(env, checkpoint, tmp_path):
    with pytest.raises(ValueError, match="checkpoint"):
        _module(env, {})
    with pytest.raises(ValueError, match="temperature"):
        _module(env, {"checkpoint": str(checkpoint[0]), "temperature": 0})
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text((checkpoint[0] / "manifest.json").read_text())
    (bad / "weights.pt").write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="checksum"):
        _module(env, {"checkpoint": str(bad)})


def test_rows_of_ended_episodes_skip_the_reranker(env, checkpoint):
    """Sampling (forward_exploration) with the ENDED column: live rows get the full forward's logits,
    ended rows a uniform valid distribution over their real slots; MarkEndedEpisodes marks them."""
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    from agent.rl_module import ENDED, MarkEndedEpisodes

    path, _ = checkpoint
    module = _module(env, {"checkpoint": str(path), "temperature": 0.5})
    batch = _batch(env)
    full = module.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS]
    ended = torch.tensor([False, True, False, False, True, False])
    part = module.forward_exploration({**batch, ENDED: ended})[Columns.ACTION_DIST_INPUTS]
    torch.testing.assert_close(part[~ended], full[~ended], rtol=1e-6, atol=1e-6)
    real = batch[Columns.OBS]["mask"].bool()
    assert (part[ended][real[ended]] == 0).all() and (part[ended][~real[ended]] == pl.NEG).all()
    module.get_exploration_action_dist_cls().from_logits(part).sample()  # valid slates for every row
    episodes = []
    for done in (False, True, False):
        ep = SingleAgentEpisode(observation_space=env.observation_space, action_space=env.action_space)
        obs, _ = env.reset(seed=0)
        ep.add_env_reset(observation=obs)
        ep.add_env_step(obs, env.action_space.sample(), 0.0, terminated=done)
        episodes.append(ep)
    out = MarkEndedEpisodes()(rl_module=module, batch={}, episodes=episodes)
    assert [list(v) for v in out[ENDED].values()] == [[False], [True], [False]]
