"""`smar bench simulate`: the vectorised user model against the per-item reference, side by side.

Both run in one process, pinned to one core, on the same shown slates (uniformly random top-10 slates
of the default world's traffic pages, tiled to `--pages`). Throughput is simulated pages per second
(median over repeats for the vectorised model; the reference is run once, it is slow). The report also
holds the click statistics of the default config from both implementations, so a reader sees the
speed and the agreement together.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from envs.atomic_io import write_json_atomic  # noqa: E402
from envs.pages import MODALITIES  # noqa: E402
from envs.user_model import UserModel, UserModelConfig, UserOutcome  # noqa: E402
from envs.user_model_reference import simulate_reference  # noqa: E402
from envs.world import WorldConfig, WorldGenerator  # noqa: E402


def pin_one_core() -> int | None:
    """Restrict this process to one CPU (Linux); returns the CPU or None if unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def bench_slates(n_pages: int, k: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniformly random top-k slates of a default-shaped world's traffic pages, tiled to n_pages."""
    cfg = WorldConfig(seed=seed, queries=200, single_modal_queries=10)
    split = WorldGenerator(cfg).whole_pages(np.random.default_rng([seed, 9]), 100, "bench")
    pages, truth = split.pages, split.truth
    rng = np.random.default_rng([seed, 10])
    src = rng.integers(len(pages), size=n_pages)
    sizes = pages.sizes[src]
    pick = np.argsort(rng.random((n_pages, int(sizes.max()))), axis=1)[:, :k]  # every page has >= k items
    item = pages.offsets[src][:, None] + pick
    return {
        "relevance": truth.relevance[item].astype(np.int8),
        "attractiveness": truth.attractiveness[item].astype(np.float32),
        "modality": pages.modality[item].astype(np.int8),
    }


def click_stats(out: UserOutcome, modality: np.ndarray) -> dict:
    clicks = out.click
    return {
        "ctr": float(clicks.mean()),
        "ctr_by_position": clicks.mean(axis=0).round(4).tolist(),
        "examination_by_position": out.examined.mean(axis=0).round(4).tolist(),
        "ctr_by_modality": {m: float(clicks[modality == i].mean()) for i, m in enumerate(MODALITIES)},
        "satisfied_click_rate": float(out.satisfied_click.sum() / max(clicks.sum(), 1)),
        "dwell_quantiles_s": {
            q: float(np.quantile(out.dwell[clicks], float(q))) for q in ("0.1", "0.5", "0.9")
        },
        "page_satisfied": float(out.satisfied.mean()),
        "good_abandonment": float(out.good_abandon.mean()),
        "abandon": float(out.abandon.mean()),
        "reformulate": float(out.reformulate.mean()),
    }


def run_bench(n_pages: int, repeats: int, seed: int, config: UserModelConfig | None = None) -> dict:
    cfg = config or UserModelConfig()
    cpu = pin_one_core()
    s = bench_slates(n_pages, seed=seed)
    args = (s["relevance"], s["attractiveness"], s["modality"], None)
    model = UserModel(cfg)
    model.simulate(*args, np.random.default_rng(0))  # warm-up
    times = []
    vec_out = None
    for r in range(repeats):
        rng = np.random.default_rng([seed, 11, r])
        t0 = time.perf_counter()
        out = model.simulate(*args, rng)
        times.append(time.perf_counter() - t0)
        vec_out = vec_out or out
    t_vec = float(np.median(times))
    t0 = time.perf_counter()
    ref_out = simulate_reference(*args, np.random.default_rng([seed, 12]), cfg)
    t_ref = time.perf_counter() - t0
    v, r = n_pages / t_vec, n_pages / t_ref
    return {
        "pages_per_s": {"vectorised": v, "reference": r},
        "speedup": v / r,
        "pages": n_pages,
        "slate_size": int(s["relevance"].shape[1]),
        "vectorised_repeats": repeats,
        "vectorised_seconds": times,
        "reference_seconds": t_ref,
        "cpu_pinned": cpu,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "config": cfg.to_json(),
        "click_stats": {
            "vectorised": click_stats(vec_out, s["modality"]),
            "reference": click_stats(ref_out, s["modality"]),
        },
    }


def plot_report(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    pps = report["pages_per_s"]
    a1.bar(
        ["reference\n(per item)", "vectorised"], [pps["reference"], pps["vectorised"]], color=["grey", "C0"]
    )
    a1.set_yscale("log")
    a1.set_ylabel("simulated pages / s (one core)")
    a1.set_title(f"speed-up x{report['speedup']:.0f}")
    for name, style in (("vectorised", "-o"), ("reference", "--s")):
        ctr = report["click_stats"][name]["ctr_by_position"]
        a2.plot(range(1, len(ctr) + 1), ctr, style, label=name)
    a2.set_xlabel("position")
    a2.set_ylabel("CTR")
    a2.set_title("CTR by position, random slates (default config)")
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results/simulate", help="folder for report.json and the plot")
    p.add_argument("--pages", type=int, default=20000, help="shown slates simulated by both implementations")
    p.add_argument("--repeats", type=int, default=15, help="timed repeats of the vectorised model")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = run_bench(args.pages, args.repeats, args.seed)
    write_json_atomic(out / "report.json", report)
    plot = plot_report(report, out / "simulate_bench.png")
    pps = report["pages_per_s"]
    v, r = report["click_stats"]["vectorised"], report["click_stats"]["reference"]
    print(
        f"user model, {report['pages']} pages x {report['slate_size']} positions, one core (cpu {report['cpu_pinned']}):"
    )
    print(f"  vectorised {pps['vectorised']:>12,.0f} pages/s   (median of {args.repeats})")
    print(f"  reference  {pps['reference']:>12,.0f} pages/s")
    print(f"  speed-up   {report['speedup']:>12.1f}x   (targets: >= 50x, >= 100,000 pages/s)")
    print(f"  {'':<22}{'vectorised':>12}{'reference':>12}")
    for key in (
        "ctr",
        "satisfied_click_rate",
        "page_satisfied",
        "good_abandonment",
        "abandon",
        "reformulate",
    ):
        print(f"  {key:<22}{v[key]:>12.4f}{r[key]:>12.4f}")
    print("  CTR by position (vec): " + " ".join(f"{c:.3f}" for c in v["ctr_by_position"]))
    print("  CTR by position (ref): " + " ".join(f"{c:.3f}" for c in r["ctr_by_position"]))
    print(f"wrote {out / 'report.json'} and {plot}")
    return 0
