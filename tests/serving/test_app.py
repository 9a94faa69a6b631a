"""The Serve app for real: a local Ray (the session's), Serve over loopback HTTP, two Ranker replicas.

One deployment for the whole module (start-up dominates the budget). Every successful /rank and every
accepted /feedback is recorded, and the last test shuts the app down gracefully and checks that the
logs hold exactly those events (so it also checks the shutdown flush: impressions use a flush age far
longer than the module's run time).
"""

from __future__ import annotations

import copy
import json
import shutil
import threading
import time
from types import SimpleNamespace

import httpx
import pyarrow.dataset as ds
import pytest

from serving import deploy
from serving.client import page_request
from serving.feedback_log import read_logs
from serving.ledger import new_event_id
from serving.malformed import bad_cases
from serving.registry import Registry
from serving.settings import APP_NAME
from serving.tokens import EventSigner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(ray_session, serving_ckpts, tiny_world, tmp_path_factory, deploy_app):
    root = tmp_path_factory.mktemp("serve_app")
    reg = Registry(root / "registry")
    reg.publish(serving_ckpts["a"].path)
    log_dir = root / "logs"
    url = deploy_app(
        root,
        reg,
        max_body_bytes=512 * 1024,
        logs={"impression_max_rows": 100_000, "impression_max_age_s": 3600.0},
    )
    state = SimpleNamespace(
        url=url,
        reg=reg,
        log_dir=log_dir,
        root=root,
        pages=tiny_world.traffic.pages,
        served={},  # event_id -> (model_version, shown item ids)
        accepted={},  # event_id -> {item_id: click}
        http=httpx.Client(base_url=url, timeout=30),
        lock=threading.Lock(),
    )
    yield state
    state.http.close()
    from ray import serve

    serve.shutdown()


def rank(app, body, client=None) -> httpx.Response:
    r = (client or app.http).post("/rank", json=body)
    if r.status_code == 200:
        out = r.json()
        with app.lock:
            app.served[out["event_id"]] = (out["model_version"], [x["item_id"] for x in out["ranking"]])
    return r


def feedback(app, event_id, items) -> httpx.Response:
    r = app.http.post("/feedback", json={"event_id": event_id, "feedback": items})
    if r.status_code == 200 and r.json()["status"] == "accepted":
        app.accepted[event_id] = {i["item_id"]: i["click"] for i in items}
    return r


def detail_text(r: httpx.Response) -> str:
    return json.dumps(r.json()["detail"])


