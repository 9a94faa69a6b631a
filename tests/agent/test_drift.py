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
