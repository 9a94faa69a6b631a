"""config.yaml and the typed settings state the same defaults, and the config is a valid Serve config."""

from __future__ import annotations

import pytest
from ray.serve.schema import ServeDeploySchema

from serving.settings import (
    LEDGER,
    RANKER,
    SERVING_TEMPERATURE,
    AppSettings,
    RuntimeConfig,
    ServeSettings,
    app_entry,
    deploy_config,
    deployment_entry,
    load_config,
    settings_of,
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
    assert settings_of(cfg) == ServeSettings()  # http_options and the Ranker's replicas/resources too
    assert RuntimeConfig().temperature == SERVING_TEMPERATURE


def test_deploy_config_states_the_settings_and_keeps_the_rest(tmp_path):
    base = load_config()
    s = settings_of(with_overrides(base, port=9002, replicas=2, num_cpus=0.5, args={"seed": 3}))
    assert (s.http.port, s.ranker.num_replicas, s.ranker.num_cpus, s.app.seed) == (9002, 2, 0.5, 3)
    cfg = deploy_config(base, s)
    ServeDeploySchema.model_validate(cfg)
    assert settings_of(cfg) == s
    assert cfg["proxy_location"] == base["proxy_location"]
    assert deployment_entry(app_entry(cfg), LEDGER) == deployment_entry(app_entry(base), LEDGER)


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


# ---------------------------------------------------------------------------- `smar serve`'s options
def _parse(argv):
    from agent.cli import command_parser
    from serving import cli

    p = command_parser("smar serve", "")
    cli.add_arguments(p)
    p.set_defaults(cli.defaults_for(argv))
    parsed = p.parse_args(argv)
    return p, parsed, p.instantiate(parsed)


def test_serve_options_reach_every_setting_and_a_resolved_config_reproduces_them(tmp_path):
    from agent.cli import resolved_yaml
    from serving import cli

    argv = ["--http.port", "9003", "--ranker.num_replicas", "2", "--ranker.num_cpus", "0.5"]
    argv += [
        "--runtime.temperature",
        "0.7",
        "--runtime.batching",
        "false",
        "--app.logs.feedback_max_rows",
        "8",
    ]
    argv += ["--app.registry", str(tmp_path / "reg"), "--token", "secret-token", "--duration", "5"]
    p, parsed, args = _parse(argv)
    s = cli.settings(args)
    assert (s.http.port, s.ranker.num_replicas, s.ranker.num_cpus) == (9003, 2, 0.5)
    assert (s.runtime.temperature, s.runtime.batching, s.app.logs.feedback_max_rows) == (0.7, False, 8)
    text = resolved_yaml(p, parsed, cli.NOT_RESOLVED)
    assert "secret-token" not in text
    for group, value in ServeSettings().to_dict().items():  # every setting is written, so reachable
        for name in value:
            assert f"  {name}:" in text or getattr(getattr(s, group), name) is None, (group, name)
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(text)
    _, _, again = _parse(["--config", str(resolved)])
    assert cli.settings(again) == s and again.duration == 5 and again.token is None
    assert cli.deploy_config_of(again) == cli.deploy_config_of(args)
    with pytest.raises(SystemExit):
        _parse(["--runtime.temprature", "1"])


def test_serve_options_layer_over_the_named_deploy_config(tmp_path):
    import yaml

    from serving import cli

    custom = load_config()
    custom["http_options"]["port"] = 7777
    deployment_entry(app_entry(custom), RANKER)["user_config"]["temperature"] = 2.0
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(custom))
    _, _, args = _parse(["--serve-config", str(path), "--runtime.temperature", "3"])
    assert (args.http.port, args.runtime.temperature) == (7777, 3.0)
    conf = tmp_path / "c.yaml"
    conf.write_text(f"serve_config: {path}\nruntime:\n  batching: false\n")
    _, _, args = _parse(["--config", str(conf)])  # the deploy config named inside a config file
    assert (args.http.port, args.runtime.temperature, args.runtime.batching) == (7777, 2.0, False)
    _, _, shipped = _parse([])
    assert cli.settings(shipped) == ServeSettings()


def test_smar_serve_token_writes_a_resolved_config_without_the_token(tmp_path, capsys):
    from agent.cli import main

    out = tmp_path / "o"
    argv = [
        "serve",
        "token",
        "--app.registry",
        str(tmp_path / "reg"),
        "--token",
        "tok-3f9a",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    text = (out / "resolved.yaml").read_text()
    assert "action: token" in text and "tok-3f9a" not in text and str(tmp_path / "reg") in text