# ---------------------------------------------------------------------------- ranking
def test_rank_round_trip_greedy_and_explore(app):
    body = page_request(app.pages, 0)
    r = rank(app, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_version"] == "v-a" and not out["explored"]
    ids = [c["item_id"] for c in body["candidates"]]
    assert sorted(x["item_id"] for x in out["ranking"]) == sorted(ids)
    assert [x["position"] for x in out["ranking"]] == list(range(1, len(ids) + 1))
    scores = [x["score"] for x in out["ranking"]]
    assert scores == sorted(scores, reverse=True)
    assert all(x["propensity"] is None for x in out["ranking"])

    r = rank(app, page_request(app.pages, 1, explore=True))
    out = r.json()
    assert r.status_code == 200 and out["explored"]
    props = [x["propensity"] for x in out["ranking"]]
    assert all(0 < p <= 1 for p in props) and abs(props[-1] - 1) < 1e-9
    assert abs(sum(map(__import__("math").log, props)) - out["slate_log_prob"]) < 1e-6


def test_version_healthz_openapi(app, serving_ckpts):
    v = app.http.get("/version").json()
    cfg = serving_ckpts["a"].config
    assert v["model_version"] == "v-a"
    assert v["feature_dims"] == cfg.feature_dims
    assert (v["query_dim"], v["user_dim"], v["max_candidates"]) == (cfg.query_dim, cfg.user_dim, 20)
    assert app.http.get("/healthz").json()["status"] == "ok"
    spec = app.http.get("/openapi.json").json()
    assert {"/rank", "/feedback", "/version", "/healthz"} <= set(spec["paths"])
    body = spec["paths"]["/rank"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/RankRequest"}
    assert {"RankRequest", "Candidate", "Context", "RankResponse"} <= set(spec["components"]["schemas"])


BAD = bad_cases(20)  # the module deploys with max_candidates 20


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_4xx_naming_the_field(app, case):
    make, status, field = BAD[case]
    payload = make(page_request(app.pages, 2))
    if isinstance(payload, bytes):
        r = app.http.post("/rank", content=payload, headers={"content-type": "application/json"})
    else:
        r = app.http.post("/rank", json=payload)
    assert r.status_code == status, r.text[:500]
    assert field in detail_text(r)


def test_prometheus_metrics_per_route_version_status(app):
    """Ray's metrics exporter (the scrape address in the README) shows our counters and latencies."""
    import re

    from serving.metrics import metrics_scrape_address

    for p in range(3):
        assert rank(app, page_request(app.pages, p)).status_code == 200
    assert (
        app.http.post("/rank", content=b"[1]", headers={"content-type": "application/json"}).status_code
        == 422
    )
    assert app.http.get("/version").status_code == 200
    addr = metrics_scrape_address()
    assert addr and addr.endswith("/metrics"), addr

    def series(text: str, name: str, **tags) -> list[float]:
        out = []
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in tags.items()):
                out.append(float(line.rsplit(" ", 1)[1]))
        return out

    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        text = httpx.get(addr, timeout=10).text
        if series(text, "ray_smar_request_errors_total", route="/rank", status="422") and series(
            text, "ray_smar_requests_total", route="/version"
        ):
            break
        time.sleep(1.0)
    ok = series(text, "ray_smar_requests_total", route="/rank", model_version="v-a", status="200")
    assert ok and sum(ok) >= 3, re.findall(r"ray_smar_\w+", text)[:20]
    assert sum(series(text, "ray_smar_request_errors_total", route="/rank", status="422")) >= 1
    assert not series(text, "ray_smar_request_errors_total", route="/rank", status="200")
    assert series(text, "ray_smar_requests_total", route="/version", status="200")
    buckets = series(text, "ray_smar_request_latency_ms_bucket", route="/rank", model_version="v-a")
    assert buckets and max(buckets) >= 4  # cumulative buckets: the +Inf one counts every /rank
    assert series(text, "ray_smar_request_latency_ms_count", route="/rank")


def test_rank_takes_the_lean_route_and_the_replicas_body_limit(app):
    """POST /rank goes through RankRoute (not FastAPI's router), and the body limit the middlewares
    enforce is the deployment's (512 KiB here), not the module default."""
    h0 = app.http.get("/healthz").json()  # app.url is one replica's own port (the fast path)
    for p in range(6):
        assert rank(app, page_request(app.pages, p)).status_code == 200
    h1 = app.http.get("/healthz").json()
    assert h1["replica"] == h0["replica"]
    assert h1["rank_route_requests"] - h0["rank_route_requests"] == 6
    assert h1["rank_requests"] - h0["rank_requests"] == 6
    body = json.dumps({**page_request(app.pages, 0), "pad": "x" * (600 * 1024)}).encode()
    r = app.http.post("/rank", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text[:300]
    assert "524288" in r.text


def test_app_still_serves_after_bad_inputs(app):
    r = rank(app, page_request(app.pages, 3, explore=True))
    assert r.status_code == 200
    assert app.http.get("/healthz").json()["status"] == "ok"


# ---------------------------------------------------------------------------- feedback
def test_feedback_accepted_once_durably_then_idempotent(app):
    events = []
    for p in range(4, 14):
        out = rank(app, page_request(app.pages, p, explore=p % 2 == 0)).json()
        top = out["ranking"][0]["item_id"]
        items = [
            {"item_id": top, "click": True, "dwell_s": 31.0},
            {"item_id": out["ranking"][1]["item_id"], "click": False, "dwell_s": 0.0},
        ]
        r = feedback(app, out["event_id"], items)
        assert r.status_code == 200 and r.json()["status"] == "accepted", r.text
        assert r.json()["model_version"] == out["model_version"]
        events.append((out["event_id"], items))
    # acknowledged only once durable: already in a Parquet file, before any shutdown flush
    on_disk = set(
        ds.dataset(app.log_dir / "feedback", partitioning="hive").to_table()["event_id"].to_pylist()
    )
    assert {e for e, _ in events} <= on_disk
    for eid, items in events:  # repeats (on any replica) are acknowledged but not counted again
        r = feedback(app, eid, items)
        assert r.status_code == 200 and r.json()["status"] == "duplicate"


def test_forged_unknown_expired_and_unshown_items_rejected(app):
    out = rank(app, page_request(app.pages, 14)).json()
    ok_item = out["ranking"][0]["item_id"]
    one = [{"item_id": ok_item, "click": True, "dwell_s": 1.0}]
    for forged in (
        "nope",
        new_event_id(),
        out["event_id"][:-1] + ("A" if out["event_id"][-1] != "A" else "B"),
    ):
        r = feedback(app, forged, one)
        assert r.status_code == 404 and "event_id" in detail_text(r), (forged, r.text)
    signer = EventSigner.from_dir(app.root / "state")  # the app's own key: a genuine but old event
    r = feedback(app, signer.issue("v-a", time.time() - 7200), one)
    assert r.status_code == 410 and "expired" in detail_text(r)
    r = feedback(app, "x" * 300, one)
    assert r.status_code == 422 and "event_id" in detail_text(r)
    r = feedback(app, out["event_id"], [{"item_id": "never-shown", "click": True, "dwell_s": 1.0}])
    assert r.status_code == 422 and "item_id" in detail_text(r)
    r = feedback(app, out["event_id"], [{"item_id": ok_item, "click": True, "dwell_s": -1.0}])
    assert r.status_code == 422 and "dwell_s" in detail_text(r)
    r = feedback(app, out["event_id"], [{"item_id": ok_item, "click": "yes", "dwell_s": 1.0}])
    assert r.status_code == 422 and "click" in detail_text(r)
    for bad in (-1.0, 1e9):  # an answer card's seconds on screen: negative or absurd is a client bug
        r = feedback(app, out["event_id"], [{"item_id": ok_item, "click": False, "viewport_s": bad}])
        assert r.status_code == 422 and "viewport_s" in detail_text(r)
    # none of the refusals consumed the event
    r = feedback(app, out["event_id"], one)
    assert r.status_code == 200 and r.json()["status"] == "accepted"


def test_batch_routes_rank_and_take_feedback_per_event(app):
    """/rank/batch: one event per page, as /rank; /feedback/batch: one outcome per event, as /feedback
    (accepted once, then duplicate; an unknown or unshown one is an error for that event only)."""
    pages = [page_request(app.pages, p, explore=True) for p in range(20, 26)]
    r = app.http.post("/rank/batch", json={"pages": pages})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(pages) and len({x["event_id"] for x in results}) == len(pages)
    for body, out in zip(pages, results):
        ids = [c["item_id"] for c in body["candidates"]]
        assert sorted(x["item_id"] for x in out["ranking"]) == sorted(ids) and out["explored"]
        assert (
            abs(
                sum(map(__import__("math").log, (x["propensity"] for x in out["ranking"])))
                - out["slate_log_prob"]
            )
            < 1e-6
        )
        with app.lock:
            app.served[out["event_id"]] = (out["model_version"], [x["item_id"] for x in out["ranking"]])
    events = [
        {
            "event_id": out["event_id"],
            "feedback": [{"item_id": out["ranking"][0]["item_id"], "click": True, "dwell_s": 12.0}],
        }
        for out in results
    ]
    bad = [
        {"event_id": new_event_id(), "feedback": events[0]["feedback"]},
        {
            "event_id": results[4]["event_id"],  # not consumed: accepted in the next batch
            "feedback": [{"item_id": "never-shown", "click": True, "dwell_s": 1.0}],
        },
    ]
    r = app.http.post("/feedback/batch", json={"events": bad[:1] + events[:3] + bad[1:]})
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    assert [g["status"] for g in got] == ["error", "accepted", "accepted", "accepted", "error"]
    assert got[0]["code"] == 404 and got[-1]["code"] == 422 and "item_id" in got[-1]["detail"]
    r = app.http.post("/feedback/batch", json={"events": events})
    got = r.json()["results"]
    assert [g["status"] for g in got] == ["duplicate"] * 3 + ["accepted"] * 3
    for ev in events:
        app.accepted[ev["event_id"]] = {i["item_id"]: i["click"] for i in ev["feedback"]}
    # a page that breaks the contract fails the batch with a 422 naming it
    broken = copy.deepcopy(pages[:2])
    broken[1]["candidates"][0]["features"] = broken[1]["candidates"][0]["features"][:-1]
    r = app.http.post("/rank/batch", json={"pages": broken})
    assert r.status_code == 422 and '"pages", 1, "candidates", 0, "features"' in detail_text(r).replace(
        "[", ""
    ).replace("]", "")


# ---------------------------------------------------------------------------- model versions
def _replicas(app, n=30) -> set[str]:
    return {app.http.get("/version").json()["replica"] for _ in range(n)}


def test_publish_swaps_in_place_with_no_failed_request(app, serving_ckpts):
    from agent.cli import command_parser
    from serving import cli

    before = _replicas(app)
    stop = threading.Event()
    seen: list[tuple[int, str | None]] = []

    def hammer(k: int) -> None:
        with httpx.Client(base_url=app.url, timeout=30) as c:
            i = 0
            while not stop.is_set():
                r = rank(app, page_request(app.pages, (k * 7 + i) % len(app.pages), explore=bool(i % 2)), c)
                seen.append(
                    (r.status_code, r.json().get("model_version") if r.status_code == 200 else r.text)
                )
                i += 1

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    p = command_parser("smar serve", "")
    cli.add_arguments(p)
    argv = ["publish", str(serving_ckpts["b"].path), "--app.registry", str(app.reg.root)]
    assert cli.run(p.instantiate(p.parse_args(argv))) == 0
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    codes = [c for c, _ in seen]
    assert codes and all(c == 200 for c in codes), [s for s in seen if s[0] != 200][:3]
    versions = [v for _, v in seen]
    assert "v-a" in versions and versions[-1] == "v-b"
    assert app.http.get("/version").json()["model_version"] == "v-b"
    assert _replicas(app) == before  # same replicas: reconfigured, not restarted

    assert app.reg.rollback() == "v-a"
    deploy.apply_version("v-a", url=app.url)
    assert rank(app, page_request(app.pages, 0)).json()["model_version"] == "v-a"


def test_corrupted_checkpoint_refused_old_keeps_serving(app, serving_ckpts):
    from pretrain.checkpoint import CheckpointError

    bad = app.root / "bad"
    shutil.copytree(serving_ckpts["b"].path, bad)
    w = bad / "weights.pt"
    w.write_bytes(w.read_bytes()[:-7] + b"garbage")
    with pytest.raises(CheckpointError):
        app.reg.publish(bad)
    assert app.reg.current().version == "v-a"
    # a version corrupted inside the registry after publishing: the replicas refuse it
    shutil.copytree(bad, app.reg.versions_dir / "v-bad")
    deploy.apply_version("v-bad")
    body = deploy.wait_ready(app.url, timeout_s=60, streak=6, expect={"model_version": "v-a"})
    deadline = time.monotonic() + 60
    while body["last_reload_error"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
        body = app.http.get("/version").json()
    assert body["model_version"] == "v-a" and "checksum" in body["last_reload_error"]
    r = rank(app, page_request(app.pages, 5))
    assert r.status_code == 200 and r.json()["model_version"] == "v-a"
    deploy.apply_version("v-a")  # the pointer again: every replica clears its error
    deploy.wait_ready(
        app.url, timeout_s=60, streak=6, expect={"model_version": "v-a", "last_reload_error": None}
    )


# ---------------------------------------------------------------------------- logs (last: shuts down)
def test_logs_hold_exactly_served_and_accepted_after_graceful_shutdown(app):
    from ray import serve

    served = dict(app.served)
    assert len(served) > 20
    serve.delete(APP_NAME)  # graceful: replicas flush their writers in __del__
    t = read_logs(app.log_dir)
    ids = t["event_id"].to_pylist()
    assert len(ids) == len(set(ids)) == len(served)
    assert set(ids) == set(served)
    for row in t.to_pylist():
        version, shown = served[row["event_id"]]
        assert row["model_version"] == version
        assert [row["item_id"][a] for a in row["action"]] == shown
        fb = app.accepted.get(row["event_id"])
        if fb is None:
            assert row["click"] is None
        else:
            got = {shown[k]: c for k, c in enumerate(row["click"]) if c != -1}
            assert got == {i: int(c) for i, c in fb.items()}
    with_feedback = {r["event_id"] for r in t.to_pylist() if r["click"] is not None}
    assert with_feedback == set(app.accepted)
