"""config.yaml and the typed settings state the same defaults, and the config is a valid Serve config."""

from __future__ import annotations

import pytest
from ray.serve.schema import ServeDeploySchema

from serving.settings import (
    LEDGER,
    RANKER,
    AppSettings,
    RuntimeConfig,
    app_entry,
    deployment_entry,
    load_config,
    with_overrides,
)


def test_config_yaml_matches_dataclass_defaults():
    cfg = load_config()
    ServeDeploySchema.model_validate(cfg)
    app = app_entry(cfg)
    assert app["import_path"] == "serving.app:build_app"
    assert AppSettings.from_dict(app["args"]) == AppSettings()
    ranker = deployment_entry(app, RANKER)
    assert RuntimeConfig.from_dict(ranker["user_config"]) == RuntimeConfig()
    assert deployment_entry(app, LEDGER)["num_replicas"] == 1
    assert deployment_entry(app, LEDGER)["ray_actor_options"]["num_cpus"] == 0


def test_decorator_defaults_match_config_yaml():
    from serving.app import Ranker

    ranker = deployment_entry(app_entry(load_config()), RANKER)
    assert Ranker.num_replicas == ranker["num_replicas"]
    assert Ranker.max_ongoing_requests == ranker["max_ongoing_requests"]
    assert Ranker.ray_actor_options["num_cpus"] == ranker["ray_actor_options"]["num_cpus"]
    assert Ranker.user_config == ranker["user_config"]


def test_overrides_validate_and_resolve(tmp_path):
    cfg = with_overrides(
        load_config(), port=9001, replicas=2, num_cpus=0.5, args={"registry": str(tmp_path / "r")}
    )
    app = app_entry(cfg)
    assert cfg["http_options"]["port"] == 9001
    assert deployment_entry(app, RANKER)["num_replicas"] == 2
    assert app["args"]["registry"] == str((tmp_path / "r").resolve())
    with pytest.raises(ValueError, match="unknown setting"):
        with_overrides(load_config(), args={"registy": "x"})
    with pytest.raises(ValueError, match="temperature"):
        RuntimeConfig(temperature=0)
    with pytest.raises(ValueError, match="exploration"):
        RuntimeConfig(exploration="epsilon")


def test_build_app_builds_the_two_deployments(tmp_path):
    from serving.app import build_app

    app = build_app({"registry": str(tmp_path / "r"), "log_dir": str(tmp_path / "l")})
    assert app is not None
