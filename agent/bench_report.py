"""The report of `smar bench agent` (agent.bench): per-method statistics over seeds, the reward
landscape's summary, the issue's done-when checks, the printed table and the two plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.evaluation import SESSION_METRICS

RL_METHODS = ("ppo_scratch", "ppo_unconstrained", "ppo_constrained")
BASELINES = ("random", "merge", "smar")


def stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "per_seed": [float(x) for x in a]}


def aggregate(by_seed: list[dict]) -> dict:
    """Every method's evaluation metrics (and, for RL, training time and speed) over the seeds' parts."""
    methods = {}
    for name in (*BASELINES, *RL_METHODS):
        evals = [p[name]["eval"] for p in by_seed]
        methods[name] = {k: stats([e[k] for e in evals]) for k in SESSION_METRICS}
        methods[name]["env_steps"] = int(np.mean([p[name].get("env_steps", 0) for p in by_seed]))
        if name in RL_METHODS:
            methods[name]["train_seconds"] = stats([p[name]["seconds"] for p in by_seed])
            methods[name]["train_env_steps_per_s"] = stats([p[name]["steps_per_s"] for p in by_seed])
            methods[name]["train_env_steps_per_cpu_s"] = stats([p[name]["steps_per_cpu_s"] for p in by_seed])
    return methods


FROM_SMAR = ("ppo_unconstrained", "ppo_constrained")  # the RL methods that start from SMAR


def layout_summary(by_seed: list[dict]) -> dict:
    """`agent.layout_diagnosis.layout_decomposition`'s rewards over the seeds, per method that starts
    from SMAR (a seed piece an older tree wrote without them is left out)."""
    out = {}
    for name in FROM_SMAR:
        parts = [p[name]["layout"] for p in by_seed if "layout" in p.get(name, {})]
        if parts:
            keys = ("policy", "body_only", "smar_plus_move", "smar_plus_intent_mean")
            out[name] = {k: stats([x[k] for x in parts]) for k in keys}
            out[name]["intent_mean_move"] = np.mean([x["intent_mean_move"] for x in parts], 0).tolist()
            out[name]["within_intent_sd"] = np.mean([x["within_intent_sd"] for x in parts], 0).tolist()
    return out


def plot_curves(histories: dict[str, list[list[dict]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for method, runs in histories.items():
        for ax, key in zip(axes, ("eval_reward", "eval_consistency")):
            rows = [[r for r in h if not np.isnan(r[key])] for h in runs]
            n = min(len(r) for r in rows)
            if n == 0:
                continue
            steps = np.mean([[r["env_steps"] for r in h[:n]] for h in rows], axis=0)
            vals = np.array([[r[key] for r in h[:n]] for h in rows])
            (line,) = ax.plot(steps, vals.mean(0), "o-", ms=3, label=method)
            ax.fill_between(steps, vals.min(0), vals.max(0), color=line.get_color(), alpha=0.2)
    axes[0].set_ylabel("session reward (held-out, deterministic)")
    axes[1].set_ylabel("consistency (held-out, top-K within-modality agreement)")
    for ax in axes:
        ax.set_xlabel("env steps (pages)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("PPO learning curves: mean and min-max over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_landscape(methods: dict, references: dict, path: Path) -> Path:
    """Session reward against NDCG@10 for every method (mean, std bars) and reference policy: whether
    the simulator's reward rewards relevance is visible at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, m in methods.items():
        ax.errorbar(
            m["ndcg@10"]["mean"],
            m["reward"]["mean"],
            xerr=m["ndcg@10"]["std"],
            yerr=m["reward"]["std"],
            marker="o",
            capsize=3,
            linestyle="none",
            label=name,
        )
    for name, m in references.items():
        ax.plot(m["ndcg@10"], m["reward"], marker="x", color="gray", linestyle="none")
        ax.annotate(
            name,
            (m["ndcg@10"], m["reward"]),
            fontsize=7,
            color="gray",
            xytext=(3, 3),
            textcoords="offset points",
        )
    if "smar" in methods:
        ax.axhline(1.10 * methods["smar"]["reward"]["mean"], color="k", linestyle=":", label="1.10 x smar")
    ax.set_xlabel("NDCG@10 of the shown slate (true grades)")
    ax.set_ylabel("session reward (held-out test sessions)")
    ax.set_title("Reward vs relevance: methods (o, mean ± std over seeds) and references (x)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# References that keep SMAR's within-modality order (per-modality / per-intent offsets on SMAR's
# scores, chosen on traffic sessions, never on test): what the consistency constraint allows.
FEASIBLE_REFERENCES = ("smar_modality_offsets", "smar_modality_intent_offsets")


def landscape(methods: dict, references: dict) -> dict:
    """What RL can earn, from the same run's figures: random, merge and SMAR (means over seeds), sort
    by true grade, the best constraint-feasible reference, the best reference of any kind, and the
    gaps from SMAR to those two (the issue's criterion asks for half of the feasible one)."""
    reward = {k: methods[k]["reward"]["mean"] for k in BASELINES if k in methods}
    feasible = {k: references[k]["reward"] for k in FEASIBLE_REFERENCES if k in references}
    anything = {k: v["reward"] for k, v in references.items() if not k.startswith("fresh_network")}
    smar = reward.get("smar", float("nan"))
    out = {f"{k}_reward": v for k, v in reward.items()}
    if "oracle_relevance" in references:
        out["sort_by_true_grade_reward"] = references["oracle_relevance"]["reward"]
    for label, pool in (("feasible", feasible), ("any", anything)):
        if pool:
            best = max(pool, key=pool.get)
            out[f"best_{label}_reference"] = best
            out[f"best_{label}_reward"] = pool[best]
            out[f"best_{label}_gap_to_smar"] = pool[best] - smar
    # the seed-to-seed spread of SMAR's own evaluation: a gap below it is noise
    out["smar_reward_std_over_seeds"] = methods["smar"]["reward"]["std"] if "smar" in methods else None
    return out


def checks(methods: dict, references: dict) -> dict[str, dict]:
    """The issue's done-when criteria, each with the figures it compares."""
    m = {k: {x: methods[k][x]["mean"] for x in ("reward", "consistency", "ndcg@10")} for k in methods}
    c, s, u, sc = m["ppo_constrained"], m["smar"], m["ppo_unconstrained"], m["ppo_scratch"]
    feasible = {k: references[k]["reward"] for k in FEASIBLE_REFERENCES if k in references}
    best = max(feasible, key=feasible.get) if feasible else None
    ref = feasible[best] if best else float("nan")
    need = s["reward"] + 0.5 * (ref - s["reward"])
    return {
        "constrained_closes_half_the_gap_to_the_feasible_reference": {
            "pass": bool(c["reward"] >= need),
            "constrained": c["reward"],
            "smar": s["reward"],
            "feasible_reference": best,
            "feasible_reference_reward": ref,
            "needed": need,
            "gap_closed": (c["reward"] - s["reward"]) / (ref - s["reward"]) if ref != s["reward"] else None,
        },
        "constrained_ndcg_ge_smar_minus_0.01": {
            "pass": bool(c["ndcg@10"] >= s["ndcg@10"] - 0.01),
            "constrained": c["ndcg@10"],
            "smar": s["ndcg@10"],
        },
        "constrained_consistency_ge_0.95x_smar": {
            "pass": bool(c["consistency"] >= 0.95 * s["consistency"]),
            "ratio": c["consistency"] / s["consistency"],
        },
        "unconstrained_consistency_lt_constrained": {
            "pass": bool(u["consistency"] < c["consistency"]),
            "unconstrained": u["consistency"],
            "constrained": c["consistency"],
        },
        "scratch_reward_lt_constrained": {
            "pass": bool(sc["reward"] < c["reward"]),
            "scratch": sc["reward"],
            "constrained": c["reward"],
            # context, not part of the check: scratch runs under the same constraint but may not meet
            # it within the budget, and then its reward is the reward of less consistent rankings
            "scratch_consistency_ratio": sc["consistency"] / s["consistency"],
            "constrained_consistency_ratio": c["consistency"] / s["consistency"],
        },
    }


def format_report(report: dict) -> str:
    cols = ("reward", "ctr", "satisfied_click_rate", "ndcg@10", "consistency")
    head = f"{'method':<20}" + "".join(f"{c:>24}" for c in cols) + f"{'env steps':>11}"
    lines = [head, "-" * len(head)]
    for name, m in report["methods"].items():
        cells = "".join(f"{m[c]['mean']:>15.4f} ± {m[c]['std']:<6.4f}" for c in cols)
        lines.append(f"{name:<20}{cells}{m['env_steps']:>11}")
    for name, m in report["references"].items():
        cells = "".join(f"{m[c]:>15.4f}{'':9}" for c in cols)
        lines.append(f"{name + ' (ref)':<20}{cells}{'-':>11}")
    lines.append("")
    for name, g in report.get("layout_gradient", {}).items():
        z = " / ".join(f"{v:+.1f}" for v in g["z_per_batch"])
        lines.append(
            f"layout gradient at {name}: z per {g['batch']}-page batch (doc / image / video / answer) {z}"
        )
    for name, d in report.get("layout_decomposition", {}).items():
        figs = ", ".join(f"{k} {d[k]['mean']:.4f}" for k in ("policy", "body_only", "smar_plus_move"))
        lines.append(
            f"layout of {name}: {figs}; SMAR + its per-intent mean move {d['smar_plus_intent_mean']['mean']:.4f}"
        )
    ceiling = report.get("linear_layout_ceiling")
    if ceiling:
        fits = "; ".join(
            f"{k} (R2 {v['test_r2']:.2f}) best {max(v['reward_by_scale'].values()):.4f}"
            for k, v in ceiling.items()
            if isinstance(v, dict)
        )
        lines.append(
            f"layout ceiling: per-intent reference {ceiling['reference_with_true_intent']:.4f}; {fits}; "
            f"through an intent classifier {ceiling['intent_classifier_mixture']:.4f}"
        )
    lines.append("")
    for key, value in report.get("landscape", {}).items():
        lines.append(
            f"landscape {key}: {value:.4f}" if isinstance(value, float) else f"landscape {key}: {value}"
        )
    lines.append("")
    for name, c in report["checks"].items():
        figs = ", ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in c.items() if k != "pass"
        )
        lines.append(f"{'PASS' if c['pass'] else 'FAIL'}  {name}  ({figs})")
    return "\n".join(lines)
