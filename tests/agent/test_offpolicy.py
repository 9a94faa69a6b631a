"""The off-policy update on simulated logs: exact propensities, and a synthetic reward whose better
ranking is known (agent.online.diagnose)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from agent.offpolicy import UpdateConfig, offpolicy_update
from agent.online.diagnose import known_answer, propensity_check, simulated_batch
from envs.reward import RewardConfig


def test_logged_propensities_are_the_serving_policys_own(tiny_run) -> None:
    model, _ = tiny_run.reranker()
    batch = simulated_batch(model, tiny_run.split("traffic"), 0.5, 40, seed=0, reward=RewardConfig())
    assert len(batch) > 40
    chk = propensity_check(model, batch)
    assert chk["max_abs_logp_diff"] < 1e-4  # the update's importance ratio starts at 1
    assert abs(chk["mean_ratio"] - 1) < 1e-4


@pytest.mark.parametrize(
    "cfg",
    [
        UpdateConfig(epochs=4, minibatch=64),
        UpdateConfig(epochs=4, minibatch=64, body_lr_scale=0.0, offset_lr_scale=10.0),
        UpdateConfig(body_lr_scale=0.0, offset_lr_scale=10.0, offset_params="bias", objective="dr"),
    ],
)
def test_update_moves_toward_the_known_better_ranking(tiny_run, cfg) -> None:
    """Reward = examination x [item is an answer]: the best ranking puts answers on top. The
    candidate's exact expected reward (Monte Carlo over its PL rankings) rises above serving's."""
    model, _ = tiny_run.reranker()
    ka = known_answer(model, tiny_run.split("traffic"), cfg, 0.5, 400, target=0.0, modality="answer")
    assert ka["true_candidate"] > ka["true_serving"] + 0.01, ka


def test_offset_only_update_leaves_the_rest_as_served(tiny_run) -> None:
    model, _ = tiny_run.reranker()
    assert model.offset_head is not None
    batch = simulated_batch(model, tiny_run.split("traffic"), 0.5, 40, seed=1, reward=RewardConfig())
    cand, _ = offpolicy_update(model, batch, 0.0, UpdateConfig(epochs=1, minibatch=32, body_lr_scale=0.0))
    moved = [
        n
        for (n, p), q in zip(cand.named_parameters(), model.parameters())
        if not np.allclose(p.detach(), q.detach())
    ]
    assert moved and all(n.startswith("offset_head") for n in moved)
    with pytest.raises(ValueError):
        replace(UpdateConfig(), body_lr_scale=0.0, offset_lr_scale=0.0)


def test_offset_only_scores_equal_the_full_forward(tiny_run) -> None:
    """The offset-only update's cached item scores + re-applied head are the network's own scores."""
    import copy

    import torch

    from agent.offpolicy import _scorers
    from pretrain.page import collate

    model, _ = tiny_run.reranker()
    batch = simulated_batch(model, tiny_run.split("traffic"), 0.5, 20, seed=2, reward=RewardConfig())
    pb = collate(batch.pages, int(batch.pages.sizes.max()))
    cand = copy.deepcopy(model)
    with torch.no_grad():
        cand.offset_head.bias.add_(0.3)  # the head moved: the cached part must not include it
    score, ref = _scorers(cand, model, pb, UpdateConfig(body_lr_scale=0.0))
    i = torch.arange(len(pb.mask))
    with torch.no_grad():
        full = cand(pb.features, pb.modality, pb.mask, pb.query, pb.user)
        assert torch.allclose(score(i), full, atol=1e-4)
        assert torch.allclose(ref(i), model(pb.features, pb.modality, pb.mask, pb.query, pb.user), atol=1e-4)
