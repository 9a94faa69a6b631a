"""The layout decomposition of the bench: a policy's layout move, per page and per intent."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from agent.evaluation import evaluate_policy
from agent.layout_diagnosis import layout_decomposition, per_item, relative_layout

SERP = {"n_max": 16, "slate_size": 5}


def _smar(tiny_run):
    net, _ = tiny_run.reranker()
    assert net.offset_head is not None
    return net.eval()


def test_smar_itself_moves_nothing(tiny_run):
    smar, split = _smar(tiny_run), tiny_run.split("test")
    d = layout_decomposition(smar, smar, split, SERP, seed=3, repeats=2)
    own = evaluate_policy(smar, split.pages, split.truth, seed=3, repeats=2, serp=SERP)["reward"]
    for key in ("policy", "body_only", "smar_plus_move", "smar_plus_intent_mean"):
        assert d[key] == pytest.approx(own)
    assert np.allclose(d["intent_mean_move"], 0.0) and np.allclose(d["within_intent_sd"], 0.0)


def test_a_constant_layout_move_is_its_own_intent_mean(tiny_run):
    """Shifting the offset head's bias moves every page alike: the per-intent mean is the shift
    (relative to doc), nothing varies within an intent, and the item scoring is SMAR's."""
    smar, split = _smar(tiny_run), tiny_run.split("test")
    moved = copy.deepcopy(smar)
    shift = torch.tensor([0.5, 2.0, -1.0, 0.0])
    with torch.no_grad():
        moved.offset_head.bias += shift
    d = layout_decomposition(moved, smar, split, SERP, seed=3, repeats=2)
    present = np.unique(split.truth.preferred_modality)
    expect = (shift[1:] - shift[0]).numpy()
    for g in present:
        assert np.allclose(d["intent_mean_move"][g], expect, atol=1e-5)
    assert np.allclose(d["within_intent_sd"], 0.0, atol=1e-5)
    assert d["smar_plus_move"] == pytest.approx(d["smar_plus_intent_mean"])
    assert d["smar_plus_move"] == pytest.approx(d["policy"])
    own = evaluate_policy(smar, split.pages, split.truth, seed=3, repeats=2, serp=SERP)["reward"]
    assert d["body_only"] == pytest.approx(own)


def test_per_item_reads_each_items_modality(tiny_run):
    pages = tiny_run.split("test").pages
    layout = np.arange(len(pages) * 4, dtype=np.float64).reshape(len(pages), 4)
    items = per_item(pages, layout)
    p = 1
    sl = pages.item_slice(p)
    assert np.array_equal(items[sl], layout[p, pages.modality[sl].astype(np.int64)])
    assert relative_layout(_smar(tiny_run), pages)[:, 0].max() == 0.0
