"""Golden tests for the SMAR losses and the pretraining metrics on tiny hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from envs.metrics import ndcg_of_scores
from envs.pages import Pages
from pretrain.evaluate import evaluate_scores
from pretrain.losses import (
    LossConfig,
    anchor_pair_loss,
    listmle,
    listwise_consistency,
    page_listmle,
    pairwise_consistency,
    pointwise_grade,
    smar_loss,
    soft_pairwise_consistency,
)
from pretrain.reranker import PAD_SCORE
from pretrain.reranker_fit import mean_page_ndcg

T = torch.tensor


def test_listmle_two_items():
    # order by target: item 0 then item 1 -> -(1 - log(e^1 + e^0)) - 0
    loss = listmle(T([[1.0, 0.0]]), T([[1.0, 0.0]]), T([[True, True]]))
    assert loss.item() == pytest.approx(math.log(math.e + 1) - 1, abs=1e-6)


def test_listmle_masks_padding_and_single_item_rows():
    scores = T([[2.0, 0.0, PAD_SCORE], [3.0, PAD_SCORE, PAD_SCORE]])
    target = T([[0.0, 1.0, 9.0], [1.0, 0.0, 0.0]])
    mask = T([[True, True, False], [True, False, False]])
    # row 0: order (1, 0): log(e^0 + e^2) - 0; row 1 has one item and is excluded from the mean
    assert listmle(scores, target, mask).item() == pytest.approx(math.log(1 + math.e**2), abs=1e-6)
    assert torch.isfinite(listmle(scores, target, mask))


def test_listmle_gradient_finite_with_pad_scores():
    s = T([[1.0, PAD_SCORE, 0.0]], requires_grad=True)
    listmle(s, T([[0.0, 5.0, 1.0]]), T([[True, False, True]])).backward()
    assert torch.isfinite(s.grad).all() and s.grad[0, 1] == 0


def test_page_listmle_ignores_unannotated():
    scores = T([[1.0, 0.0, 7.0]])
    rel = T([[2, 1, -1]])
    full = page_listmle(scores, rel, T([[True, True, True]]))
    assert full.item() == pytest.approx(math.log(math.e + 1) - 1, abs=1e-6)


def test_pairwise_consistency_golden():
    f = T([[0.5, 0.0, 0.0, 2.0]])
    g = T([[1.0, 0.0, 0.0, 1.0]])
    mod = T([[0, 0, 1, 1]])
    mask = T([[True, True, True, True]])
    # modality 0: pair (0 > 1), hinge max(0, 1 - 0.5) = 0.5; modality 1: pair (3 > 2), hinge 0
    assert pairwise_consistency(f, g, mod, mask, 1.0, (1.0, 1.0, 1.0, 1.0)).item() == pytest.approx(0.5)
    assert pairwise_consistency(f, g, mod, mask, 1.0, (2.0, 1.0, 1.0, 1.0)).item() == pytest.approx(1.0)
    # margin 3 -> modality 1 hinge 1, modality 0 hinge 2.5; beta_1 = 0.5
    assert pairwise_consistency(f, g, mod, mask, 3.0, (1.0, 0.5, 1.0, 1.0)).item() == pytest.approx(3.0)


def test_pairwise_consistency_skips_ties_and_cross_modal_pairs():
    f = T([[0.0, 5.0, 5.0]])
    g = T([[1.0, 1.0, 0.0]])  # (0,1) tied in g; (0,2) cross-modal
    mod = T([[0, 0, 1]])
    assert pairwise_consistency(f, g, mod, T([[True, True, True]])).item() == 0.0


def test_soft_pairwise_consistency_golden():
    f = T([[1.0, 0.0, 0.0, 0.0, 7.0]])
    g = T([[2.0, 0.0, 0.0, 1.0, 9.0]])
    mod = T([[0, 0, 1, 1, 2]])
    mask = T([[True, True, True, True, False]])  # item 4 is padding
    # modality 0: pair (0 > 1), P = s(2), q = s(1); modality 1: pair (3 > 2), P = s(1), q = s(0)
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731

    def kl(p: float, q: float) -> float:
        return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))

    want = kl(sig(2.0), sig(1.0)) + 0.5 * kl(sig(1.0), sig(0.0))
    got = soft_pairwise_consistency(f, g, mod, mask, 1.0, (1.0, 0.5, 1.0, 1.0))
    assert got.item() == pytest.approx(want, abs=1e-5)
    # temperature 2: P = s(1) in modality 0, matched exactly by f_0 - f_1 = 1 -> that term is 0
    got_t = soft_pairwise_consistency(f, g, mod, mask, 2.0, (1.0, 0.0, 1.0, 1.0))
    assert got_t.item() == pytest.approx(0.0, abs=1e-6)


def test_soft_pairwise_consistency_minimum_keeps_score_gaps():
    """At its minimum the reranker's within-modality gaps equal the ranker's (over T), not the ranks'."""
    torch.manual_seed(0)
    g = T([[3.0, 2.9, 0.0, 1.0, -1.0]])
    mod = T([[0, 0, 0, 1, 1]])
    mask = T([[True] * 5])
    f = torch.zeros(1, 5, requires_grad=True)
    opt = torch.optim.Adam([f], lr=0.05)
    for _ in range(1500):
        opt.zero_grad()
        soft_pairwise_consistency(f, g, mod, mask).backward()
        opt.step()
    d = f.detach()[0]
    assert (d[0] - d[1]).item() == pytest.approx(0.1, abs=0.02)
    assert (d[1] - d[2]).item() == pytest.approx(2.9, abs=0.05)
    assert (d[3] - d[4]).item() == pytest.approx(2.0, abs=0.05)


