"""The single-modal consistency constraint, defined once for every learner that optimises the policy.

Used by `agent.learner.ConstrainedPPOLearner` (`smar train`, on-policy RLlib PPO) and by
`agent.offpolicy.offpolicy_update` (the online loop's update on logged rankings):

    hinge      = SMAR's pairwise hinge (`pretrain.losses.pairwise_consistency`, equal beta_m) of the
                 policy's raw scores against each modality's single-modal order; margin = the one the
                 SMAR reranker was pretrained with (`checkpoint_margin`), so the constraint asks for the
                 score gaps SMAR's own consistency loss asked for, in the same units
    agreement  = within-modality pairwise agreement (envs.metrics semantics) of the deterministic
                 policy's top-K with the single-modal scores (`topk_agreement`), pooled exactly over
                 the minibatches of one dual period
    dual step  = lambda <- clip(lambda + multiplier_lr * (target - agreement), 0, multiplier_max)
    penalty    = lambda * hinge (0 with the constraint disabled; agreement is still measured)

`Lagrangian` holds lambda and the pooled agreement of the current period; a caller adds
`lagrangian.penalty(...)` to its loss on every minibatch and calls `lagrangian.dual_step(target)` at
the end of the period (an RLlib training iteration; an epoch of the off-policy update).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from envs.pages import N_MODALITIES
from pretrain.losses import LossConfig, pairwise_consistency


def checkpoint_margin(manifest: dict[str, Any]) -> float:
    """The hinge margin of a reranker checkpoint's pretraining loss (`manifest["pretrain_config"]
    ["loss"]["margin"]`); for a checkpoint a constrained update wrote (no pretraining config), the
    margin that update used (`manifest["update"]["margin"]`); else `LossConfig`'s default, the margin
    `smar pretrain` trains SMAR with."""
    loss = (manifest.get("pretrain_config") or {}).get("loss") or {}
    if "margin" in loss:
        return float(loss["margin"])
    update = manifest.get("update") or {}
    if "margin" in update:
        return float(update["margin"])
    return float(LossConfig().margin)


def consistency_hinge(
    scores: torch.Tensor, reference: torch.Tensor, modality: torch.Tensor, mask: torch.Tensor, margin: float
) -> torch.Tensor:
    """SMAR's pairwise hinge of `scores` against the single-modal `reference` order (equal beta_m)."""
    return pairwise_consistency(scores, reference, modality, mask.bool(), margin=margin)


def pooled_consistency_hinge(
    scores: torch.Tensor, reference: torch.Tensor, modality: torch.Tensor, mask: torch.Tensor, margin: float
) -> torch.Tensor:
    """`consistency_hinge` as one weighted sum over the rows with a real item: a valid pair of
    modality m weighs 1 / (m's pair count), so the sum is the sum over m of m's mean hinge. Equal up
    to float summation order, and cheaper on a PPO minibatch: one sum instead of one masked sum per
    modality, and no pair work on RLlib's bootstrap rows (they have no real item)."""
    mask = mask.bool()
    rows = mask.any(-1)
    s, r, m, k = scores[rows], reference[rows], modality[rows].long(), mask[rows]
    f = torch.where(k, s, torch.zeros_like(s))
    hinge = torch.clamp(margin - (f[:, :, None] - f[:, None, :]), min=0.0)
    with torch.no_grad():
        same = m[:, :, None] == m[:, None, :]
        valid = (r[:, :, None] > r[:, None, :]) & same & k[:, :, None] & k[:, None, :]
        counts = torch.bincount(m[:, :, None].expand_as(valid)[valid], minlength=N_MODALITIES).to(s.dtype)
        weight = torch.where(counts > 0, 1.0 / counts.clamp_min(1.0), torch.zeros_like(counts))
        pair_weight = weight[m][:, :, None] * valid
    return (hinge * pair_weight).sum()


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
    if k is not None:  # only the top-k slots can form pairs: compare those [B, k, k], not [B, N, N]
        top = torch.topk(scores.masked_fill(~mask, float("-inf")), k, dim=-1).indices
        scores, reference = scores.gather(-1, top), reference.gather(-1, top)
        modality, mask = modality.gather(-1, top), mask.gather(-1, top)
    dr = torch.sign(reference[:, :, None] - reference[:, None, :])
    ds = torch.sign(scores[:, :, None] - scores[:, None, :])
    same = modality[:, :, None] == modality[:, None, :]
    n = scores.shape[-1]
    upper = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
    valid = same & (dr != 0) & mask[:, :, None] & mask[:, None, :]
    # each unordered pair once: i < j in slot order, or in top-k order after the gather (a pair's
    # agreement does not depend on which of its items comes first)
    valid = valid & upper
    agree = torch.where(ds == dr, 1.0, torch.where(ds == 0, 0.5, 0.0))
    return (agree * valid).sum(), valid.sum()


def dual_step(multiplier: float, target: float, agreement: float, lr: float, maximum: float) -> float:
    """Projected dual ascent on the Lagrange multiplier of `agreement >= target`."""
    return min(max(multiplier + lr * (target - agreement), 0.0), maximum)


@dataclass(frozen=True)
class LagrangianConfig:
    """The constraint's hinge margin and dual ascent."""

    enabled: bool = True  # False: no penalty, no dual step (agreement is still measured)
    margin: float = 0.25  # callers pass `checkpoint_margin` of the SMAR checkpoint
    multiplier_init: float = 0.0
    multiplier_lr: float = 20.0  # dual step per unit of agreement shortfall
    multiplier_max: float = 50.0

    def __post_init__(self) -> None:
        for name in ("margin", "multiplier_init", "multiplier_lr", "multiplier_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"LagrangianConfig.{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Lagrangian:
    """lambda and the agreement pooled over one dual period. See the module docstring."""

    def __init__(self, cfg: LagrangianConfig, slate_size: int, pooled_hinge: bool = False) -> None:
        # pooled_hinge: `pooled_consistency_hinge` (the PPO learner's) instead of `consistency_hinge`
        self.cfg, self.k = cfg, slate_size
        self.hinge = pooled_consistency_hinge if pooled_hinge else consistency_hinge
        self.multiplier = cfg.multiplier_init
        self.mass = self.pairs = 0.0

    def penalty(
        self, scores: torch.Tensor, reference: torch.Tensor, modality: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(lambda * hinge, hinge) on one minibatch; the minibatch's top-K agreement joins the period's."""
        mask = mask.bool()
        self.measure(scores, reference, modality, mask)
        weight = self.weight
        # At lambda 0 (or disabled) the penalty's gradient is exactly zero: the hinge is then only
        # measured, without an autograd graph, so no backward pass runs through its [B, N, N] pairs.
        if torch.is_grad_enabled() and weight != 0.0:
            hinge = self.hinge(scores, reference, modality, mask, self.cfg.margin)
        else:
            hinge = self.hinge_value(scores, reference, modality, mask)
        return weight * hinge, hinge

    def hinge_value(
        self, scores: torch.Tensor, reference: torch.Tensor, modality: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The hinge at the configured margin without an autograd graph: its value, for logging (what
        `penalty` returns when its gradient is zero, and what the PPO learner logs once per update)."""
        with torch.no_grad():
            return self.hinge(scores, reference, modality, mask.bool(), self.cfg.margin)

    @property
    def weight(self) -> float:
        """The penalty's factor: lambda, or 0 with the constraint disabled."""
        return self.multiplier if self.cfg.enabled else 0.0

    def measure(
        self, scores: torch.Tensor, reference: torch.Tensor, modality: torch.Tensor, mask: torch.Tensor
    ) -> None:
        """The minibatch's top-K agreement joins the period's (what `penalty` does besides the hinge)."""
        with torch.no_grad():
            m, c = topk_agreement(scores.detach(), reference, modality, mask.bool(), self.k)
        self.mass += float(m)
        self.pairs += float(c)

    @property
    def agreement(self) -> float | None:
        """The period's pooled agreement so far (None before any pair was measured)."""
        return self.mass / self.pairs if self.pairs > 0 else None

    def dual_step(self, target: float) -> float | None:
        """End the period: move lambda toward `agreement >= target`; returns the period's agreement
        (None, and no step, if no pair was measured)."""
        agreement = self.agreement
        self.mass = self.pairs = 0.0
        if agreement is None:
            return None
        if self.cfg.enabled:
            c = self.cfg
            self.multiplier = dual_step(self.multiplier, target, agreement, c.multiplier_lr, c.multiplier_max)
        return agreement
