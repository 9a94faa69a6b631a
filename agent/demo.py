"""`smar demo`: the whole story end to end on the built-in default world.

Stages so far: generate the default world and print its summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from envs.world import WorldConfig, format_summary, generate_world
from pretrain.world_io import save_world


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for every artefact of the demo")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    print("== 1. world")
    world = generate_world(WorldConfig(seed=args.seed))
    save_world(world, out / "world")
    print(format_summary(world.summary()))
    print(f"world written to {out / 'world'}")
    return 0
