"""The changing world of `smar online --online.drift`: a modality's truth shifts, the pages stay as they were."""

from __future__ import annotations

import numpy as np
import pytest

from agent.online.drift import PRESETS, DriftConfig, drift_split, parse_drift
from agent.online.heldout import HeldoutConfig, deterministic_returns
from envs.config_io import ConfigError
from envs.pages import MODALITIES


def test_parse_drift() -> None:
    assert parse_drift(None) is None
    assert parse_drift("default") == DriftConfig() == PRESETS["default"]
    d = parse_drift({"at_round": 3, "modality": "image", "relevance_shift": -1, "attractiveness_scale": 0.5})
    assert d == DriftConfig(at_round=3, modality="image", relevance_shift=-1, attractiveness_scale=0.5)
    assert parse_drift(d.to_json()) == d and parse_drift(d) is d
    assert parse_drift({"modality": "image"}) == DriftConfig(modality="image")  # the rest: defaults
    with pytest.raises(ConfigError, match="'colour'"):
        parse_drift({"at_round": 2, "colour": "red"})
    with pytest.raises(ConfigError, match="'sudden'"):
        parse_drift("sudden")
    with pytest.raises(ValueError, match="changes nothing"):
        parse_drift({"at_round": 2, "relevance_shift": 0})


def test_drift_changes_one_modality_and_hurts_a_policy_that_ignores_it(tiny_run) -> None:
    from pretrain.run import PretrainRun

    run = PretrainRun.open(tiny_run.root)
    split = run.split("traffic")
    cfg = DriftConfig(modality="video", relevance_shift=-2, attractiveness_scale=0.7)
    drifted = drift_split(split, cfg)
    video = split.pages.modality == MODALITIES.index("video")
    before, after = split.truth.relevance.astype(int), drifted.truth.relevance.astype(int)
    np.testing.assert_array_equal(after[~video], before[~video])
    np.testing.assert_array_equal(after[video], np.clip(before[video] - 2, 0, 4))
    assert (drifted.truth.attractiveness[video] < split.truth.attractiveness[video]).all()
    np.testing.assert_array_equal(drifted.pages.features, split.pages.features)  # what a policy sees
    assert split.truth.relevance.astype(int).tolist() == before.tolist()  # input untouched

    # A policy that puts video first loses reward in the drifted world, on the same sessions and seeds.
    def video_first(pages):
        return (pages.modality == MODALITIES.index("video")).astype(np.float32) + pages.single_modal_score * 0

    hc = HeldoutConfig(repeats=6)
    base = deterministic_returns(video_first, split, hc).mean()
    worse = deterministic_returns(video_first, drifted, hc).mean()
    assert worse < base - 0.05


def test_drift_recovery_golden() -> None:
    """The recovered share of the frozen policy's loss, deterministic and as served, from per-session
    held-out returns: frozen 0.5 -> 0.3 (lost 0.2) deterministic, 0.4 -> 0.3 (lost 0.1) as served; the
    online version after round 1 earns 0.4 / 0.38 in the drifted world: 50 % and 80 %."""
    from agent.online.heldout import paired
    from agent.online.report import drift_recovery, summary_lines

    returns = {
        ("v0", "base"): {"deterministic": [0.4, 0.6], "served": [0.3, 0.5]},
        ("v0", "drifted"): {"deterministic": [0.2, 0.4], "served": [0.2, 0.4]},
        ("v1", "drifted"): {"deterministic": [0.3, 0.5], "served": [0.28, 0.48]},
    }

    def heldout(version: str, world: str) -> dict:
        return {k: np.asarray(v) for k, v in returns[(version, world)].items()}

    det = paired(heldout("v1", "drifted")["deterministic"], heldout("v0", "drifted")["deterministic"])
    rounds = [
        {"round": 0, "world": "base", "version": "v0", "published_version": None},
        {
            "round": 1,
            "world": "drifted",
            "version": "v0",
            "published_version": "v1",
            "after_minus_frozen": det,
        },
    ]
    out = drift_recovery(rounds, heldout, "v0", DriftConfig(at_round=1))
    assert out["frozen_lost"] == pytest.approx(0.2) and out["frozen_lost_served"] == pytest.approx(0.1)
    (rec,) = out["recovery"]
    assert rec["rounds_after_change"] == 1
    assert rec["recovered_fraction"] == pytest.approx(0.5)
    assert rec["recovered_fraction_served"] == pytest.approx(0.8)
    assert out["best_recovered_fraction_served_within_4"] == pytest.approx(0.8)
    summary = {
        "final_minus_initial": det,
        "initial_heldout": {"mean": 0.3},
        "final_heldout": {"mean": 0.4},
        "failed_requests": 0,
        "published": 1,
        "rounds": 2,
        "consistency_min": 0.9,
        "consistency_target": 0.8,
        "drift": out,
    }
    assert "as served" in summary_lines(summary)[-1] and "1: 0.80" in summary_lines(summary)[-1]
