"""`smar serve`: run the endpoint, and publish / roll back model versions (hot swaps, no restart).

    smar serve [--checkpoint PATH] [--http.port P] [--ranker.num_replicas R] [--runtime.temperature T]
               [--app.FIELD V] [--app.logs.FIELD V] [--ranker.FIELD V] [--runtime.FIELD V] [--out DIR]
    smar serve publish PATH [--token T]     verify + register PATH, make the running app serve it
    smar serve rollback [--token T]         back to the previous version, in place
    smar serve token                        configure (rotate) the admin token; prints it once

Every setting of serving.settings.ServeSettings is an option: `--http.*` (HttpSettings: host, port,
request timeout), `--app.*` (AppSettings: registry, log and state folders, request limits, event TTL,
seed; `--app.logs.*` the log writers' bounds), `--ranker.*` (RankerDeployment: replicas, CPUs per
replica, request bounds) and `--runtime.*` (RuntimeConfig: version, exploration and its temperature,
batching). Their defaults are the deploy config's: the shipped `serving/config.yaml`, or the file
`--serve-config` names (on the command line or in a `--config` file), so options layer over it.
`run` deploys that file with these settings, the same app `serve run serving/config.yaml` starts;
`--out DIR` writes the settings to DIR/resolved.yaml when the command ends (`--config` reproduces
the run; the admin token is never written). `publish`/`rollback` change the registry and, when a
Serve app is running on the Ray cluster at `--address` (default: the local one), swap it in place;
they need the admin token when one is configured (`--token` or the SMAR_ADMIN_TOKEN environment
variable).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import yaml

from serving.settings import (
    APP_NAME,
    CONFIG_PATH,
    AppSettings,
    HttpSettings,
    RankerDeployment,
    RuntimeConfig,
    ServeSettings,
    deploy_config,
    load_config,
    settings_of,
)

NOT_RESOLVED = ("token",)  # a secret: never written to resolved.yaml
GROUPS = {"http": HttpSettings, "app": AppSettings, "ranker": RankerDeployment, "runtime": RuntimeConfig}


def add_arguments(p) -> None:
    p.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=["run", "publish", "rollback", "token"],
        help="run the app (default), publish a checkpoint, roll back, or set the admin token",
    )
    p.add_argument("path", nargs="?", default=None, help="checkpoint folder (publish)")
    p.add_argument(
        "--checkpoint", default=None, help="publish this checkpoint to the registry before serving"
    )
    p.add_argument(
        "--serve-config",
        default=None,
        help="a Serve deploy config to use instead of the shipped serving/config.yaml (its settings become "
        "the options' defaults)",
    )
    for key, cls in GROUPS.items():
        p.add_class_arguments(cls, key)
    p.add_argument("--out", default=None, help="folder for resolved.yaml (the settings this run used)")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: start a local Ray for run; 'auto' else)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="serve for this many seconds then shut down (default: until Ctrl-C)",
    )
    p.add_argument("--token", default=None, help="admin token (publish/rollback; default: $SMAR_ADMIN_TOKEN)")


def defaults_for(argv: list[str]) -> dict:
    """The options' defaults: the settings of the deploy config `--serve-config` names (the last one on
    the command line or in a `--config` file), else of the shipped one."""
    path = None
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name not in ("--serve-config", "--config"):
            continue
        value = value or (argv[i + 1] if i + 1 < len(argv) else "")
        if name == "--serve-config":
            path = value
        elif Path(value).is_file():
            named = (yaml.safe_load(Path(value).read_text()) or {}).get("serve_config")
            path = named or path
    return _flat(settings_of(load_config(path or CONFIG_PATH)).to_dict())


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings(args: argparse.Namespace) -> ServeSettings:
    return ServeSettings(**{key: getattr(args, key) for key in GROUPS})


def deploy_config_of(args: argparse.Namespace) -> dict:
    """The deploy config this command runs: the `--serve-config` file (or the shipped one) stating
    every setting of `args`."""
    return deploy_config(load_config(args.serve_config or CONFIG_PATH), settings(args))


def run(args: argparse.Namespace) -> int:
    from pretrain.checkpoint import CheckpointError
    from serving.registry import AdminTokenError, Registry, RegistryError

    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    cfg = deploy_config_of(args)
    reg = Registry(args.app.resolved().registry)
    token = args.token or os.environ.get("SMAR_ADMIN_TOKEN")
    try:
        if args.action == "token":
            print(f"admin token for {reg.root} (shown once; pass as --token or SMAR_ADMIN_TOKEN):")
            print(reg.set_admin_token())
            return 0
        if args.action == "publish":
            if not args.path:
                print("smar serve publish: PATH (a checkpoint folder) is required", file=sys.stderr)
                return 2
            version = reg.publish(args.path, token=token)
            print(f"published {version} to {reg.root}")
            return _swap_running(version, args)
        if args.action == "rollback":
            version = reg.rollback(token=token)
            print(f"rolled back to {version}")
            return _swap_running(version, args)
        if args.checkpoint:
            print(f"published {reg.publish(args.checkpoint, token=token)} to {reg.root}")
    except AdminTokenError as e:
        print(f"refused: {e}", file=sys.stderr)
        return 3
    except (CheckpointError, RegistryError) as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1
    if reg.current() is None:
        print(f"no model to serve: {reg.root} is empty (pass --checkpoint PATH)", file=sys.stderr)
        return 1
    return _serve(cfg, args)


def _serve(cfg: dict, args: argparse.Namespace) -> int:
    import ray

    from serving import deploy

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(include_dashboard=False)
    stop = {"flag": False}

    def _stop(*_):
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        url = deploy.deploy(cfg)
        info = deploy.wait_ready(url)
        print(f"serving {info['model_version']} at {url}  (docs: {url}/docs); Ctrl-C to stop", flush=True)
        end = time.monotonic() + args.duration if args.duration else float("inf")
        while not stop["flag"] and time.monotonic() < end:
            time.sleep(0.2)
    finally:
        print("shutting down (flushing logs)", flush=True)
        deploy.shutdown()
        ray.shutdown()
    return 0


def _swap_running(version: str, args: argparse.Namespace) -> int:
    """Swap a running app, if any, to `version` in place."""
    import ray
    from ray import serve

    from serving import deploy

    owns = False
    if not ray.is_initialized():
        try:
            ray.init(address=args.address or "auto", include_dashboard=False, log_to_driver=False)
            owns = True
        except (ConnectionError, RuntimeError) as e:
            print(
                f"no running Ray cluster ({e.__class__.__name__}); the app will serve {version} when started"
            )
            return 0
    try:
        try:
            running = APP_NAME in serve.status().applications
        except Exception:  # noqa: BLE001 - no Serve instance on this cluster
            running = False
        if not running:
            print(f"no running Serve app {APP_NAME!r}; it will serve {version} when started")
            return 0
        cfg = deploy.current_config()
        deploy.apply_version(version, url=deploy.base_url(cfg))
        print(f"running app now serves {version}")
        return 0
    finally:
        if owns:
            ray.shutdown()
