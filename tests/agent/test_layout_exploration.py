"""Gaussian layout exploration: the maths (golden), and the RLModule's two-level action whose PPO ratio
is exactly 1 before an update and moves only through the layout's density when only the layout moves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from agent import layout_exploration as layout
from agent.rl_module import SCORES, RerankerPolicyModule
from envs.serp_env import SerpEnv
from pretrain import plackett_luce as pl
from pretrain.checkpoint import save_checkpoint
from pretrain.reranker import RerankerConfig, WholePageReranker

SIGMA, TEMPERATURE = 1.5, 0.5


def test_layout_maths_golden():
    offsets = torch.tensor([[1.0, 3.0, -1.0, 0.5]])
    torch.testing.assert_close(layout.relative(offsets), torch.tensor([[0.0, 2.0, -2.0, -0.5]]))
    eps = torch.tensor([[0.0, 1.5, -3.0, 0.0], [9.0, 0.0, 0.0, 0.0]])
    # -0.5 * sum((eps / sigma)^2) over the free modalities (the first is the reference, never counted)
    torch.testing.assert_close(layout.log_density(eps, SIGMA), torch.tensor([-0.5 * (1.0 + 4.0), 0.0]))
    d_old, n_old, n_new = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.5]]), torch.tensor([[0.0, 2.0]])
    torch.testing.assert_close(layout.recentre(d_old, n_old, n_new), torch.tensor([[0.0, -0.5]]))
    scores = torch.tensor([[1.0, 2.0, 3.0]])
    moved = layout.layout_scores(scores, torch.tensor([[0.0, 10.0]]), torch.tensor([[0, 1, 1]]))
    torch.testing.assert_close(moved, torch.tensor([[1.0, 12.0, 13.0]]))
    torch.manual_seed(0)
    noise = layout.sample_noise(20_000, 4, SIGMA, scores)
    assert (noise[:, 0] == 0).all()
    assert noise[:, 1:].std().item() == pytest.approx(SIGMA, rel=0.02)


@pytest.fixture(scope="module")
def module(tiny_world, tmp_path_factory):
    env = SerpEnv(tiny_world.traffic.pages, tiny_world.traffic.truth, {"n_max": 16, "slate_size": 5})
    torch.manual_seed(0)
    cfg = RerankerConfig.for_pages(
        tiny_world.traffic.pages, hidden=16, heads=2, layers=1, modality_offsets=True
    )
    net = WholePageReranker(cfg)
    net.fit_normalizer(tiny_world.traffic.pages)
    with torch.no_grad():  # an offset head that already prefers some modalities
        net.offset_head.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5])[: net.offset_head.bias.numel()])
    path = tmp_path_factory.mktemp("ck") / "reranker"
    save_checkpoint(net, path)
    mc = {"checkpoint": str(path), "temperature": TEMPERATURE, "layout_noise": SIGMA}
    m = RerankerPolicyModule(
        observation_space=env.observation_space, action_space=env.action_space, model_config=mc
    )
    obs = []
    env.reset(seed=0)
    for s in range(8):
        obs.append(env.reset(options={"session": s})[0])
    return m, {k: torch.as_tensor(np.stack([o[k] for o in obs])) for k in obs[0]}


def _sampled(module, obs):
    m = module
    torch.manual_seed(1)
    with torch.no_grad():
        out = m.forward_exploration({Columns.OBS: obs})
    logits = out[Columns.ACTION_DIST_INPUTS]
    actions = pl.sample_topk(logits, m.slate_size)
    return out, {
        Columns.OBS: obs,
        Columns.ACTIONS: actions,
        Columns.ACTION_DIST_INPUTS: logits,
        Columns.ACTION_LOGP: pl.log_prob(logits, actions),
        layout.LAYOUT_MEAN: out[layout.LAYOUT_MEAN],
        layout.LAYOUT_NOISE: out[layout.LAYOUT_NOISE],
    }


def test_exploration_moves_whole_modalities_by_the_sampled_layout(module):
    m, obs = module
    out, _ = _sampled(m, obs)
    with torch.no_grad():
        scores = m.scores(obs)
        own = layout.relative(m.reranker.layout_offsets(obs["query"], obs["user"]))
    torch.testing.assert_close(out[layout.LAYOUT_MEAN], own)
    noise = out[layout.LAYOUT_NOISE]
    assert (noise[:, 0] == 0).all() and noise[:, 1:].abs().sum() > 0
    real = obs["mask"].bool()
    expected = (scores + noise.gather(1, obs["modality"].long())) / TEMPERATURE
    torch.testing.assert_close(out[Columns.ACTION_DIST_INPUTS][real], expected[real])
    # evaluation and export see the policy's own layout: no noise
    plain = m.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
    torch.testing.assert_close(plain[real], (scores / TEMPERATURE)[real])


def test_ratio_is_one_before_an_update_and_only_the_density_moves_with_the_layout(module):
    m, obs = module
    _, batch = _sampled(m, obs)
    fwd = m.forward_train(batch)
    new_logp = pl.log_prob(fwd[Columns.ACTION_DIST_INPUTS], batch[Columns.ACTIONS]) + fwd[layout.LAYOUT_LOGP]
    old_logp = batch[Columns.ACTION_LOGP] + layout.log_density(batch[layout.LAYOUT_NOISE], SIGMA)
    torch.testing.assert_close(new_logp, old_logp, rtol=1e-5, atol=1e-5)
    assert fwd[SCORES].requires_grad
    # Move only the layout (the offset head's bias) by delta: the slate's conditional probability is
    # unchanged and the density ratio is exactly the Gaussian's.
    delta = torch.tensor([0.3, -0.7, 0.2, 0.9])[: m.reranker.offset_head.bias.numel()]
    with torch.no_grad():
        m.reranker.offset_head.bias.add_(delta)
    try:
        moved = m.forward_train(batch)
    finally:
        with torch.no_grad():
            m.reranker.offset_head.bias.sub_(delta)
    torch.testing.assert_close(
        pl.log_prob(moved[Columns.ACTION_DIST_INPUTS], batch[Columns.ACTIONS]),
        batch[Columns.ACTION_LOGP],
        rtol=1e-5,
        atol=1e-5,
    )
    rel = delta - delta[0]
    expected = layout.log_density(batch[layout.LAYOUT_NOISE] - rel, SIGMA)
    torch.testing.assert_close(moved[layout.LAYOUT_LOGP], expected, rtol=1e-5, atol=1e-5)
