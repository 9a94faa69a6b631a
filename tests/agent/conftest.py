"""Agent tests run torch single-threaded.

On this shared 2-core machine torch's intra-op thread pool makes small ops (softmax over a [16, 6]
tensor) take ~15 ms instead of ~4 us whenever the other core is busy: the pool waits for a core.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tiny_world, tmp_path_factory):
    """A tiny but real pretrain run (single-modal rankers, merge, SMAR reranker) on the tiny world."""
    from dataclasses import replace

    from pretrain.config import PretrainConfig
    from pretrain.runtime import torch_threads
    from pretrain.train import run_pretrain

    d = PretrainConfig()
    cfg = replace(
        d,
        single_modal=replace(d.single_modal, epochs=4, hidden=16),
        train=replace(d.train, epochs=4, hidden=16, heads=2, layers=1),
    )
    with torch_threads(1):
        return run_pretrain(tiny_world, tmp_path_factory.mktemp("tiny_run"), cfg, progress=False)


@pytest.fixture(scope="module")
def scored_env(tiny_world):
    """A SerpEnv on the tiny world's traffic split whose items carry a fixed random single-modal
    score: any per-modality order will do as the reference for the constraint's loss tests."""
    import numpy as np

    from envs.serp_env import SerpEnv

    pages = tiny_world.traffic.pages
    ref = np.random.default_rng(1).normal(size=pages.n_items).astype(np.float32)
    return SerpEnv(
        pages.with_items(single_modal_score=ref), tiny_world.traffic.truth, {"n_max": 16, "slate_size": 5}
    )


@pytest.fixture(scope="module")
def make_learner(scored_env, tiny_world):
    """Builds a ConstrainedPPOLearner for `scored_env` on a small scratch reranker: `make_learner(offsets,
    layout_noise, **ConstraintConfig fields)` (offsets: with the modality-offset head; layout_noise: the
    module's Gaussian layout exploration)."""
    from ray.rllib.algorithms.ppo import PPOConfig

    from agent.learner import ConstrainedPPOLearner, ConstraintConfig
    from agent.rl_module import module_spec, scratch_model_config

    def build(offsets: bool = False, layout_noise: float = 0.0, **constraint) -> ConstrainedPPOLearner:
        mc = scratch_model_config(
            tiny_world.traffic.pages, seed=0, hidden=16, heads=2, layers=1, modality_offsets=offsets
        )
        mc["layout_noise"] = layout_noise
        cfg = (
            PPOConfig()
            .environment(observation_space=scored_env.observation_space, action_space=scored_env.action_space)
            .rl_module(rl_module_spec=module_spec(mc))
            .learners(
                learner_class=ConstrainedPPOLearner,
                learner_config_dict=ConstraintConfig(**constraint).to_dict(),
            )
            .training(entropy_coeff=0.0, use_kl_loss=False)
        )
        return cfg.build_learner(env=scored_env)

    return build
