"""Shared fixtures: one tiny world per session, and one Ray instance per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def tiny_world():
    from envs.world import WorldConfig, generate_world

    return generate_world(WorldConfig(seed=7, queries=40, candidates_per_modality=4, single_modal_queries=60))


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    """A tiny world written by `smar world` (for the commands that read a world folder)."""
    from agent.cli import main

    out = tmp_path_factory.mktemp("w") / "world"
    cli = [
        "--world.queries",
        "12",
        "--world.single_modal_queries",
        "4",
        "--world.candidates_per_modality",
        "3",
    ]
    assert main(["world", "--out", str(out), *cli]) == 0
    return out


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (RL and Serve tests share it)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - Serve may never have started
        pass
    ray.shutdown()
