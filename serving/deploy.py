"""Serve control plane: deploy the app from its config, swap the served version in place, shut down.

Deploying goes through the same declarative path as `serve run serving/config.yaml` (`serve.start`
with the config's HTTP options, then the controller's `apply_config` via the Serve client's
`deploy_apps`; see ray/serve/scripts.py `run`). That matters for hot swaps: an imperative
`serve.run(app)` gives every redeploy a fresh random code version (ray/serve/_private/client.py),
which restarts replicas, whereas re-applying a config whose only change is a deployment's
`user_config` keeps the code version, so Serve calls `reconfigure` on the live replicas instead
(ray/serve/_private/replica.py `reconfigure`). `apply_version` does exactly that.
"""

from __future__ import annotations

import copy
import os
import socket
import time
from typing import Any

import httpx
import ray
from ray import serve
from ray.serve.schema import ServeDeploySchema

from serving.settings import APP_NAME, RANKER, app_entry, deployment_entry


def _client():
    # The Serve client of this driver (the one `serve run` uses); started by serve.start.
    from ray.serve.context import _get_global_client

    return _get_global_client()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for demos and tests that start their own endpoint)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def base_url(config: dict[str, Any]) -> str:
    http = config.get("http_options") or {}
    host = http.get("host") or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{host}:{int(http.get('port', 8000))}"


# Serve's fast request path (ray/serve/_private/constants.py): direct ingress (the ingress replica runs
# its own HTTP server, the proxy is bypassed), user code and router on the replica's main loop, gRPC
# for handle calls, buffered request logs. Read at import in every Ray process: set before ray.init().
FAST_PATH_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# Direct-ingress replicas otherwise drain >= 30 s on shutdown; tests and benches set it to 0.
NO_DRAIN_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}


def enable_fast_path(no_drain: bool = False) -> None:
    """Put the fast-path flags in this process's environment (inherited by the Ray it starts)."""
    if ray.is_initialized():
        raise RuntimeError("enable_fast_path() must run before ray.init(): Ray processes read it at import")
    for k, v in {**FAST_PATH_ENV, **(NO_DRAIN_ENV if no_drain else {})}.items():
        os.environ.setdefault(k, v)


def fast_path_on() -> bool:
    from ray.serve._private import constants

    return bool(constants.RAY_SERVE_ENABLE_DIRECT_INGRESS)


def endpoints(app: str = APP_NAME) -> dict[str, Any]:
    """The app's real addresses from Serve's details: {"direct": [one URL per ingress replica serving
    its own HTTP port], "proxy": the proxy's URL or None}. Direct URLs exist only with the fast path."""
    details = _client().get_serve_details()
    http = details.get("http_options") or {}
    # Replica servers bind `http_options.host` (ray/serve/_private/replica.py); targets carry the node
    # IP. On one node with a specific bind address (127.0.0.1 here) that address is the one to dial.
    bind = http.get("host") or "0.0.0.0"
    direct, proxy = [], None
    for tg in details.get("target_groups") or []:
        if str(tg.get("protocol", "")).upper().endswith("HTTP"):
            urls = [f"http://{_dial(bind, t['ip'])}:{int(t['port'])}" for t in tg.get("targets", [])]
            if tg.get("app_name") == app:
                direct.extend(urls)
            elif not tg.get("app_name") and urls:
                proxy = urls[0]
    if proxy is None and details.get("proxies"):
        proxy = base_url({"http_options": http})
    return {"direct": sorted(direct), "proxy": proxy}


def _dial(bind: str, ip: str) -> str:
    return ip if bind in ("0.0.0.0", "::", "") else bind


def endpoint_url(app: str = APP_NAME, timeout_s: float = 60.0, prefer: str = "direct") -> str:
    """The URL clients should use: a direct-ingress replica when the fast path is on, else the proxy.
    Waits (bounded) for the controller to publish the replicas' ports."""
    deadline = time.monotonic() + timeout_s
    while True:
        ep = endpoints(app)
        if prefer == "proxy" and ep["proxy"]:
            return ep["proxy"]
        if ep["direct"]:
            return ep["direct"][0]
        if not fast_path_on() and ep["proxy"]:
            return ep["proxy"]
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve published no HTTP address for {app!r} after {timeout_s}s: {ep}")
        time.sleep(0.2)


