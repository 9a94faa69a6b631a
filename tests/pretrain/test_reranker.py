"""The whole-page reranker: masking, page context, and the per-modality offset path."""

from __future__ import annotations

import torch

from pretrain.page import collate
from pretrain.reranker import PAD_SCORE, RerankerConfig, WholePageReranker


def _model(pages, **kw) -> WholePageReranker:
    torch.manual_seed(0)
    net = WholePageReranker(RerankerConfig.for_pages(pages, hidden=16, heads=2, layers=1, **kw))
    net.fit_normalizer(pages)
    return net.eval()


def test_padding_scores_and_item_order_equivariance(tiny_world):
    pages = tiny_world.valid.pages.select(slice(0, 3))
    net = _model(pages, modality_offsets=True)
    b = collate(pages)
    with torch.no_grad():
        s = net.score_batch(b)
        assert torch.all(s[~b.mask] == PAD_SCORE)
        perm = torch.randperm(b.mask.shape[1])
        sp = net(b.features[:, perm], b.modality[:, perm], b.mask[:, perm], b.query, b.user)
    torch.testing.assert_close(sp, s[:, perm], rtol=1e-4, atol=1e-4)


def test_modality_offset_is_one_context_shift_per_modality(tiny_world):
    """With the offset path on, its contribution is the same for every item of a modality on a page and
    differs between pages only through the query/user context."""
    pages = tiny_world.valid.pages.select(slice(0, 4))
    net = _model(pages, modality_offsets=True)
    b = collate(pages)
    with torch.no_grad():
        full = net.score_batch(b)
        offsets = net.offset_head(net.context_embedding(b.query, b.user))
        head = net.offset_head
        net.offset_head = None
        base = net.score_batch(b)
        net.offset_head = head
    diff = (full - base)[b.mask]
    want = offsets.gather(1, b.modality.long())[b.mask]
    torch.testing.assert_close(diff, want, rtol=1e-5, atol=1e-5)
    assert offsets.std(0).max() > 0  # the offsets depend on the page's context


def test_config_without_offsets_round_trips(tiny_world):
    cfg = RerankerConfig.for_pages(tiny_world.valid.pages, hidden=16, modality_offsets=False)
    assert RerankerConfig.from_json(cfg.to_json()) == cfg
    assert WholePageReranker(cfg).offset_head is None
