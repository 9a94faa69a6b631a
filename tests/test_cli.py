"""The `smar` dispatcher and `smar world` end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from agent.cli import main
from envs.world import WHOLE_PAGE_SPLITS, WorldConfig, generate_world
from pretrain.world_io import load_world


def test_smar_world_writes_a_loadable_world(tmp_path, capsys):
    out = tmp_path / "world"
    args = ["world", "--out", str(out), "--world.seed", "3", "--world.queries", "20"]
    code = main([*args, "--world.candidates_per_modality", "3", "--world.single_modal_queries", "10"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "world (seed 3)" in printed and "single_modal/answer" in printed and str(out) in printed
    world = load_world(out)
    expected = generate_world(
        WorldConfig(seed=3, queries=20, candidates_per_modality=3, single_modal_queries=10)
    )
    assert world.config == expected.config
    for name in WHOLE_PAGE_SPLITS:
        got, exp = getattr(world, name), getattr(expected, name)
        assert got.pages.page_id.tolist() == exp.pages.page_id.tolist()
        np.testing.assert_array_equal(got.pages.features, exp.pages.features)
        np.testing.assert_array_equal(got.pages.relevance, exp.pages.relevance)
        np.testing.assert_array_equal(got.truth.relevance, exp.truth.relevance)
        np.testing.assert_allclose(got.truth.attractiveness, exp.truth.attractiveness)
        np.testing.assert_array_equal(got.truth.preferred_modality, exp.truth.preferred_modality)
    assert (world.pool.pages.relevance == -1).all()  # hidden labels stay hidden on disk
    for m, split in world.single_modal.items():
        np.testing.assert_array_equal(split.pages.relevance, expected.single_modal[m].pages.relevance)
    meta = json.loads((out / "world.json").read_text())
    assert meta["summary"]["splits"]["test"]["pages"] == len(expected.test.pages)


def test_smar_world_json_summary(tmp_path, capsys):
    assert (
        main(
            [
                "world",
                "--out",
                str(tmp_path / "w"),
                "--world.queries",
                "10",
                "--world.single_modal_queries",
                "4",
                "--json",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    summary = json.loads(text[: text.rindex("}") + 1])
    assert set(summary["splits"]) >= {"pool", "valid", "test", "traffic"}


def test_resolved_config_reproduces_a_world_and_reaches_every_field(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    cli = ["--world.queries", "12", "--world.single_modal_queries", "4", "--world.w_match", "0.5"]
    assert main(["world", "--out", str(first), *cli, "--world.intent_probs", "[0.1, 0.2, 0.3, 0.4]"]) == 0
    resolved = (first / "resolved.yaml").read_text()
    for name in dataclasses.asdict(WorldConfig()):  # every setting is written, so every one is reachable
        assert f"  {name}:" in resolved, name
    assert main(["world", "--config", str(first / "resolved.yaml"), "--out", str(second)]) == 0
    a, b = (json.loads((d / "world.json").read_text()) for d in (first, second))
    assert a == b and a["config"]["w_match"] == 0.5 and a["config"]["intent_probs"] == [0.1, 0.2, 0.3, 0.4]


def test_config_file_with_an_unknown_key_names_it(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("world:\n  querys: 10\n")
    with pytest.raises(SystemExit):
        main(["world", "--config", str(bad), "--out", str(tmp_path / "w")])
    assert "querys" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_unknown_command_exits_2(capsys):
    assert main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err
    assert main(["bench", "no-such-bench"]) == 2


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "world" in out and "import" in out


def test_train_settings_round_trip_through_a_resolved_config(tmp_path):
    """`smar train`: every TrainConfig field is an option, and the dumped settings parse back to the same
    config (the PPO run itself is reproducible by seed: tests/agent/test_train.py)."""
    from agent import train
    from agent.cli import command_parser

    def parse(argv):
        p = command_parser("smar train", "")
        train.add_arguments(p)
        parsed = p.parse_args(argv)
        return p, parsed, p.instantiate(parsed)

    argv = ["--out", str(tmp_path / "t"), "--train.iterations", "3", "--train.ratio", "position"]
    argv += ["--train.serp.n_max", "40", "--train.serp.reward.name", "clicks", "--train.constraint", "false"]
    argv += ["--train.serp.user.reformulate_prob", "0.5"]
    p, parsed, args = parse(argv)
    cfg = dataclasses.replace(args.train, out=args.out)
    serp = cfg.serp
    assert (
        cfg.iterations,
        cfg.ratio,
        serp.n_max,
        serp.reward.name,
        serp.user.reformulate_prob,
        cfg.constraint,
    ) == (
        3,
        "position",
        40,
        "clicks",
        0.5,
        False,
    )
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(p.dump(parsed))
    for name in (f.name for f in dataclasses.fields(train.TrainConfig) if f.name != "out"):
        assert f"  {name}:" in resolved.read_text() or getattr(cfg, name) is None, name
    _, _, again = parse(["--config", str(resolved)])
    assert dataclasses.replace(again.train, out=again.out) == cfg
    with pytest.raises(SystemExit):
        parse(["--out", "x", "--train.iteration", "3"])


def _round_trip(module, key: str, argv: list[str], tmp_path):
    """Parse `argv` with the command's parser, write the resolved settings, parse them back: the
    config dataclass (with `--out` folded in) must come back identical."""
    from agent.cli import command_parser

    def parse(args):
        p = command_parser("smar x", "")
        module.add_arguments(p)
        parsed = p.parse_args(args)
        ns = p.instantiate(parsed)
        return p, parsed, dataclasses.replace(getattr(ns, key), out=ns.out)

    p, parsed, cfg = parse(argv)
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(p.dump(parsed))
    text = resolved.read_text()
    for f in dataclasses.fields(cfg):  # every setting is written, so every one is reachable
        assert f.name == "out" or f"  {f.name}:" in text or getattr(cfg, f.name) is None, f.name
    _, _, again = parse(["--config", str(resolved)])
    assert again == cfg
    return cfg


def test_demo_settings_round_trip_through_a_resolved_config(tmp_path):
    from agent import demo

    argv = ["--out", str(tmp_path / "d"), "--demo.seed", "3", "--demo.train_iterations", "2"]
    cfg = _round_trip(demo, "demo", [*argv, "--demo.impressions_per_round", "100"], tmp_path)
    assert cfg == demo.DemoConfig(
        out=str(tmp_path / "d"), seed=3, train_iterations=2, impressions_per_round=100
    )


@pytest.mark.parametrize(
    "bench, module, argv",
    [
        ("pretrain", "pretrain.bench", ["--bench.seeds", "1", "--bench.methods", "[smar_p10, sft_full]"]),
        ("pretrain", "pretrain.bench", ["--bench.data", "D", "--bench.data_split.valid_fraction", "0.25"]),
        (
            "simulate",
            "agent.user_bench",
            ["--bench.reward.name", "clicks", "--bench.user.examination_top", "0.7"],
        ),
        (
            "agent",
            "agent.bench",
            ["--bench.train_batch", "512", "--bench.part", "seed:1", "--bench.lr_end", "-1"],
        ),
        (
            "agent",
            "agent.bench",
            ["--bench.speed_against", "T", "--bench.references", "all", "--bench.ratio", "position"],
        ),
        (
            "serve",
            "serving.bench",
            ["--bench.requests", "30", "--bench.fault_seconds", "0", "--bench.port", "9009"],
        ),
        (
            "scale",
            "pretrain.scale",
            ["--bench.pages", "2000", "--bench.start", "import", "--bench.keep", "true"],
        ),
    ],
)
def test_bench_settings_round_trip_through_a_resolved_config(tmp_path, bench, module, argv):
    import importlib

    from agent.cli import BENCHES

    assert BENCHES[bench][0] == module
    mod = importlib.import_module(module)
    cfg = _round_trip(mod, "bench", ["--out", str(tmp_path / "b"), *argv], tmp_path)
    assert cfg.out == str(tmp_path / "b")
    for arg, value in zip(argv[::2], argv[1::2]):  # each option reached its field
        field = arg.removeprefix("--bench.").split(".")
        got = cfg
        for name in field:
            got = getattr(got, name)
        assert (list(got) if isinstance(got, tuple) else got) == yaml.safe_load(value), arg


def test_bench_settings_are_validated(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "agent", "--bench.references", "some"])
    assert "references" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "pretrain", "--bench.methods", "[smar_p99]"])
    assert "smar_p99" in capsys.readouterr().err


def test_online_settings_round_trip_through_a_resolved_config(tmp_path, capsys):
    """`smar online`: every OnlineConfig setting (the update, gate, held-out and drift settings nested)
    is an option; the dumped settings parse back to the same config (the loop itself is not run)."""
    from agent.cli import command_parser
    from agent.offpolicy import UpdateConfig
    from agent.online import cli as online
    from agent.online.config import OnlineConfig, online_update
    from agent.online.drift import DriftConfig

    def parse(argv):
        p = command_parser("smar online", "")
        online.add_arguments(p)
        parsed = p.parse_args(argv)
        args = p.instantiate(parsed)
        return p, parsed, dataclasses.replace(args.online, out=args.out), args

    p, parsed, default, _ = parse([])
    assert default == OnlineConfig()  # one default per setting: the dataclasses'
    argv = ["--out", str(tmp_path / "o"), "--online.rounds", "5", "--online.common_traffic", "false"]
    argv += [
        "--online.update.lr",
        "0.01",
        "--online.update.offset_params",
        "head",
        "--online.gate.alpha",
        "0.1",
    ]
    argv += ["--online.heldout.repeats", "2", "--online.drift", "default", "--evaluate_versions", "30"]
    p, parsed, cfg, args = parse(argv)
    assert (cfg.out, cfg.rounds, cfg.common_traffic, cfg.gate.alpha, cfg.heldout.repeats) == (
        str(tmp_path / "o"),
        5,
        False,
        0.1,
        2,
    )
    assert cfg.update == dataclasses.replace(online_update(), lr=0.01, offset_params="head")
    assert (
        isinstance(cfg.update, UpdateConfig) and cfg.drift == DriftConfig() and args.evaluate_versions == 30
    )
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(p.dump(parsed))
    text = resolved.read_text()
    for f in dataclasses.fields(OnlineConfig):  # every setting is written (None ones: left at default)
        assert f.name == "out" or f"  {f.name}:" in text or getattr(cfg, f.name) is None, f.name
    _, _, again, again_args = parse(["--config", str(resolved)])
    assert again == cfg and again_args.evaluate_versions == 30
    # The drift as a mapping of its fields; an unknown key or preset is an error naming it.
    _, _, mapped, _ = parse(["--online.drift", "{modality: image, relevance_shift: -1}"])
    assert mapped.drift == DriftConfig(modality="image", relevance_shift=-1)
    _, _, none, _ = parse(["--config", str(resolved), "--online.drift", "null"])
    assert none.drift is None
    for bad, name in (("{colour: red}", "'colour'"), ("sudden", "'sudden'")):
        with pytest.raises(SystemExit):
            parse(["--online.drift", bad])
        assert name in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--online.update.lrr", "3"])
    assert "lrr" in capsys.readouterr().err


def test_simulate_resolved_config_reproduces_the_logs(world_dir, tmp_path, capsys):
    """`smar simulate`'s resolved.yaml (policy, data, temperature, the simulation with its user model
    and reward) fed back gives the same feedback log."""
    import hashlib

    world = world_dir
    first, second = tmp_path / "a", tmp_path / "b"
    argv = ["simulate", "--policy", "random", "--world", str(world), "--out", str(first), "--no-plots"]
    argv += ["--simulation.sessions", "15", "--simulation.slate_size", "5", "--temperature", "0.7"]
    argv += ["--simulation.user.reformulate_prob", "0.3", "--simulation.reward.name", "clicks"]
    assert main(argv) == 0
    resolved = (first / "resolved.yaml").read_text()
    for name in ("policy", "world", "temperature", "sessions", "reformulate_prob", "name: clicks"):
        assert name in resolved, name
    assert main(["simulate", "--config", str(first / "resolved.yaml"), "--out", str(second)]) == 0
    digest = [hashlib.sha256((d / "feedback.parquet").read_bytes()).hexdigest() for d in (first, second)]
    assert digest[0] == digest[1]
