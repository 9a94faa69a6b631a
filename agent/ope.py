"""Off-policy evaluation of ranking policies from logged Plackett-Luce propensities.

Rankings of K out of N candidates make whole-slate importance weights explode, so the estimators use
the cascade assumption (the reward at position k depends on the items at positions 1..k, as in the
user simulator's cascade/DBN behaviour): the weight of position k is the *prefix* ratio

    W_k = prod_{j<=k} pi_e(a_j | a_<j) / pi_0(a_j | a_<j),

which Plackett-Luce gives exactly (the logged per-position conditional propensities).

  * IPS  (reward-interaction IPS; McInerney et al. 2020, Open Bandit Pipeline `RewardInteractionIPS`):
        V = 1/n sum_i sum_k W_ik r_ik
  * SNIPS: self-normalised per position:  V = sum_k (sum_i W_ik r_ik) / (sum_i W_ik)
  * DR   (cascade doubly robust; Kiyohara et al. WSDM 2022, OBP `SlateCascadeDoublyRobust`):
        V = 1/n sum_i sum_k [ W_ik (r_ik - q(a_ik, k)) + W_i,k-1 E_{a ~ pi_e(.|a_i,<k)} q(a, k) ],  W_i0 = 1
    unbiased whatever the reward model q is (given exact propensities); a good q only cuts variance.

Confidence intervals are percentile bootstrap over impressions (seeded, so a gate decision is
reproducible). Weights may be clipped (`max_weight`), which trades a small downward bias for variance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from pretrain.plackett_luce import NEG, masked_logits


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CascadeTerms:
    """Per-impression, per-position quantities the estimators need ([n, K] each)."""

    logged_logp: np.ndarray  # log pi_0(a_k | a_<k)
    target_logp: np.ndarray  # log pi_e(a_k | a_<k)
    reward: np.ndarray  # r_k
    q_shown: np.ndarray  # q(a_k, k) for the shown item
    q_expected: np.ndarray  # E_{a ~ pi_e(.|a_<k)} q(a, k)


def prefix_weights(
    logged_logp: torch.Tensor, target_logp: torch.Tensor, max_weight: float | None
) -> torch.Tensor:
    """The cascade's prefix importance weights prod_{j<=k} pi_e(a_j | a_<j) / pi_0(a_j | a_<j), [n, K],
    clipped at `max_weight` (a clipped weight carries no gradient: clipping trades bias for variance)."""
    w = torch.exp(torch.cumsum(target_logp - logged_logp, 1))
    return w.clamp(max=max_weight) if max_weight is not None else w


def per_impression(terms: CascadeTerms, max_weight: float | None) -> dict[str, np.ndarray]:
    """Per-impression contributions ("ips", "dr": [n]; SNIPS numerator and denominator: [n, K]), so
    estimates, bootstrap and paired differences share one computation."""
    logged, target, reward, q_shown, q_expected = (
        torch.from_numpy(np.asarray(x, np.float64))
        for x in (terms.logged_logp, terms.target_logp, terms.reward, terms.q_shown, terms.q_expected)
    )
    w = prefix_weights(logged, target, max_weight)
    return {
        "ips": (w * reward).sum(1).numpy(),
        "dr": cascade_dr(w, reward, q_shown, q_expected).numpy(),
        "snips_num": (w * reward).numpy(),  # [n, K]
        "snips_den": w.numpy(),
    }


def _values(parts: dict[str, np.ndarray], idx: np.ndarray | None = None) -> dict[str, float]:
    def take(a: np.ndarray) -> np.ndarray:
        return a if idx is None else a[idx]

    den = take(parts["snips_den"]).sum(0)
    snips = np.where(den > 0, take(parts["snips_num"]).sum(0) / np.maximum(den, 1e-12), 0.0).sum()
    return {
        "ips": float(take(parts["ips"]).mean()),
        "snips": float(snips),
        "dr": float(take(parts["dr"]).mean()),
    }


def estimate(
    terms: CascadeTerms,
    max_weight: float | None = None,
    n_boot: int = 400,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Estimate]:
    """IPS, SNIPS and DR estimates of the target policy's expected page reward, with bootstrap CIs."""
    n = len(terms.reward)
    if n == 0:
        raise ValueError("off-policy evaluation needs at least one logged impression")
    parts = per_impression(terms, max_weight)
    point = _values(parts)
    rng = np.random.default_rng(seed)
    boots = {k: np.empty(n_boot) for k in point}
    for b in range(n_boot):
        for k, v in _values(parts, rng.integers(0, n, n)).items():
            boots[k][b] = v
    return {
        k: Estimate(
            point[k], float(np.quantile(boots[k], alpha / 2)), float(np.quantile(boots[k], 1 - alpha / 2))
        )
        for k in point
    }


def on_policy_value(reward: np.ndarray, n_boot: int = 400, alpha: float = 0.05, seed: int = 0) -> Estimate:
    """The logging policy's own value: the mean logged page reward, with a bootstrap CI."""
    per = reward.sum(1)
    rng = np.random.default_rng(seed)
    boots = np.array([per[rng.integers(0, len(per), len(per))].mean() for _ in range(n_boot)])
    return Estimate(
        float(per.mean()), float(np.quantile(boots, alpha / 2)), float(np.quantile(boots, 1 - alpha / 2))
    )


