"""`smar`: one console script; each subcommand's code lives in its own stage package.

The dispatcher imports only the module of the command being run (so `smar world` never imports Ray).
A command module provides `add_arguments(parser)` and `run(args) -> int`. The parser is jsonargparse's,
so a command adds its typed config dataclasses whole (`parser.add_class_arguments(WorldConfig, "world")`:
every field becomes `--world.FIELD`, and `run` receives the dataclass). Every command takes
`--config FILE` (YAML or JSON, keys as in `--help`; an unknown key is an error naming it), and a command
with an `--out` folder writes its fully resolved settings there as `resolved.yaml`: fed back with
`--config`, it reproduces the run. Optional module hooks: `defaults_for(argv) -> {key: value}`, option
defaults read from a file the command line names (`smar serve --serve-config`), and `NOT_RESOLVED`,
options never written to `resolved.yaml` (secrets).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "world": ("pretrain.world_io", "generate the synthetic search world and write it to Parquet"),
    "import": ("pretrain.importers.cli", "convert Qilin or CrossRank files into the page contract"),
    "export": (
        "pretrain.export.cli",
        "write a synthetic world as CrossRank- or Qilin-format files (what `import` reads)",
    ),
    "pretrain": ("pretrain.train", "train single-modal rankers and the SMAR whole-page reranker"),
    "simulate": ("agent.simulate", "run a policy through the user simulator and log feedback"),
    "train": ("agent.train", "refine the reranker with constrained PPO (RLlib)"),
    "serve": ("serving.cli", "run the Ray Serve endpoint; publish / rollback model versions"),
    "online": ("agent.online.cli", "continual online updates: traffic -> logs -> update -> gate -> publish"),
    "demo": ("agent.demo", "the whole story end to end on the built-in default"),
}
BENCHES: dict[str, tuple[str, str]] = {
    "pretrain": ("pretrain.bench", "SMAR vs merge vs full supervision, NDCG against annotation budget"),
    "simulate": ("agent.user_bench", "the user model: calibration to real logs, reward landscape, speed"),
    "agent": ("agent.bench", "random / merge / SMAR / PPO variants on held-out sessions"),
    "serve": ("serving.bench", "model floor vs plain FastAPI vs Serve fast path vs Serve proxy"),
    "scale": ("pretrain.scale", "100,000-page CrossRank export: import + pretrain time and peak memory"),
}


def _usage(table: dict[str, tuple[str, str]], prog: str) -> str:
    width = max(len(k) for k in table)
    rows = "\n".join(f"  {k:<{width}}  {h}" for k, (_, h) in table.items())
    return f"usage: {prog} COMMAND [options]\n\ncommands:\n{rows}\n\n`{prog} COMMAND --help` for a command's options."


def _dispatch(table: dict[str, tuple[str, str]], argv: list[str], prog: str) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(
            _usage(table, prog) + ("\n  all       every benchmark in turn" if prog.endswith("bench") else "")
        )
        return 0
    name, rest = argv[0], argv[1:]
    if prog.endswith("bench") and name == "all":
        for bench in table:
            code = _dispatch(table, [bench, *rest], prog)
            if code:
                return code
        return 0
    if name not in table:
        print(f"{prog}: unknown command {name!r}\n\n{_usage(table, prog)}", file=sys.stderr)
        return 2
    module = importlib.import_module(table[name][0])
    parser = command_parser(f"{prog} {name}", table[name][1])
    module.add_arguments(parser)
    if hasattr(module, "defaults_for"):  # defaults read from a file the command line names (serve)
        parser.set_defaults(module.defaults_for(rest))
    parsed = parser.parse_args(rest)
    try:
        args = parser.instantiate(parsed)
    except (ValueError, TypeError) as e:  # a dataclass's own validation (__post_init__)
        parser.error(f"invalid settings: {e}")
    code = int(module.run(args) or 0)
    if code == 0:
        write_resolved_config(parser, parsed, skip=getattr(module, "NOT_RESOLVED", ()))
    return code


RESOLVED = "resolved.yaml"


def command_parser(prog: str, description: str):
    """A command's parser: jsonargparse (dataclass groups, strict config files) with `--config`."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument(
        "--config",
        action=ActionConfigFile,
        help=f"YAML/JSON file of this command's settings (a run's {RESOLVED} reproduces it); "
        "options after it override it",
    )
    return parser


def write_resolved_config(parser, parsed, skip: tuple[str, ...] = ()) -> Path | None:
    """Write the settings a run actually used beside its outputs (`--out` folder), if it has one;
    `skip`: options that are no settings and must not land in a file (a command's secrets)."""
    out = getattr(parsed, "out", None)
    if not out or not Path(out).is_dir():
        return None
    from envs.atomic_io import write_text_atomic

    return write_text_atomic(Path(out) / RESOLVED, resolved_yaml(parser, parsed, skip))


def resolved_yaml(parser, parsed, skip: tuple[str, ...] = ()) -> str:
    """The parsed settings as the YAML `--config` reads back."""
    kept = parsed.clone()
    for key in skip:
        if key in kept:
            del kept[key]
    return parser.dump(kept)


def configure_logging() -> None:
    """Library code logs (`logging.getLogger(__name__)`); the CLI decides what reaches the terminal:
    INFO and above on stderr, one plain line each, or the level named by SMAR_LOG_LEVEL."""
    level = os.environ.get("SMAR_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("agent", "envs", "pretrain", "serving"):
        lg = logging.getLogger(name)
        lg.setLevel(level)
        if not lg.handlers:
            lg.addHandler(handler)
        lg.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging()
    if argv and argv[0] == "bench":
        return _dispatch(BENCHES, argv[1:], "smar bench")
    return _dispatch(COMMANDS, argv, "smar")


if __name__ == "__main__":
    sys.exit(main())