def deploy(config: dict[str, Any], wait: bool = True, timeout_s: float = 120.0) -> str:
    """Start Serve if needed and apply `config` (a ServeDeploySchema dict). Returns the URL clients
    should use (`endpoint_url`: a direct-ingress replica with the fast path on, else the proxy)."""
    schema = ServeDeploySchema.model_validate(config)
    serve.start(proxy_location=schema.proxy_location, http_options=schema.http_options.model_dump())
    _client().deploy_apps(schema, _blocking=False)
    url = base_url(config)
    if not wait:
        return url
    wait_ready(url, timeout_s=timeout_s)  # through the proxy: every route answers once the app runs
    url = endpoint_url(timeout_s=timeout_s)
    wait_ready(url, timeout_s=timeout_s)
    return url


def wait_ready(
    url: str,
    timeout_s: float = 120.0,
    version: str | None = None,
    streak: int = 1,
    expect: dict | None = None,
) -> dict:
    """Poll GET /version until it answers (with `version` and the `expect`ed fields, `streak` times in a
    row: with several replicas each answer comes from whichever replica the proxy picked). Returns it."""
    want = dict(expect or {})
    if version is not None:
        want["model_version"] = version
    deadline = time.monotonic() + timeout_s
    last: Any = None
    hits = 0
    while time.monotonic() < deadline:
        _raise_if_deploy_failed()
        try:
            r = httpx.get(f"{url}/version", timeout=5.0)
            last = r.status_code, r.text[:300]
            if r.status_code == 200:
                body = r.json()
                hits = hits + 1 if all(body.get(k) == v for k, v in want.items()) else 0
                if hits >= streak:
                    return body
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.2)
    raise TimeoutError(
        f"{url} not serving{f' version {version}' if version else ''} after {timeout_s}s: {last}"
    )


def _raise_if_deploy_failed(app: str = APP_NAME) -> None:
    st = serve.status().applications.get(app)
    if st is not None and str(st.status).endswith("DEPLOY_FAILED"):
        raise RuntimeError(f"Serve app {app!r} failed to deploy: {st.message}")


def current_config() -> dict[str, Any]:
    """The declaratively deployed apps as a ServeDeploySchema dict (what the controller holds)."""
    details = _client().get_serve_details()
    apps = []
    for name, app in details.get("applications", {}).items():
        deployed = app.get("deployed_app_config")
        if deployed is None:
            raise RuntimeError(
                f"Serve app {name!r} was deployed imperatively; hot swaps need a config deploy"
            )
        apps.append(deployed)
    cfg: dict[str, Any] = {"applications": apps}
    if details.get("proxy_location"):
        cfg["proxy_location"] = details["proxy_location"]
    if details.get("http_options"):
        cfg["http_options"] = {
            k: v for k, v in details["http_options"].items() if k in ("host", "port", "request_timeout_s")
        }
    return cfg


def apply_version(
    version: str | None,
    *,
    url: str | None = None,
    timeout_s: float = 60.0,
    user_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Make the running app serve registry `version` in place (reconfigure, no restart).

    Needs a connected Ray (`ray.init(address="auto")` from another process). With `url`, waits until
    /version reports the version several times in a row. Returns the applied user_config.
    """
    if not ray.is_initialized():
        raise RuntimeError("not connected to Ray: call ray.init(address=...) first")
    cfg = copy.deepcopy(current_config())
    ranker = deployment_entry(app_entry(cfg), RANKER)
    uc = {**(ranker.get("user_config") or {}), **(user_config or {}), "version": version}
    ranker["user_config"] = uc
    _client().deploy_apps(ServeDeploySchema.model_validate(cfg), _blocking=False)
    if url is not None and version is not None:
        shown = {k: uc[k] for k in ("exploration", "temperature", "batching") if k in uc}
        wait_ready(url, timeout_s=timeout_s, version=version, streak=5, expect=shown)
    return uc


def shutdown() -> None:
    """Graceful: replicas run their `__del__` (log flush) before they stop."""
    serve.shutdown()
