"""`smar online`: continual updates from live feedback (traffic -> logs -> update -> gate -> publish).

    smar online [--out DIR] [--online.rounds R] [--online.impressions_per_round N]
                [--online.temperature T] [--online.drift default|{FIELD: V, ...}]
                [--online.update.FIELD V] [--online.gate.FIELD V] [--online.heldout.FIELD V]
                [--online.url URL --online.registry DIR --online.log_dir DIR] [--evaluate_versions N]

Every setting is a field of `OnlineConfig` (agent.online.config), its update, gate, held-out and drift
settings nested whole; OUT/resolved.yaml fed back with `--config` reproduces the run's config. The drift
takes a preset's name (`default`), DriftConfig's fields as a mapping, or null (agent.online.drift).

By default the command starts its own app on a free loopback port, serving the latest trained policy
(OUT_TRAIN/policy; trained first if missing, from the default pretrain run, itself built if missing),
and stops it at the end. With url it drives a running app instead (its registry and log folder must
be given, and this process must reach its Ray cluster for the swap: RAY_ADDRESS or address).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from agent.online.config import OnlineConfig
from agent.online.drift import DriftConfig, parse_drift
from agent.online.loop import OnlineLoop
from agent.online.report import summary_lines
from envs.atomic_io import write_json_atomic


def add_arguments(p: argparse.ArgumentParser) -> None:
    from jsonargparse.typing import register_type

    # The drift is one value (a preset's name or a mapping of its fields), loaded by parse_drift.
    register_type(DriftConfig, serializer=DriftConfig.to_json, deserializer=parse_drift)
    p.add_argument("--out", default=OnlineConfig.out, help="run folder (state, report, logs, registry)")
    p.add_class_arguments(OnlineConfig, "online", skip={"out"})
    p.add_argument(
        "--evaluate_versions",
        type=int,
        default=0,
        metavar="SESSIONS",
        help="afterwards, re-evaluate every served version offline with this many sessions per seed",
    )


def run(args: argparse.Namespace) -> int:
    cfg = replace(args.online, out=args.out)
    loop = OnlineLoop(cfg)
    res = loop.run_all()
    if args.evaluate_versions:
        print(
            f"offline re-evaluation of each version ({args.evaluate_versions} sessions x 2 seeds, T={cfg.temperature}):"
        )
        loop.state["offline_versions"] = evaluate_versions(loop, args.evaluate_versions)
        write_json_atomic(loop.state_path, loop.state)
        write_json_atomic(
            loop.report_path,
            {**loop.report(), "offline_versions": loop.state["offline_versions"]},
        )
    print("\n".join(summary_lines(loop.summary())))
    print(f"report: {res['report']}\nplot:   {res['plot']}")
    return 0


def evaluate_versions(loop: OnlineLoop, sessions: int, seeds: int = 2) -> list[dict]:
    """Re-evaluate every version the registry served, offline in the simulator, at the serving temperature.

    One round's live reward is noisy; this replays `sessions` simulated sessions per seed on the traffic
    split for each version and reports the observed reward per page (the quantity the loop optimises).
    """
    from agent.simulate import score_policy
    from envs.simulation import SimulationConfig, simulate
    from pretrain.checkpoint import load_checkpoint
    from serving.registry import Registry

    registry = Registry(loop.registry_dir)
    out = []
    for version in registry.stack():
        model, _ = load_checkpoint(registry.versions_dir / version)
        values = []
        for seed in range(seeds):
            log = simulate(
                score_policy(version, model.score_pages, loop.cfg.temperature),
                loop.split.pages,
                loop.split.truth,
                SimulationConfig(sessions=sessions, slate_size=loop.cfg.slate_size, seed=seed),
            )
            reward = np.asarray(log.feedback["reward"].to_numpy(zero_copy_only=False), np.float64)
            values.append(float(reward.sum() / log.pages.num_rows))
        out.append({"version": version, "observed_reward": float(np.mean(values)), "per_seed": values})
        print(
            f"  {version:<40} observed reward/page {np.mean(values):.4f}  (seeds: {np.round(values, 4).tolist()})"
        )
    return out
