"""`smar bench serve`: the model floor vs a plain FastAPI peer vs our Serve app on its fast path and via its proxy.

One run, this machine, loopback only, 50-candidate pages, concurrency 1 / 8 / 32, a bounded number of
requests per cell:
- `model`: the bare forward + ranking in this process (torch 1 thread). At concurrency C it ranks C
  pages in one batch, so latency = the batch's time and rps = C / that time: the floor batching aims at.
- `fastapi`: `serving.peer` under uvicorn in a subprocess (same validation, model, exploration, logging).
- `serve_fast`: our Serve app (one Ranker replica at 1 CPU, batching on) on Serve's fast path
  (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`: direct ingress into the replica, found from Serve's target groups).
- `serve_proxy`: the same running app through Serve's HTTP proxy (one more process and actor hop).
The three HTTP targets run interleaved, round by round at each concurrency, so a shared machine's
changing background load hits them alike. The load generator is this process (httpx, asyncio): it
shares the cores with the servers, and its CPU per request is reported.
Writes OUT/report.json {"runs": {NAME: {"concurrency": {C: {p50_ms, p99_ms, rps, errors}}}}, "ratios": ...}
and OUT/serve_bench.png.
"""

from __future__ import annotations

import argparse
import asyncio
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
def _stats(lat_s: list[float], errors: int, wall_s: float) -> dict:
    lat = np.asarray(lat_s) * 1000 if lat_s else np.asarray([np.nan])
    return {
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "rps": float(len(lat_s) / wall_s) if wall_s > 0 else 0.0,
        "errors": int(errors),
        "requests": int(len(lat_s) + errors),
    }


async def _load(url: str, bodies: list[dict], concurrency: int, n: int) -> dict:
    """n requests at `concurrency` against url/rank: raw latencies, errors, wall and client CPU time."""
    import httpx

    payloads = [json.dumps(b).encode() for b in bodies]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    lat: list[float] = []
    errors = 0
    next_i = 0
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as client:
        headers = {"content-type": "application/json"}
        for i in range(min(20, n)):  # warm-up, unmeasured
            await client.post("/rank", content=payloads[i % len(payloads)], headers=headers)

        async def worker() -> None:
            nonlocal next_i, errors
            while next_i < n:
                i = next_i
                next_i += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post("/rank", content=payloads[i % len(payloads)], headers=headers)
                    ok = r.status_code == 200
                except Exception:  # noqa: BLE001 - counted, not raised
                    ok = False
                if ok:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"lat": lat, "errors": errors, "wall": wall, "cpu": cpu, "n": n}


def _merge(parts: list[dict]) -> dict:
    """Cell statistics over several rounds: pooled latencies, rps = requests / summed wall time."""
    lat = [x for p in parts for x in p["lat"]]
    out = _stats(lat, sum(p["errors"] for p in parts), sum(p["wall"] for p in parts))
    # the load generator shares the cores with the servers: its CPU per request, for the record
    out["client_cpu_ms_per_request"] = (
        1000 * sum(p["cpu"] for p in parts) / max(1, sum(p["n"] for p in parts))
    )
    return out


def _fmt(s: dict) -> str:
    return f"p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms  {s['rps']:8.1f} rps  errors {s['errors']}"


