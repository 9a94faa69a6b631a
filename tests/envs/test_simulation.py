"""Offline simulation: log schema, exact propensities, session structure, summary and files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from envs.feedback_summary import format_side_by_side
from envs.pages import MODALITIES
from envs.simulation import (
    GreedyPolicy,
    RandomPolicy,
    SimulationConfig,
    Slates,
    simulate,
)
from envs.user_model import UserModelConfig

COLUMNS = [
    "event_id", "session_id", "query_index", "page_id", "model_version", "item_id", "modality", "position",
    "action", "score", "pscore", "pscore_cascade", "slate_logprob", "click", "dwell", "viewport", "satisfied",
    "reward",
    "examined", "relevance", "attractiveness",
]  # fmt: skip


@pytest.fixture(scope="module")
def random_log(tiny_world):
    split = tiny_world.traffic
    return simulate(
        RandomPolicy(), split.pages, split.truth, SimulationConfig(sessions=1500, slate_size=10, seed=3)
    )


def test_schema_and_rows(random_log, tiny_world):
    fb = random_log.feedback.to_pandas()
    assert list(fb.columns) == COLUMNS
    assert fb.event_id.is_unique
    pages = random_log.pages.to_pandas()
    assert len(fb) == pages.n_shown.sum() == 10 * len(pages)  # every tiny page has 16 >= 10 items
    per_page = fb.groupby(["session_id", "query_index"])
    assert (per_page.position.apply(lambda p: sorted(p) == list(range(1, 11)))).all()
    assert (per_page.action.nunique() == 10).all()
    # item_id, modality, relevance are those of the page's item at `action`.
    tp = tiny_world.traffic.pages
    idx = {pid: i for i, pid in enumerate(tp.page_id)}
    row = fb.iloc[123]
    item = tp.offsets[idx[row.page_id]] + row.action
    assert tp.item_id[item] == row.item_id
    assert tiny_world.traffic.truth.relevance[item] == row.relevance
    assert set(fb.model_version) == {"random"}
    assert ((fb.dwell > 0) == (fb.click == 1)).all()
    threshold = fb.modality.map(dict(zip(MODALITIES, UserModelConfig().satisfied_dwell_s)))
    clicked = fb.click == 1
    assert (fb.satisfied[clicked] == (fb.dwell[clicked] >= threshold[clicked])).all()
    # An unclicked item satisfied exactly when it is an answer card viewed for the threshold or longer.
    seen = (fb.modality == "answer") & (fb.viewport >= UserModelConfig().answer_viewport_s)
    assert (fb.satisfied[~clicked] == seen[~clicked]).all() and seen[~clicked].any()
    assert (fb.viewport[fb.modality != "answer"] == 0).all()


def test_uniform_random_propensities_are_exact(random_log):
    fb = random_log.feedback.to_pandas()
    n = 16
    np.testing.assert_allclose(fb.pscore, 1.0 / (n - fb.position + 1))
    for _, g in fb[fb.session_id == fb.session_id.iloc[0]].groupby("query_index"):
        g = g.sort_values("position")
        np.testing.assert_allclose(g.pscore_cascade, np.cumprod(g.pscore))
        np.testing.assert_allclose(g.slate_logprob, np.log(g.pscore).sum())
    # and the rankings are indeed uniform: each slot is at position 1 about 1/16 of the time
    first = fb[fb.position == 1].action.value_counts(normalize=True)
    assert first.max() - first.min() < 0.06


def test_sessions_follow_the_user(random_log):
    pages = random_log.pages.to_pandas()
    for _, s in pages.groupby("session_id"):
        s = s.sort_values("query_index")
        assert list(s.query_index) == list(range(len(s)))
        assert s.reformulate.iloc[:-1].all()  # every page but the last was followed by a reformulation
        last = s.iloc[-1]
        assert last.satisfied or last.abandon or (last.reformulate and len(s) == 3)
        assert len({p.rsplit("-", 1)[0] for p in s.page_id}) == 1  # one intent
    fb = random_log.feedback.to_pandas()
    clicks = fb.groupby(["session_id", "query_index"]).click.sum()
    np.testing.assert_array_equal(
        clicks.values, pages.set_index(["session_id", "query_index"]).clicks.loc[clicks.index]
    )
    np.testing.assert_allclose(fb.reward.sum(), pages.reward.sum(), rtol=1e-5)


def test_summary_shows_the_user_model_properties(random_log):
    s = random_log.summary()
    ctr = s["ctr_by_position"]
    assert ctr[0] > ctr[4] > ctr[9]
    std = s["ctr_standardised_to_doc"]
    assert std["image"] > std["doc"] and std["video"] > std["doc"]
    assert s["answer_satisfactions_without_click"] > 0 and s["good_abandonment_rate"] > 0
    assert s["sessions"] == 1500
    assert s["session_success_rate"] + s["abandonment_rate"] <= 1.0
    text = format_side_by_side({"random": s, "again": s})
    assert "CTR @ position 10" in text and "random" in text


def test_greedy_policy_sorts_by_score(tiny_world):
    split = tiny_world.traffic

    def scorer(pages):
        return pages.features[:, 0].astype(np.float64)  # any per-item score

    log = simulate(
        GreedyPolicy("g", scorer), split.pages, split.truth, SimulationConfig(sessions=50, slate_size=5)
    )
    fb = log.feedback.to_pandas()
    assert (fb.pscore == 1).all() and (fb.slate_logprob == 0).all()
    for _, g in fb.groupby(["session_id", "query_index"]):
        assert (np.diff(g.sort_values("position").score.values) <= 0).all()


def test_write_is_complete(random_log, tmp_path):
    paths = random_log.write(tmp_path / "out")
    assert pq.read_table(paths["feedback"]).num_rows == random_log.feedback.num_rows
    assert paths["plot_ctr"].stat().st_size > 1000 and paths["plot_dwell"].stat().st_size > 1000
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_bad_policy_output_is_rejected(tiny_world):
    class Repeats:
        name = "bad"

        def rank(self, pages, k, rng):
            r = np.zeros((len(pages), k), np.int64)
            return Slates(r, np.zeros((len(pages), k)), np.ones((len(pages), k)), np.zeros(len(pages)))

    split = tiny_world.traffic
    with pytest.raises(ValueError, match="repeats"):
        simulate(Repeats(), split.pages, split.truth, SimulationConfig(sessions=5, slate_size=3))


def test_seeded_simulation_reproduces(tiny_world):
    split = tiny_world.traffic
    cfg = SimulationConfig(sessions=100, seed=9)
    a = simulate(RandomPolicy(), split.pages, split.truth, cfg).feedback
    b = simulate(RandomPolicy(), split.pages, split.truth, cfg).feedback
    pd.testing.assert_frame_equal(a.to_pandas(), b.to_pandas())  # (NaN scores compare equal here)
