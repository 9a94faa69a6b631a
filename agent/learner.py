"""Constrained PPO: RLlib's PPO loss + a Lagrangian single-modal consistency term (+ optional KL to SMAR).

THE LOSS (per module, per minibatch; see `ConstrainedPPOLearner.compute_loss_for_module`):

    loss = PPO(clip surrogate + vf + entropy [+ kl to old policy])          # RLlib, unchanged
         + lambda * hinge                                                   # consistency constraint
         + reference_kl_coeff * KL(pi_SMAR || pi_theta)                     # optional, frozen SMAR

  hinge   = SMAR's pairwise hinge (`pretrain.losses.pairwise_consistency`, equal beta_m; `smar train`
            sets the margin the SMAR reranker was pretrained with, the authors' 1 by default) of
            the policy's raw scores against each modality's single-modal order (obs single_modal_score):
            the differentiable surrogate of "keep every modality's internal order".
  lambda  = Lagrange multiplier, dual ascent once per training iteration on the *measured* constraint
            lambda <- clip(lambda + multiplier_lr * (target - agreement), 0, multiplier_max)
            agreement = within-modality pairwise agreement (envs.metrics semantics, computed in torch)
            of the deterministic policy's top-K with the single-modal scores, averaged over the
            iteration's minibatches. target = `target`, or `target_fraction` x the agreement measured
            on the first batch (the SMAR policy itself when fine-tuning from SMAR).
  KL      = chain-rule estimate (pretrain.plackett_luce.kl_estimate) with prefixes sampled from the
            frozen SMAR policy, which lives in the learner only (never a submodule of the trained
            RLModule, so it is neither optimised, synced to env runners nor checkpointed with it).

Configure through `config.training(learner_class=ConstrainedPPOLearner,
learner_config_dict=ConstraintConfig(...).to_dict())`. Multiplier, hinge, agreement, target and KL are
logged every iteration under the module id in the learner results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns

from agent.rl_module import SCORES
from envs.pages import Pages
from pretrain import plackett_luce as pl
from pretrain.checkpoint import load_checkpoint
from pretrain.losses import pairwise_consistency
from pretrain.page import collate
from pretrain.reranker import WholePageReranker

# Metric names (learner results, under the module id).
MULTIPLIER = "consistency_multiplier"
HINGE = "consistency_hinge"
AGREEMENT = "consistency_agreement"
TARGET = "consistency_target"
REFERENCE_KL = "reference_kl"
CLIP_FRACTION = "clip_fraction"  # share of the minibatch's slates whose PPO ratio is outside 1 +- clip


@dataclass(frozen=True)
class ConstraintConfig:
    """The consistency constraint and the optional KL to the frozen SMAR policy."""

    enabled: bool = True  # False: plain PPO (agreement is still measured and logged)
    target: float | None = None  # absolute agreement target in [0, 1]; None -> target_fraction x initial
    target_fraction: float = 0.99
    margin: float = 1.0  # hinge margin gamma (SMAR authors' code: 1; agent.train passes SMAR's own)
    multiplier_init: float = 0.0
    multiplier_lr: float = 20.0  # dual step per unit of agreement shortfall
    multiplier_max: float = 50.0
    reference_checkpoint: str | None = None  # frozen SMAR policy for the KL term
    reference_kl_coeff: float = 0.0
    kl_samples: int = 2
    # The optimiser: the reranker's modality-offset head (the page layout: how modalities interleave,
    # which no within-modality order depends on) learns at offset_lr_scale x the learning rate.
    offset_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.target is not None and not 0.0 <= self.target <= 1.0:
            raise ValueError(f"ConstraintConfig.target must lie in [0, 1], got {self.target}")
        if not 0.0 < self.target_fraction <= 1.0:
            raise ValueError(
                f"ConstraintConfig.target_fraction must lie in (0, 1], got {self.target_fraction}"
            )
        if self.offset_lr_scale <= 0:
            raise ValueError(f"ConstraintConfig.offset_lr_scale must be > 0, got {self.offset_lr_scale}")
        for name in ("margin", "multiplier_init", "multiplier_lr", "multiplier_max", "reference_kl_coeff"):
            if getattr(self, name) < 0:
                raise ValueError(f"ConstraintConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.reference_kl_coeff > 0 and not self.reference_checkpoint:
            raise ValueError("ConstraintConfig.reference_kl_coeff > 0 needs reference_checkpoint")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> ConstraintConfig:
        d = dict(d or {})
        known = {f.name for f in fields(ConstraintConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown learner_config_dict keys {unknown}; expected a subset of {sorted(known)}"
            )
        return ConstraintConfig(**d)


def topk_agreement(
    scores: torch.Tensor,
    reference: torch.Tensor,
    modality: torch.Tensor,
    mask: torch.Tensor,
    k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Within-modality pairwise agreement of `scores` with `reference` (envs.metrics semantics), torch.

    Pairs: same page, same modality, both real, reference strictly ordered; if `k` is given only pairs
    where both items are in the top-k by score (= `shown_order_agreement` of the deterministic slate).
    A tie in `scores` counts half. Returns (concordant mass, number of pairs), both scalars, so callers
    can pool batches exactly; agreement = mass / pairs.
    """
    mask = mask.bool()
    keep = mask
    if k is not None:
        top = torch.topk(scores.masked_fill(~mask, float("-inf")), k, dim=-1).indices
        keep = torch.zeros_like(mask).scatter(-1, top, True) & mask
    dr = torch.sign(reference[:, :, None] - reference[:, None, :])
    ds = torch.sign(scores[:, :, None] - scores[:, None, :])
    same = modality[:, :, None] == modality[:, None, :]
    upper = torch.ones(scores.shape[-1], scores.shape[-1], dtype=torch.bool, device=scores.device).triu(1)
    valid = same & upper & (dr != 0) & keep[:, :, None] & keep[:, None, :]
    agree = torch.where(ds == dr, 1.0, torch.where(ds == 0, 0.5, 0.0))
    return (agree * valid).sum(), valid.sum()


