"""`smar bench serve`: the model floor vs a plain FastAPI peer vs our Serve app on its fast path and via its
proxy, a per-stage CPU profile of one request, and a malformed load with hot swaps.

One run, this machine, loopback only, 50-candidate pages, concurrency 1 / 8 / 32, a bounded number of
requests per cell, all four targets interleaved round by round so a shared machine's changing
background load hits them alike:
- `model`: the bare forward + ranking in this process (torch 1 thread). At concurrency C it ranks C
  pages in one batch, so latency = the batch's time and rps = C / that time: the floor batching aims
  at, the same forward on the same pages at the largest batch the concurrency allows.
- `fastapi`: `serving.peer` under uvicorn in a subprocess (same validation, model, exploration,
  logging; no batching).
- `serve_fast`: our Serve app (one Ranker replica at 1 CPU, batching on) on Serve's fast path
  (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`: direct ingress into the replica, found from Serve's target groups).
- `serve_proxy`: the same running app through Serve's HTTP proxy (one more process and actor hop).
The load generator is `serving/loadgen.py` (raw-socket HTTP/1.1, its own process); its CPU is
reported. The servers report their CPU by stage on /healthz (`serving.stages`),
and every Ray process's CPU is read from /proc, so each cell also gives one request's CPU by stage
and by process (`profile`). The fault part (`--fault-seconds`, default 60; 0 skips it) runs the load
at concurrency 32 with 10 % malformed requests of every class (`serving.malformed`) against the
fast path, hot-swaps the model twice during it, and checks each bad class with `curl`.
Writes OUT/report.json and OUT/serve_bench.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from envs.atomic_io import write_json_atomic

CONCURRENCY = (1, 8, 32)
HTTP_RUNS = ("fastapi", "serve_fast", "serve_proxy")
N_CANDIDATES = 50
LOADGEN = Path(__file__).with_name("loadgen.py")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results/serve", help="folder for report.json and the plot")
    p.add_argument("--checkpoint", help="a reranker checkpoint (default: a fresh default-size reranker)")
    p.add_argument(
        "--requests", type=int, default=300, help="requests per cell at concurrency 1 (x2 at 8, x4 at 32)"
    )
    p.add_argument("--port", type=int, help="Serve proxy port (default: a free one; the peer takes another)")
    p.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds per concurrency (split the requests)"
    )
    p.add_argument(
        "--fault-seconds",
        type=float,
        default=60.0,
        help="malformed load + hot swaps at concurrency 32 for this long (0: skip)",
    )
    p.add_argument("--seed", type=int, default=0)


# ---------------------------------------------------------------------------- inputs
def _bench_inputs(out: Path, checkpoint: str | None, seed: int) -> tuple[str, list[dict]]:
    """A checkpoint and 64 distinct 50-candidate request bodies from the synthetic world."""
    import torch

    from envs.world import WorldConfig, generate_world
    from pretrain.checkpoint import save_checkpoint
    from pretrain.reranker import RerankerConfig, WholePageReranker
    from serving.client import page_request

    world = generate_world(
        WorldConfig(seed=seed, queries=40, candidates_per_modality=13, single_modal_queries=50)
    )
    pages = world.traffic.pages
    bodies = [page_request(pages, p, explore=True, n_max=N_CANDIDATES) for p in range(min(64, len(pages)))]
    if checkpoint is None:
        torch.manual_seed(seed)
        model = WholePageReranker(RerankerConfig.for_pages(pages))
        model.fit_normalizer(pages)
        checkpoint = str(
            save_checkpoint(model, out / "bench_checkpoint", version="bench-untrained", overwrite=True).path
        )
    return checkpoint, bodies


# ---------------------------------------------------------------------------- load
def _stats(lat_ms: list[float], errors: int, wall_s: float) -> dict:
    lat = np.asarray(lat_ms) if lat_ms else np.asarray([np.nan])
    return {
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "rps": float(len(lat_ms) / wall_s) if wall_s > 0 else 0.0,
        "errors": int(errors),
        "requests": int(len(lat_ms) + errors),
    }


def write_specs(path: Path, specs: list[dict]) -> Path:
    path.write_text(json.dumps(specs))
    return path


def loadgen(
    url: str,
    specs: Path,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    warmup: int = 20,
) -> subprocess.Popen:
    """Start `serving/loadgen.py` (its own process); `finish(proc)` waits for and parses its report
    (written to a file next to the specs: uvloop leaves stdout non-blocking, so a large report could be
    cut short on a pipe)."""
    report = specs.with_name(f"{specs.stem}.loadgen-{time.monotonic_ns()}.json")
    cmd = [
        sys.executable,
        str(LOADGEN),
        "--url",
        url,
        "--specs",
        str(specs),
        "--concurrency",
        str(concurrency),
    ]
    cmd += ["--requests", str(requests)] if requests is not None else ["--duration", str(duration_s)]
    cmd += ["--warmup", str(warmup), "--out", str(report)]
    proc = subprocess.Popen(cmd)
    proc.report = report  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout_s: float = 900) -> dict:
    proc.wait(timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"the load generator failed ({proc.returncode})")
    path: Path = proc.report  # type: ignore[attr-defined]
    try:
        return json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)


def _fmt(s: dict) -> str:
    return f"p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms  {s['rps']:8.1f} rps  errors {s['errors']}"


# ---------------------------------------------------------------------------- CPU by process
_TICK = os.sysconf("SC_CLK_TCK")


def _procs() -> dict[int, tuple[int, float, str]]:
    """pid -> (ppid, CPU seconds, command line) for every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{d}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(d)] = (int(f[1]), (int(f[11]) + int(f[12])) / _TICK, cmd)
    return out


