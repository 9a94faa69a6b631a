"""Serving fixtures: small reranker checkpoints built from the tiny world (no training needed)."""

from __future__ import annotations

import os

import pytest

# Serve's fast path for every Serve test, and no 30 s drain of direct-ingress replicas on shutdown.
# Ray processes read these at import, so they are set here, at collection, before any ray.init().
os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "0")
# Workers push metrics to the node's exporter every 2 s (default 10 s), so the metrics test is short.
os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")


def make_checkpoint(pages, path, version: str, seed: int):
    import torch

    from pretrain.checkpoint import save_checkpoint
    from pretrain.reranker import RerankerConfig, WholePageReranker

    torch.manual_seed(seed)
    model = WholePageReranker(RerankerConfig.for_pages(pages, hidden=16, heads=2, layers=1))
    model.fit_normalizer(pages)
    return save_checkpoint(model, path, version=version, overwrite=True)


@pytest.fixture(scope="session")
def ckpt_factory():
    """make_checkpoint(pages, path, version, seed) for tests that need one more checkpoint."""
    return make_checkpoint


@pytest.fixture(scope="session")
def serving_ckpts(tiny_world, tmp_path_factory):
    """Two valid checkpoints (versions v-a, v-b) of the same shape."""
    root = tmp_path_factory.mktemp("serving_ckpts")
    pages = tiny_world.traffic.pages
    return {
        "a": make_checkpoint(pages, root / "a", "v-a", 1),
        "b": make_checkpoint(pages, root / "b", "v-b", 2),
        "root": root,
    }


@pytest.fixture(scope="session")
def deploy_app():
    """deploy_app(root, reg, **args) -> url: the Serve app over loopback, two Ranker replicas at 0.5 CPU,
    serving registry `reg` with its logs and state under `root` (`args`: more AppSettings fields)."""

    def _deploy(root, reg, **args) -> str:
        from serving import deploy
        from serving.settings import load_config, with_overrides

        cfg = with_overrides(
            load_config(),
            port=deploy.free_port(),
            replicas=2,
            num_cpus=0.5,
            args={
                "registry": str(reg.root),
                "log_dir": str(root / "logs"),
                "state_dir": str(root / "state"),
                "max_candidates": 20,
                **args,
            },
        )
        return deploy.deploy(cfg, timeout_s=150)

    return _deploy
