"""The synthetic search world: determinism, modality-specific scales, truth structure, splits."""

from __future__ import annotations

import numpy as np
import pytest

from envs.pages import MAX_GRADE, MODALITIES, MODALITY_ID
from envs.world import WHOLE_PAGE_SPLITS, WorldConfig, WorldGenerator, format_summary, generate_world

CFG = WorldConfig(seed=7, queries=40, candidates_per_modality=4, single_modal_queries=60)


def _arrays(world):
    out = {}
    for name, split in [*world.whole_page_splits().items(), *world.single_modal.items()]:
        out[f"{name}/features"] = split.pages.features
        out[f"{name}/query"] = split.pages.query_features
        out[f"{name}/user"] = split.pages.user_features
        out[f"{name}/relevance"] = split.truth.relevance
        out[f"{name}/attract"] = split.truth.attractiveness
        out[f"{name}/labels"] = split.pages.relevance
    return out


def test_same_seed_same_world_different_seed_differs(tiny_world):
    a, b = _arrays(tiny_world), _arrays(generate_world(CFG))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    c = _arrays(
        generate_world(WorldConfig(seed=8, queries=40, candidates_per_modality=4, single_modal_queries=60))
    )
    assert not np.array_equal(a["test/features"], c["test/features"])
    assert not np.array_equal(a["traffic/relevance"], c["traffic/relevance"])


def test_feature_scales_and_dims_differ_across_modalities(tiny_world):
    pages = tiny_world.test.pages
    dims = tiny_world.config.feature_dims
    assert len(set(dims.values())) == len(MODALITIES)
    feats = {}
    for m in MODALITIES:
        f = pages.features[pages.modality == MODALITY_ID[m]]
        assert not f[:, dims[m] :].any(), f"{m}: padding columns must be zero"
        feats[m] = f[:, : dims[m]]
    # doc: engagement counts (non-negative integers, heavy-tailed, large)
    assert (feats["doc"] >= 0).all() and np.array_equal(feats["doc"], np.round(feats["doc"]))
    assert np.abs(feats["doc"]).mean() > 20
    # image: scores in [0, 1]; answer: in [-1, 1] with negatives; video: positive seconds-like values
    assert feats["image"].min() >= 0 and feats["image"].max() <= 1
    assert feats["answer"].min() >= -1 and feats["answer"].max() <= 1 and (feats["answer"] < 0).any()
    assert (feats["video"] > 0).all() and feats["video"].mean() > 10
    # orders of magnitude apart: a single-modal score on raw features is not comparable across them
    means = {m: np.abs(f).mean() for m, f in feats.items()}
    assert means["doc"] > 10 * means["image"] and means["video"] > 10 * means["answer"]


def test_relevance_and_attractiveness_correlated_but_distinct(tiny_world):
    truth = tiny_world.traffic.truth
    rel, att = truth.relevance.astype(float), truth.attractiveness
    assert rel.min() >= 0 and rel.max() <= MAX_GRADE and len(np.unique(truth.relevance)) == MAX_GRADE + 1
    assert ((att > 0) & (att < 1)).all()
    r = np.corrcoef(rel, att)[0, 1]
    assert 0.05 < r < 0.8, r
    # distinct: visual modalities are more attractive at equal relevance (thumbnails draw the eye)
    mod = tiny_world.traffic.pages.modality
    for g in range(1, MAX_GRADE):
        sel = truth.relevance == g
        vis = att[sel & (mod == MODALITY_ID["video"])].mean()
        doc = att[sel & (mod == MODALITY_ID["doc"])].mean()
        assert vis > doc, g


def test_relevance_depends_on_modality_fit(tiny_world):
    split = tiny_world.traffic
    pref = split.truth.preferred_modality[split.pages.page_of_item]
    on = split.truth.relevance[split.pages.modality == pref].mean()
    off = split.truth.relevance[split.pages.modality != pref].mean()
    assert on > off + 0.5


def test_pool_labels_hidden_other_splits_labelled(tiny_world):
    pool = tiny_world.pool
    assert (pool.pages.relevance == -1).all()
    assert pool.truth.relevance.min() >= 0
    for name in ("valid", "test", "traffic"):
        s = getattr(tiny_world, name)
        np.testing.assert_array_equal(s.pages.relevance, s.truth.relevance)


