"""`smar serve`: run the endpoint, and publish / roll back model versions (hot swaps, no restart).

    smar serve [--checkpoint PATH] [--registry DIR] [--port P] [--replicas R] [--log-dir DIR] ...
    smar serve publish PATH [--token T]     verify + register PATH, make the running app serve it
    smar serve rollback [--token T]         back to the previous version, in place
    smar serve token                        configure (rotate) the admin token; prints it once

`run` deploys `serving/config.yaml` with these overrides, the same app `serve run serving/config.yaml`
starts. `publish`/`rollback` change the registry and, when a Serve app is running on the Ray cluster
at `--address` (default: the local one), swap it in place; they need the admin token when one is
configured (`--token` or the SMAR_ADMIN_TOKEN environment variable).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from serving.settings import APP_NAME, AppSettings, app_entry, load_config, with_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=["run", "publish", "rollback", "token"],
        help="run the app (default), publish a checkpoint, roll back, or set the admin token",
    )
    p.add_argument("path", nargs="?", help="checkpoint folder (publish)")
    p.add_argument("--checkpoint", help="publish this checkpoint to the registry before serving")
    p.add_argument("--registry", help="registry folder (default: config.yaml args.registry)")
    p.add_argument("--log-dir", help="impression/feedback log folder (default: config.yaml args.log_dir)")
    p.add_argument("--port", type=int, help="HTTP port (default: config.yaml, 8000)")
    p.add_argument("--replicas", type=int, help="Ranker replicas (default 1)")
    p.add_argument("--num-cpus", type=float, help="CPUs reserved per Ranker replica (default 1)")
    p.add_argument(
        "--serve-config", help="a Serve deploy config to use instead of the shipped serving/config.yaml"
    )
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray for run; 'auto' else)")
    p.add_argument(
        "--duration", type=float, help="serve for this many seconds then shut down (default: until Ctrl-C)"
    )
    p.add_argument(
        "--token", default=os.environ.get("SMAR_ADMIN_TOKEN"), help="admin token (publish/rollback)"
    )


def _config(args: argparse.Namespace) -> dict:
    base = load_config(args.serve_config) if args.serve_config else load_config()
    over = {k: v for k, v in {"registry": args.registry, "log_dir": args.log_dir}.items() if v}
    return with_overrides(base, port=args.port, replicas=args.replicas, num_cpus=args.num_cpus, args=over)


def _settings(cfg: dict) -> AppSettings:
    return AppSettings.from_dict(app_entry(cfg, APP_NAME).get("args"))


def run(args: argparse.Namespace) -> int:
    from pretrain.checkpoint import CheckpointError
    from serving.registry import AdminTokenError, Registry, RegistryError

    cfg = _config(args)
    reg = Registry(_settings(cfg).registry)
    try:
        if args.action == "token":
            print(f"admin token for {reg.root} (shown once; pass as --token or SMAR_ADMIN_TOKEN):")
            print(reg.set_admin_token())
            return 0
        if args.action == "publish":
            if not args.path:
                print("smar serve publish: PATH (a checkpoint folder) is required", file=sys.stderr)
                return 2
            version = reg.publish(args.path, token=args.token)
            print(f"published {version} to {reg.root}")
            return _swap_running(version, args)
        if args.action == "rollback":
            version = reg.rollback(token=args.token)
            print(f"rolled back to {version}")
            return _swap_running(version, args)
        if args.checkpoint:
            print(f"published {reg.publish(args.checkpoint, token=args.token)} to {reg.root}")
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