# ---------------------------------------------------------------------------- targets
def _model_runs(checkpoint: str, bodies: list[dict], base_n: int) -> dict:
    import torch

    from serving.schemas import RankRequest
    from serving.scoring import Scorer

    torch.set_num_threads(1)
    scorer = Scorer.load(checkpoint)
    prepared = [scorer.prepare(RankRequest.model_validate(b)) for b in bodies]
    gen = torch.Generator().manual_seed(0)
    out = {}
    for c in CONCURRENCY:
        batches = max(5, base_n * {1: 1, 8: 2, 32: 4}[c] // c)
        for i in range(3):
            scorer.rank(prepared[i : i + c] or prepared[:1], "plackett_luce", 1.0, gen)
        lat = []
        t0 = time.perf_counter()
        for i in range(batches):
            batch = [prepared[(i * c + j) % len(prepared)] for j in range(c)]
            t = time.perf_counter()
            scorer.rank(batch, "plackett_luce", 1.0, gen)
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
        s = _stats(lat, 0, wall)
        s["rps"] = float(batches * c / wall)
        s["requests"] = batches * c
        out[str(c)] = s
        print(f"  {'model':<14} c={c:<3} {_fmt(s)}", flush=True)
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


def _http_runs(checkpoint: str, bodies: list[dict], base_n: int, port: int, out: Path, rounds: int) -> dict:
    """fastapi / serve_fast / serve_proxy, interleaved round by round at each concurrency, so that all
    three see the same background load on a shared machine. Both Serve runs hit the same app."""
    import ray
    from tqdm import tqdm

    from serving import deploy
    from serving.registry import Registry
    from serving.settings import load_config, with_overrides

    reg_dir, log_dir = out / "registry", out / "serve_logs"
    for d in (reg_dir, log_dir):
        shutil.rmtree(d, ignore_errors=True)
    Registry(reg_dir).publish(checkpoint)
    port = port or deploy.free_port()
    cfg = with_overrides(
        load_config(),
        port=port,
        replicas=1,
        num_cpus=1,
        args={"registry": str(reg_dir), "log_dir": str(log_dir), "state_dir": str(out / "serve_state")},
    )
    deploy.enable_fast_path(no_drain=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    peer = None
    parts: dict[str, dict[str, list[dict]]] = {n: {str(c): [] for c in CONCURRENCY} for n in HTTP_RUNS}
    try:
        deploy.deploy(cfg)
        ep = deploy.endpoints()
        if not ep["direct"]:
            raise RuntimeError(f"the fast path is off: Serve published no direct-ingress address ({ep})")
        targets = {"serve_fast": ep["direct"][0], "serve_proxy": ep["proxy"]}
        print(f"  serve_fast at {targets['serve_fast']}, serve_proxy at {targets['serve_proxy']}", flush=True)
        peer = _Peer(checkpoint, deploy.free_port(), out / "peer_logs")
        targets["fastapi"] = peer.url
        steps = [(c, r) for c in CONCURRENCY for r in range(rounds)]
        for c, _ in tqdm(steps, desc="http rounds", leave=False, disable=None):
            n = max(1, base_n * {1: 1, 8: 2, 32: 4}[c] // rounds)
            for name in HTTP_RUNS:
                parts[name][str(c)].append(asyncio.run(_load(targets[name], bodies, c, n)))
    finally:
        if peer is not None:
            peer.stop()
        deploy.shutdown()
        ray.shutdown()
    runs = {name: {c: _merge(p) for c, p in cells.items()} for name, cells in parts.items()}
    for name, cells in runs.items():
        for c, st in cells.items():
            print(f"  {name:<14} c={c:<3} {_fmt(st)}", flush=True)
    return runs


# ---------------------------------------------------------------------------- report
def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in report["runs"].items():
        cs = sorted(run["concurrency"], key=int)
        x = [int(c) for c in cs]
        axes[0].plot(x, [run["concurrency"][c]["rps"] for c in cs], marker="o", label=name)
        axes[1].plot(x, [run["concurrency"][c]["p50_ms"] for c in cs], marker="o", label=name)
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
    peer, model = r["fastapi"]["concurrency"], r["model"]["concurrency"]
    out: dict = {}
    for name in ("serve_fast", "serve_proxy"):
        ours = r[name]["concurrency"]
        out[f"{name}_rps_c32_over_fastapi"] = ours["32"]["rps"] / peer["32"]["rps"]
        out[f"{name}_p50_c1_over_fastapi"] = ours["1"]["p50_ms"] / peer["1"]["p50_ms"]
        out[f"{name}_rps_c32_over_model"] = ours["32"]["rps"] / model["32"]["rps"]
    out["fastapi_rps_c32_over_model"] = peer["32"]["rps"] / model["32"]["rps"]
    fast = r["serve_fast"]["concurrency"]
    out["goal_rps_c32_met"] = fast["32"]["rps"] >= peer["32"]["rps"]
    out["goal_p50_c1_met"] = fast["1"]["p50_ms"] <= 2 * peer["1"]["p50_ms"]
    out["goal_model_fraction_met"] = fast["32"]["rps"] >= 0.4 * model["32"]["rps"]
    return out


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
        },
        "runs": {},
    }
    report["runs"]["model"] = {"concurrency": _model_runs(checkpoint, bodies, args.requests)}
    http = _http_runs(checkpoint, bodies, args.requests, args.port, out, args.rounds)
    for name in HTTP_RUNS:
        report["runs"][name] = {"concurrency": http[name]}
    report["ratios"] = ratios(report)
    write_json_atomic(out / "report.json", report)
    _plot(report, out / "serve_bench.png")
    for k, v in report["ratios"].items():
        print(f"  {k}: {v:.3f}" if isinstance(v, float) else f"  {k}: {v}")
    print(f"wrote {out / 'report.json'} and {out / 'serve_bench.png'}")
    return 0
