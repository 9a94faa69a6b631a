"""Typed settings of the Serve app, split by how they may change.

`AppSettings` are fixed for the life of a deployment (they are the builder's `args` in `config.yaml`;
changing them redeploys). `RuntimeConfig` is the deployment's `user_config`: Serve hands it to
`reconfigure` on live replicas, so the model version, exploration and batching change in place,
without a restart. `HttpSettings` (the proxy's `http_options`) and `RankerDeployment` (the Ranker's
replicas and their resources) are the rest of the deploy config a run may set. `ServeSettings` holds
all four: `settings_of(config)` reads them from a deploy config, `deploy_config(base, settings)` writes
them into one (`smar serve` derives its options from these dataclasses). `config.yaml` (shipped as
package data) states the same defaults as these dataclasses; a test keeps the two in step, so
`smar serve` and `serve run serving/config.yaml` run the same app.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from envs import config_io

CONFIG_PATH = Path(__file__).with_name("config.yaml")
APP_NAME = "smar"
RANKER = "Ranker"
LEDGER = "EventLedger"
EXPLORATION_MODES = ("greedy", "plackett_luce")
# What the endpoint samples at when a request asks to explore (Plackett-Luce over scores / T), and so
# what `smar simulate` and the online loop serve at: one exploration budget. Lower keeps the served
# slates close to the deterministic ranking (the live cost of exploring, which the online loop reports
# every round); higher gives the off-policy update more varied logs. The value is the online loop's
# measured trade-off (RESULTS.md, "Continual online updates").
SERVING_TEMPERATURE = 0.5


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
    temperature: float = SERVING_TEMPERATURE  # Plackett-Luce over scores / temperature
    batching: bool = True
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.0  # extra wait for a batch to fill (serving.batcher); 0 = none
    # loop iterations in a row that must queue no request before a batch is taken (serving.batcher):
    # the Ranker ranks on its event loop, so requests that arrived during a batch are parsed after it
    batch_settle_rounds: int = 1

    def __post_init__(self) -> None:
        if self.exploration not in EXPLORATION_MODES:
            raise ValueError(f"exploration must be one of {EXPLORATION_MODES}, got {self.exploration!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        if self.batch_settle_rounds < 0:
            raise ValueError(f"batch_settle_rounds must be >= 0, got {self.batch_settle_rounds}")

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> RuntimeConfig:
        return config_io.from_dict(RuntimeConfig, d, "user_config")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HttpSettings:
    """The deploy config's `http_options`: where Serve's proxy listens (fast-path replicas bind the same
    host, on ports of their own)."""

    host: str = "127.0.0.1"
    port: int = 8000
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")


@dataclass(frozen=True)
class RankerDeployment:
    """The Ranker deployment's replicas and resources in the deploy config."""

    num_replicas: int = 1
    # The proxy and controller reserve no CPU, so on 2 cores one replica at 1 CPU (or 2 at 0.5) fits.
    num_cpus: float = 1.0
    max_ongoing_requests: int = 64
    max_queued_requests: int = 512  # beyond this Serve answers 503 instead of queueing without bound

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {self.num_replicas}")
        if self.num_cpus < 0:
            raise ValueError(f"num_cpus must be >= 0, got {self.num_cpus}")


@dataclass(frozen=True)
class ServeSettings:
    """Every setting of a Serve run that a deploy config holds and `smar serve` sets."""

    http: HttpSettings = field(default_factory=HttpSettings)
    app: AppSettings = field(default_factory=AppSettings)
    ranker: RankerDeployment = field(default_factory=RankerDeployment)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

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


def settings_of(config: dict[str, Any]) -> ServeSettings:
    """The settings a deploy config states (strict on the app's args and user_config; a setting it
    leaves out takes the dataclass default; http_options Serve knows but we do not set are ignored)."""
    app = app_entry(config)
    ranker = deployment_entry(copy.deepcopy(app), RANKER)
    http = config.get("http_options") or {}
    deployment = {
        k: ranker[k] for k in ("num_replicas", "max_ongoing_requests", "max_queued_requests") if k in ranker
    }
    if "num_cpus" in (ranker.get("ray_actor_options") or {}):
        deployment["num_cpus"] = ranker["ray_actor_options"]["num_cpus"]
    return ServeSettings(
        http=config_io.from_dict(HttpSettings, {k: http[k] for k in _fields(HttpSettings) if k in http}),
        app=AppSettings.from_dict(app.get("args")),
        ranker=config_io.from_dict(RankerDeployment, deployment, RANKER),
        runtime=RuntimeConfig.from_dict(ranker.get("user_config")),
    )


def deploy_config(base: dict[str, Any], settings: ServeSettings) -> dict[str, Any]:
    """A copy of the deploy config `base` that states `settings` (the app's paths made absolute);
    everything else (proxy location, import path, the ledger's deployment) stays as `base` has it."""
    cfg = copy.deepcopy(base)
    cfg.setdefault("http_options", {}).update(asdict(settings.http))
    app = app_entry(cfg)
    app["args"] = settings.app.resolved().to_dict()
    ranker = deployment_entry(app, RANKER)
    d = settings.ranker
    ranker.update(
        num_replicas=d.num_replicas,
        max_ongoing_requests=d.max_ongoing_requests,
        max_queued_requests=d.max_queued_requests,
    )
    ranker.setdefault("ray_actor_options", {})["num_cpus"] = d.num_cpus
    ranker["user_config"] = settings.runtime.to_dict()
    return cfg


def with_overrides(
    config: dict[str, Any],
    *,
    port: int | None = None,
    replicas: int | None = None,
    num_cpus: float | None = None,
    args: dict[str, Any] | None = None,
    user_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A copy of a deploy config with some settings changed (validated through the dataclasses)."""
    s = settings_of(config)
    http = s.http if port is None else replace(s.http, port=int(port))
    ranker = replace(
        s.ranker,
        num_replicas=s.ranker.num_replicas if replicas is None else int(replicas),
        num_cpus=s.ranker.num_cpus if num_cpus is None else float(num_cpus),
    )
    app = AppSettings.from_dict({**s.app.to_dict(), **(args or {})})
    runtime = RuntimeConfig.from_dict({**s.runtime.to_dict(), **(user_config or {})})
    return deploy_config(config, ServeSettings(http=http, app=app, ranker=ranker, runtime=runtime))


def _fields(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]