class ConstrainedPPOLearner(PPOTorchLearner):
    """PPOTorchLearner + Lagrangian consistency constraint + optional frozen-SMAR KL. See module docstring."""

    def build(self) -> None:
        # Parsed before super().build(): configure_optimizers_for_module reads offset_lr_scale.
        self.constraint = ConstraintConfig.from_dict(self.config.learner_config_dict)
        super().build()
        self.multipliers: dict[str, float] = {}
        self.targets: dict[str, float] = {}
        self._agreement_sums: dict[str, list[float]] = {}
        # The frozen SMAR policy: a plain attribute of the learner, NOT a submodule of the trained
        # RLModule (a parameter without gradient inside the trained module breaks RLlib's gradient
        # handling, and it must not be synced or exported).
        self._reference: WholePageReranker | None = None
        if self.constraint.reference_kl_coeff > 0:
            net, _ = load_checkpoint(self.constraint.reference_checkpoint)
            for p in net.parameters():
                p.requires_grad_(False)
            self._reference = net.eval()

    # ------------------------------------------------------------------ the optimiser
    def configure_optimizers_for_module(self, module_id: str, config: Any = None) -> None:
        """Adam over the module, with the reranker's offset head in its own group at `offset_lr_scale` x
        the (scheduled) learning rate; every other parameter at the learning rate itself."""
        module = self._module[module_id]
        params = self.get_parameters(module)
        offset_head = getattr(module.unwrapped().reranker, "offset_head", None)
        fast = set()
        if offset_head is not None and self.constraint.offset_lr_scale != 1.0:
            fast = {id(p) for p in offset_head.parameters()}
        groups = [{"params": [p for p in params if id(p) not in fast], "lr_scale": 1.0}]
        if fast:
            groups.append(
                {"params": [p for p in params if id(p) in fast], "lr_scale": self.constraint.offset_lr_scale}
            )
        self.register_optimizer(
            module_id=module_id,
            optimizer=torch.optim.Adam(groups),
            params=params,
            lr_or_lr_schedule=config.lr,
        )

    @staticmethod
    def _set_optimizer_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
        for g in optimizer.param_groups:  # RLlib's scheduler sets one lr; each group keeps its scale
            g["lr"] = lr * g.get("lr_scale", 1.0)

    @staticmethod
    def _get_optimizer_lr(optimizer: torch.optim.Optimizer) -> float:
        return optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)

    # ------------------------------------------------------------------ the loss
    def compute_loss_for_module(
        self, *, module_id: str, config: Any, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> torch.Tensor:
        c = self.constraint
        module = self.module[module_id].unwrapped()
        total = super().compute_loss_for_module(
            module_id=module_id, config=config, batch=batch, fwd_out=fwd_out
        )
        with torch.no_grad():  # how much of the batch PPO's clip has already switched off
            ratio = torch.exp(
                pl.log_prob(fwd_out[Columns.ACTION_DIST_INPUTS], batch[Columns.ACTIONS].long())
                - batch[Columns.ACTION_LOGP]
            )
            clipped = ((ratio - 1.0).abs() > config.clip_param).float()
            if Columns.LOSS_MASK in batch:
                clipped = clipped[batch[Columns.LOSS_MASK].bool()]
            self.metrics.log_value(
                (module_id, CLIP_FRACTION), clipped.mean() if clipped.numel() else 0.0, window=1
            )
        obs = batch[Columns.OBS]
        mask = obs["mask"].bool()
        if Columns.LOSS_MASK in batch:  # RLlib's artificial bootstrap timesteps carry no loss
            mask = mask & batch[Columns.LOSS_MASK].bool()[:, None]
        scores = fwd_out[SCORES]
        reference, modality = obs["single_modal_score"], obs["modality"].long()

        with torch.no_grad():
            mass, pairs = topk_agreement(scores, reference, modality, mask, module.slate_size)
        acc = self._agreement_sums.setdefault(module_id, [0.0, 0.0])
        acc[0] += float(mass)
        acc[1] += float(pairs)
        if module_id not in self.targets:
            self.multipliers[module_id] = c.multiplier_init
            first = float(mass) / max(float(pairs), 1.0)
            self.targets[module_id] = c.target if c.target is not None else c.target_fraction * first

        hinge = pairwise_consistency(scores, reference, modality, mask, margin=c.margin)
        if c.enabled:
            total = total + self.multipliers[module_id] * hinge

        if self._reference is not None:
            with torch.no_grad():
                ref_scores = self._reference(
                    obs["features"], obs["modality"], obs["mask"], obs["query"], obs["user"]
                )
                ref_logits = pl.masked_logits(ref_scores, obs["mask"], module.temperature)
            kl = pl.kl_estimate(
                ref_logits, fwd_out[Columns.ACTION_DIST_INPUTS], module.slate_size, c.kl_samples
            )
            rows = mask.any(-1)
            kl = kl[rows].mean() if rows.any() else kl.sum() * 0.0
            total = total + c.reference_kl_coeff * kl
            self.metrics.log_value((module_id, REFERENCE_KL), kl.detach(), window=1)

        self.metrics.log_value((module_id, HINGE), hinge.detach(), window=1)
        return total

    # ------------------------------------------------------------------ dual ascent
    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        c = self.constraint
        for module_id, (mass, pairs) in list(self._agreement_sums.items()):
            if pairs <= 0:
                continue  # no single-modal scores in this batch: nothing measured, no dual step
            agreement = mass / pairs
            target = self.targets[module_id]
            lam = self.multipliers[module_id]
            if c.enabled:
                lam = min(max(lam + c.multiplier_lr * (target - agreement), 0.0), c.multiplier_max)
                self.multipliers[module_id] = lam
            self.metrics.log_value((module_id, AGREEMENT), agreement, window=1)
            self.metrics.log_value((module_id, TARGET), target, window=1)
            self.metrics.log_value((module_id, MULTIPLIER), lam, window=1)
        self._agreement_sums.clear()

    # ------------------------------------------------------------------ checkpointing (--resume)
    def get_state(self, *args, **kwargs) -> dict[str, Any]:
        state = super().get_state(*args, **kwargs)
        state["constraint"] = {"multipliers": dict(self.multipliers), "targets": dict(self.targets)}
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        if "constraint" in state:
            self.multipliers = dict(state["constraint"]["multipliers"])
            self.targets = dict(state["constraint"]["targets"])


@torch.no_grad()
def topk_consistency(model: WholePageReranker, pages: Pages, k: int) -> float:
    """Within-modality agreement of the model's deterministic top-K with the single-modal scores over
    `pages`: the constraint's measure (`topk_agreement`), so targets and measurements agree."""
    model.eval()
    mass = pairs = 0.0
    for start in range(0, len(pages), 512):
        part = pages.select(slice(start, start + 512))
        pb = collate(part)
        scores = model.score_batch(pb)
        m, c = topk_agreement(scores, pb.single_modal_score, pb.modality, pb.mask & pb.has_score, k)
        mass, pairs = mass + float(m), pairs + float(c)
    return mass / pairs if pairs else float("nan")
