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
and by process (`profile`). The fault part (`--bench.fault_seconds`, default 60; 0 skips it) runs the load
at concurrency 32 with 10 % malformed requests of every class (`serving.malformed`) against the
fast path, hot-swaps the model twice during it, and checks each bad class with `curl`.
Writes OUT/report.json and OUT/serve_bench.png. The load and measurement are in serving.bench_load,
the plot and tables in serving.bench_report, the fault part in serving.bench_fault.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from envs.atomic_io import write_json_atomic
from envs.config_io import JsonConfig
from serving.bench_fault import fault_load
from serving.bench_load import (
    CONCURRENCY,
    HTTP_RUNS,
    N_CANDIDATES,
    Peer,
    fmt,
    http_cell,
    idle_cpu_per_s,
    merge_http,
    merge_model,
    model_cell,
    write_specs,
)
from serving.bench_report import plot, profile_table, ratios, results_table


@dataclass(frozen=True)
class ServeBenchConfig(JsonConfig):
    """Every setting of `smar bench serve` (`--bench.FIELD`; the output folder is `--out`)."""

    out: str = "results/serve"
    checkpoint: str | None = None  # a reranker checkpoint (default: a fresh default-size reranker)
    requests: int = 300  # requests per cell at concurrency 1 (x2 at 8, x4 at 32)
    port: int | None = None  # Serve proxy port (default: a free one; the peer takes another)
    rounds: int = 3  # interleaved rounds per concurrency (they split the requests)
    fault_seconds: float = 60.0  # malformed load + hot swaps at concurrency 32 for this long (0: skip)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.requests < 1 or self.rounds < 1:
            raise ValueError(f"requests and rounds must be >= 1, got {self.requests}, {self.rounds}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=ServeBenchConfig.out, help="folder for report.json and the plot")
    p.add_class_arguments(ServeBenchConfig, "bench", skip={"out"})


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


def _runs(checkpoint: str, bodies: list[dict], bench: ServeBenchConfig, out: Path) -> dict:
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
    gen = torch.Generator().manual_seed(bench.seed)
    specs = write_specs(out / "specs.json", [{"path": "/rank", "body": json.dumps(b)} for b in bodies])
    swap_ckpt = _second_checkpoint(out, checkpoint) if bench.fault_seconds > 0 else None
    cfg, _ = _serve_config(out, checkpoint, bench.port, [swap_ckpt] if swap_ckpt else [])
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
        peer = Peer(checkpoint, deploy.free_port(), out / "peer_logs")
        targets["fastapi"] = peer.url
        health = {"fastapi": peer.url, "serve_fast": ep["direct"][0], "serve_proxy": ep["direct"][0]}
        idle = {name: idle_cpu_per_s(health[name]) for name in ("fastapi", "serve_fast")}
        idle["serve_proxy"] = idle["serve_fast"]
        print(f"  idle CPU of the server processes (s/s): {idle}", flush=True)
        steps = [(c, r) for c in CONCURRENCY for r in range(bench.rounds)]
        for c, _ in tqdm(steps, desc="rounds", leave=False, disable=None):
            n = max(1, bench.requests * {1: 1, 8: 2, 32: 4}[c] // bench.rounds)
            parts["model"][str(c)].append(model_cell(scorer, prepared, c, max(3, n // c), gen))
            for name in HTTP_RUNS:
                parts[name][str(c)].append(http_cell(targets[name], health[name], specs, c, n))
        if peer is not None:
            peer.stop()
            peer = None
        if swap_ckpt:
            fault = fault_load(
                targets["serve_fast"],
                bodies,
                bench.fault_seconds,
                out,
                swap_versions=(_version_of(swap_ckpt), _version_of(checkpoint)),
            )
    finally:
        if peer is not None:
            peer.stop()
        deploy.shutdown()
        ray.shutdown()
    runs = {"model": {c: merge_model(p) for c, p in parts["model"].items()}}
    for name in HTTP_RUNS:
        runs[name] = {c: merge_http(p, idle[name]) for c, p in parts[name].items()}
    for name, cells in runs.items():
        for c, st in cells.items():
            print(f"  {name:<14} c={c:<3} {fmt(st)}", flush=True)
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


def run(args: argparse.Namespace) -> int:
    cfg = replace(args.bench, out=args.out)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, bodies = _bench_inputs(out, cfg.checkpoint, cfg.seed)
    print(f"serve bench: {len(bodies)} distinct {N_CANDIDATES}-candidate pages, concurrency {CONCURRENCY}")
    report: dict = {
        "config": {
            "candidates": N_CANDIDATES,
            "requests_c1": cfg.requests,
            "checkpoint": checkpoint,
            "cpu_count": os.cpu_count(),
            "explore": True,
            "rounds": cfg.rounds,
            "load_average_at_start": list(os.getloadavg()),
        },
    }
    t0 = time.monotonic()
    got = _runs(checkpoint, bodies, cfg, out)
    report["runs"] = got["runs"]
    report["fault_load"] = got["fault_load"]
    report["idle_cpu_s_per_s"] = got["idle_cpu_s_per_s"]
    report["config"]["load_average_at_end"] = list(os.getloadavg())
    report["config"]["seconds"] = time.monotonic() - t0
    report["ratios"] = ratios(report)
    write_json_atomic(out / "report.json", report)
    plot(report, out / "serve_bench.png")
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
