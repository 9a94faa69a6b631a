"""The app `smar online` (and its traffic benchmark) drives: the initial policy, Ray, the exploring endpoint.

By default the loop starts its own app on a free loopback port serving the registry's current version
with Plackett-Luce exploration, and stops it at the end; with `url` it drives a running app and joins
that app's Ray cluster (for the in-place swap).
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.online.config import OnlineConfig
from pretrain.run import open_or_pretrain


def ensure_policy(cfg: OnlineConfig) -> Path:
    """The initial policy: cfg.policy, else the default trained policy (trained first if missing)."""
    if cfg.policy:
        return Path(cfg.policy)
    policy = Path(cfg.train_out) / "policy"
    if (policy / "manifest.json").exists():
        return policy
    from agent.train import TrainConfig, train_policy

    print(f"no trained policy at {policy}: training the default constrained policy")
    return train_policy(
        TrainConfig(out=cfg.train_out, run=str(open_or_pretrain(cfg.run).root), seed=cfg.seed)
    ).policy_path


def settle_logs() -> None:
    """Wait out the endpoint's impression flush bound, so everything served so far is readable.

    Feedback is durable before it is acknowledged; impressions are flushed within
    `LogSettings.impression_max_age_s` (serving.feedback_log's durability contract).
    """
    from serving.settings import LogSettings

    time.sleep(LogSettings().impression_max_age_s + 0.5)


def init_ray(fast_path: bool, address: str | None = None) -> None:
    """Ray for the app we start (Serve's fast path first, if asked) or for joining a running one."""
    import ray

    from serving import deploy

    if ray.is_initialized():
        return
    if fast_path:
        deploy.enable_fast_path(no_drain=True)
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)


def deploy_explorer(
    registry_dir: Path, log_dir: Path, state_dir: Path, temperature: float, num_cpus: float = 1.0
) -> str:
    """Deploy the reranker app on a free port, serving the registry's current version with
    Plackett-Luce exploration at `temperature` and logging to `log_dir`; returns its URL."""
    from serving import deploy
    from serving.registry import Registry
    from serving.settings import load_config, with_overrides

    cfg = with_overrides(
        load_config(),
        port=deploy.free_port(),
        num_cpus=num_cpus,
        args={"registry": str(registry_dir), "log_dir": str(log_dir), "state_dir": str(state_dir)},
        user_config={
            "version": Registry(registry_dir).current().version,
            "exploration": "plackett_luce",
            "temperature": temperature,
        },
    )
    return deploy.deploy(cfg)
