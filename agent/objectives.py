"""The two objectives of the off-policy update (agent.offpolicy.offpolicy_update builds a `Fit` and
runs one of them on the candidate):

  ppo  PPO's clipped surrogate on the logged rankings, per position, with normalised reward-to-go
       advantages, minibatch epochs (the objective `smar train`'s learner also uses, off-policy here);
  dr   ascent on the cascade doubly robust estimate (agent.ope) of the candidate's value on the logs
       minus their logged reward, pessimistic by `pessimism` standard errors: the same paired
       difference whose lower bound the publish gate (agent.gate) certifies on its own sessions. Its
       reward model (per modality and position) carries the low-variance part of the signal (a changed
       modality's reward shows in it directly); the importance-weighted part corrects its bias.
Both add the shared constraint (agent.constraint) with a dual step per period.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from agent.constraint import Lagrangian
from agent.ope import cascade_dr, cascade_tensors, logged_reward_model, prefix_weights
from pretrain import plackett_luce as pl

if TYPE_CHECKING:
    from agent.offpolicy import LoggedBatch, UpdateConfig


@dataclass
class Fit:
    """What either objective's loop works on (offpolicy_update builds it once)."""

    cfg: UpdateConfig
    batch: LoggedBatch
    tensors: tuple  # _tensors(batch): page batch, ranking, logged log-propensities, advantages, temperature
    score: Any  # impressions -> the candidate's (differentiable) scores (_scorers)
    reference: Any  # impressions -> the serving policy's scores
    opt: torch.optim.Optimizer
    lagrangian: Lagrangian
    history: dict
    target: float  # the consistency target of the dual step


def ppo_epochs(fit: Fit) -> None:
    """The PPO objective: `epochs` passes of minibatch steps, one dual step per epoch."""
    cfg, batch, score, reference, lagrangian, history = (
        fit.cfg,
        fit.batch,
        fit.score,
        fit.reference,
        fit.lagrangian,
        fit.history,
    )
    pb, ranking, logged_logp, adv, temp = fit.tensors
    k = ranking.shape[1]
    rng = np.random.default_rng(cfg.seed)
    for _ in range(cfg.epochs):
        for idx in np.array_split(rng.permutation(len(batch)), max(len(batch) // cfg.minibatch, 1)):
            i = torch.from_numpy(idx)
            mask = pb.mask[i]
            scores = score(i)
            logits = pl.masked_logits(scores, mask) / temp[i]
            logp = pl.stepwise_log_probs(logits, ranking[i])
            ratio = torch.exp(logp - logged_logp[i])
            a = adv[i]
            ppo = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - cfg.clip, 1 + cfg.clip) * a).mean()
            known = mask & pb.has_score[i]
            penalty, hinge = lagrangian.penalty(scores, pb.single_modal_score[i], pb.modality[i], known)
            with torch.no_grad():
                ref_logits = pl.masked_logits(reference(i), mask) / temp[i]
            kl = pl.kl_estimate(ref_logits, logits, k, cfg.kl_samples).mean()
            _step(fit.opt, ppo + penalty + cfg.kl_coeff * kl, cfg)
            history["objective"].append(ppo.item())
            history["hinge"].append(hinge.item())
            history["kl"].append(kl.item())
        _dual(lagrangian, fit.target, history)


def dr_steps(fit: Fit) -> None:
    """The DR objective: full-batch steps on minus the pessimistic cascade DR estimate of the
    candidate-minus-logged difference (agent.ope.cascade_dr with a reward model fitted on the batch),
    plus the constraint; a dual step every `dr_steps // epochs` steps."""
    cfg, batch, lagrangian, history = fit.cfg, fit.batch, fit.lagrangian, fit.history
    pb, ranking, logged_logp, _, temp = fit.tensors
    reward = torch.from_numpy(batch.reward).float()
    q = logged_reward_model(batch.pages, batch.ranking, batch.reward)
    q_table = torch.from_numpy(q.table).float()
    i = torch.arange(len(batch))
    rng = np.random.default_rng(cfg.seed)
    period = max(cfg.dr_steps // max(cfg.epochs, 1), 1)
    for s in range(cfg.dr_steps):
        scores = fit.score(i)
        logits = pl.masked_logits(scores, pb.mask) / temp
        target_logp, q_shown, q_exp = cascade_tensors(logits, pb.modality, ranking, q_table)
        w = prefix_weights(logged_logp, target_logp, cfg.max_weight)
        d = cascade_dr(w, reward, q_shown, q_exp) - reward.sum(1)
        lower = d.mean() - cfg.pessimism * d.std() / np.sqrt(len(d))
        # the constraint's pairwise hinge is quadratic in the page size: a minibatch of it per step
        j = torch.from_numpy(rng.choice(len(batch), min(cfg.minibatch, len(batch)), replace=False))
        known = pb.mask[j] & pb.has_score[j]
        penalty, hinge = lagrangian.penalty(scores[j], pb.single_modal_score[j], pb.modality[j], known)
        _step(fit.opt, -lower + penalty, cfg)
        history["objective"].append(-lower.item())
        history["hinge"].append(hinge.item())
        history["kl"].append(float("nan"))
        if (s + 1) % period == 0 or s + 1 == cfg.dr_steps:
            _dual(lagrangian, fit.target, history)


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, cfg: UpdateConfig) -> None:
    opt.zero_grad()
    loss.backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()


def _dual(lagrangian: Lagrangian, target: float, history: dict[str, list[float]]) -> None:
    agreement = lagrangian.dual_step(target)
    history["train_consistency"].append(float("nan") if agreement is None else agreement)
    history["multiplier"].append(lagrangian.multiplier)
