"""The constrained PPO learner: the torch agreement matches envs.metrics, the constraint term's gradient
moves scores toward each modality's single-modal order, and dual ascent moves the multiplier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import DEFAULT_OPTIMIZER, ENTROPY_KEY
from ray.rllib.evaluation.postprocessing import Postprocessing

from agent.learner import (
    BODY_OPTIMIZER,
    MULTIPLIER,
    OFFSET_OPTIMIZER,
    TRAIN_CONSISTENCY,
    ConstraintConfig,
    scaled_schedule,
    topk_agreement,
    trust_region_stats,
)
from agent.learner_connectors import POSITION_ADVANTAGES, DropBootstrapRows, position_advantages
from agent.rl_module import SCORES, scratch_model_config
from envs.metrics import shown_order_agreement, within_modality_agreement
from pretrain import plackett_luce as pl


def test_torch_agreement_matches_envs_metrics():
    rng = np.random.default_rng(0)
    b, n, k = 20, 12, 5
    scores = rng.normal(size=(b, n)).round(1)  # rounding creates ties in the scores (count half)
    ref = rng.integers(0, 4, size=(b, n)).astype(float)  # ties in the reference (skipped)
    mod = rng.integers(0, 3, size=(b, n))
    sizes = rng.integers(6, n + 1, size=b)
    mask = np.arange(n)[None, :] < sizes[:, None]
    t = [torch.as_tensor(x) for x in (scores, ref, mod, mask)]
    mass, pairs = topk_agreement(*t)
    m_all = p_all = 0.0
    for i in range(b):
        a, c = within_modality_agreement(scores[i, : sizes[i]], ref[i, : sizes[i]], mod[i, : sizes[i]])
        m_all, p_all = m_all + (a * c if c else 0.0), p_all + c
    assert int(pairs) == p_all and float(mass) == pytest.approx(m_all)
    mass, pairs = topk_agreement(
        torch.as_tensor(scores + 1e-6 * np.arange(n)), *t[1:], k=k
    )  # no ties: unique top-k
    m_k = p_k = 0.0
    for i in range(b):
        s = scores[i, : sizes[i]] + 1e-6 * np.arange(sizes[i])
        shown = np.argsort(-s, kind="stable")[:k]
        a, c = shown_order_agreement(shown, ref[i, : sizes[i]], mod[i, : sizes[i]])
        m_k, p_k = m_k + (a * c if c else 0.0), p_k + c
    assert int(pairs) == p_k and float(mass) == pytest.approx(m_k)


def _batch(env, n: int = 12):
    obs = []
    env.reset(seed=0)
    for s in range(n):
        obs.append(env.reset(options={"session": s})[0])
    o = {k: torch.as_tensor(np.stack([x[k] for x in obs])) for k in obs[0]}
    return o


def _loss_inputs(learner, o):
    """A PPO batch whose advantages are 0: the surrogate has no gradient, only the constraint acts."""
    module = learner.module["default_policy"]
    scores = torch.randn(o["mask"].shape, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    logits = pl.masked_logits(scores, o["mask"], module.temperature)
    actions = pl.greedy_topk(logits.detach(), module.slate_size)
    b = len(scores)
    batch = {
        Columns.OBS: o,
        Columns.ACTIONS: actions,
        Columns.ACTION_DIST_INPUTS: logits.detach(),
        Columns.ACTION_LOGP: pl.log_prob(logits.detach(), actions),
        Postprocessing.ADVANTAGES: torch.zeros(b),
        Postprocessing.VALUE_TARGETS: torch.zeros(b),
    }
    fwd = {Columns.ACTION_DIST_INPUTS: logits, SCORES: scores}
    return scores, batch, fwd


def _agreement(scores, o):
    mass, pairs = topk_agreement(scores.detach(), o["single_modal_score"], o["modality"], o["mask"])
    return float(mass) / float(pairs)


def test_constraint_gradient_moves_scores_toward_single_modal_order(scored_env, make_learner):
    learner = make_learner(multiplier_init=1.0)
    o = _batch(scored_env)
    scores, batch, fwd = _loss_inputs(learner, o)
    before = _agreement(scores, o)
    for _ in range(40):
        scores.grad = None
        loss = learner.compute_loss_for_module(
            module_id="default_policy", config=learner.config, batch=batch, fwd_out=fwd
        )
        loss.backward()
        with torch.no_grad():
            scores -= 20.0 * scores.grad
        fwd[Columns.ACTION_DIST_INPUTS] = pl.masked_logits(scores, o["mask"], 1.0)
        fwd[SCORES] = scores
    after = _agreement(scores, o)
    assert before < 0.7 and after > 0.95, (before, after)

    # Constraint off: the same loss puts no gradient on the scores (advantages are 0).
    off = make_learner(enabled=False, multiplier_init=1.0)
    s2, batch2, fwd2 = _loss_inputs(off, o)
    off.compute_loss_for_module(
        module_id="default_policy", config=off.config, batch=batch2, fwd_out=fwd2
    ).backward()
    assert s2.grad is None or s2.grad.abs().max().item() < 1e-6


def test_dual_ascent_raises_multiplier_below_target_and_lowers_it_above(scored_env, make_learner):
    o = _batch(scored_env)
    for target, direction in ((1.0, 1), (0.0, -1)):
        learner = make_learner(target=target, multiplier_init=1.0, multiplier_lr=2.0)
        _, batch, fwd = _loss_inputs(learner, o)
        learner.compute_loss_for_module(
            module_id="default_policy", config=learner.config, batch=batch, fwd_out=fwd
        )
        learner.after_gradient_based_update(timesteps={})
        lam = learner.multipliers["default_policy"]
        assert (lam - 1.0) * direction > 0, (target, lam)
        assert learner.metrics.peek(("default_policy", MULTIPLIER)) == pytest.approx(lam)
        assert 0.0 <= learner.metrics.peek(("default_policy", TRAIN_CONSISTENCY)) <= 1.0
        state = learner.get_state()
        assert state["constraint"]["multipliers"]["default_policy"] == lam


def test_reference_kl_is_kept_outside_the_trained_module(scored_env, make_learner, tiny_world, tmp_path):
    from agent.rl_module import build_reranker
    from pretrain.checkpoint import save_checkpoint

    mc = scratch_model_config(tiny_world.traffic.pages, seed=0, hidden=16, heads=2, layers=1)
    save_checkpoint(build_reranker(mc), tmp_path / "smar")
    learner = make_learner(reference_checkpoint=str(tmp_path / "smar"), reference_kl_coeff=0.5)
    trained = {id(p) for p in learner.module["default_policy"].parameters()}
    assert learner._reference is not None
    assert not trained & {id(p) for p in learner._reference.parameters()}
    assert not any(p.requires_grad for p in learner._reference.parameters())
    o = _batch(scored_env)
    _, batch, fwd = _loss_inputs(learner, o)
    learner.compute_loss_for_module(
        module_id="default_policy", config=learner.config, batch=batch, fwd_out=fwd
    )
    assert learner.metrics.peek(("default_policy", "reference_kl")) > 0


def test_offset_head_is_a_second_named_optimizer_on_the_scaled_schedule(make_learner):
    learner = make_learner(offsets=True, offset_lr_scale=10.0)
    opts = dict(learner.get_optimizers_for_module("default_policy"))
    assert set(opts) == {DEFAULT_OPTIMIZER, OFFSET_OPTIMIZER}
    head = {id(p) for p in learner.module["default_policy"].reranker.offset_head.parameters()}
    body, fast = opts[DEFAULT_OPTIMIZER], opts[OFFSET_OPTIMIZER]
    assert {id(p) for g in fast.param_groups for p in g["params"]} == head
    assert not head & {id(p) for g in body.param_groups for p in g["params"]}
    # RLlib's own scheduler moves both learning rates: the head's is the body's x 10 at every step
    learner.after_gradient_based_update(timesteps={"num_env_steps_sampled_lifetime": 0})
    lr = learner.config.lr
    assert body.param_groups[0]["lr"] == pytest.approx(lr)
    assert fast.param_groups[0]["lr"] == pytest.approx(10 * lr)
    assert scaled_schedule([[0, 1e-3], [100, 0.0]], 10.0) == [[0, 1e-2], [100, 0.0]]
    plain = make_learner(offsets=True)  # scale 1: one optimizer, RLlib's behaviour
    assert len(plain.get_optimizers_for_module("default_policy")) == 1


def test_body_lr_scale_zero_trains_the_layout_and_value_head_only(make_learner):
    learner = make_learner(offsets=True, offset_lr_scale=10.0, body_lr_scale=0.0)
    opts = dict(learner.get_optimizers_for_module("default_policy"))
    assert set(opts) == {DEFAULT_OPTIMIZER, OFFSET_OPTIMIZER, BODY_OPTIMIZER}
    module = learner.module["default_policy"]
    head = {id(p) for p in module.reranker.offset_head.parameters()}
    body = {id(p) for p in module.reranker.parameters()} - head
    ids = {k: {id(p) for g in o.param_groups for p in g["params"]} for k, o in opts.items()}
    assert ids[BODY_OPTIMIZER] == body and ids[OFFSET_OPTIMIZER] == head
    assert ids[DEFAULT_OPTIMIZER] == {id(p) for p in module.value_head.parameters()}
    learner.after_gradient_based_update(timesteps={"num_env_steps_sampled_lifetime": 0})
    assert opts[BODY_OPTIMIZER].param_groups[0]["lr"] == 0.0
    # a step moves the offset head but leaves every item score's within-modality order as it was
    before = {n: p.detach().clone() for n, p in module.reranker.named_parameters()}
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    for o in opts.values():
        o.step()
    moved = {n for n, p in module.reranker.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.startswith("offset_head") for n in moved)
    with pytest.raises(ValueError, match="body_lr_scale"):
        ConstraintConfig(body_lr_scale=-1.0)


def test_apply_gradients_checks_finiteness_once_and_keeps_rllibs_nan_handling(make_learner):
    """Finite gradients: every optimizer steps (the parameters move), and RLlib's per-parameter
    checks are skipped for that call only; a non-finite gradient still takes RLlib's path (set to
    zero, so the step leaves no NaN)."""
    for bad in (False, True):
        learner = make_learner()
        params = dict(learner._params)
        before = {pid: p.detach().clone() for pid, p in params.items()}
        grads = {pid: torch.full_like(p, 0.01) for pid, p in params.items()}
        if bad:
            first = next(iter(grads))
            grads[first] = torch.full_like(grads[first], float("nan"))
        learner.apply_gradients(grads)
        assert learner.config.torch_skip_nan_gradients is False
        for pid, p in params.items():
            assert torch.isfinite(p).all()
            assert not torch.equal(p.detach(), before[pid]) or (bad and pid is first)


def test_trust_region_stats_are_the_clip_share_and_k3_kl():
    log_ratio = torch.log(torch.tensor([1.0, 1.1, 0.5, 2.0]))
    stats = trust_region_stats(log_ratio, 0.2)
    assert stats["clip_fraction"] == pytest.approx(0.5)
    r = log_ratio.exp()
    assert stats["approx_kl"] == pytest.approx(float(((r - 1) - log_ratio).mean()))
    assert stats["approx_kl"] > 0 and trust_region_stats(torch.zeros(3), 0.2)["approx_kl"] == 0.0


def test_constraint_config_validates():
    with pytest.raises(ValueError, match="target"):
        ConstraintConfig(target=1.5)
    with pytest.raises(ValueError, match="reference_checkpoint"):
        ConstraintConfig(reference_kl_coeff=0.1)
    with pytest.raises(ValueError, match="unknown"):
        ConstraintConfig.from_dict({"lagrange": 1.0})
    with pytest.raises(ValueError, match="offset_lr_scale"):
        ConstraintConfig(offset_lr_scale=0.0)
    with pytest.raises(ValueError, match="ratio"):
        ConstraintConfig(ratio="page")


def _ppo_batch(learner, o, seed: int = 5):
    """A PPO batch with random advantages, sampled actions and a moved policy (ratios != 1)."""
    module = learner.module["default_policy"]
    g = torch.Generator().manual_seed(seed)
    old = pl.masked_logits(torch.randn(o["mask"].shape, generator=g), o["mask"], 1.0)
    actions = pl.sample_topk(old, module.slate_size, g)
    scores = (torch.randn(o["mask"].shape, generator=g) * 0.3).requires_grad_(True)
    logits = pl.masked_logits(old.detach() + scores, o["mask"], 1.0)
    b = len(actions)
    batch = {
        Columns.OBS: o,
        Columns.ACTIONS: actions,
        Columns.ACTION_DIST_INPUTS: old,
        Columns.ACTION_LOGP: pl.log_prob(old, actions),
        Postprocessing.ADVANTAGES: torch.randn(b, generator=g),
        Postprocessing.VALUE_TARGETS: torch.randn(b, generator=g),
    }
    return scores, batch, {Columns.ACTION_DIST_INPUTS: logits, SCORES: logits}


def test_slate_ratio_loss_is_rllibs_ppo_loss(scored_env, make_learner):
    learner = make_learner(enabled=False)
    _, batch, fwd = _ppo_batch(learner, _batch(scored_env))
    kw = dict(module_id="default_policy", config=learner.config, batch=batch, fwd_out=fwd)
    ours = learner.compute_loss_for_module(**kw)
    rllib = PPOTorchLearner.compute_loss_for_module(learner, **kw)
    assert float(ours.detach()) == pytest.approx(float(rllib.detach()), rel=1e-6, abs=1e-7)


def test_unused_entropy_is_estimated_once_after_the_update_from_the_same_draws(scored_env, make_learner):
    learner = make_learner(enabled=False)  # entropy_coeff 0: the entropy is only logged
    _, batch, fwd = _ppo_batch(learner, _batch(scored_env))
    kw = dict(module_id="default_policy", config=learner.config, batch=batch, fwd_out=fwd)
    dist = (
        learner.module["default_policy"]
        .get_train_action_dist_cls()
        .from_logits(fwd[Columns.ACTION_DIST_INPUTS])
    )
    torch.manual_seed(7)
    expected = dist.entropy().mean().detach()
    after_estimate = torch.rand(4)
    torch.manual_seed(7)
    learner.compute_loss_for_module(**kw)
    assert torch.equal(torch.rand(4), after_estimate)  # the loss took exactly the estimate's draws
    learner._log_deferred_entropy()
    assert float(learner.metrics.peek(("default_policy", ENTROPY_KEY))) == float(expected)


def test_position_ratio_loss_golden(scored_env, make_learner):
    learner = make_learner(enabled=False, ratio="position")
    scores, batch, fwd = _ppo_batch(learner, _batch(scored_env))
    k = learner.module["default_policy"].slate_size
    adv_k = torch.randn(len(scores), k, generator=torch.Generator().manual_seed(2))
    batch[POSITION_ADVANTAGES] = adv_k
    learner._ppo_loss("default_policy", learner.module["default_policy"], learner.config, batch, fwd, None)
    # by hand: one clipped surrogate per position with its own ratio and advantage, summed over positions
    new = pl.stepwise_log_probs(fwd[Columns.ACTION_DIST_INPUTS], batch[Columns.ACTIONS])
    old = pl.stepwise_log_probs(batch[Columns.ACTION_DIST_INPUTS], batch[Columns.ACTIONS])
    r = (new - old).exp()
    c = learner.config.clip_param
    surrogate = torch.min(adv_k * r, adv_k * r.clamp(1 - c, 1 + c)).sum(-1)
    values = learner.module["default_policy"].compute_values(batch)
    vf = (values - batch[Postprocessing.VALUE_TARGETS]).pow(2).clamp(0, learner.config.vf_clip_param)
    expected = (-surrogate + learner.config.vf_loss_coeff * vf).mean()
    got = learner._ppo_loss(
        "default_policy", learner.module["default_policy"], learner.config, batch, fwd, None
    )
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    # per-position clip shares are smaller than the slate's on the same moved policy
    slate = (new.sum(-1) - batch[Columns.ACTION_LOGP]).exp()
    assert ((r - 1).abs() > c).float().mean() < ((slate - 1).abs() > c).float().mean()


@pytest.mark.parametrize("layout_ratio", ["joint", "own"])
def test_layout_ratio_golden(scored_env, make_learner, layout_ratio):
    """joint: the layout's Gaussian ratio multiplies the slate's inside one clipped surrogate; own: it
    has its own clipped surrogate beside the slate's (the items' ratio alone)."""
    from agent import layout_exploration as layout

    learner = make_learner(enabled=False, layout_ratio=layout_ratio)
    module = learner.module["default_policy"]
    _, batch, fwd = _ppo_batch(learner, _batch(scored_env))
    g = torch.Generator().manual_seed(3)
    sigma, b = 2.0, len(batch[Columns.ACTIONS])
    noise = torch.randn(b, 4, generator=g) * sigma
    moved = noise - torch.randn(b, 4, generator=g) * 0.8  # the noise re-centred on a moved layout
    batch[layout.LAYOUT_NOISE] = noise
    fwd[layout.LAYOUT_LOGP] = layout.log_density(moved, sigma)
    module.layout_noise = sigma
    try:
        got = learner._ppo_loss("default_policy", module, learner.config, batch, fwd, None)
        values = module.compute_values(batch)
    finally:
        module.layout_noise = 0.0
    adv, c = batch[Postprocessing.ADVANTAGES], learner.config.clip_param
    r_items = (
        pl.log_prob(fwd[Columns.ACTION_DIST_INPUTS], batch[Columns.ACTIONS]) - batch[Columns.ACTION_LOGP]
    ).exp()
    r_layout = (layout.log_density(moved, sigma) - layout.log_density(noise, sigma)).exp()

    def clipped(r):
        return torch.min(adv * r, adv * r.clamp(1 - c, 1 + c))

    surrogate = (
        clipped(r_items * r_layout) if layout_ratio == "joint" else clipped(r_items) + clipped(r_layout)
    )
    vf = (values - batch[Postprocessing.VALUE_TARGETS]).pow(2).clamp(0, learner.config.vf_clip_param)
    expected = (-surrogate + learner.config.vf_loss_coeff * vf).mean()
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    with pytest.raises(ValueError, match="layout_ratio"):
        ConstraintConfig(layout_ratio="both")


def test_position_advantages_remove_the_reward_above_each_position():
    adv = torch.tensor([1.0, -1.0, 0.5])
    raw = torch.tensor([2.0, -2.0, 0.0])  # std 1.633
    rewards = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.0], [9.0, 9.0, 9.0]])
    real = torch.tensor([True, True, False])  # the last row is a bootstrap row: it earns nothing
    out = position_advantages(adv, raw, rewards, real)
    s = float(raw.std(unbiased=False))
    prefix = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.0]])
    mean = prefix[:2].mean(0)
    assert torch.allclose(out, adv[:, None] - (prefix - mean) / s)
    assert torch.allclose(out[:, 0], adv)  # nothing is shown above the first position


def test_drop_bootstrap_rows_keeps_the_real_rows_of_every_column():
    batch = {
        "default_policy": {
            Columns.LOSS_MASK: torch.tensor([True, False, True, True, False]),
            Columns.OBS: {"mask": torch.arange(10.0).reshape(5, 2)},
            Postprocessing.ADVANTAGES: torch.arange(5.0),
        }
    }
    out = DropBootstrapRows()(rl_module=None, batch=batch, episodes=[])["default_policy"]
    assert Columns.LOSS_MASK not in out
    assert out[Postprocessing.ADVANTAGES].tolist() == [0.0, 2.0, 3.0]
    assert out[Columns.OBS]["mask"].tolist() == [[0.0, 1.0], [4.0, 5.0], [6.0, 7.0]]


def test_reference_kl_with_layout_exploration_is_zero_at_smar_and_the_layouts_kl_after_a_shift(
    scored_env, make_learner, tiny_world, tmp_path
):
    """Golden: with layout exploration the KL to SMAR compares SMAR's slate at the page's sampled
    layout with the policy's, plus the Gaussian layouts' KL. At the SMAR weights it is 0; shifting the
    offset head's bias by delta leaves every slate as it was at the same layout and adds
    |delta_rel|^2 / (2 sigma^2) per page."""
    from agent import layout_exploration as layout
    from agent.rl_module import build_reranker
    from pretrain.checkpoint import save_checkpoint

    sigma = 2.0
    mc = scratch_model_config(
        tiny_world.traffic.pages, seed=0, hidden=16, heads=2, layers=1, modality_offsets=True
    )
    save_checkpoint(build_reranker(mc), tmp_path / "smar")
    learner = make_learner(
        offsets=True,
        layout_noise=sigma,
        reference_checkpoint=str(tmp_path / "smar"),
        reference_kl_coeff=1.0,
        kl_samples=2,
    )
    module = learner.module["default_policy"].unwrapped()
    o = _batch(scored_env)
    delta = torch.tensor([0.3, 1.0, -0.5, 0.0])

    def reference_kl() -> float:
        with torch.no_grad():
            scores = module.scores(o)
            mean = module.layout_mean(o)
            noise = layout.sample_noise(len(scores), 4, sigma, scores)
            logits = module.logits(o, layout.layout_scores(scores, noise, o["modality"]))
        actions = pl.greedy_topk(logits, module.slate_size)
        batch = {
            Columns.OBS: o,
            Columns.ACTIONS: actions,
            Columns.ACTION_DIST_INPUTS: logits,
            Columns.ACTION_LOGP: pl.log_prob(logits, actions) + layout.log_density(noise, sigma),
            Postprocessing.ADVANTAGES: torch.zeros(len(scores)),
            Postprocessing.VALUE_TARGETS: torch.zeros(len(scores)),
            layout.LAYOUT_MEAN: mean,
            layout.LAYOUT_NOISE: noise,
        }
        fwd = module._forward_train(batch)
        learner.compute_loss_for_module(
            module_id="default_policy", config=learner.config, batch=batch, fwd_out=fwd
        )
        return float(learner.metrics.peek(("default_policy", "reference_kl")))

    assert reference_kl() == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        module.reranker.offset_head.bias += delta
    rel = delta[1:] - delta[0]
    assert reference_kl() == pytest.approx(float((rel**2).sum()) / (2 * sigma**2), rel=1e-4)
