"""SMAR training losses: pure functions on padded, masked tensors ([B, N] scores, boolean masks).

Every loss averages over what actually exists (valid rows / valid pairs) so that padding, pages with a
single annotated item or modalities absent from a batch never dilute or poison a term. Padded slots
may hold PAD_SCORE (-1e9): all terms select with masks (`torch.where`), never multiply inf by zero.

Sources: pairwise consistency is the SMAR paper's hinge (arXiv 2510.16803, Eq. for L_pair; margin 1
and equal beta_m in the authors' code); the listwise variant and page-level ListMLE follow the
authors' released code (ListMLE, Xia et al. 2008). The anchor-pair term is ours (logistic / RankNet
loss on the iso-label cross-modal pairs, see `pretrain.annotation`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from envs.config_io import JsonConfig
from envs.pages import N_MODALITIES

_NEG = -1e9  # stands in for -inf so that gradients stay finite


def listmle(
    scores: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ListMLE: -log P(order by `target` desc | Plackett-Luce(scores)), over masked items of each row.

    Ties in `target` are broken by a random permutation when `generator` is given (so graded labels
    do not impose an arbitrary fixed order), else by index. Returns the mean over rows with >= 2 items
    (a row with one item has probability 1: nothing to learn), or 0 if there are none.
    """
    mask = mask.bool()
    b, n = scores.shape
    if n == 0:
        return scores.sum() * 0.0
    key = target.float().masked_fill(~mask, float("-inf"))
    if generator is not None:  # lexicographic (target desc, random): stable sort by random key first
        perm = torch.rand(b, n, generator=generator).argsort(dim=1)
        key_p = key.gather(1, perm)
        order = perm.gather(1, key_p.argsort(dim=1, descending=True, stable=True))
    else:
        order = key.argsort(dim=1, descending=True, stable=True)
    s = scores.gather(1, order)
    m = mask.gather(1, order)
    s = torch.where(m, s, torch.full_like(s, _NEG))
    # log sum_{j >= i} exp(s_j): reverse cumulative logsumexp
    tail = torch.logcumsumexp(s.flip(1), dim=1).flip(1)
    per_item = torch.where(m, tail - s, torch.zeros_like(s))
    per_row = per_item.sum(1)
    rows = m.sum(1) >= 2
    if not rows.any():
        return scores.sum() * 0.0
    return per_row[rows].mean()