# --------------------------------------------------------------------------- target-policy terms
@dataclass
class PositionModalityRewardModel:
    """q(a, k): mean logged reward per (modality, position), shrunk toward the position mean.

    Deliberately simple: DR stays unbiased with any q, and this one cannot leak the target policy.
    """

    table: np.ndarray  # [n_modalities, K]

    @staticmethod
    def fit(
        shown_modality: np.ndarray, reward: np.ndarray, n_modalities: int = 4, prior: float = 20.0
    ) -> PositionModalityRewardModel:
        k = reward.shape[1]
        pos_mean = reward.mean(0) if len(reward) else np.zeros(k)
        table = np.zeros((n_modalities, k))
        for m in range(n_modalities):
            sel = shown_modality == m  # [n, K]
            cnt = sel.sum(0)
            tot = (reward * sel).sum(0)
            table[m] = (tot + prior * pos_mean) / (cnt + prior)
        return PositionModalityRewardModel(table)


def logged_reward_model(pages, ranking: np.ndarray, reward: np.ndarray) -> PositionModalityRewardModel:
    """The DR reward model of logged impressions (envs.pages.Pages, shown ranking [n, K], reward
    [n, K]): the gate fits it on the update's training impressions, the DR update on its batch."""
    shown = pages.modality[pages.offsets[:-1, None] + ranking]
    return PositionModalityRewardModel.fit(shown, reward)


def cascade_tensors(
    logits: torch.Tensor, modality: torch.Tensor, ranking: torch.Tensor, q_table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The target-policy terms as tensors, differentiable in `logits` (the off-policy update maximises
    the DR estimate through them, agent.offpolicy): (log pi_e(a_k | a_<k), q(a_k, k),
    E_{a ~ pi_e(.|a_<k)} q(a, k)), each [n, K]. logits: masked, tempered [n, N]; q_table [M, K]."""
    q_items = q_table[modality.long().clamp(0, len(q_table) - 1)]  # [n, N, K]
    target, q_shown, q_exp = [], [], []
    remaining = logits
    for pos in range(ranking.shape[1]):
        logp = torch.log_softmax(remaining, dim=-1)
        a = ranking[:, pos : pos + 1].long()
        target.append(logp.gather(1, a).squeeze(1))
        q_pos = q_items[:, :, pos]
        q_exp.append((logp.exp() * q_pos).sum(1))
        q_shown.append(q_pos.gather(1, a).squeeze(1))
        remaining = remaining.scatter(1, a, NEG)
    return torch.stack(target, 1), torch.stack(q_shown, 1), torch.stack(q_exp, 1)


def cascade_dr(
    w: torch.Tensor, reward: torch.Tensor, q_shown: torch.Tensor, q_expected: torch.Tensor
) -> torch.Tensor:
    """Per-impression cascade DR contributions [n] (the module docstring's formula) from the prefix
    weights `w` (`prefix_weights`), differentiable in the target terms."""
    w_prev = torch.cat([torch.ones_like(w[:, :1]), w[:, :-1]], 1)
    return (w * (reward - q_shown) + w_prev * q_expected).sum(1)


def cascade_terms(
    target_scores: torch.Tensor,
    mask: torch.Tensor,
    modality: torch.Tensor,
    ranking: torch.Tensor,
    logged_logp: np.ndarray,
    reward: np.ndarray,
    reward_model: PositionModalityRewardModel,
    temperature: float,
) -> CascadeTerms:
    """Evaluate a target PL policy (scores at `temperature`) on logged rankings.

    target_scores, mask, modality: [n, N] over each logged page's candidates; ranking: [n, K] shown slots.
    """
    logits = masked_logits(target_scores.float(), mask, temperature)
    q = torch.from_numpy(reward_model.table).float()
    with torch.no_grad():
        target, q_shown, q_exp = cascade_tensors(logits, modality, ranking, q)
    return CascadeTerms(
        logged_logp=np.asarray(logged_logp, np.float64),
        target_logp=target.double().numpy(),
        reward=np.asarray(reward, np.float64),
        q_shown=q_shown.double().numpy(),
        q_expected=q_exp.double().numpy(),
    )


def paired_difference(
    candidate: np.ndarray, serving: np.ndarray, alpha: float = 0.1, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Mean of the paired per-impression difference candidate_i - serving_i, with its one-sided lower
    confidence bound at level 1 - alpha (percentile bootstrap over impressions, seeded) and the two-sided
    95% interval. Pairing on the same impressions cancels what the two share (which users came, which
    pages), so the bound is much tighter than one from two separate intervals."""
    d = np.asarray(candidate, np.float64) - np.asarray(serving, np.float64)
    n = len(d)
    if n < 2:
        raise ValueError("a paired difference needs at least two impressions")
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(0, n_boot, 100):  # blocks keep memory at 100 x n
        m = min(100, n_boot - b)
        boots[b : b + m] = d[rng.integers(0, n, (m, n))].mean(1)
    return {
        "mean": float(d.mean()),
        "se": float(d.std(ddof=1) / np.sqrt(n)),
        "lcb": float(np.quantile(boots, alpha)),
        "lo95": float(np.quantile(boots, 0.025)),
        "hi95": float(np.quantile(boots, 0.975)),
        "alpha": alpha,
        "n": n,
    }
