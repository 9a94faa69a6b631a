"""Load and measurement for `smar bench serve` (serving.bench): the load generator's process, the model
floor, one HTTP cell with its CPU by stage (the servers' /healthz) and by process (/proc), merging
rounds, and the plain FastAPI peer as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from serving.settings import SERVING_TEMPERATURE

CONCURRENCY = (1, 8, 32)
HTTP_RUNS = ("fastapi", "serve_fast", "serve_proxy")
N_CANDIDATES = 50
LOADGEN = Path(__file__).with_name("loadgen.py")


def stats(lat_ms: list[float], errors: int, wall_s: float) -> dict:
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
    cover: bool = False,
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
    cmd += ["--warmup", str(warmup), "--out", str(report)] + (["--cover"] if cover else [])
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


def fmt(s: dict) -> str:
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


def cpu_by_category(root: int = 0) -> dict[str, float]:
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


def model_cell(scorer, prepared: list, c: int, batches: int, gen) -> dict:
    from serving.stages import thread_time

    for i in range(2):
        scorer.rank(prepared[i : i + c] or prepared[:1], "plackett_luce", SERVING_TEMPERATURE, gen)
    lat, cpu = [], 0.0
    t0 = time.perf_counter()
    for i in range(batches):
        batch = [prepared[(i * c + j) % len(prepared)] for j in range(c)]
        t, tc = time.perf_counter(), thread_time()
        scorer.rank(batch, "plackett_luce", SERVING_TEMPERATURE, gen)
        cpu += thread_time() - tc
        lat.append(1000 * (time.perf_counter() - t))
    return {"lat": lat, "wall": time.perf_counter() - t0, "pages": batches * c, "cpu": cpu}


def merge_model(parts: list[dict]) -> dict:
    lat = [x for p in parts for x in p["lat"]]
    wall, pages = sum(p["wall"] for p in parts), sum(p["pages"] for p in parts)
    out = stats(lat, 0, wall)
    out["rps"], out["requests"] = pages / wall, pages
    out["cpu_ms_per_page"] = 1000 * sum(p["cpu"] for p in parts) / pages
    return out


def _health(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/healthz", timeout=30).json()


def idle_cpu_per_s(health_url: str, seconds: float = 3.0) -> float:
    """CPU seconds per second the server process spends with no traffic."""
    h0 = _health(health_url)
    time.sleep(seconds)
    h1 = _health(health_url)
    return (h1["process_cpu_s"] - h0["process_cpu_s"]) / seconds


def http_cell(url: str, health_url: str, specs: Path, c: int, n: int) -> dict:
    t0 = time.perf_counter()
    h0, p0 = _health(health_url), cpu_by_category()
    res = finish(loadgen(url, specs, c, requests=n))
    p1, h1 = cpu_by_category(), _health(health_url)
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


def merge_http(parts: list[dict], idle_cpu_per_s: float) -> dict:
    lat = [x for p in parts for x in p["lat"]]
    out = stats(lat, sum(p["errors"] for p in parts), sum(p["wall"] for p in parts))
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


class Peer:
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
