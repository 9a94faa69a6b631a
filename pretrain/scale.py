"""`smar bench scale`: the real-data path at scale, memory-bounded, timed.

A world of `--bench.pages` whole pages (pool : valid : test = 2 : 1 : 2 as in the default world; no traffic,
which is never exported) is written in CrossRank's schema, imported with `smar import`, and pretrained
with `smar pretrain --data` (single-modal rankers on the single-modal part, SMAR at `--bench.budget`,
test evaluation). Each step runs as its own process; its peak resident memory is sampled from /proc
over the process and all its children (`PeakRSS`), and its wall time measured. The bound
(`--bench.memory_gib`) is checked on import and pretraining. Results: `OUT/report.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from envs.config_io import JsonConfig

# ----------------------------------------------------------------------------- memory sampling


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants, now."""
    kids, total, todo = _children(), 0, [pid]
    while todo:
        p = todo.pop()
        total += _rss_bytes(p)
        todo.extend(kids.get(p, []))
    return total


class PeakRSS:
    """Samples the resident memory of a process tree every `interval` s on a thread; `.peak` bytes."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measured(cmd: list[str], log: Path) -> dict:
    """Run `cmd`, return its wall time, exit code and peak tree RSS (GiB)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ})
        with PeakRSS(proc.pid) as peak:
            code = proc.wait()
    return {
        "command": " ".join(cmd),
        "returncode": code,
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_gib": round(peak.peak / 2**30, 3),
        "log": str(log),
    }


# ----------------------------------------------------------------------------- the world at scale
def scale_world(pages: int, seed: int = 0, single_modal_queries: int | None = None):
    """A world with about `pages` whole pages in pool/valid/test (2:1:2) and the default single-modal part.

    Traffic is not generated (a one-query placeholder): it is never exported."""
    from envs.world import World, WorldConfig, WorldGenerator

    d = WorldConfig()
    queries = max(10, math.ceil(pages / d.reformulations))
    cfg = WorldConfig(
        seed=seed,
        queries=queries,
        split_fractions=(0.4, 0.2, 0.4, 0.0),
        single_modal_queries=single_modal_queries or d.single_modal_queries,
    )
    gen = WorldGenerator(cfg)
    counts = np.floor(np.array(cfg.split_fractions[:3]) * queries).astype(int)
    counts[-1] = queries - counts[:-1].sum()
    splits = {
        name: gen.whole_pages(np.random.default_rng([seed, 1, si]), int(n), name)
        for si, (name, n) in enumerate(zip(("pool", "valid", "test"), counts))
    }
    splits["pool"].pages.relevance = np.full(splits["pool"].pages.n_items, -1, np.int8)
    traffic = gen.whole_pages(np.random.default_rng([seed, 1, 3]), 1, "traffic")
    single = {
        m: gen.single_modal_pages(np.random.default_rng([seed, 2, mi]), m, cfg.single_modal_queries)
        for mi, m in enumerate(("doc", "image", "video", "answer"))
    }
    return World(config=cfg, single_modal=single, traffic=traffic, **splits)


def _export_main(argv: list[str]) -> int:
    """`python -m pretrain.scale export PAGES OUT [SEED]`: generate the scale world and export it."""
    from pretrain.export import export_crossrank

    pages, out = int(argv[0]), argv[1]
    seed = int(argv[2]) if len(argv) > 2 else 0
    t0 = time.perf_counter()
    world = scale_world(pages, seed)
    gen_s = time.perf_counter() - t0
    s = export_crossrank(world, out)
    s["generate_seconds"] = round(gen_s, 1)
    s["pages"] = {n: len(getattr(world, n).pages) for n in ("pool", "valid", "test")}
    (Path(out) / "export.json").write_text(json.dumps(s, indent=2))
    print(json.dumps(s))
    return 0


# ----------------------------------------------------------------------------- the bench
STEPS = ("export", "import", "pretrain")


@dataclass(frozen=True)
class ScaleBenchConfig(JsonConfig):
    """Every setting of `smar bench scale` (`--bench.FIELD`; the output folder is `--out`)."""

    out: str = "results/scale"
    pages: int = 100_000  # whole pages exported (pool + valid + test)
    work: str | None = None  # scratch folder for the files (default OUT/work, removed unless keep)
    keep: bool = False  # keep the exported, imported and run folders
    epochs: int = 3  # reranker epochs of the pretraining step
    budget: float = 0.1  # SMAR's annotation budget
    seed: int = 0
    memory_gib: float = 4.0  # the bound on import's and pretraining's peak resident memory
    start: str = "export"  # the first step to run; earlier ones are taken from OUT/report.json and work

    def __post_init__(self) -> None:
        if self.start not in STEPS:
            raise ValueError(f"start must be one of {STEPS}, got {self.start!r}")


