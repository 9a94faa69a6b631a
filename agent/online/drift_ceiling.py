"""How much of a drift's loss could be recovered at all: references beside `smar online --online.drift`.

    python -m agent.online.drift_ceiling --run RUN --policy CKPT [CKPT ...] [--drift SPEC] [--out FILE]

The recovery criterion divides what the online loop regains by what the frozen policy lost. Part of
that loss is no ranker's to regain: the drifted items are worse for everyone. These references, on the
held-out sessions and with the loop's own measure (agent.online.heldout: the same sessions, seeds and
plays; deterministic top-K and as served), say how much a ranker *could* regain:

  frozen        each policy's held-out reward before and after the drift, and its loss
  video_offset  the policy's scores with the drifted modality demoted by d, d chosen by the simulator
                on the drifted *traffic* sessions (an oracle of the one number the loop's update moves
                most), then measured on the held-out sessions
  modality_offsets  one score shift per modality (the four numbers the loop's update moves), chosen
                by coordinate ascent with the simulator on the drifted traffic sessions: the best the
                loop's update family can reach, found with knowledge the loop does not have
  refit         the run's SMAR reranker trained again by the run's own pretrain config on the drifted
                world's whole-page annotations (the same budget): what a new annotation campaign buys
  refit_all     the same with the whole pool open to annotation (budget 1.0): the budget is not the limit
  truth         the drifted true grades as scores: no ranker has them (the features do not change), so
                this says how much of the loss the drifted world itself still allows back

Recovered share of a reference = (its reward after - the policy's after) / (the policy's before - after).
The refits use whole-page labels of the drifted world, information four rounds of clicks do not hold, so
they bound what an update from logs can be expected to reach, not from below.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from agent.online.drift import DriftConfig, drift_split, parse_drift
from agent.online.heldout import HeldoutConfig, deterministic_returns, served_returns
from envs.atomic_io import write_json_atomic
from envs.pages import MODALITIES
from envs.reward import RewardConfig
from envs.serp_env import SerpConfig
from envs.world import Split
from serving.settings import SERVING_TEMPERATURE

OFFSETS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0)
SHIFTS = (-3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


def recovered(value: float, before: float, after: float) -> float:
    """Share of the loss (before - after) that `value` regains over `after`; nan for no loss."""
    lost = before - after
    return float((value - after) / lost) if lost != 0 else float("nan")


class Measure:
    """The loop's held-out figures of a scorer on a split: mean deterministic and served reward."""

    def __init__(self, heldout: HeldoutConfig, temperature: float, reward: str = "success") -> None:
        self.cfg, self.temperature = heldout, temperature
        self.serp = SerpConfig(reward=RewardConfig(name=reward), slate_size=10)

    def __call__(self, scorer, split: Split, served: bool = True) -> dict[str, float]:
        out = {"deterministic": float(deterministic_returns(scorer, split, self.cfg, self.serp).mean())}
        if served:
            out["served"] = float(served_returns(scorer, split, self.temperature, self.cfg, self.serp).mean())
        return out


def refit_reranker(run, drift: DriftConfig, all_labels: bool, progress: bool = True):
    """The run's reranker trained again on the drifted world's pool (its pretrain config; `all_labels`:
    annotation budget 1.0). Single-modal rankers and their scores stay the run's own."""
    from pretrain.config import PretrainConfig
    from pretrain.reranker_fit import train_reranker
    from pretrain.train import ScoredData, annotate_pool, consistency_pages
    from pretrain.world_io import load_world

    cfg = PretrainConfig.from_json(run.config)
    if all_labels:
        cfg = replace(cfg, annotation=replace(cfg.annotation, budget=1.0))
    pool = drift_split(run.split("pool"), drift)
    valid = drift_split(run.split("valid"), drift)
    prep = ScoredData(load_world(run.world_dir), run.rankers(), {}, None, {})  # type: ignore[arg-type]
    model, _ = train_reranker(
        annotate_pool(pool, cfg),
        valid.pages,
        cfg,
        progress,
        desc=f"refit {cfg.method} {cfg.annotation.budget:.0%} (drifted)",
        single_modal=consistency_pages(prep, cfg),
    )
    return model


