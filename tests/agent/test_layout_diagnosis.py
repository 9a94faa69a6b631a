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


def test_linear_layout_ceiling_of_no_move_is_smar(tiny_run):
    """Zero per-intent offsets: every fit is zero, so every figure is SMAR's own reward; a real offset
    table gives finite figures and an R2 of at most 1."""
    from agent.layout_diagnosis import linear_layout_ceiling

    smar, train, test = _smar(tiny_run), tiny_run.split("traffic"), tiny_run.split("test")
    own = evaluate_policy(smar, test.pages, test.truth, seed=3, repeats=2, serp=SERP)["reward"]
    zero = linear_layout_ceiling(smar, train, test, np.zeros((4, 4)), SERP, seed=3, repeats=2, scales=(1.0,))
    assert zero["reference_with_true_intent"] == pytest.approx(own)
    assert zero["intent_classifier_mixture"] == pytest.approx(own)
    for kind in ("linear_in_context_embedding", "linear_in_raw_context"):
        assert zero[kind]["reward_by_scale"]["1.0"] == pytest.approx(own)
    table = np.array([[0, -5, -5, 0], [0, 5, 0, -5], [0, -5, 10, 10], [0, -5, 0, 5]], np.float64)
    some = linear_layout_ceiling(smar, train, test, table, SERP, seed=3, repeats=2, scales=(0.5, 1.0))
    assert some["linear_in_raw_context"]["test_r2"] <= 1.0
    assert set(some["linear_in_context_embedding"]["reward_by_scale"]) == {"0.5", "1.0"}
    assert np.isfinite(some["intent_classifier_mixture"])
