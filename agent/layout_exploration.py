"""Gaussian exploration of the page layout: the policy's two-level action (layout, then ranking).

Why: the reward's gap between SMAR and the best constraint-feasible reference is in the layout (how far
each modality moves up for the query's intent; `agent.reward_landscape`), and Plackett-Luce noise on
every item shows the layout only weakly: at the temperature that makes it visible, the sampled pages are
nearly random, so the batch measures the gradient of a different policy. Exploring the layout directly
(a per-page Gaussian offset per modality, the first modality the reference) and the items at a low
temperature gives the layout's gradient a larger signal-to-noise per batch at far less reward lost to
exploration (`agent.reward_landscape.layout_gradient`, `layout_noise`; RESULTS.md).

The action is the pair (d, slate): d ~ N(nu, sigma^2) the page's relative modality offsets (nu = the
policy's own, from its offset head), then slate ~ PL((item scores + d[modality]) / T). Its density
factorises, so PPO's ratio of the pair is exact:

    log pi(d, slate) = log N(d; nu, sigma^2) + log PL(slate | scores - nu[mod] + d[mod])

The sampling side stores nu and eps = d - nu (extra model outputs, batch columns LAYOUT_MEAN and
LAYOUT_NOISE); the learner re-centres eps on the updated policy's nu' (`recentre`) and adds the
Gaussian log-density ratio to the slate's. Evaluation, export and serving use nu only (no noise).
"""

from __future__ import annotations

import torch

LAYOUT_MEAN = "layout_mean"  # batch column: the sampling policy's relative offsets nu, [B, M]
LAYOUT_NOISE = "layout_noise"  # batch column: the sampled eps = d - nu, [B, M] (first column 0)
LAYOUT_LOGP = "layout_logp"  # forward_train output: log N(d; nu', sigma^2) under the updated policy


def relative(offsets: torch.Tensor) -> torch.Tensor:
    """Offsets relative to the first modality's, [B, M]: only relative offsets change a ranking."""
    return offsets - offsets[:, :1]


def sample_noise(rows: int, n_modalities: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """eps ~ N(0, sigma^2) for every modality but the first (the reference, 0), [rows, M]."""
    eps = torch.randn(rows, n_modalities, dtype=like.dtype, device=like.device) * sigma
    eps[:, 0] = 0.0
    return eps


def log_density(eps: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(eps; 0, sigma^2) over the free modalities, per row [B], without its constant (it cancels
    in every ratio PPO takes)."""
    return -0.5 * (eps[:, 1:] / sigma).pow(2).sum(-1)


def recentre(mean_old: torch.Tensor, noise_old: torch.Tensor, mean_new: torch.Tensor) -> torch.Tensor:
    """The sampled layout d = nu_old + eps_old as noise around the updated policy's nu': d - nu'."""
    return mean_old + noise_old - mean_new


def layout_scores(scores: torch.Tensor, noise: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """Item scores (which already carry the policy's own offsets nu) moved by the page's layout noise."""
    return scores + noise.gather(1, modality.long().clamp(0, noise.shape[1] - 1))


def at_sampled_layout(
    scores: torch.Tensor, own_layout: torch.Tensor, batch: dict, modality: torch.Tensor
) -> torch.Tensor:
    """Scores of a policy whose own relative layout is `own_layout` [B, M], moved to each page's sampled
    layout d = nu + eps of the batch: how that policy would have ranked the page under the same layout
    (the second factor of its action density at the sampled first factor)."""
    d = batch[LAYOUT_MEAN] + batch[LAYOUT_NOISE]
    return layout_scores(scores, d - own_layout, modality)


def gaussian_kl(mean_p: torch.Tensor, mean_q: torch.Tensor, sigma: float) -> torch.Tensor:
    """KL(N(mean_p, sigma^2) || N(mean_q, sigma^2)) of the layouts, per row [B], over the free modalities:
    the first factor of the two-level action's KL."""
    return 0.5 * ((mean_p[:, 1:] - mean_q[:, 1:]) / sigma).pow(2).sum(-1)
