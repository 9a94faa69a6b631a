"""References for drift recovery: the share maths, the oracle demotion and a refit on a tiny run."""

from __future__ import annotations

import json
import math

import numpy as np

from agent.online import drift_ceiling as dc
from agent.online.drift import DriftConfig, drift_split
from agent.online.heldout import HeldoutConfig
from envs.pages import MODALITIES


def test_recovered_share_golden() -> None:
    assert math.isclose(dc.recovered(0.35, before=0.40, after=0.30), 0.5)
    assert math.isclose(dc.recovered(0.30, 0.40, 0.30), 0.0)
    assert math.isclose(dc.recovered(0.25, 0.40, 0.30), -0.5)  # worse than frozen: negative
    assert math.isnan(dc.recovered(0.3, 0.3, 0.3))  # nothing lost: no share


def test_summarise_means_each_reference_over_policies() -> None:
    row = lambda d, s: {"frozen": {}, "ref": {"recovered": {"deterministic": d, "served": s}}}  # noqa: E731
    out = dc.summarise({"a": row(0.2, 0.4), "b": row(0.6, 0.8)})
    assert math.isclose(out["ref"]["deterministic"]["mean"], 0.4)
    assert math.isclose(out["ref"]["served"]["mean"], 0.6)
    assert math.isclose(out["ref"]["deterministic"]["se"], np.std([0.2, 0.6], ddof=1) / np.sqrt(2))


def test_best_offset_demotes_a_modality_that_got_worse(tiny_run) -> None:
    """Scores that put videos on top after videos lost every grade: the oracle picks a large demotion,
    and no demotion when the scores already ignore videos."""
    from pretrain.run import PretrainRun

    run = PretrainRun.open(tiny_run.root)
    split = drift_split(run.split("traffic"), DriftConfig(relevance_shift=-4))
    video = (split.pages.modality == MODALITIES.index("video")).astype(np.float64)
    measure = dc.Measure(HeldoutConfig(repeats=2, served_samples=1), temperature=0.5)
    truth = split.truth.relevance.astype(np.float64)
    on_top = dc.best_offset(truth + 10 * video, split, "video", measure)
    assert on_top["chosen"] >= 10.0
    assert len(on_top["reward_by_offset"]) == len(dc.OFFSETS)
    ignored = dc.best_offset(truth - 100 * video, split, "video", measure)
    rewards = ignored["reward_by_offset"]
    assert max(rewards.values()) - min(rewards.values()) < 1e-12  # demoting further changes nothing


def test_ceiling_end_to_end_on_a_tiny_run(tiny_run, tmp_path) -> None:
    out = tmp_path / "ceiling.json"
    rc = dc.main(["--run", str(tiny_run.root), "--repeats", "2", "--quiet", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    smar = res["policies"]["smar"]
    assert set(smar) == {"frozen", "video_offset", "modality_offsets", "refit", "refit_all", "truth"}
    lost = smar["frozen"]["lost"]["deterministic"]
    before, after = smar["frozen"]["before"]["deterministic"], smar["frozen"]["after"]["deterministic"]
    assert math.isclose(lost, before - after)
    for ref in ("video_offset", "modality_offsets", "refit", "refit_all", "truth"):
        r = smar[ref]
        assert math.isclose(r["recovered"]["deterministic"], (r["deterministic"] - after) / lost)
    # The oracle's choice includes d = 0, so on the traffic it chose on it is never below no demotion.
    by = smar["video_offset"]["choice"]["reward_by_offset"]
    assert by[str(smar["video_offset"]["choice"]["chosen"])] >= by["0.0"]
    assert res["truth"]["after"]["deterministic"] >= smar["frozen"]["after"]["deterministic"]
    assert out.with_suffix(".png").stat().st_size > 0


def test_best_modality_shifts_undo_a_bonus_on_the_drifted_modality(tiny_run) -> None:
    """Scores with a +2 bonus on videos after videos lost every grade: the ascent shifts videos down by
    at least the bonus and never ends below no shift."""
    from pretrain.run import PretrainRun

    run = PretrainRun.open(tiny_run.root)
    split = drift_split(run.split("traffic"), DriftConfig(relevance_shift=-4))
    video = (split.pages.modality == MODALITIES.index("video")).astype(np.float64)
    measure = dc.Measure(HeldoutConfig(repeats=2, served_samples=1), temperature=0.5)
    scores = split.truth.relevance.astype(np.float64) + 2.0 * video
    res = dc.best_modality_shifts(scores, split, "video", measure)
    assert res["shifts"]["video"] <= -2.0
    assert res["reward"] >= res["no_shift_reward"]
    assert set(res["shifts"]) == set(MODALITIES)