def best_offset(scores: np.ndarray, split: Split, modality: str, measure: Measure) -> dict:
    """The demotion d of `modality` (from OFFSETS) with the highest deterministic reward on `split`."""
    mask = (split.pages.modality == MODALITIES.index(modality)).astype(np.float64)
    rewards = {
        d: measure(lambda pages, s=scores - d * mask: s, split, served=False)["deterministic"]
        for d in OFFSETS
    }
    d = max(rewards, key=rewards.get)
    return {"chosen": d, "reward_by_offset": {str(k): v for k, v in rewards.items()}}


def best_modality_shifts(
    scores: np.ndarray, split: Split, first: str, measure: Measure, sweeps: int = 2
) -> dict:
    """Per-modality score shifts (each from SHIFTS) maximising the deterministic reward on `split`, by
    coordinate ascent from no shift (modality `first` first); a move is kept only if it is better."""
    mid = split.pages.modality.astype(np.int64)
    order = [MODALITIES.index(first)] + [i for i in range(len(MODALITIES)) if MODALITIES[i] != first]
    seen: dict[tuple, float] = {}

    def value(shift: tuple) -> float:
        if shift not in seen:
            s = scores + np.asarray(shift)[mid]
            seen[shift] = measure(lambda pages: s, split, served=False)["deterministic"]
        return seen[shift]

    best = (0.0,) * len(MODALITIES)
    for _ in range(sweeps):
        moved = False
        for m in order:
            for v in SHIFTS:
                cand = best[:m] + (v,) + best[m + 1 :]
                if value(cand) > value(best):
                    best, moved = cand, True
        if not moved:
            break
    return {
        "shifts": dict(zip(MODALITIES, best, strict=True)),
        "reward": value(best),
        "no_shift_reward": value((0.0,) * len(MODALITIES)),
        "evaluations": len(seen),
    }


def policy_references(
    name: str, model, test: Split, drifted_test: Split, drifted_traffic: Split, drift, measure, shared
) -> dict:
    """One policy's before/after figures and each reference's recovered share of its loss (`shared`:
    the figures of the references that do not depend on the policy)."""
    from agent.evaluation import as_scorer

    scorer = as_scorer(model)
    scores_test = np.asarray(scorer(drifted_test.pages), np.float64)
    before, after = measure(scorer, test), measure(lambda pages: scores_test, drifted_test)
    rows = {"frozen": {"before": before, "after": after}}
    scores_traffic = np.asarray(scorer(drifted_traffic.pages), np.float64)
    pick = best_offset(scores_traffic, drifted_traffic, drift.modality, measure)
    mid = drifted_test.pages.modality.astype(np.int64)
    demoted = scores_test - pick["chosen"] * (mid == MODALITIES.index(drift.modality))
    rows["video_offset"] = {**measure(lambda pages: demoted, drifted_test), "choice": pick}
    choose = Measure(
        replace(measure.cfg, repeats=8, served_samples=1, seed=measure.cfg.seed + 1), measure.temperature
    )
    shifts = best_modality_shifts(scores_traffic, drifted_traffic, drift.modality, choose)
    shifted = scores_test + np.asarray([shifts["shifts"][m] for m in MODALITIES])[mid]
    rows["modality_offsets"] = {**measure(lambda pages: shifted, drifted_test), "choice": shifts}
    for ref, fig in shared.items():
        rows[ref] = dict(fig)
    for key, row in rows.items():
        if key == "frozen":
            continue
        row["recovered"] = {k: recovered(row[k], before[k], after[k]) for k in ("deterministic", "served")}
    rows["frozen"]["lost"] = {k: before[k] - after[k] for k in before}
    print(
        f"{name}: frozen {before['deterministic']:.4f} -> {after['deterministic']:.4f} "
        + "; ".join(
            f"{k} {r['deterministic']:.4f} ({r['recovered']['deterministic']:.0%}, served "
            f"{r['recovered']['served']:.0%})"
            for k, r in rows.items()
            if k != "frozen"
        ),
        flush=True,
    )
    return rows


def summarise(policies: dict[str, dict]) -> dict:
    """Mean and standard error over policies of each reference's recovered share."""
    from agent.online.across_runs import mean_se

    refs = [k for k in next(iter(policies.values())) if k != "frozen"]
    out = {}
    for ref in refs:
        out[ref] = {}
        for kind in ("deterministic", "served"):
            x = [float(p[ref]["recovered"][kind]) for p in policies.values()]
            out[ref][kind] = {**mean_se(x), "per_policy": x}
    return out


def plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["policies"])
    refs = list(res["summary"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(refs)
    for i, ref in enumerate(refs):
        vals = [res["policies"][n][ref]["recovered"]["deterministic"] for n in names]
        ax.bar(np.arange(len(names)) + i * width, vals, width, label=ref)
    ax.axhline(0.5, color="k", ls="--", lw=1, label="half the loss")
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, [Path(n).parent.name or n for n in names])
    ax.set_ylabel("recovered share of frozen loss")
    d = res["drift"]
    ax.set_title(
        f"what a ranker could regain: {d['modality']} grades {d['relevance_shift']:+d}, "
        f"attractiveness x{d['attractiveness_scale']:g}",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_ceiling(
    run_dir: str,
    policies: list[str],
    drift: DriftConfig,
    heldout: HeldoutConfig,
    temperature: float,
    progress: bool = True,
) -> dict:
    import torch

    from pretrain.checkpoint import load_checkpoint
    from pretrain.run import PretrainRun

    torch.set_num_threads(1)
    t0 = time.time()
    run = PretrainRun.open(run_dir)
    test = run.split(heldout.split)
    drifted_test = drift_split(test, drift)
    drifted_traffic = drift_split(run.split("traffic"), drift)
    measure = Measure(heldout, temperature)
    shared = {}
    for ref, all_labels in (("refit", False), ("refit_all", True)):
        model = refit_reranker(run, drift, all_labels, progress)
        shared[ref] = measure(model, drifted_test)
        print(f"{ref}: drifted held-out {shared[ref]} ({time.time() - t0:.0f} s)", flush=True)
    truth = {
        "before": measure(lambda pages: test.truth.relevance.astype(np.float64), test),
        "after": measure(lambda pages: drifted_test.truth.relevance.astype(np.float64), drifted_test),
    }
    shared["truth"] = truth["after"]
    print(f"truth: before {truth['before']}, after {truth['after']} ({time.time() - t0:.0f} s)", flush=True)
    smar, _ = run.reranker()
    models = {"smar": smar, **{p: load_checkpoint(p)[0] for p in policies}}
    rows = {
        name: policy_references(name, m, test, drifted_test, drifted_traffic, drift, measure, shared)
        for name, m in models.items()
    }
    res = {
        "run": str(run.root),
        "drift": drift.to_json(),
        "heldout": heldout.to_json(),
        "temperature": temperature,
        "truth": truth,
        "policies": rows,
        "summary": summarise({k: v for k, v in rows.items() if k != "smar"} or rows),
        "seconds": time.time() - t0,
    }
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m agent.online.drift_ceiling", description=__doc__.split("\n")[0]
    )
    p.add_argument("--run", default="runs/pretrain", help="pretrain run (pages, truth, SMAR reranker)")
    p.add_argument("--policy", nargs="*", default=[], help="initial policy checkpoints (frozen copies)")
    p.add_argument("--drift", default="default", help="preset name or a JSON mapping of DriftConfig")
    p.add_argument("--temperature", type=float, default=SERVING_TEMPERATURE)
    p.add_argument("--repeats", type=int, default=HeldoutConfig.repeats)
    p.add_argument("--out", default=None, help="JSON file to write (a PNG beside it)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    spec = a.drift
    if spec.lstrip().startswith("{"):
        spec = json.loads(spec)
    drift = parse_drift(spec)
    if drift is None:
        raise SystemExit("drift_ceiling needs a drift (a preset name or a mapping)")
    res = run_ceiling(a.run, a.policy, drift, HeldoutConfig(repeats=a.repeats), a.temperature, not a.quiet)
    for ref, s in res["summary"].items():
        d, v = s["deterministic"], s["served"]
        print(
            f"{ref}: recovered {d['mean']:.0%} +- {d['se']:.0%} (served {v['mean']:.0%} +- {v['se']:.0%}) "
            f"over {len(d['per_policy'])} policies"
        )
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, res)
        print(f"wrote {out}, plot {plot(res, out.with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