def test_pointwise_grade_golden():
    s = T([[1.0, 0.5, 9.0], [3.0, 0.0, 0.0]])
    rel = T([[2, 0, -1], [3, 1, 4]])
    mask = T([[True, True, True], [True, True, False]])
    # annotated and real: (1-2)^2, (0.5-0)^2, (3-3)^2, (0-1)^2 -> mean 2.25 / 4
    assert pointwise_grade(s, rel, mask).item() == pytest.approx(2.25 / 4)
    assert pointwise_grade(s, T([[-1, -1, -1], [-1, -1, -1]]), mask).item() == 0.0


def test_listwise_consistency_golden():
    f = T([[1.0, 0.0, 3.0, 0.0]])
    g = T([[5.0, 4.0, 0.0, 1.0]])
    mod = T([[0, 0, 1, 1]])
    # modality 0: order (0, 1): log(e^1 + e^0) - 1 ; modality 1: order (3, 2): log(e^0 + e^3) - 0
    want = (math.log(math.e + 1) - 1) + 2.0 * math.log(1 + math.e**3)
    got = listwise_consistency(f, g, mod, T([[True] * 4]), (1.0, 2.0, 1.0, 1.0))
    assert got.item() == pytest.approx(want, abs=1e-5)


def test_anchor_pair_loss_golden():
    s = T([[1.0, 0.0, 4.0]])
    pairs = T([[[0, 1], [1, 2]]])
    pm = T([[True, False]])
    assert anchor_pair_loss(s, pairs, pm).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert anchor_pair_loss(s, pairs, pm, "hinge", 1.0).item() == pytest.approx(0.0)
    both = anchor_pair_loss(s, pairs, T([[True, True]]), "hinge", 1.0)
    assert both.item() == pytest.approx((0.0 + 5.0) / 2)


def test_smar_loss_weights_and_ablation():
    s = T([[1.0, 0.0, 0.5, 0.2]])
    rel = T([[1, 0, -1, -1]])
    g = T([[0.0, 1.0, 1.0, 0.0]])
    mod = T([[0, 0, 1, 1]])
    m = T([[True] * 4])
    pairs, pm = T([[[0, 3]]]), T([[True]])
    cfg = LossConfig(page_weight=1.0, pointwise_weight=0.3, consistency_weight=2.0, anchor_weight=0.5)
    out = smar_loss(s, rel, g, m, mod, m, cfg, pairs, pm)
    want = out["page"] + 0.3 * out["pointwise"] + 2.0 * out["consistency"] + 0.5 * out["anchor"]
    assert out["loss"].item() == pytest.approx(want.item())
    assert out["consistency"].item() > 0
    # pointwise on the annotated items 0 (grade 1, score 1) and 1 (grade 0, score 0): exact, so 0
    assert out["pointwise"].item() == pytest.approx(0.0)
    off_cfg = LossConfig(pointwise_weight=0.0, consistency_weight=0.0, anchor_weight=0.0)
    off = smar_loss(s, rel, g, m, mod, m, off_cfg, pairs, pm)
    assert off["loss"].item() == pytest.approx(out["page"].item())
    with pytest.raises(ValueError, match="consistency"):
        LossConfig(consistency="bogus")


def _page(mod, rel, ref):
    n = len(mod)
    return Pages(
        page_id=np.array(["p"], object),
        query_id=np.array(["q"], object),
        query_features=np.zeros((1, 1), np.float32),
        user_features=np.zeros((1, 1), np.float32),
        offsets=np.array([0, n]),
        item_id=np.array([f"i{i}" for i in range(n)], object),
        modality=np.array(mod, np.int8),
        features=np.zeros((n, 1), np.float32),
        feature_dims={"doc": 1, "image": 1, "video": 1, "answer": 1},
        single_modal_score=np.array(ref, np.float32),
        relevance=np.array(rel, np.int8),
    )


def test_evaluate_scores_golden():
    # relevance [0, 3, 1], scores rank item 0, then 1, then 2
    pages = _page([0, 0, 1], [0, 3, 1], [1.0, 0.0, 5.0])
    got = evaluate_scores(np.array([3.0, 2.0, 1.0]), pages, pages.relevance)
    dcg = 0 + 7 / math.log2(3) + 1 / math.log2(4)
    idcg = 7 + 1 / math.log2(3)
    assert got["ndcg@10"] == pytest.approx(dcg / idcg)
    assert got["mrr@10"] == pytest.approx(0.5)  # first grade >= 3 at rank 2
    assert got["candidate_consistency"] == pytest.approx(1.0)  # doc pair (0 over 1) as the reference says
    flipped = evaluate_scores(np.array([2.0, 3.0, 1.0]), pages, pages.relevance)
    assert flipped["candidate_consistency"] == pytest.approx(0.0)


def test_mean_page_ndcg_matches_envs_metrics():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(5, 7))
    r = rng.integers(0, 5, size=(5, 7))
    m = np.ones((5, 7), bool)
    m[2, 4:] = False
    want = np.mean([ndcg_of_scores(s[i][m[i]], r[i][m[i]], 5) for i in range(5)])
    got = mean_page_ndcg(torch.from_numpy(s), torch.from_numpy(r), torch.from_numpy(m), k=5)
    assert got == pytest.approx(want)
