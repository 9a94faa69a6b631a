"""Typed settings of the Serve app, split by how they may change.

`AppSettings` are fixed for the life of a deployment (they are the builder's `args` in `config.yaml`;
changing them redeploys). `RuntimeConfig` is the deployment's `user_config`: Serve hands it to
`reconfigure` on live replicas, so the model version, exploration and batching change in place,
without a restart. `config.yaml` (shipped as package data) states the same defaults as these
dataclasses; a test keeps the two in step, so `smar serve` and `serve run serving/config.yaml` run the
same app.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from envs import config_io

CONFIG_PATH = Path(__file__).with_name("config.yaml")
APP_NAME = "smar"
RANKER = "Ranker"
LEDGER = "EventLedger"
EXPLORATION_MODES = ("greedy", "plackett_luce")


@dataclass(frozen=True)
class LogSettings:
    """Bounds of the Parquet log writers (see serving.feedback_log for the durability contract)."""

    impression_max_rows: int = 512  # flush impressions after this many rows ...
    impression_max_age_s: float = 2.0  # ... or when the oldest buffered row is this old
    feedback_max_rows: int = 256  # feedback is group-committed: acked only once its file is durable
    feedback_max_age_s: float = 0.05


@dataclass(frozen=True)
class AppSettings:
    """Builder arguments (`args:` in config.yaml). Relative paths resolve against the working directory."""

    registry: str = "runs/registry"
    log_dir: str = "runs/serve_logs"
    state_dir: str = "runs/serve_state"  # event-signing key + the ledger's SQLite book (serving.ledger)
    max_candidates: int = 64
    max_body_bytes: int = 1 << 20
    max_item_id_len: int = 128
    event_ttl_s: float = 3600.0
    max_events: int = 200_000
    seed: int = 0
    logs: LogSettings = field(default_factory=LogSettings)

    def __post_init__(self) -> None:
        if isinstance(self.logs, dict):
            object.__setattr__(self, "logs", config_io.from_dict(LogSettings, self.logs, "args.logs"))
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.event_ttl_s <= 0:
            raise ValueError(f"event_ttl_s must be > 0, got {self.event_ttl_s}")

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> AppSettings:
        return config_io.from_dict(AppSettings, d, "args")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved(self) -> AppSettings:
        """Absolute paths, so replicas and the controller (other working directories) agree."""
        d = self.to_dict()
        d["registry"] = str(Path(self.registry).expanduser().resolve())
        d["log_dir"] = str(Path(self.log_dir).expanduser().resolve())
        d["state_dir"] = str(Path(self.state_dir).expanduser().resolve())
        return AppSettings.from_dict(d)


@dataclass(frozen=True)
class RuntimeConfig:
    """The Ranker's `user_config`: applied in place by `reconfigure` on every live replica."""

    version: str | None = None  # registry version to serve; None = the registry's current pointer
    exploration: str = "plackett_luce"  # used when a request sets explore=true; otherwise greedy
    temperature: float = 1.0
    batching: bool = True
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.0  # extra wait for a batch to fill (serving.batcher); 0 = none

    def __post_init__(self) -> None:
        if self.exploration not in EXPLORATION_MODES:
            raise ValueError(f"exploration must be one of {EXPLORATION_MODES}, got {self.exploration!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> RuntimeConfig:
        return config_io.from_dict(RuntimeConfig, d, "user_config")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | Path = CONFIG_PATH) -> dict[str, Any]:
    """The Serve deploy config (a `ServeDeploySchema` dict) as shipped or as given."""
    with open(path) as f:
        return yaml.safe_load(f)


def app_entry(config: dict[str, Any], name: str = APP_NAME) -> dict[str, Any]:
    for app in config.get("applications", []):
        if app.get("name") == name:
            return app
    raise ValueError(f"config has no application named {name!r}")


def deployment_entry(app: dict[str, Any], name: str) -> dict[str, Any]:
    for dep in app.setdefault("deployments", []):
        if dep.get("name") == name:
            return dep
    dep = {"name": name}
    app["deployments"].append(dep)
    return dep


def with_overrides(
    config: dict[str, Any],
    *,
    port: int | None = None,
    replicas: int | None = None,
    num_cpus: float | None = None,
    args: dict[str, Any] | None = None,
    user_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A copy of a deploy config with CLI overrides applied (validated through the dataclasses)."""
    cfg = copy.deepcopy(config)
    if port is not None:
        cfg.setdefault("http_options", {})["port"] = int(port)
    app = app_entry(cfg)
    merged_args = {**(app.get("args") or {}), **(args or {})}
    app["args"] = AppSettings.from_dict(merged_args).resolved().to_dict()
    ranker = deployment_entry(app, RANKER)
    if replicas is not None:
        ranker["num_replicas"] = int(replicas)
    if num_cpus is not None:
        ranker.setdefault("ray_actor_options", {})["num_cpus"] = float(num_cpus)
    uc = {**(ranker.get("user_config") or {}), **(user_config or {})}
    ranker["user_config"] = RuntimeConfig.from_dict(uc).to_dict()
    return cfg
