"""Plackett-Luce over per-item scores: sampling, exact log-probabilities and propensities (torch).

PyTorch has no Plackett-Luce distribution. This module is the single implementation used by the RL
policy's action distribution, Serve's exploration and the simulator's logging policies.

A top-K ranking a = (a_1..a_K) of items with scores s (masked items excluded) has
  log P(a) = sum_k [ s_{a_k} - logsumexp_{j not in a_1..a_{k-1}} s_j ]   (scores divided by temperature).
Sampling uses the Gumbel trick: the top-K of s + Gumbel noise is an exact PL sample.
"""

from __future__ import annotations

import torch

NEG = -1e9  # logit of masked / already-chosen items


def masked_logits(scores: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.where(mask.bool(), scores / temperature, torch.full_like(scores, NEG))


def sample_topk(logits: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact PL sample of a top-k ranking, [..., N] logits -> [..., k] item indices (Gumbel top-k)."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
    return torch.topk(logits + gumbel, k, dim=-1).indices


def greedy_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The mode: top-k by logit (ties broken by index)."""
    return torch.topk(logits, k, dim=-1, sorted=True).indices


def stepwise_log_probs(logits: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
    """log P(a_k | a_1..a_{k-1}) for every position, [..., k].

    The items still available at position k are a_k..a_K plus every unranked item, so the normaliser is
    logaddexp(suffix log-sum-exp of the chosen logits from k on, log-sum-exp of the unranked ones): one
    reverse `logcumsumexp` instead of a loop over positions (exact; about K times fewer kernel calls).
    """
    ranking = ranking.long()
    chosen = torch.gather(logits, -1, ranking)  # [..., k]
    unranked = logits.scatter(-1, ranking, NEG)
    rest = torch.logsumexp(unranked, dim=-1, keepdim=True)  # [..., 1]
    suffix = torch.flip(torch.logcumsumexp(torch.flip(chosen, [-1]), dim=-1), [-1])
    return chosen - torch.logaddexp(suffix, rest)


def log_prob(logits: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
    """Exact log-probability of a top-k ranking, [...]."""
    return stepwise_log_probs(logits, ranking).sum(-1)


def entropy_estimate(logits: torch.Tensor, k: int, samples: int = 8) -> torch.Tensor:
    """Sum over positions of the conditional entropies along sampled prefixes (unbiased MC of H(top-k)).

    H(a_1..a_k) = E[sum_k H(a_k | a_<k)], each conditional entropy computed exactly.
    """
    with torch.no_grad():
        rankings = sample_topk(logits.unsqueeze(0).expand(samples, *logits.shape), k)
    total = logits.new_zeros(logits.shape[:-1])
    for s in range(samples):
        remaining = logits
        for pos in range(k):
            logp = torch.log_softmax(remaining, dim=-1)
            p = logp.exp()
            total = total - (p * logp).sum(-1) / samples
            remaining = remaining.scatter(-1, rankings[s][..., pos : pos + 1], NEG)
    return total


def skip_entropy_draws(logits: torch.Tensor, samples: int) -> None:
    """Consume exactly the random draws `entropy_estimate(logits, k, samples)` takes (its prefixes'
    Gumbel noise), without computing it: a caller that skips an estimate keeps the RNG stream."""
    torch.rand((samples, *logits.shape), dtype=logits.dtype, device=logits.device)


def kl_estimate(p_logits: torch.Tensor, q_logits: torch.Tensor, k: int, samples: int = 4) -> torch.Tensor:
    """KL(P || Q) between two top-k Plackett-Luce distributions, [...]; always >= 0, 0 when P == Q.

    Chain rule: KL(P||Q) = E_{a~P}[ sum_k KL(P(. | a_<k) || Q(. | a_<k)) ]. Each conditional KL is a
    categorical KL over the items not yet placed, computed exactly; only the prefixes are sampled
    (from P, without gradient). So every sample is a sum of non-negative terms: the estimate is
    unbiased, non-negative, and exactly 0 for equal logits (for k = 1 it is the exact KL).
    Gradients flow into both logits through the conditional KLs.
    """
    with torch.no_grad():
        prefixes = sample_topk(p_logits.detach().unsqueeze(0).expand(samples, *p_logits.shape), k)
    p = p_logits.unsqueeze(0).expand(samples, *p_logits.shape)
    q = q_logits.unsqueeze(0).expand(samples, *q_logits.shape)
    total = p_logits.new_zeros((samples, *p_logits.shape[:-1]))
    for pos in range(k):
        logp = torch.log_softmax(p, dim=-1)
        logq = torch.log_softmax(q, dim=-1)
        # Items masked in P (logit NEG) have probability 0 and contribute nothing.
        total = total + (logp.exp() * (logp - logq)).sum(-1)
        idx = prefixes[..., pos : pos + 1]
        p = p.scatter(-1, idx, NEG)
        q = q.scatter(-1, idx, NEG)
    return total.mean(0)
