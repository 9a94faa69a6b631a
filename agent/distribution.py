"""The policy's action distribution: Plackett-Luce over masked per-item scores, as an RLlib TorchDistribution.

An action is a top-K ranking (K slot indices, best first) of the page's candidates. RLlib builds the
distribution with `from_logits(logits)` and nothing else, so two things are folded in up front:
  * the mask: padded slots carry the logit `pretrain.plackett_luce.NEG` (the module applies
    `masked_logits`), which gives them probability exactly 0;
  * K: PyTorch distributions cannot be parameterised by an int through `from_logits`, so
    `plackett_luce_cls(k)` returns one (picklable, cached) subclass per slate size.

All the maths is `pretrain.plackett_luce` (the one implementation); this module only adapts it:
  logp        exact log-probability of the ranking (sum of the K sequential softmax terms)
  sample      Gumbel top-K (an exact PL sample)
  entropy     chain-rule estimate: E_a[sum_k H(a_k | a_<k)], conditional entropies exact, prefixes sampled
  kl          chain-rule estimate of KL(self || other): >= 0 always, 0 for equal logits (PPO's `kl()`)
  mode        `to_deterministic()`: top-K by score (evaluation, `explore=False`)
Pages must have at least K real candidates (the environment guarantees it: K <= shortest page).
"""

from __future__ import annotations

import sys
from functools import cache

import gymnasium as gym
import torch
from ray.rllib.core.distribution.torch.torch_distribution import TorchDeterministic, TorchDistribution

from pretrain import plackett_luce as pl

ENTROPY_SAMPLES = 4  # prefixes sampled for the entropy estimate
KL_SAMPLES = 4  # prefixes sampled for the KL estimate


class PlackettLuceTopK(TorchDistribution):
    """Plackett-Luce over the top `k` positions. Use `plackett_luce_cls(k)` to get a class with `k` bound."""

    k: int = 0  # bound by `plackett_luce_cls`

    def __init__(self, logits: torch.Tensor, k: int | None = None) -> None:
        self.logits = logits
        if k is not None:
            self.k = int(k)
        if self.k < 1:
            raise ValueError(f"slate size k must be >= 1, got {self.k} (use plackett_luce_cls(k))")
        if self.k > logits.shape[-1]:
            raise ValueError(f"slate size k={self.k} exceeds the {logits.shape[-1]} candidate slots")
        super().__init__()

    def _get_torch_distribution(self, *args, **kwargs):
        return None  # PyTorch has no Plackett-Luce: every method below is implemented directly

    @classmethod
    def from_logits(cls, logits: torch.Tensor, **kwargs) -> PlackettLuceTopK:
        return cls(logits=logits, **kwargs)

    @staticmethod
    def required_input_dim(space: gym.Space, **kwargs) -> int:
        """One logit per candidate slot: the MultiDiscrete([n_max] * K) action's n_max."""
        if not isinstance(space, gym.spaces.MultiDiscrete) or len(set(space.nvec.tolist())) != 1:
            raise ValueError(f"expected MultiDiscrete([n_max] * K), got {space}")
        return int(space.nvec[0])

    def sample(self, *, sample_shape=None) -> torch.Tensor:
        logits = self.logits
        if sample_shape:
            logits = logits.expand(*sample_shape, *logits.shape)
        return pl.sample_topk(logits.detach(), self.k)

    def rsample(self, *, sample_shape=None) -> torch.Tensor:
        raise NotImplementedError("a ranking is discrete: Plackett-Luce has no reparameterised sample")

    def logp(self, value: torch.Tensor, **kwargs) -> torch.Tensor:
        return pl.log_prob(self.logits, value.long())

    def entropy(self, **kwargs) -> torch.Tensor:
        return pl.entropy_estimate(self.logits, self.k, samples=ENTROPY_SAMPLES)

    def kl(self, other: PlackettLuceTopK, **kwargs) -> torch.Tensor:
        return pl.kl_estimate(self.logits, other.logits, self.k, samples=KL_SAMPLES)

    def to_deterministic(self) -> TopKDeterministic:
        return TopKDeterministic(loc=pl.greedy_topk(self.logits.detach(), self.k))


class TopKDeterministic(TorchDeterministic):
    """The mode of the PL distribution (top-K by score); logp is 0 per ranking (shape [B], not [B, K])."""

    def logp(self, value: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.zeros(self.loc.shape[:-1], dtype=torch.float32, device=self.loc.device)


@cache
def plackett_luce_cls(k: int) -> type[PlackettLuceTopK]:
    """The PL distribution class for slate size `k` (module-level name, so it pickles across Ray workers)."""
    if k < 1:
        raise ValueError(f"slate size k must be >= 1, got {k}")
    name = f"PlackettLuceTop{k}"
    cls = type(name, (PlackettLuceTopK,), {"k": int(k), "__module__": __name__, "__qualname__": name})
    setattr(sys.modules[__name__], name, cls)
    return cls


def __getattr__(name: str):
    """Let unpickling in a fresh process recreate `PlackettLuceTop{k}` on first reference."""
    if name.startswith("PlackettLuceTop") and name[len("PlackettLuceTop") :].isdigit():
        return plackett_luce_cls(int(name[len("PlackettLuceTop") :]))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
