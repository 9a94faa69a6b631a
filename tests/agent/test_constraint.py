"""The one constrained objective (agent.constraint): golden hinge, agreement and dual step, and the same
figures through both callers (the RLlib learner and the off-policy update)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

from agent.constraint import (
    Lagrangian,
    LagrangianConfig,
    checkpoint_margin,
    consistency_hinge,
    dual_step,
    pooled_consistency_hinge,
    topk_agreement,
)
from agent.learner import ConstraintConfig
from agent.offpolicy import LoggedBatch, UpdateConfig, offpolicy_update
from agent.rl_module import SCORES
from pretrain import plackett_luce as pl
from pretrain.page import collate

# One page, two modalities: modality 0 = items 0, 1 (single-modal order 0 > 1, kept with a gap of
# 0.1); modality 1 = items 2, 3 (order 2 > 3, inverted by 0.5).
SCORES_ = torch.tensor([[2.0, 1.9, 0.0, 0.5]])
REF = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
MOD = torch.tensor([[0, 0, 1, 1]])
MASK = torch.ones(1, 4, dtype=torch.bool)


def test_hinge_golden():
    # sum over modalities of the mean max(0, margin - (f_i - f_j)) over ordered pairs
    assert float(consistency_hinge(SCORES_, REF, MOD, MASK, 0.25)) == pytest.approx(0.15 + 0.75)
    assert float(consistency_hinge(SCORES_, REF, MOD, MASK, 1.0)) == pytest.approx(0.9 + 1.5)
    masked = MASK.clone()
    masked[0, 3] = False  # modality 1 loses its only pair
    assert float(consistency_hinge(SCORES_, REF, MOD, masked, 0.25)) == pytest.approx(0.15)


def test_agreement_golden():
    assert [float(x) for x in topk_agreement(SCORES_, REF, MOD, MASK)] == [1.0, 2.0]
    # top-3 by score = items 0, 1, 3: only modality 0's pair is shown
    assert [float(x) for x in topk_agreement(SCORES_, REF, MOD, MASK, k=3)] == [1.0, 1.0]
    tie = torch.tensor([[1.0, 1.0, 0.0, 0.5]])  # a tie in the scores counts half
    assert [float(x) for x in topk_agreement(tie, REF, MOD, MASK)] == [0.5, 2.0]


def test_dual_step_golden():
    assert dual_step(1.0, target=0.9, agreement=0.8, lr=20.0, maximum=50.0) == pytest.approx(3.0)
    assert dual_step(1.0, target=0.5, agreement=0.9, lr=20.0, maximum=50.0) == 0.0  # projected at 0
    assert dual_step(49.0, target=1.0, agreement=0.0, lr=20.0, maximum=50.0) == 50.0  # and at the max
    lag = Lagrangian(LagrangianConfig(margin=0.25, multiplier_init=2.0, multiplier_lr=10.0), slate_size=4)
    penalty, hinge = lag.penalty(SCORES_, REF, MOD, MASK)
    assert float(penalty) == pytest.approx(2.0 * 0.9) and float(hinge) == pytest.approx(0.9)
    lag.penalty(torch.tensor([[2.0, 1.0, 1.0, 0.0]]), REF, MOD, MASK)  # both pairs concordant
    assert lag.agreement == pytest.approx(3 / 4)  # pooled over the period: (1 + 2) / (2 + 2)
    assert lag.dual_step(target=0.95) == pytest.approx(0.75)
    assert lag.multiplier == pytest.approx(2.0 + 10.0 * 0.2) and lag.agreement is None
    off = Lagrangian(LagrangianConfig(enabled=False, multiplier_init=2.0), slate_size=4)
    assert float(off.penalty(SCORES_, REF, MOD, MASK)[0]) == 0.0
    assert off.dual_step(1.0) == pytest.approx(0.5) and off.multiplier == 2.0


def test_margin_comes_from_the_checkpoint():
    assert checkpoint_margin({"pretrain_config": {"loss": {"margin": 0.4}}}) == 0.4
    assert checkpoint_margin({"update": {"margin": 0.3}}) == 0.3  # a candidate the online loop wrote
    assert checkpoint_margin({}) == ConstraintConfig.margin == UpdateConfig().lagrangian().margin


# --------------------------------------------------------------------------- through both callers
def _observations(env) -> dict[str, torch.Tensor]:
    """Ten sessions' first observations of `env`, stacked as a learner batch's OBS."""
    env.reset(seed=0)
    obs = [env.reset(options={"session": s})[0] for s in range(10)]
    return {k: torch.as_tensor(np.stack([x[k] for x in obs])) for k in obs[0]}


def _greedy_batch(o: dict[str, torch.Tensor], seed: int) -> tuple[torch.Tensor, dict, dict]:
    """(scores, batch, fwd_out) of a learner minibatch whose policy is random scores (seeded) and
    whose actions are their greedy top-5, with zero advantages (so only the constraint moves the loss)."""
    scores = torch.randn(o["mask"].shape, generator=torch.Generator().manual_seed(seed))
    logits = pl.masked_logits(scores, o["mask"], 1.0)
    actions = pl.greedy_topk(logits, 5)
    batch = {
        Columns.OBS: o,
        Columns.ACTIONS: actions,
        Columns.ACTION_DIST_INPUTS: logits,
        Columns.ACTION_LOGP: pl.log_prob(logits, actions),
        Postprocessing.ADVANTAGES: torch.zeros(10),
        Postprocessing.VALUE_TARGETS: torch.zeros(10),
    }
    return scores, batch, {Columns.ACTION_DIST_INPUTS: logits, SCORES: scores}


def test_learner_adds_lambda_hinge_and_takes_the_golden_dual_step(scored_env, make_learner):
    losses = {}
    for enabled in (True, False):
        learner = make_learner(
            enabled=enabled, margin=0.7, multiplier_init=2.0, multiplier_lr=5.0, target=0.99
        )
        o = _observations(scored_env)
        scores, batch, fwd = _greedy_batch(o, 3)
        losses[enabled] = float(
            learner.compute_loss_for_module(
                module_id="default_policy", config=learner.config, batch=batch, fwd_out=fwd
            )
        )
        learner.after_gradient_based_update(timesteps={})
        ref, mod, mask = o["single_modal_score"], o["modality"].long(), o["mask"].bool()
        mass, pairs = topk_agreement(scores, ref, mod, mask, 5)
        agreement = float(mass) / float(pairs)
        expected = dual_step(2.0, 0.99, agreement, 5.0, 50.0) if enabled else 2.0
        assert learner.multipliers["default_policy"] == pytest.approx(expected)
    hinge = float(consistency_hinge(scores, ref, mod, mask, 0.7))
    assert losses[True] - losses[False] == pytest.approx(2.0 * hinge, rel=1e-5)


def test_offpolicy_update_uses_the_same_hinge_agreement_and_dual_step(tiny_run):
    from agent.learner import topk_consistency

    split = tiny_run.split("traffic")
    model, _ = tiny_run.reranker()
    pages = split.pages.select(np.arange(min(len(split.pages), 40)))
    k = 5
    pb = collate(pages, int(pages.sizes.max()))
    with torch.no_grad():
        scores = model.score_batch(pb)
        logits = pl.masked_logits(scores, pb.mask)
        ranking = pl.greedy_topk(logits, k)
        logp = pl.stepwise_log_probs(logits, ranking)
    n = len(pages)
    batch = LoggedBatch(
        pages=pages,
        ranking=ranking.numpy(),
        logged_logp=logp.numpy().astype(np.float64),
        reward=np.zeros((n, k)),
        temperature=np.ones(n),
        event_id=np.arange(n).astype(object),
        model_version=np.array(["v"] * n, dtype=object),
        ts_ms=np.zeros(n, np.int64),
    )
    # lr 0 and one minibatch: the candidate is the serving model, so every figure is the model's own
    cfg = UpdateConfig(epochs=1, minibatch=n, lr=0.0, kl_coeff=0.0, margin=0.7, multiplier_init=2.0)
    cand, stats = offpolicy_update(model, batch, consistency_target=1.0, cfg=cfg)
    known = pb.mask & pb.has_score
    hinge = float(consistency_hinge(scores, pb.single_modal_score, pb.modality, known, 0.7))
    agreement = topk_consistency(model, pages, k)
    assert stats["hinge"] == pytest.approx(hinge, rel=1e-5)
    assert stats["train_consistency"] == pytest.approx(agreement)
    assert stats["multiplier"] == pytest.approx(dual_step(2.0, 1.0, agreement, 20.0, 50.0))
    assert stats["margin"] == 0.7


def test_pooled_hinge_equals_the_hinge_in_value_and_gradient():
    """The PPO learner's pooled form: the same hinge and gradient as `consistency_hinge`, with rows
    that have no real item (RLlib's bootstrap rows) and a modality without pairs in the batch."""
    g = torch.Generator().manual_seed(0)
    b, n = 12, 10
    scores = torch.randn(b, n, generator=g, requires_grad=True)
    ref = torch.randn(b, n, generator=g).round(decimals=1)  # ties in the reference
    mod = torch.randint(0, 3, (b, n), generator=g)  # modality 3 absent
    mask = torch.rand(b, n, generator=g) < 0.8
    mask[[2, 7]] = False  # bootstrap rows
    grads = []
    for fn in (consistency_hinge, pooled_consistency_hinge):
        scores.grad = None
        value = fn(scores, ref, mod, mask, 0.7)
        value.backward()
        grads.append((value.detach(), scores.grad.clone()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-6, atol=1e-7)
    assert float(pooled_consistency_hinge(scores, ref, mod, torch.zeros_like(mask), 0.7)) == 0.0


def test_penalty_at_multiplier_zero_is_measured_without_a_graph():
    """At lambda 0 the hinge is the same value but has no graph (its gradient would be exact zeros),
    and the scores' gradient through the rest of the loss is unchanged; at lambda > 0 it has one."""
    scores = torch.tensor([[2.0, 1.9, 0.0, 0.5]], requires_grad=True)
    zero = Lagrangian(LagrangianConfig(margin=0.25, multiplier_init=0.0), slate_size=4)
    penalty, hinge = zero.penalty(scores, REF, MOD, MASK)
    assert hinge.grad_fn is None and penalty.grad_fn is None
    assert float(hinge) == pytest.approx(0.9) and float(penalty) == 0.0
    (scores.pow(2).sum() + penalty).backward()
    assert torch.equal(scores.grad, 2 * scores.detach())
    two = Lagrangian(LagrangianConfig(margin=0.25, multiplier_init=2.0), slate_size=4)
    penalty, hinge = two.penalty(scores, REF, MOD, MASK)
    assert penalty.grad_fn is not None and float(hinge) == pytest.approx(0.9)


def test_learner_at_multiplier_zero_logs_the_last_minibatchs_hinge(scored_env, make_learner):
    """At lambda 0 the loss is the unconstrained one and the hinge is computed once, after the update,
    for the last minibatch (RLlib keeps the last one's, window 1); with lambda > 0 it is logged as is."""
    from agent.learner import HINGE

    o = _observations(scored_env)
    ref, mod, mask = o["single_modal_score"], o["modality"].long(), o["mask"].bool()
    for multiplier in (0.0, 2.0):
        learner = make_learner(margin=0.7, multiplier_init=multiplier, multiplier_lr=0.0, target=0.99)
        off = make_learner(enabled=False, margin=0.7)
        hinges = []
        for seed in (3, 4):  # two minibatches
            scores, batch, fwd = _greedy_batch(o, seed)
            kw = {"module_id": "default_policy", "batch": batch, "fwd_out": fwd}
            loss = learner.compute_loss_for_module(config=learner.config, **kw)
            plain = off.compute_loss_for_module(config=off.config, **kw)
            hinges.append(float(consistency_hinge(scores, ref, mod, mask, 0.7)))
            assert float(loss - plain) == pytest.approx(multiplier * hinges[-1], rel=1e-5, abs=0.0)
        learner.after_gradient_based_update(timesteps={})
        assert float(learner.metrics.peek(("default_policy", HINGE))) == pytest.approx(hinges[1], rel=1e-5)