def bench(cfg: ScaleBenchConfig) -> dict:
    """Steps: reuse the steps before `cfg.start` (or clear the work folder), run the rest as measured
    processes (`_run_steps`), collect their outputs into OUT/report.json (`_report`)."""
    import shutil

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(cfg.work) if cfg.work else out / "work"
    steps = _reused_steps(cfg, out, work)
    if cfg.start == "export":
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
    _run_steps(cfg, steps, work, out)
    report = _report(cfg, steps, work)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    if not cfg.keep:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _reused_steps(cfg: ScaleBenchConfig, out: Path, work: Path) -> dict:
    """The steps before `cfg.start`, from OUT/report.json (their files must still be in `work`)."""
    steps: dict = {}
    if cfg.start == "export":
        return steps
    previous = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    for name in STEPS[: STEPS.index(cfg.start)]:
        if name not in previous.get("steps", {}) or not work.exists():
            raise FileNotFoundError(
                f"start {cfg.start}: no earlier {name} step in {out / 'report.json'} / {work}"
            )
        steps[name] = {**previous["steps"][name], "reused": True}
    return steps


def _paths(work: Path) -> tuple[Path, Path, Path]:
    """The exported CrossRank files, the imported data and the pretrain run inside `work`."""
    return work / "crossrank", work / "imported", work / "run"


def _run_steps(cfg: ScaleBenchConfig, steps: dict, work: Path, out: Path) -> None:
    """Export, import and pretrain from `cfg.start` on, each its own measured process; a step runs
    only if the one before it succeeded."""
    import shutil

    from pretrain.export import MODAL_MAP_ARG

    py = [sys.executable, "-m"]
    src, data, run = _paths(work)
    if cfg.start == "export":
        steps["export"] = measured(
            [*py, "pretrain.scale", "export", str(cfg.pages), str(src), str(cfg.seed)], out / "export.log"
        )
    if steps["export"]["returncode"] == 0 and cfg.start in ("export", "import"):
        steps["import"] = measured(
            [*py, "agent.cli", "import", str(src), "--out", str(data), "--import.format", "crossrank"]
            + ["--import.modal_map", MODAL_MAP_ARG],
            out / "import.log",
        )
    if steps.get("import", {}).get("returncode") == 0:
        if run.exists():
            shutil.rmtree(run)
        steps["pretrain"] = measured(
            [*py, "agent.cli", "pretrain", "--data", str(data), "--out", str(run), "--quiet"]
            + ["--pretrain.annotation.budget", str(cfg.budget), "--pretrain.train.epochs", str(cfg.epochs)]
            + ["--pretrain.seed", str(cfg.seed)],
            out / "pretrain.log",
        )


def _report(cfg: ScaleBenchConfig, steps: dict, work: Path) -> dict:
    src, data, run = _paths(work)
    report: dict = {
        "pages_requested": cfg.pages,
        "memory_bound_gib": cfg.memory_gib,
        "steps": steps,
        "config": {"epochs": cfg.epochs, "budget": cfg.budget, "seed": cfg.seed},
    }
    if (src / "export.json").exists():
        report["export"] = json.loads((src / "export.json").read_text())
    if (data / "import.json").exists():
        imp = json.loads((data / "import.json").read_text())
        report["import"] = {
            k: imp[k] for k in ("outputs", "feature_dims", "query_dim", "seconds") if k in imp
        }
    if (run / "run.json").exists():
        r = json.loads((run / "run.json").read_text())
        report["pretrain"] = {k: r.get(k) for k in ("metrics", "data") if k in r}
    bounded = [s for n, s in steps.items() if n in ("import", "pretrain")]
    report["within_bound"] = (
        len(bounded) == 2
        and all(s["returncode"] == 0 for s in bounded)
        and max(s["peak_rss_gib"] for s in bounded) < cfg.memory_gib
    )
    return report


def format_report(r: dict) -> str:
    lines = [
        f"scale: {r['pages_requested']} pages, memory bound {r['memory_bound_gib']} GiB (import, pretrain)"
    ]
    for name, s in r["steps"].items():
        lines.append(
            f"  {name:<9} {s['seconds']:>8.1f} s  peak RSS {s['peak_rss_gib']:.2f} GiB  exit {s['returncode']}"
        )
    m = (r.get("pretrain") or {}).get("metrics", {}).get("test", {})
    for method, v in m.items():
        if isinstance(v, dict) and "ndcg@10" in v:
            lines.append(
                f"  test {method:<8} NDCG@10 {v['ndcg@10']:.4f}  MRR@1 {v.get('mrr@1', float('nan')):.4f}"
            )
    lines.append(f"within bound: {r['within_bound']}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=ScaleBenchConfig.out, help="folder for report.json and the step logs")
    p.add_class_arguments(ScaleBenchConfig, "bench", skip={"out"})


def run(args: argparse.Namespace) -> int:
    cfg = replace(args.bench, out=args.out)
    r = bench(cfg)
    print(format_report(r))
    print(f"wrote {Path(cfg.out) / 'report.json'}")
    return 0 if all(s["returncode"] == 0 for s in r["steps"].values()) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "export":
        raise SystemExit(_export_main(sys.argv[2:]))
    raise SystemExit("usage: python -m pretrain.scale export PAGES OUT [SEED] (or `smar bench scale`)")