def page_listmle(
    scores: torch.Tensor,
    relevance: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Page-level ListMLE on annotated items only (relevance -1 = not annotated, ignored)."""
    return listmle(scores, relevance, mask.bool() & (relevance >= 0), generator)


def pointwise_grade(scores: torch.Tensor, relevance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error between score and grade over annotated items (relevance -1 ignored).

    Why: ListMLE is blind to the scale and to the offset of a page's scores, so it cannot tell the
    model that a grade-3 image on one page and a grade-3 doc on another deserve the same score. With
    one judged item per modality per page (a 10% budget) that cross-page calibration is most of what
    the labels can teach about cross-modal placement.
    """
    sel = mask.bool() & (relevance >= 0)
    if not sel.any():
        return scores.sum() * 0.0
    err = torch.where(sel, scores - relevance.float(), torch.zeros_like(scores))
    return (err**2).sum() / sel.sum()


def _beta(beta: torch.Tensor | list[float] | tuple[float, ...], device) -> torch.Tensor:
    return torch.as_tensor(beta, dtype=torch.float32, device=device)


def pairwise_consistency(
    scores: torch.Tensor,
    reference: torch.Tensor,
    modality: torch.Tensor,
    mask: torch.Tensor,
    margin: float = 1.0,
    beta: torch.Tensor | list[float] | tuple[float, ...] = (1.0,) * N_MODALITIES,
) -> torch.Tensor:
    """SMAR pairwise hinge: sum_m beta_m * mean_{i,j in m, g_i > g_j} max(0, margin - (f_i - f_j)).

    Pairs are same-page, same-modality, both masked-in, strictly ordered by the reference (single-modal)
    score. A modality with no pair in the batch contributes 0.
    """
    mask = mask.bool()
    f = torch.where(mask, scores, torch.zeros_like(scores))
    hinge = torch.clamp(margin - (f[:, :, None] - f[:, None, :]), min=0.0)  # on f_i - f_j
    return _modality_pair_mean(hinge, reference, modality, mask, _beta(beta, scores.device))


def _modality_pair_mean(
    per_pair: torch.Tensor,
    reference: torch.Tensor,
    modality: torch.Tensor,
    mask: torch.Tensor,
    beta: torch.Tensor,
) -> torch.Tensor:
    """sum_m beta_m * mean of per_pair [B, N, N] over pairs (i, j) of modality m on the same page, both
    masked-in, with reference_i > reference_j. A modality without such a pair contributes 0."""
    ordered = reference[:, :, None] > reference[:, None, :]
    same = modality[:, :, None] == modality[:, None, :]
    valid = ordered & same & mask[:, :, None] & mask[:, None, :]
    total = per_pair.sum() * 0.0
    for m in range(len(beta)):
        sel = valid & (modality[:, :, None] == m)
        cnt = sel.sum()
        if cnt > 0:
            total = total + beta[m] * torch.where(sel, per_pair, torch.zeros_like(per_pair)).sum() / cnt
    return total


def soft_pairwise_consistency(
    scores: torch.Tensor,
    reference: torch.Tensor,
    modality: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    beta: torch.Tensor | list[float] | tuple[float, ...] = (1.0,) * N_MODALITIES,
) -> torch.Tensor:
    """Graded pairwise consistency: sum_m beta_m * mean_{i,j in m, g_i > g_j} KL(P_ij || sigma(f_i - f_j)),
    with soft targets P_ij = sigma((g_i - g_j) / temperature).

    Why: the hinge asks for a margin between *every* ordered pair, so within-modality score gaps grow
    with rank whatever the single-modal ranker says about how much better one item is; the cross-modal
    interleaving then compares ranks, not utilities. The single-modal rankers are Plackett-Luce models
    (ListMLE-trained), so sigma(g_i - g_j) is their own probability that i beats j; matching it keeps
    their order and their score gaps (the minimum is at f_i - f_j = (g_i - g_j) / temperature), which
    leaves one calibrated scale per modality for the page labels to align. Zero at the optimum.
    """
    mask = mask.bool()
    f = torch.where(mask, scores, torch.zeros_like(scores))
    g = torch.where(mask, reference, torch.zeros_like(reference))
    d = f[:, :, None] - f[:, None, :]
    target = torch.sigmoid((g[:, :, None] - g[:, None, :]) / temperature)
    # KL(Bernoulli(P) || Bernoulli(sigma(d))) = BCE(d, P) - H(P)
    bce = F.binary_cross_entropy_with_logits(d, target, reduction="none")
    ent = F.binary_cross_entropy(target, target, reduction="none")
    return _modality_pair_mean(bce - ent, reference, modality, mask, _beta(beta, scores.device))


def listwise_consistency(
    scores: torch.Tensor,
    reference: torch.Tensor,
    modality: torch.Tensor,
    mask: torch.Tensor,
    beta: torch.Tensor | list[float] | tuple[float, ...] = (1.0,) * N_MODALITIES,
) -> torch.Tensor:
    """Listwise variant (authors' code): sum_m beta_m * ListMLE(f restricted to m | order of g^m)."""
    mask = mask.bool()
    beta_t = _beta(beta, scores.device)
    total = scores.sum() * 0.0
    for m in range(len(beta_t)):
        sel = mask & (modality == m)
        if sel.any():
            total = total + beta_t[m] * listmle(scores, reference, sel)
    return total


def anchor_pair_loss(
    scores: torch.Tensor,
    pairs: torch.Tensor,
    pair_mask: torch.Tensor,
    kind: str = "logistic",
    margin: float = 1.0,
) -> torch.Tensor:
    """Loss on preference pairs: pairs [B, P, 2] of slot indices (first preferred), pair_mask [B, P].

    `logistic`: mean softplus(-(f_i - f_j)) (RankNet); `hinge`: mean max(0, margin - (f_i - f_j)).
    """
    pair_mask = pair_mask.bool()
    if pairs.numel() == 0 or not pair_mask.any():
        return scores.sum() * 0.0
    fi = scores.gather(1, pairs[..., 0].clamp_min(0))
    fj = scores.gather(1, pairs[..., 1].clamp_min(0))
    d = torch.where(pair_mask, fi - fj, torch.zeros_like(fi))
    if kind == "logistic":
        per = F.softplus(-d)
    elif kind == "hinge":
        per = torch.clamp(margin - d, min=0.0)
    else:
        raise ValueError(f"anchor loss kind must be 'logistic' or 'hinge', got {kind!r}")
    return torch.where(pair_mask, per, torch.zeros_like(per)).sum() / pair_mask.sum()


CONSISTENCY_KINDS = ("pairwise", "listwise", "soft")


@dataclass(frozen=True)
class LossConfig(JsonConfig):
    """Weights of the SMAR objective: page + consistency_weight * consistency + anchor_weight * anchors."""

    page_weight: float = 1.0
    # Calibration: score ~ grade on annotated items (`pointwise_grade`), so scores are in grade units
    # across pages: what lets one judged item per modality and page teach the cross-modal placement
    # (ListMLE sees neither a page's score scale nor its offset; README, "SMAR pretraining").
    pointwise_weight: float = 1.0
    # 0 = no single-modal consistency (ablation). The authors use unit weights; ours is larger because
    # the term also runs on single-modal pages (RerankerTrainConfig.sm_batch_pages), i.e. it carries
    # the knowledge of many more queries than the page term, and more page labels (30%) otherwise pull
    # the order away from g^m (weights compared in the README).
    consistency_weight: float = 5.0
    # "pairwise" (paper hinge), "listwise" (authors' ListMLE variant) or "soft" (graded pairwise:
    # soft targets from the single-modal score gaps, `soft_pairwise_consistency`)
    consistency: str = "pairwise"
    soft_temperature: float = 1.0  # "soft": target P_ij = sigmoid((g_i - g_j) / T)
    # gamma of the hinge, in the score's units: with the pointwise term those are grades (0-4), and
    # the authors' margin of 1 would force a grade per rank step within a modality, whose items span
    # far fewer grades than ranks, so a quarter grade.
    margin: float = 0.25
    beta: tuple[float, ...] = field(default_factory=lambda: (1.0,) * N_MODALITIES)  # beta_m per modality
    anchor_weight: float = 1.0
    anchor_loss: str = "logistic"

    def __post_init__(self) -> None:
        if self.consistency not in CONSISTENCY_KINDS:
            raise ValueError(f"consistency must be one of {CONSISTENCY_KINDS}, got {self.consistency!r}")
        if self.soft_temperature <= 0:
            raise ValueError(f"soft_temperature must be > 0, got {self.soft_temperature}")
        if len(self.beta) != N_MODALITIES:
            raise ValueError(f"beta needs {N_MODALITIES} per-modality weights, got {len(self.beta)}")
        for name in ("page_weight", "pointwise_weight", "consistency_weight", "anchor_weight", "margin"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def smar_loss(
    scores: torch.Tensor,
    relevance: torch.Tensor,
    reference: torch.Tensor,
    has_reference: torch.Tensor,
    modality: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    pairs: torch.Tensor | None = None,
    pair_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """All SMAR terms and their weighted total ("loss"). Terms with weight 0 are skipped (reported 0)."""
    zero = scores.sum() * 0.0
    out = {"page": zero, "pointwise": zero, "consistency": zero, "anchor": zero}
    if cfg.page_weight > 0:
        out["page"] = page_listmle(scores, relevance, mask, generator)
    if cfg.pointwise_weight > 0:
        out["pointwise"] = pointwise_grade(scores, relevance, mask)
    if cfg.consistency_weight > 0:
        cmask = mask.bool() & has_reference.bool()
        if cfg.consistency == "pairwise":
            out["consistency"] = pairwise_consistency(
                scores, reference, modality, cmask, cfg.margin, cfg.beta
            )
        elif cfg.consistency == "soft":
            out["consistency"] = soft_pairwise_consistency(
                scores, reference, modality, cmask, cfg.soft_temperature, cfg.beta
            )
        else:
            out["consistency"] = listwise_consistency(scores, reference, modality, cmask, cfg.beta)
    if cfg.anchor_weight > 0 and pairs is not None and pair_mask is not None:
        out["anchor"] = anchor_pair_loss(scores, pairs, pair_mask, cfg.anchor_loss, cfg.margin)
    out["loss"] = (
        cfg.page_weight * out["page"]
        + cfg.pointwise_weight * out["pointwise"]
        + cfg.consistency_weight * out["consistency"]
        + cfg.anchor_weight * out["anchor"]
    )
    return out
