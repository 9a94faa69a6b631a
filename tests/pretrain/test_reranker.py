"""The whole-page reranker: masking, page context, and the per-modality offset path."""

from __future__ import annotations

import pytest
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


@pytest.mark.parametrize("padded", [True, False])
def test_lean_form_gives_the_standard_scores_and_gradients(tiny_world, padded):
    """The lean form (each adapter only on its own modality's items, the encoder layers written
    out, no attention mask without padding; what the RL policy runs): the standard form's scores
    and gradients, with and without gradients on; every adapter gets a gradient (zero) when its
    modality is absent."""
    pages = tiny_world.traffic.pages.select(slice(0, 12))
    net = _model(pages, modality_offsets=True).train()
    b = collate(pages)
    if padded:
        b.mask[3, 5:] = False  # a partly padded page
    else:
        keep = b.mask.all(-1)
        b = type(b)(**{k: v[keep] for k, v in b.__dict__.items()})
        assert len(b.mask) and b.mask.all()
    grads, scores = [], []
    for lean in (False, True):
        net.lean = lean
        net.zero_grad()
        s = net.score_batch(b)
        s.masked_fill(~b.mask, 0.0).square().sum().backward()
        scores.append(s.detach())
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
        with torch.no_grad():
            torch.testing.assert_close(net.eval().score_batch(b), s.detach(), rtol=1e-6, atol=1e-6)
        net.train()
    torch.testing.assert_close(scores[1], scores[0], rtol=1e-6, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-5, msg=name)
    only_docs = b.mask & (b.modality == 0)
    net.zero_grad()
    net(b.features, torch.zeros_like(b.modality), only_docs, b.query, b.user).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert all((p.grad == 0).all() for p in net.adapters[1].parameters())
