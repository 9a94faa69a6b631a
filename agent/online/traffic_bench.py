"""Simulated-traffic throughput, side by side: one page per request vs batched requests, one app.

    python -m agent.online.traffic_bench [--run DIR] [--policy CKPT] [--impressions N] [--out FILE]

Starts the reranker app (Serve's fast path unless --proxy) serving `--policy` with Plackett-Luce
exploration, then drives the same simulated sessions (agent.traffic.run_traffic) through it in
alternating repetitions: "single" = one POST /rank and one POST /feedback per impression (the loop's
previous client), "batched" = `--batch` sessions per client thread sharing one POST /rank/batch and one
POST /feedback/batch per step. Reports impressions/s of each and their ratio, and the failed requests.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from envs.atomic_io import write_json_atomic
from serving.settings import SERVING_TEMPERATURE


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/pretrain")
    p.add_argument("--policy", default=None, help="checkpoint to serve (default: the run's SMAR reranker)")
    p.add_argument("--impressions", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--single-concurrency", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--temperature", type=float, default=SERVING_TEMPERATURE)
    p.add_argument("--proxy", action="store_true", help="through Serve's proxy instead of the fast path")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def _start_app(a: argparse.Namespace, policy: str) -> str:
    """A fresh registry (in a temp folder) serving `policy` with exploration; the app's URL."""
    from agent.online.app import deploy_explorer, init_ray
    from serving.registry import Registry

    tmp = Path(tempfile.mkdtemp(prefix="traffic_bench_"))
    Registry(tmp / "registry").publish(policy)
    init_ray(fast_path=not a.proxy)
    return deploy_explorer(tmp / "registry", tmp / "logs", tmp / "state", a.temperature)


def _measure(url: str, split, a: argparse.Namespace) -> list[dict]:
    """A warm-up, then `a.repeats` alternating single / batched runs of the same sessions."""
    from agent.traffic import run_traffic

    rows = []
    bodies: dict[int, bytes] = {}
    run_traffic(url, split, 100, seed=1, concurrency=2, batch=8, bodies=bodies)  # warm-up
    for rep in range(a.repeats):
        for mode in ("single", "batched"):
            t = time.perf_counter()
            st = run_traffic(
                url,
                split,
                a.impressions,
                seed=rep,
                concurrency=a.single_concurrency if mode == "single" else a.concurrency,
                batch=1 if mode == "single" else a.batch,
                bodies=bodies,
            )
            dt = time.perf_counter() - t
            rows.append(
                {
                    "repeat": rep,
                    "mode": mode,
                    "impressions": st.impressions,
                    "seconds": dt,
                    "impressions_per_s": st.impressions / dt,
                    "failed_requests": st.failed_requests,
                    "observed_reward": st.observed_reward,
                    "thread_seconds": st.thread_seconds,
                }
            )
            print(
                f"rep {rep} {mode:<8} {st.impressions} impressions in {dt:.1f} s = "
                f"{st.impressions / dt:.1f}/s, {st.failed_requests} failed; thread s {st.thread_seconds}"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Start the app, measure both client modes, report their throughput ratio per repetition."""
    a = _parse(argv)

    import ray

    from pretrain.run import PretrainRun
    from serving import deploy

    run = PretrainRun.open(a.run)
    split = run.split("traffic")
    url = _start_app(a, a.policy or str(run.reranker_path))
    try:
        rows = _measure(url, split, a)
    finally:
        deploy.shutdown()
        ray.shutdown()
    ratios = [
        b["impressions_per_s"] / s["impressions_per_s"]
        for s, b in zip(rows[::2], rows[1::2])
        if s["mode"] == "single" and b["mode"] == "batched"
    ]
    res = {
        "rows": rows,
        "batched_over_single": ratios,
        "config": vars(a),
        "path": "proxy" if a.proxy else "fast (direct ingress)",
    }
    print(f"batched / single throughput per repetition: {[round(r, 2) for r in ratios]}")
    if a.out:
        write_json_atomic(a.out, res)
    else:
        print(json.dumps(res["batched_over_single"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
