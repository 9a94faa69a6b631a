"""The publish gate: a candidate policy goes live only if held-out logs say it is not worse.

Two checks, both on impressions the update never trained on:
  value        the lower confidence bound (one-sided, level 1 - alpha) of the candidate-minus-serving
               difference must exceed `min_gain`. The difference is paired on the same held-out
               impressions: per impression, the candidate's off-policy contribution (cascade DR by
               default, or IPS) minus the reward the serving policy actually earned there (the logging
               policy is the serving one, so its logged reward is its on-policy value). A point estimate
               with a tolerance would publish any candidate whose noise happens to land above the line;
               the bound publishes only what the held-out data shows to be better.
  consistency  the candidate's deterministic top-K must agree with each modality's single-modal order
               at least `consistency_target` (within-modality pairwise agreement).
Every decision keeps its figures, so a rejected candidate can be audited.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from agent.learner import topk_consistency
from agent.offpolicy import LoggedBatch
from agent.ope import (
    CascadeTerms,
    Estimate,
    PositionModalityRewardModel,
    cascade_terms,
    estimate,
    logged_reward_model,
    on_policy_value,
    paired_difference,
    per_impression,
)
from pretrain.page import collate
from pretrain.reranker import WholePageReranker


@dataclass(frozen=True)
class GateConfig:
    estimator: str = "dr"  # the per-impression estimate the paired difference uses: "dr" or "ips"
    alpha: float = 0.05  # the lower bound is one-sided at level 1 - alpha
    min_gain: float = 0.0  # publish only if the bound on (candidate - serving) per impression exceeds this
    max_weight: float | None = 100.0  # clip of the prefix importance weights (biases the candidate down)
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.estimator not in ("dr", "ips"):
            raise ValueError(
                f"GateConfig.estimator must be dr or ips (per impression), got {self.estimator!r}"
            )
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"GateConfig.alpha must lie in (0, 0.5), got {self.alpha}")

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
    difference: dict = field(default_factory=dict)  # paired candidate - serving: mean, se, lcb, lo95, hi95
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
            "difference": self.difference,
            **self.extra,
        }


def reward_model_for(batch: LoggedBatch) -> PositionModalityRewardModel:
    """The DR reward model, fitted on the update's training impressions (not the held-out ones)."""
    return logged_reward_model(batch.pages, batch.ranking, batch.reward)


@torch.no_grad()
def candidate_terms(
    candidate: WholePageReranker, holdout: LoggedBatch, q: PositionModalityRewardModel
) -> CascadeTerms:
    """Cascade OPE terms of the candidate served the way the logs were (PL at the logged temperature)."""
    candidate.eval()
    pb = collate(holdout.pages)
    scores = candidate.score_batch(pb) / torch.from_numpy(holdout.temperature).float()[:, None]
    return cascade_terms(
        scores,
        pb.mask,
        pb.modality,
        torch.from_numpy(holdout.ranking),
        holdout.logged_logp,
        holdout.reward,
        q,
        1.0,
    )


def value_check(
    terms: CascadeTerms, cfg: GateConfig, report_estimates: bool = True
) -> tuple[bool, dict, dict[str, Estimate], Estimate]:
    """The value half of the gate on cascade terms of the candidate over held-out logs of the serving
    policy: (passes, paired difference, candidate IPS/SNIPS/DR estimates, serving value). The estimates
    are reported, not decided on; without `report_estimates` their intervals are skipped (n_boot 1)."""
    boot = min(cfg.n_boot, 400) if report_estimates else 1
    serving = on_policy_value(terms.reward, n_boot=boot, seed=cfg.seed)
    est = estimate(terms, max_weight=cfg.max_weight, n_boot=boot, seed=cfg.seed)
    parts = per_impression(terms, cfg.max_weight)
    diff = paired_difference(
        parts[cfg.estimator], terms.reward.sum(1), alpha=cfg.alpha, n_boot=cfg.n_boot, seed=cfg.seed
    )
    return bool(diff["lcb"] > cfg.min_gain), diff, est, serving


def decide(
    diff: dict, consistency: float, consistency_target: float, cfg: GateConfig
) -> tuple[bool, list[str]]:
    """Publish iff the lower bound of the paired difference exceeds `min_gain` and the candidate's
    consistency reaches its target; the reasons say which check failed, with its figures."""
    bound = (
        f"{1 - cfg.alpha:.0%} lower bound of {cfg.estimator} candidate - serving {diff['lcb']:+.4f} "
        f"(mean {diff['mean']:+.4f}, n={diff['n']})"
    )
    reasons = []
    if not diff["lcb"] > cfg.min_gain:
        reasons.append(f"{bound} <= {cfg.min_gain:+.4f}")
    if not consistency >= consistency_target:
        reasons.append(f"consistency {consistency:.4f} < target {consistency_target:.4f}")
    return not reasons, reasons or [f"{bound} > {cfg.min_gain:+.4f} and consistency ok"]


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
    terms = candidate_terms(candidate, holdout, reward_model)
    _, diff, est, serving = value_check(terms, cfg)
    k = holdout.ranking.shape[1]
    consistency = topk_consistency(candidate, holdout.pages, k)
    publish, reasons = decide(diff, consistency, consistency_target, cfg)
    return GateDecision(
        publish=publish,
        reasons=reasons,
        serving_value=serving,
        candidate=est,
        consistency=consistency,
        consistency_target=consistency_target,
        holdout_impressions=len(holdout),
        difference=diff,
    )