def test_split_sizes(tiny_world):
    cfg = tiny_world.config
    per_page = cfg.candidates_per_modality * len(MODALITIES)
    counts = np.floor(np.array(cfg.split_fractions) * cfg.queries).astype(int)
    counts[-1] = cfg.queries - counts[:-1].sum()
    for name, n in zip(WHOLE_PAGE_SPLITS, counts):
        pages = getattr(tiny_world, name).pages
        assert len(pages) == n * cfg.reformulations, name
        assert (pages.sizes == per_page).all()
        for m in MODALITIES:  # every page mixes all modalities
            assert (
                np.bincount(pages.page_of_item[pages.modality == MODALITY_ID[m]])
                == cfg.candidates_per_modality
            ).all()
    for m, split in tiny_world.single_modal.items():
        p = split.pages
        assert len(p) == cfg.single_modal_queries and (p.sizes == 2 * cfg.candidates_per_modality).all()
        assert (p.modality == MODALITY_ID[m]).all()
        assert p.relevance.min() >= 0 and p.relevance.max() <= MAX_GRADE


def test_single_modal_labels_agree_within_modality_only(tiny_world):
    for m, split in tiny_world.single_modal.items():
        r = np.corrcoef(split.pages.relevance.astype(float), split.truth.relevance.astype(float))[0, 1]
        assert r > 0.3, (m, r)
    # the per-modality label scales differ: the same true grade maps to different label means
    means = [
        s.pages.relevance[s.truth.relevance == 2].mean()
        for s in tiny_world.single_modal.values()
        if (s.truth.relevance == 2).any()
    ]
    assert max(means) - min(means) > 0.3


def test_reformulation_structure(tiny_world):
    pages, truth = tiny_world.test.pages, tiny_world.test.truth
    r = tiny_world.config.reformulations
    qids, first = np.unique(pages.query_id, return_index=True)
    assert len(qids) * r == len(pages)
    for q, start in zip(qids, first):
        idx = np.arange(start, start + r)
        assert pages.page_id[idx].tolist() == [f"{q}-r{i}" for i in range(r)]
        assert (pages.query_id[idx] == q).all()
        assert (truth.preferred_modality[idx] == truth.preferred_modality[start]).all()
        assert np.array_equal(
            pages.user_features[idx], np.repeat(pages.user_features[start : start + 1], r, 0)
        )
        # a reformulation rewords the query: close to, but not equal to, the first wording
        d = np.linalg.norm(pages.query_features[idx[1:]] - pages.query_features[start], axis=1)
        assert (d > 0).all() and (d < 1.0).all()
        assert (
            len(set(pages.item_id[pages.offsets[start] : pages.offsets[start + r]])) == r * pages.sizes[start]
        )


def test_summary_and_config_validation(tiny_world):
    s = tiny_world.summary()
    assert s["splits"]["test"]["pages"] == len(tiny_world.test.pages)
    assert (
        sum(s["splits"]["pool"]["modalities"]["doc"]["grades"]) == (tiny_world.pool.pages.modality == 0).sum()
    )
    assert "single_modal/video" in format_summary(s)
    with pytest.raises(ValueError, match="feature_dims"):
        WorldConfig(feature_dims={"doc": 3})
    with pytest.raises(ValueError, match="split_fractions"):
        WorldConfig(split_fractions=(0.5, 0.5, 0.5, 0.5))


def test_match_is_a_query_item_topical_match():
    """Within-modality relevance depends on the query: match is the squashed cosine between the query's
    and the item's topics, keeps its Beta(2, 2) marginal, and is no property of the item alone."""
    gen = WorldGenerator(WorldConfig(seed=3))
    rng = np.random.default_rng(0)
    q = gen._queries(rng, 2)
    it = gen._items(rng, "doc", 4000, 0.5, q["topic"][0])
    np.testing.assert_allclose(it["match"], (1.0 + it["topic"] @ q["topic"][0]) / 2.0, atol=1e-12)
    assert abs(it["match"].mean() - 0.5) < 0.02 and abs(it["match"].std() - 0.5 / np.sqrt(5)) < 0.02
    # the same items judged against an unrelated query (topic orthogonal to the first): their match
    # there is unrelated to their match for the first query
    z = q["topic"][1] - (q["topic"][1] @ q["topic"][0]) * q["topic"][0]
    other = (1.0 + it["topic"] @ (z / np.linalg.norm(z))) / 2.0
    assert abs(np.corrcoef(it["match"], other)[0, 1]) < 0.2
    # the page does not reveal the query topic: candidates' topics average out
    assert abs(it["topic"].mean(0) @ q["topic"][0]) < 0.05


def test_query_features_carry_the_topic(tiny_world):
    gen = WorldGenerator(tiny_world.config)
    q = gen._queries(np.random.default_rng(1), 500)
    x = np.column_stack([q["features"], np.ones(500)])
    coef, *_ = np.linalg.lstsq(x, q["topic"], rcond=None)
    r2 = 1.0 - ((x @ coef - q["topic"]) ** 2).sum() / ((q["topic"] - q["topic"].mean(0)) ** 2).sum()
    assert r2 > 0.9, r2
