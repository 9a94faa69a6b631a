"""The strict config loader: nested dataclasses, tuples from lists, unknown keys named."""

from __future__ import annotations

import dataclasses
import json

import pytest

from envs.config_io import ConfigError, from_dict, to_dict
from envs.serp_env import SerpConfig
from envs.simulation import SimulationConfig
from envs.world import WorldConfig
from pretrain.config import PretrainConfig


@pytest.mark.parametrize("cls", [WorldConfig, SimulationConfig, SerpConfig, PretrainConfig])
def test_json_round_trip_is_exact(cls):
    cfg = cls()
    back = from_dict(cls, json.loads(json.dumps(to_dict(cfg))))
    assert back == cfg


def test_nested_values_and_tuples_are_rebuilt():
    d = to_dict(SimulationConfig())
    d["user"]["position_examination"] = [0.9] * len(d["user"]["position_examination"])
    d["reward"]["name"] = "clicks"
    cfg = from_dict(SimulationConfig, d)
    assert isinstance(cfg.user.position_examination, tuple) and cfg.reward.name == "clicks"


def test_unknown_key_is_named_with_its_path():
    d = to_dict(PretrainConfig())
    d["loss"]["consistensy_weight"] = 3.0
    with pytest.raises(ConfigError, match=r"PretrainConfig\.loss: unknown setting 'consistensy_weight'"):
        from_dict(PretrainConfig, d)


def test_missing_keys_take_defaults_and_validation_still_runs():
    assert from_dict(WorldConfig, {"queries": 40}) == dataclasses.replace(WorldConfig(), queries=40)
    with pytest.raises(ValueError, match="split_fractions must sum to 1"):
        from_dict(WorldConfig, {"split_fractions": [0.5, 0.5, 0.5, 0.5]})
    with pytest.raises(ConfigError, match="expected 4 values"):
        from_dict(WorldConfig, {"split_fractions": [1.0]})
    with pytest.raises(ConfigError, match="expected a mapping"):
        from_dict(WorldConfig, [1, 2])
