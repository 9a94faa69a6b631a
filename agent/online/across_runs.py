"""Figures across several `smar online` runs (seeds): one run's drift recovery carries the noise of its
one initial policy, its traffic and its held-out plays, so the loop's claims are means over runs.

    python -m agent.online.across_runs RUN_DIR [RUN_DIR ...] --out DIR

Reads each run's `report.json`; prints and writes DIR/across_runs.json and DIR/across_runs.png. Per round
after the change: the recovered share of the frozen policy's loss (deterministic ranking and as served)
as the mean over runs with its standard error, and the pooled share (sum of gains over sum of losses);
per run: its last version against its initial one, failed requests, the lowest consistency against its
target. Runs without a drift contribute the last-versus-initial check only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from envs.atomic_io import write_json_atomic

KINDS = {
    "deterministic": ("recovered_fraction", "online_minus_frozen", "frozen_lost"),
    "served": ("recovered_fraction_served", "online_minus_frozen_served", "frozen_lost_served"),
}


def load_report(run: str | Path) -> dict:
    path = Path(run) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report.json (is {run} a finished `smar online` run?)")
    report = json.loads(path.read_text())
    if not report.get("summary"):
        raise ValueError(f"{path}: the run has no finished round yet")
    return report


def mean_se(x: list[float]) -> dict[str, float]:
    a = np.asarray(x, np.float64)
    se = float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")
    return {"mean": float(a.mean()), "se": se, "min": float(a.min()), "max": float(a.max()), "runs": len(a)}


def drift_table(reports: dict[str, dict], rounds_after: int = 4) -> dict:
    """Per round after the change (1..rounds_after) and kind: the runs' recovered shares, their mean and
    standard error, and the pooled share; plus each run's best share within those rounds."""
    drifted = {n: r["summary"]["drift"] for n, r in reports.items() if "drift" in r["summary"]}
    if not drifted:
        return {}
    out: dict = {"runs": sorted(drifted), "rounds": {}}
    for k in range(1, rounds_after + 1):
        row = {}
        for kind, (share, gain, lost) in KINDS.items():
            recs = {
                n: next((x for x in d["recovery"] if x["rounds_after_change"] == k), None)
                for n, d in drifted.items()
            }
            recs = {n: x for n, x in recs.items() if x is not None}
            if not recs:
                continue
            row[kind] = {
                "per_run": {n: x[share] for n, x in recs.items()},
                **mean_se([x[share] for x in recs.values()]),
                "pooled": float(
                    sum(x[gain]["mean"] for x in recs.values()) / sum(drifted[n][lost] for n in recs)
                ),
            }
        if row:
            out["rounds"][k] = row
    for kind, (share, _, _) in KINDS.items():
        best = {
            n: max(
                (x[share] for x in d["recovery"] if x["rounds_after_change"] <= rounds_after), default=None
            )
            for n, d in drifted.items()
        }
        best = {n: b for n, b in best.items() if b is not None}
        if best:
            out[f"best_within_{rounds_after}_{kind}"] = {"per_run": best, **mean_se(list(best.values()))}
    out["frozen_lost"] = mean_se([d["frozen_lost"] for d in drifted.values()])
    return out


def run_checks(reports: dict[str, dict]) -> dict[str, dict]:
    """Each run's last version against its initial one (paired, deterministic and as served), failed
    requests and consistency."""
    out = {}
    for name, r in reports.items():
        s = r["summary"]
        out[name] = {
            "drift": "drift" in s,
            "final_minus_initial": s["final_minus_initial"],
            "final_minus_initial_served": s.get("final_minus_initial_served"),
            "failed_requests": s["failed_requests"],
            "published": s["published"],
            "rounds": s["rounds"],
            "consistency_min": s["consistency_min"],
            "consistency_target": s["consistency_target"],
        }
    return out


def plot(table: dict, path: Path, goal: float = 0.5) -> Path:
    """Recovered share by round after the change: every run (thin) and the mean over runs ± 1 SE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    ks = sorted(table["rounds"], key=int)
    for ax, kind in zip(axes, KINDS):
        for run in table["runs"]:
            y = [table["rounds"][k][kind]["per_run"].get(run, np.nan) for k in ks]
            ax.plot([int(k) for k in ks], y, color="0.7", lw=0.8)
        m = np.array([table["rounds"][k][kind]["mean"] for k in ks])
        se = np.array([table["rounds"][k][kind]["se"] for k in ks])
        x = [int(k) for k in ks]
        ax.plot(x, m, "o-", color="C0", label=f"mean over {len(table['runs'])} runs")
        ax.fill_between(x, m - se, m + se, color="C0", alpha=0.25, label="± 1 SE")
        ax.axhline(goal, color="C3", ls="--", lw=1, label=f"goal {goal:.0%}")
        ax.set_title(f"{kind} ranking" if kind == "deterministic" else "pages as served")
        ax.set_xlabel("rounds after the change")
        ax.set_xticks(x)
    axes[0].set_ylabel("share of the frozen policy's loss recovered")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def lines(table: dict, checks: dict[str, dict]) -> list[str]:
    out = []
    for k, row in sorted(table.get("rounds", {}).items(), key=lambda kv: int(kv[0])):
        parts = [
            f"{kind} {v['mean']:.0%} ± {v['se']:.0%} (pooled {v['pooled']:.0%})" for kind, v in row.items()
        ]
        out.append(f"round {k} after the change: " + ", ".join(parts))
    for kind in KINDS:
        b = table.get(f"best_within_4_{kind}")
        if b:
            out.append(f"best within 4 rounds, {kind}: {b['mean']:.0%} ± {b['se']:.0%} over {b['runs']} runs")
    for name, c in checks.items():
        d = c["final_minus_initial"]
        out.append(
            f"{name}: last - initial {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}], failed requests "
            f"{c['failed_requests']}, published {c['published']}/{c['rounds']}, consistency min "
            f"{c['consistency_min']:.3f} (target {c['consistency_target']:.3f})"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m agent.online.across_runs", description=__doc__.splitlines()[0]
    )
    p.add_argument("runs", nargs="+", help="`smar online` output folders")
    p.add_argument("--out", required=True, help="folder for across_runs.json and across_runs.png")
    a = p.parse_args(argv)
    reports = {Path(r).name: load_report(r) for r in a.runs}
    table, checks = drift_table(reports), run_checks(reports)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "across_runs.json", {"drift": table, "runs": checks})
    for line in lines(table, checks):
        print(line)
    if table:
        print(f"plot: {plot(table, out / 'across_runs.png')}")
    print(f"json: {out / 'across_runs.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
