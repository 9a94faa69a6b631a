"""Off-policy estimators: golden cases and unbiasedness on a synthetic logged set with known value."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from agent.ope import CascadeTerms, PositionModalityRewardModel, cascade_terms, estimate, prefix_weights
from pretrain.plackett_luce import log_prob, masked_logits, sample_topk, stepwise_log_probs

N, K = 5, 3


def _click_probs(attr: np.ndarray, sat: np.ndarray, ranking: tuple[int, ...]) -> np.ndarray:
    """Cascade: P(click at k) = attr(a_k) * 0.9^k * P(not satisfied above)."""
    out, p_continue = [], 1.0
    for k, a in enumerate(ranking):
        pc = attr[a] * 0.9**k * p_continue
        out.append(pc)
        p_continue *= 1.0 - pc * sat[a]
    return np.array(out)


def _exact_value(logits: torch.Tensor, attr: np.ndarray, sat: np.ndarray) -> float:
    total = 0.0
    for ranking in itertools.permutations(range(N), K):
        p = float(log_prob(logits, torch.tensor(ranking)).exp())
        total += p * _click_probs(attr, sat, ranking).sum()
    return total


def _logged_set(n: int, seed: int):
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    contexts = 3
    log_scores = torch.from_numpy(rng.normal(0, 1, (contexts, N))).float()
    attr = rng.uniform(0.1, 0.8, (contexts, N))
    tgt_scores = torch.from_numpy(2.5 * attr + rng.normal(0, 0.3, (contexts, N))).float()  # a better policy
    sat = rng.uniform(0.0, 1.0, (contexts, N))
    ctx = rng.integers(0, contexts, n)
    mask = torch.ones(n, N, dtype=torch.bool)
    log_logits = masked_logits(log_scores[ctx], mask)
    ranking = sample_topk(log_logits, K, generator=gen)
    logged_logp = stepwise_log_probs(log_logits, ranking).double().numpy()
    reward = np.zeros((n, K))
    for i in range(n):
        c = ctx[i]
        for k, a in enumerate(ranking[i].tolist()):  # the cascade of _click_probs
            if rng.random() < attr[c, a] * 0.9**k:
                reward[i, k] = 1.0
                if rng.random() < sat[c, a]:
                    break
    exact = [
        _exact_value(masked_logits(tgt_scores[c][None], mask[:1])[0], attr[c], sat[c])
        for c in range(contexts)
    ]
    truth = float(np.mean(np.array(exact)[ctx]))
    return tgt_scores[ctx], mask, ranking, logged_logp, reward, truth


def test_prefix_weights_golden() -> None:
    logged = np.log(np.array([[0.5, 0.25]]))
    target = np.log(np.array([[0.25, 0.5]]))
    logged, target = torch.from_numpy(logged), torch.from_numpy(target)
    np.testing.assert_allclose(prefix_weights(logged, target, None).numpy(), [[0.5, 1.0]])
    np.testing.assert_allclose(prefix_weights(logged, target, 0.75).numpy(), [[0.5, 0.75]])


def test_same_policy_ips_equals_mean_reward() -> None:
    rng = np.random.default_rng(0)
    logp = np.log(rng.uniform(0.1, 1.0, (50, 3)))
    reward = rng.integers(0, 2, (50, 3)).astype(float)
    terms = CascadeTerms(logp, logp, reward, np.zeros_like(reward), np.zeros_like(reward))
    est = estimate(terms, n_boot=50)
    assert abs(est["ips"].value - reward.sum(1).mean()) < 1e-12
    assert abs(est["snips"].value - reward.sum(1).mean()) < 1e-12
    assert est["ips"].lo <= est["ips"].value <= est["ips"].hi


def test_estimators_unbiased_on_known_value() -> None:
    scores, mask, ranking, logged_logp, reward, truth = _logged_set(20000, seed=3)
    # One "modality" per item, so the DR reward model is a per-(item, position) table.
    modality = torch.arange(N).expand_as(mask)
    q = PositionModalityRewardModel.fit(ranking.numpy(), reward, n_modalities=N)
    terms = cascade_terms(scores, mask, modality, ranking, logged_logp, reward, q, temperature=1.0)
    est = estimate(terms, n_boot=300, seed=1)
    logged_value = reward.sum(1).mean()
    for name, e in est.items():
        assert e.lo <= truth <= e.hi, f"{name}: true value {truth:.4f} outside [{e.lo:.4f}, {e.hi:.4f}]"
        # The estimate moves from the logging policy's value toward the target's: the test bites.
        assert abs(e.value - truth) < 0.6 * abs(logged_value - truth), f"{name}: {e.value:.4f} vs {truth:.4f}"
