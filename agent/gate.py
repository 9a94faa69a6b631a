"""The publish gate: a candidate policy goes live only if held-out logs say it is not worse.

Two checks, both on impressions the update never trained on:
  value        the candidate's off-policy estimate (cascade DR by default; IPS and SNIPS reported too)
               must not fall below the serving policy's logged value by more than `tolerance`
               (relative). The serving value is the on-policy mean of the same held-out impressions.
  consistency  the candidate's deterministic top-K must agree with each modality's single-modal order
               at least `consistency_target` (within-modality pairwise agreement).
Every decision keeps its figures, so a rejected candidate can be audited.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from agent.learner import topk_consistency
from agent.offpolicy import LoggedBatch
from agent.ope import Estimate, PositionModalityRewardModel, cascade_terms, estimate, on_policy_value
from pretrain.page import collate
from pretrain.reranker import WholePageReranker


@dataclass(frozen=True)
class GateConfig:
    estimator: str = "dr"  # which estimate decides: "dr", "snips" or "ips"
    tolerance: float = 0.02  # relative shortfall allowed against the serving value
    max_weight: float | None = 100.0  # clip of the prefix importance weights
    n_boot: int = 400
    seed: int = 0

    def __post_init__(self) -> None:
        if self.estimator not in ("dr", "snips", "ips"):
            raise ValueError(f"GateConfig.estimator must be dr, snips or ips, got {self.estimator!r}")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class GateDecision:
    publish: bool
    reasons: list[str]
    serving_value: Estimate
    candidate: dict[str, Estimate]
    consistency: float
    consistency_target: float
    holdout_impressions: int
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "publish": self.publish,
            "reasons": self.reasons,
            "serving_value": self.serving_value.to_json(),
            **{k: v.to_json() for k, v in self.candidate.items()},
            "consistency": self.consistency,
            "consistency_target": self.consistency_target,
            "holdout_impressions": self.holdout_impressions,
            **self.extra,
        }


def reward_model_for(batch: LoggedBatch) -> PositionModalityRewardModel:
    """The DR reward model, fitted on the update's training impressions (not the held-out ones)."""
    pages = batch.pages
    shown_modality = pages.modality[pages.offsets[:-1, None] + batch.ranking]
    return PositionModalityRewardModel.fit(shown_modality, batch.reward)


@torch.no_grad()
def candidate_estimates(
    candidate: WholePageReranker, holdout: LoggedBatch, q: PositionModalityRewardModel, cfg: GateConfig
) -> dict[str, Estimate]:
    """Off-policy value of the candidate served the way the logs were (PL at the logged temperature)."""
    candidate.eval()
    pb = collate(holdout.pages)
    scores = candidate.score_batch(pb) / torch.from_numpy(holdout.temperature).float()[:, None]
    terms = cascade_terms(
        scores,
        pb.mask,
        pb.modality,
        torch.from_numpy(holdout.ranking),
        holdout.logged_logp,
        holdout.reward,
        q,
        1.0,
    )
    return estimate(terms, max_weight=cfg.max_weight, n_boot=cfg.n_boot, seed=cfg.seed)


def gate(
    candidate: WholePageReranker,
    holdout: LoggedBatch,
    reward_model: PositionModalityRewardModel,
    consistency_target: float,
    cfg: GateConfig | None = None,
) -> GateDecision:
    cfg = cfg or GateConfig()
    if len(holdout) == 0:
        raise ValueError("the gate needs held-out impressions")
    serving = on_policy_value(holdout.reward, n_boot=cfg.n_boot, seed=cfg.seed)
    est = candidate_estimates(candidate, holdout, reward_model, cfg)
    k = holdout.ranking.shape[1]
    consistency = topk_consistency(candidate, holdout.pages, k)
    floor = serving.value - cfg.tolerance * abs(serving.value)
    reasons = []
    value = est[cfg.estimator].value
    if value < floor:
        reasons.append(
            f"{cfg.estimator} value {value:.4f} < serving {serving.value:.4f} - {cfg.tolerance:.0%}"
        )
    if not consistency >= consistency_target:
        reasons.append(f"consistency {consistency:.4f} < target {consistency_target:.4f}")
    return GateDecision(
        publish=not reasons,
        reasons=reasons or [f"{cfg.estimator} {value:.4f} >= {floor:.4f} and consistency ok"],
        serving_value=serving,
        candidate=est,
        consistency=consistency,
        consistency_target=consistency_target,
        holdout_impressions=len(holdout),
    )
