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


def deploy(config: dict[str, Any], wait: bool = True, timeout_s: float = 120.0) -> str:
    """Start Serve if needed and apply `config` (a ServeDeploySchema dict). Returns the base URL."""
    schema = ServeDeploySchema.model_validate(config)
    serve.start(proxy_location=schema.proxy_location, http_options=schema.http_options.model_dump())
    _client().deploy_apps(schema, _blocking=False)
    url = base_url(config)
    if wait:
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