def _category(cmd: str) -> str:
    for key, name in (
        ("serving.peer", "peer"),
        ("loadgen.py", "load_generator"),
        ("Ranker", "serve_replica"),
        ("EventLedger", "serve_ledger"),
        ("ProxyActor", "serve_proxy"),
        ("ServeController", "serve_controller"),
    ):
        if key in cmd:
            return name
    return "ray_other"  # raylet, GCS, dashboard agent, idle workers


def _cpu_by_category(root: int = 0) -> dict[str, float]:
    """CPU seconds per category over this process's descendants (Ray's processes, the peer)."""
    procs = _procs()
    root = root or os.getpid()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, float] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        _, cpu, cmd = procs[pid]
        cat = _category(cmd)
        out[cat] = out.get(cat, 0.0) + cpu
    return out


# ---------------------------------------------------------------------------- targets
def _model_cell(scorer, prepared: list, c: int, batches: int, gen) -> dict:
    from serving.stages import thread_time

    for i in range(2):
        scorer.rank(prepared[i : i + c] or prepared[:1], "plackett_luce", 1.0, gen)
    lat, cpu = [], 0.0
    t0 = time.perf_counter()
    for i in range(batches):
        batch = [prepared[(i * c + j) % len(prepared)] for j in range(c)]
        t, tc = time.perf_counter(), thread_time()
        scorer.rank(batch, "plackett_luce", 1.0, gen)
        cpu += thread_time() - tc
        lat.append(1000 * (time.perf_counter() - t))
    return {"lat": lat, "wall": time.perf_counter() - t0, "pages": batches * c, "cpu": cpu}


def _merge_model(parts: list[dict]) -> dict:
    lat = [x for p in parts for x in p["lat"]]
    wall, pages = sum(p["wall"] for p in parts), sum(p["pages"] for p in parts)
    out = _stats(lat, 0, wall)
    out["rps"], out["requests"] = pages / wall, pages
    out["cpu_ms_per_page"] = 1000 * sum(p["cpu"] for p in parts) / pages
    return out


