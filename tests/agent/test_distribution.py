"""Golden tests: the Plackett-Luce action distribution against brute-force enumeration of all top-K rankings."""

from __future__ import annotations

import itertools
import math
import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch

from agent.distribution import PlackettLuceTopK, TopKDeterministic, plackett_luce_cls
from pretrain import plackett_luce as pl


def brute_force(logits: list[float], mask: list[bool], k: int) -> dict[tuple[int, ...], float]:
    """P(ranking) for every ordered k-subset of the real items, by the PL product formula."""
    w = [math.exp(x) if m else 0.0 for x, m in zip(logits, mask)]
    real = [i for i, m in enumerate(mask) if m]
    out = {}
    for perm in itertools.permutations(real, k):
        p, left = 1.0, sum(w)
        for i in perm:
            p *= w[i] / left
            left -= w[i]
        out[perm] = p
    return out


LOGITS = [1.2, -0.3, 0.5, 2.0, 0.0, -1.0]
MASK = [True, True, False, True, True, True]  # slot 2 is padding


def _dist(k: int, logits=LOGITS, mask=MASK) -> PlackettLuceTopK:
    t = pl.masked_logits(torch.tensor([logits]), torch.tensor([mask]))
    return plackett_luce_cls(k).from_logits(t)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_exact_log_probs_match_enumeration_and_sum_to_one(k):
    table = brute_force(LOGITS, MASK, k)
    assert sum(table.values()) == pytest.approx(1.0, abs=1e-12)
    dist = _dist(k)
    rankings = torch.tensor(list(table))
    logp = dist.__class__.from_logits(dist.logits.expand(len(rankings), -1)).logp(rankings)
    np.testing.assert_allclose(logp.exp().numpy(), np.array(list(table.values())), rtol=1e-5, atol=1e-7)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_sampling_frequencies_match_enumeration():
    k, n = 2, 40_000
    table = brute_force(LOGITS, MASK, k)
    torch.manual_seed(0)
    samples = _dist(k).sample(sample_shape=(n,)).reshape(n, k)
    assert not (samples == 2).any(), "a masked slot was sampled"
    counts = {}
    for row in samples.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    assert set(counts) <= set(table)
    for perm, p in table.items():
        freq = counts.get(perm, 0) / n
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3, (perm, freq, p)


@pytest.mark.parametrize("k", [1, 3])
def test_entropy_estimate_matches_enumeration(k):
    table = brute_force(LOGITS, MASK, k)
    exact = -sum(p * math.log(p) for p in table.values())
    torch.manual_seed(1)
    dist = _dist(k)
    est = dist.__class__.from_logits(dist.logits.expand(4000, -1)).entropy().mean().item()
    tol = 1e-5 if k == 1 else 0.02  # k=1 has no sampled prefix: the estimate is exact
    assert est == pytest.approx(exact, abs=tol)


def test_kl_is_nonnegative_zero_for_equal_logits_and_matches_enumeration():
    k = 3
    other_logits = [0.1, 0.9, 0.0, -0.5, 1.5, 0.3]
    p, q = brute_force(LOGITS, MASK, k), brute_force(other_logits, MASK, k)
    exact = sum(pa * math.log(pa / q[a]) for a, pa in p.items())
    dp, dq = _dist(k), _dist(k, other_logits)
    torch.manual_seed(2)
    cls = plackett_luce_cls(k)
    draws = cls.from_logits(dp.logits.expand(2000, -1)).kl(cls.from_logits(dq.logits.expand(2000, -1)))
    assert (draws >= 0).all()
    assert draws.mean().item() == pytest.approx(exact, rel=0.03)
    assert dp.kl(_dist(k)).abs().max().item() == 0.0
    # Random batches: never negative, and exactly 0 against itself.
    torch.manual_seed(3)
    a = pl.masked_logits(torch.randn(64, 12) * 3, torch.rand(64, 12) > 0.3)
    a[:, :4] = torch.randn(64, 4)  # at least 4 real items per row
    b = a + torch.randn_like(a)
    cls = plackett_luce_cls(4)
    assert (cls.from_logits(a).kl(cls.from_logits(b)) >= 0).all()
    assert (cls.from_logits(a).kl(cls.from_logits(a.clone())) == 0).all()


def test_kl_gradient_pulls_q_toward_p():
    k = 2
    p = _dist(k).logits
    q = torch.zeros_like(p).masked_fill(p <= pl.NEG / 2, pl.NEG).requires_grad_(True)
    cls = plackett_luce_cls(k)
    torch.manual_seed(4)
    first = cls.from_logits(p).kl(cls.from_logits(q)).item()
    for _ in range(40):
        q.grad = None
        cls.from_logits(p.expand(16, -1)).kl(cls.from_logits(q.expand(16, -1))).mean().backward()
        with torch.no_grad():
            q -= 2.0 * q.grad  # plain gradient descent
    assert cls.from_logits(p).kl(cls.from_logits(q.detach())).item() < 0.05 * first


def test_deterministic_mode_is_topk_by_score():
    det = _dist(3).to_deterministic()
    assert isinstance(det, TopKDeterministic)
    assert det.sample().tolist() == [[3, 0, 4]]
    assert det.logp(det.sample()).shape == (1,)


def test_required_input_dim_and_bad_spaces():
    cls = plackett_luce_cls(3)
    assert cls.required_input_dim(gym.spaces.MultiDiscrete([7] * 3)) == 7
    with pytest.raises(ValueError, match="MultiDiscrete"):
        cls.required_input_dim(gym.spaces.Discrete(7))
    with pytest.raises(ValueError, match="exceeds"):
        plackett_luce_cls(9).from_logits(torch.zeros(1, 5))


def test_class_per_k_is_cached_and_picklable():
    cls = plackett_luce_cls(5)
    assert cls is plackett_luce_cls(5) and cls.k == 5 and cls.__name__ == "PlackettLuceTop5"
    assert pickle.loads(pickle.dumps(cls)) is cls
    d = pickle.loads(pickle.dumps(cls.from_logits(torch.zeros(2, 6))))
    assert d.k == 5 and d.sample().shape == (2, 5)


def test_stepwise_log_probs_matches_the_position_loop() -> None:
    """The vectorised normaliser equals the obvious loop (remove each placed item, renormalise)."""
    from pretrain.plackett_luce import NEG, masked_logits, sample_topk, stepwise_log_probs

    gen = torch.Generator().manual_seed(0)
    for n, k in ((5, 5), (12, 4), (50, 50), (40, 10)):
        scores = torch.randn(7, n, generator=gen) * 3
        mask = torch.rand(7, n, generator=gen) > 0.1
        mask[:, :k] = True
        logits = masked_logits(scores, mask)
        ranking = sample_topk(logits, k, generator=gen)
        remaining, expected = logits, []
        for pos in range(k):
            expected.append(
                logits.gather(-1, ranking[:, pos : pos + 1]).squeeze(-1) - torch.logsumexp(remaining, -1)
            )
            remaining = remaining.scatter(-1, ranking[:, pos : pos + 1], NEG)
        torch.testing.assert_close(
            stepwise_log_probs(logits, ranking), torch.stack(expected, -1), atol=1e-4, rtol=1e-5
        )
