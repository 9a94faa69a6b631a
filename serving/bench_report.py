"""The report of `smar bench serve` (serving.bench): the plot, the ratios to the peer and the model
floor, and the Markdown tables printed at the end.
"""

from __future__ import annotations

import os
from pathlib import Path

from serving.bench_load import CONCURRENCY, N_CANDIDATES


def plot(report: dict, path: Path) -> None:
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