def _health(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/healthz", timeout=30).json()


def _idle_cpu_per_s(health_url: str, seconds: float = 3.0) -> float:
    """CPU seconds per second the server process spends with no traffic."""
    h0 = _health(health_url)
    time.sleep(seconds)
    h1 = _health(health_url)
    return (h1["process_cpu_s"] - h0["process_cpu_s"]) / seconds


def _http_cell(url: str, health_url: str, specs: Path, c: int, n: int) -> dict:
    t0 = time.perf_counter()
    h0, p0 = _health(health_url), _cpu_by_category()
    res = finish(loadgen(url, specs, c, requests=n))
    p1, h1 = _cpu_by_category(), _health(health_url)
    window = time.perf_counter() - t0
    valid = res["classes"].get("valid", {"status": {}, "lat_ms": []})
    ok = [x for x, st in zip(valid["lat_ms"], _statuses(valid)) if st == "200"]
    errors = sum(v for k, v in valid["status"].items() if k != "200")
    served = h1["rank_requests"] - h0["rank_requests"]  # includes the unmeasured warm-up
    stages = {k: h1["stages"].get(k, 0.0) - h0["stages"].get(k, 0.0) for k in h1["stages"]}
    procs = {k: p1.get(k, 0.0) - p0.get(k, 0.0) for k in p1}
    b0, b1 = h0.get("batches"), h1.get("batches")
    batches = None
    if b0 is not None:
        sizes = {k: v - b0["size_counts"].get(k, 0) for k, v in b1["size_counts"].items()}
        nb = b1["batches"] - b0["batches"]
        batches = {
            "batches": nb,
            "mean_batch_size": (b1["items"] - b0["items"]) / max(1, nb),
            "size_counts": sizes,
        }
    return {
        "lat": ok,
        "errors": errors + res["n_conn_errors"],
        "wall": res["wall_s"],
        "n": len(valid["lat_ms"]),
        "client_cpu": res["cpu_s"],
        "served": served,
        "server_cpu": h1["process_cpu_s"] - h0["process_cpu_s"],
        "stages": stages,
        "procs": procs,
        "batches": batches,
        "window": window,
    }


def _statuses(cls: dict) -> list[str]:
    """Per-request status in order is not kept by the load generator; rebuild the 200 mask by count."""
    n200 = cls["status"].get("200", 0)
    return ["200"] * n200 + ["x"] * (len(cls["lat_ms"]) - n200)


def _merge_http(parts: list[dict], idle_cpu_per_s: float) -> dict:
    lat = [x for p in parts for x in p["lat"]]
    out = _stats(lat, sum(p["errors"] for p in parts), sum(p["wall"] for p in parts))
    n = max(1, sum(p["n"] for p in parts))
    served = max(1, sum(p["served"] for p in parts))
    ms = lambda x: 1000 * x / served  # noqa: E731 - CPU seconds -> ms per request served
    stages: dict[str, float] = {}
    procs: dict[str, float] = {}
    for p in parts:
        for k, v in p["stages"].items():
            stages[k] = stages.get(k, 0.0) + v
        for k, v in p["procs"].items():
            procs[k] = procs.get(k, 0.0) + v
    out["cpu_ms_per_request"] = {
        "load_generator": 1000 * sum(p["client_cpu"] for p in parts) / n,
        "server_process": ms(sum(p["server_cpu"] for p in parts)),
        # what the server process burns with no requests at all (Ray's core worker, Serve's health
        # checks and metrics pushes), over the measuring window: part of "rest of the process"
        "server_idle_background": ms(idle_cpu_per_s * sum(p["window"] for p in parts)),
        "stages": {k: ms(v) for k, v in stages.items()},
        "processes": {k: ms(v) for k, v in procs.items() if k != "load_generator"},
    }
    bs = [p["batches"] for p in parts if p["batches"]]
    if bs:
        nb = sum(b["batches"] for b in bs)
        sizes: dict[str, int] = {}
        for b in bs:
            for k, v in b["size_counts"].items():
                sizes[k] = sizes.get(k, 0) + v
        out["batches"] = {
            "batches": nb,
            "mean_batch_size": sum(b["mean_batch_size"] * b["batches"] for b in bs) / max(1, nb),
            "size_counts": {k: v for k, v in sorted(sizes.items(), key=lambda kv: int(kv[0])) if v},
        }
    return out


class _Peer:
    """`python -m serving.peer` in a subprocess (started and stopped by this benchmark)."""

    def __init__(self, checkpoint: str, port: int, log_dir: Path) -> None:
        import httpx

        shutil.rmtree(log_dir, ignore_errors=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "serving.peer", "--checkpoint", checkpoint, "--log-dir", str(log_dir)]
        self.proc = subprocess.Popen([*cmd, "--port", str(port)], env=env)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/version", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the FastAPI peer did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _serve_config(out: Path, checkpoint: str, port: int | None, extra_versions: list[str] = ()):
    from serving import deploy
    from serving.registry import Registry
    from serving.settings import load_config, with_overrides

    reg_dir, log_dir = out / "registry", out / "serve_logs"
    for d in (reg_dir, log_dir, out / "serve_state"):
        shutil.rmtree(d, ignore_errors=True)
    reg = Registry(reg_dir)
    for path in extra_versions:
        reg.publish(path)
    reg.publish(checkpoint)
    cfg = with_overrides(
        load_config(),
        port=port or deploy.free_port(),
        replicas=1,
        num_cpus=1,
        args={"registry": str(reg_dir), "log_dir": str(log_dir), "state_dir": str(out / "serve_state")},
    )
    return cfg, reg


def _runs(checkpoint: str, bodies: list[dict], args: argparse.Namespace, out: Path) -> dict:
    """All four targets, interleaved round by round at each concurrency; then the fault part."""
    import ray
    import torch
    from tqdm import tqdm

    from serving import deploy
    from serving.schemas import RankRequest
    from serving.scoring import Scorer

    torch.set_num_threads(1)
    scorer = Scorer.load(checkpoint)
    prepared = [scorer.prepare(RankRequest.model_validate(b)) for b in bodies]
    gen = torch.Generator().manual_seed(args.seed)
    specs = write_specs(out / "specs.json", [{"path": "/rank", "body": json.dumps(b)} for b in bodies])
    swap_ckpt = _second_checkpoint(out, checkpoint) if args.fault_seconds > 0 else None
    cfg, _ = _serve_config(out, checkpoint, args.port, [swap_ckpt] if swap_ckpt else [])
    deploy.enable_fast_path(no_drain=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    peer = None
    names = ("model", *HTTP_RUNS)
    parts: dict[str, dict[str, list[dict]]] = {n: {str(c): [] for c in CONCURRENCY} for n in names}
    fault = None
    try:
        deploy.deploy(cfg)
        ep = deploy.endpoints()
        if not ep["direct"]:
            raise RuntimeError(f"the fast path is off: Serve published no direct-ingress address ({ep})")
        targets = {"serve_fast": ep["direct"][0], "serve_proxy": ep["proxy"]}
        print(f"  serve_fast at {targets['serve_fast']}, serve_proxy at {targets['serve_proxy']}", flush=True)
        peer = _Peer(checkpoint, deploy.free_port(), out / "peer_logs")
        targets["fastapi"] = peer.url
        health = {"fastapi": peer.url, "serve_fast": ep["direct"][0], "serve_proxy": ep["direct"][0]}
        idle = {name: _idle_cpu_per_s(health[name]) for name in ("fastapi", "serve_fast")}
        idle["serve_proxy"] = idle["serve_fast"]
        print(f"  idle CPU of the server processes (s/s): {idle}", flush=True)
        steps = [(c, r) for c in CONCURRENCY for r in range(args.rounds)]
        for c, _ in tqdm(steps, desc="rounds", leave=False, disable=None):
            n = max(1, args.requests * {1: 1, 8: 2, 32: 4}[c] // args.rounds)
            parts["model"][str(c)].append(_model_cell(scorer, prepared, c, max(3, n // c), gen))
            for name in HTTP_RUNS:
                parts[name][str(c)].append(_http_cell(targets[name], health[name], specs, c, n))
        if peer is not None:
            peer.stop()
            peer = None
        if swap_ckpt:
            fault = fault_load(
                targets["serve_fast"],
                bodies,
                args.fault_seconds,
                out,
                swap_versions=(_version_of(swap_ckpt), _version_of(checkpoint)),
            )
    finally:
        if peer is not None:
            peer.stop()
        deploy.shutdown()
        ray.shutdown()
    runs = {"model": {c: _merge_model(p) for c, p in parts["model"].items()}}
    for name in HTTP_RUNS:
        runs[name] = {c: _merge_http(p, idle[name]) for c, p in parts[name].items()}
    for name, cells in runs.items():
        for c, st in cells.items():
            print(f"  {name:<14} c={c:<3} {_fmt(st)}", flush=True)
    return {"runs": runs, "fault_load": fault, "idle_cpu_s_per_s": idle}


def _version_of(checkpoint: str) -> str:
    from pretrain.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)[1].version


def _second_checkpoint(out: Path, checkpoint: str) -> str:
    """A second version of the same model (other weights) to hot-swap to during the fault part."""
    import torch

    from pretrain.checkpoint import load_checkpoint, save_checkpoint

    model, ckpt = load_checkpoint(checkpoint)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return str(
        save_checkpoint(model, out / "bench_checkpoint_b", version=f"{ckpt.version}-b", overwrite=True).path
    )


# ---------------------------------------------------------------------------- fault part
def curl_bad_inputs(url: str, bodies: list[dict], n_max: int, folder: Path) -> dict:
    """Each bad class through `curl` (a client from outside the project): {class: [got, expected]}."""
    from serving.malformed import bad_cases, body_text

    out = {}
    folder.mkdir(parents=True, exist_ok=True)
    for k, (name, (make, status, _)) in enumerate(sorted(bad_cases(n_max).items())):
        f = folder / f"{name}.json"
        f.write_text(body_text(make(bodies[k % len(bodies)])))
        got = subprocess.run(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "content-type: application/json",
                "--data-binary",
                f"@{f}",
                f"{url}/rank",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        out[name] = [int(got) if got.isdigit() else got, status]
    return out


def fault_load(
    url: str,
    bodies: list[dict],
    seconds: float,
    out: Path,
    swap_versions: tuple[str, str],
    concurrency: int = 32,
    n_max: int = 64,
) -> dict:
    """`seconds` of load at `concurrency`, 10 % malformed of every class, two hot swaps (at 1/3 and
    2/3 of it: to the second version and back), `curl` checks of every bad class meanwhile."""
    from serving import deploy
    from serving.malformed import mixed_specs

    specs = write_specs(out / "fault_specs.json", mixed_specs(bodies, n_max))
    proc = loadgen(url, specs, concurrency, duration_s=seconds, warmup=0)
    t0 = time.monotonic()
    swaps = []
    for k, version in enumerate(swap_versions):
        time.sleep(max(0.0, t0 + seconds * (k + 1) / 3 - time.monotonic()))
        ts = time.monotonic() - t0
        deploy.apply_version(version, url=url, timeout_s=max(30.0, seconds / 3))
        swaps.append(
            {"version": version, "at_s": round(ts, 1), "live_after_s": round(time.monotonic() - t0 - ts, 2)}
        )
    curl = curl_bad_inputs(url, bodies, n_max, out / "curl_bodies")
    res = finish(proc)
    return summarize_fault_load(res, swaps, curl)


def summarize_fault_load(res: dict, swaps: list[dict], curl: dict) -> dict:
    """Pass/fail figures of a malformed load: no 5xx, every malformed request its 4xx, every valid one 200."""
    from serving.malformed import bad_cases

    expect = {name: st for name, (_, st, _) in bad_cases(1).items()}
    valid = res["classes"].get("valid", {"status": {}, "lat_ms": []})
    lat = np.asarray([x for c in res["classes"].values() for x in c["lat_ms"]] or [np.nan])
    n5xx = sum(
        v for c in res["classes"].values() for k, v in c["status"].items() if k.isdigit() and int(k) >= 500
    )
    bad = {k: v for k, v in res["classes"].items() if k != "valid"}
    wrong = {k: v["status"] for k, v in bad.items() if set(v["status"]) != {str(expect[k])}}
    missing = sorted(set(expect) - set(bad))
    failed_valid = sum(v for k, v in valid["status"].items() if k != "200")
    n = sum(sum(c["status"].values()) for c in res["classes"].values())
    return {
        "seconds": res["wall_s"],
        "concurrency": res["concurrency"],
        "requests": n,
        "rps": n / res["wall_s"],
        "malformed": sum(sum(c["status"].values()) for c in bad.values()),
        "malformed_classes": len(bad),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "valid_p50_ms": float(np.percentile(valid["lat_ms"] or [np.nan], 50)),
        "valid_p99_ms": float(np.percentile(valid["lat_ms"] or [np.nan], 99)),
        "n_5xx": n5xx,
        "connection_errors": res["n_conn_errors"],
        "failed_valid_requests": failed_valid,
        "malformed_not_their_4xx": wrong,
        "classes_never_sent": missing,
        "status_by_class": {k: v["status"] for k, v in res["classes"].items()},
        "swaps": swaps,
        "curl": curl,
        "curl_all_4xx_as_expected": all(got == want for got, want in curl.values()),
        "ok": n5xx == 0
        and not wrong
        and failed_valid == 0
        and res["n_conn_errors"] == 0
        and len(bad) == len(expect)
        and all(got == want for got, want in curl.values()),
    }


# ---------------------------------------------------------------------------- report
def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in report["runs"].items():
        cs = sorted(run, key=int)
        x = [int(c) for c in cs]
        axes[0].plot(x, [run[c]["rps"] for c in cs], marker="o", label=name)
        axes[1].plot(x, [run[c]["p50_ms"] for c in cs], marker="o", label=name)
    for ax, title in zip(axes, ("throughput (requests/s)", "p50 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(CONCURRENCY), [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrency")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend()
    fig.suptitle(f"/rank, {N_CANDIDATES}-candidate pages, loopback, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ratios(report: dict) -> dict:
    r = report["runs"]
    peer, model = r["fastapi"], r["model"]
    out: dict = {}
    for name in ("serve_fast", "serve_proxy"):
        ours = r[name]
        out[f"{name}_rps_c32_over_fastapi"] = ours["32"]["rps"] / peer["32"]["rps"]
        out[f"{name}_p50_c1_over_fastapi"] = ours["1"]["p50_ms"] / peer["1"]["p50_ms"]
        out[f"{name}_rps_c32_over_model"] = ours["32"]["rps"] / model["32"]["rps"]
    out["fastapi_rps_c32_over_model"] = peer["32"]["rps"] / model["32"]["rps"]
    fast = r["serve_fast"]
    out["goal_rps_c32_met"] = fast["32"]["rps"] >= peer["32"]["rps"]
    out["goal_p50_c1_met"] = fast["1"]["p50_ms"] <= 2 * peer["1"]["p50_ms"]
    out["goal_model_fraction_met"] = fast["32"]["rps"] >= 0.4 * model["32"]["rps"]
    return out


def profile_table(report: dict, c: str = "32") -> str:
    """Markdown: one request's CPU (ms) by stage and by process at concurrency c."""
    from serving.stages import STAGES

    r = report["runs"]
    cols = [n for n in ("fastapi", "serve_fast", "serve_proxy") if n in r]
    cpu = {n: r[n][c]["cpu_ms_per_request"] for n in cols}
    lines = [f"| CPU per request at c={c} (ms) | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for st in STAGES:
        lines.append(f"| {st} | " + " | ".join(f"{cpu[n]['stages'].get(st, 0.0):.3f}" for n in cols) + " |")
    rest = {n: cpu[n]["server_process"] - sum(cpu[n]["stages"].get(st, 0.0) for st in STAGES) for n in cols}
    lines.append(
        "| rest of the server process (HTTP server, ASGI/FastAPI, Serve wrapper, metrics, threads) | "
        + " | ".join(f"{rest[n]:.3f}" for n in cols)
        + " |"
    )
    lines.append(
        "| **server process total** | "
        + " | ".join(f"**{cpu[n]['server_process']:.3f}**" for n in cols)
        + " |"
    )
    for proc in ("serve_proxy", "serve_ledger", "serve_controller", "ray_other"):
        lines.append(
            f"| {proc} process | "
            + " | ".join(f"{cpu[n]['processes'].get(proc, 0.0):.3f}" for n in cols)
            + " |"
        )
    lines.append("| load generator | " + " | ".join(f"{cpu[n]['load_generator']:.3f}" for n in cols) + " |")
    m = r["model"][c]
    lines.append(f"| model alone, batch {c}: forward + ranking per page | {m['cpu_ms_per_page']:.3f} | | |")
    return "\n".join(lines)


def results_table(report: dict) -> str:
    lines = [
        "| run | c=1 p50 / rps | c=8 p50 / rps | c=32 p50 / p99 / rps | errors |",
        "|---|---|---|---|---|",
    ]
    for name, cells in report["runs"].items():
        errs = sum(cells[str(c)]["errors"] for c in CONCURRENCY)
        c32 = cells["32"]
        lines.append(
            f"| {name} | {cells['1']['p50_ms']:.1f} ms / {cells['1']['rps']:.0f} | {cells['8']['p50_ms']:.1f} ms / "
            f"{cells['8']['rps']:.0f} | {c32['p50_ms']:.1f} / {c32['p99_ms']:.1f} ms / {c32['rps']:.0f} | {errs} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, bodies = _bench_inputs(out, args.checkpoint, args.seed)
    print(f"serve bench: {len(bodies)} distinct {N_CANDIDATES}-candidate pages, concurrency {CONCURRENCY}")
    report: dict = {
        "config": {
            "candidates": N_CANDIDATES,
            "requests_c1": args.requests,
            "checkpoint": checkpoint,
            "cpu_count": os.cpu_count(),
            "explore": True,
            "rounds": args.rounds,
            "load_average_at_start": list(os.getloadavg()),
        },
    }
    t0 = time.monotonic()
    got = _runs(checkpoint, bodies, args, out)
    report["runs"] = got["runs"]
    report["fault_load"] = got["fault_load"]
    report["idle_cpu_s_per_s"] = got["idle_cpu_s_per_s"]
    report["config"]["load_average_at_end"] = list(os.getloadavg())
    report["config"]["seconds"] = time.monotonic() - t0
    report["ratios"] = ratios(report)
    write_json_atomic(out / "report.json", report)
    _plot(report, out / "serve_bench.png")
    print(results_table(report))
    print(profile_table(report, "32"))
    print(profile_table(report, "1"))
    for k, v in report["ratios"].items():
        print(f"  {k}: {v:.3f}" if isinstance(v, float) else f"  {k}: {v}")
    if report["fault_load"]:
        f = {k: v for k, v in report["fault_load"].items() if k != "curl"}
        print(f"  fault load: {json.dumps(f)}")
    print(f"wrote {out / 'report.json'} and {out / 'serve_bench.png'}")
    return 0
