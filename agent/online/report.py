"""What a `smar online` run reports: each round's record and line, the run's verdicts, the plot.

The verdicts are taken on held-out sessions no round trains on: the last serving version against the
initial one (paired per session), failed requests, consistency against its target; with a drift, how
much of the frozen initial policy's loss the loop recovered in each round after the change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from agent.online.drift import DriftConfig
from agent.online.heldout import interval, paired

# (version, world) -> per-session held-out returns {"deterministic": [...], "served": [...]}
Heldout = Callable[[str, str], dict[str, np.ndarray]]


def summarise(
    rounds: list[dict],
    consistency_target: float,
    heldout: Heldout,
    initial_version: str,
    drift: DriftConfig | None,
) -> dict:
    """The run's verdicts (see the module docstring); {} before the first round."""
    if not rounds:
        return {}
    last = rounds[-1]
    final = last["published_version"] or last["version"]
    world = last["world"]
    fin, ini = heldout(final, world), heldout(initial_version, world)
    consistency_min = float(min(r["consistency"] for r in rounds))
    out = {
        "initial_version": initial_version,
        "final_version": final,
        "world": world,
        "final_heldout": interval(fin["deterministic"]),
        "initial_heldout": interval(ini["deterministic"]),
        "final_minus_initial": paired(fin["deterministic"], ini["deterministic"]),
        "final_minus_initial_served": paired(fin["served"], ini["served"]),
        "failed_requests": int(sum(r["failed_requests"] for r in rounds)),
        "published": int(sum(r["published"] for r in rounds)),
        "rounds": len(rounds),
        "consistency_min": consistency_min,
        "consistency_target": consistency_target,
        "consistency_held": bool(consistency_min >= consistency_target),
    }
    if drift is not None and any(r["world"] == "drifted" for r in rounds):
        out["drift"] = drift_recovery(rounds, heldout, initial_version, drift)
    return out


def drift_recovery(rounds: list[dict], heldout: Heldout, initial_version: str, drift: DriftConfig) -> dict:
    """The frozen initial policy's held-out loss from the drift, and the share of it each drifted round's
    version (after its decision) recovered: for the ranking itself (deterministic top-K, the verdict) and
    as served with the endpoint's exploration (what users of the exploring endpoint get; the frozen copy
    explored the same way). The loop's updates and gate judge the served policy, so the two can differ."""
    lost = {}
    for kind in ("deterministic", "served"):
        before = float(np.mean(heldout(initial_version, "base")[kind]))
        after = float(np.mean(heldout(initial_version, "drifted")[kind]))
        lost[kind] = (before, after, before - after)
    frozen_served = heldout(initial_version, "drifted")["served"]

    def share(gain: float, kind: str) -> float:
        return gain / lost[kind][2] if lost[kind][2] > 0 else float("nan")

    recovery = []
    for r in rounds:
        if r["world"] != "drifted":
            continue
        served = paired(heldout(r["published_version"] or r["version"], "drifted")["served"], frozen_served)
        recovery.append(
            {
                "round": r["round"],
                "rounds_after_change": r["round"] - drift.at_round + 1,
                "online_minus_frozen": r["after_minus_frozen"],
                "recovered_fraction": share(r["after_minus_frozen"]["mean"], "deterministic"),
                "online_minus_frozen_served": served,
                "recovered_fraction_served": share(served["mean"], "served"),
            }
        )
    within = [x for x in recovery if x["rounds_after_change"] <= 4]
    before, after, lost_det = lost["deterministic"]
    return {
        "config": drift.to_json(),
        "frozen_before": before,
        "frozen_after": after,
        "frozen_lost": lost_det,
        "frozen_before_served": lost["served"][0],
        "frozen_after_served": lost["served"][1],
        "frozen_lost_served": lost["served"][2],
        "recovery": recovery,
        "best_recovered_fraction_within_4": max((x["recovered_fraction"] for x in within), default=None),
        "best_recovered_fraction_served_within_4": max(
            (x["recovered_fraction_served"] for x in within), default=None
        ),
    }


def round_record(
    r: int, version: str, *, traffic, logs, decision, consistency, pub, ustats, held, cfg
) -> dict:
    """A round's figures as state.json and report.json keep them (its timings are added after):
    `traffic` agent.traffic.TrafficStats, `logs` the loop's RoundLogs, `decision` the gate's,
    `consistency` (the serving version's, the target), `pub` the loop's Publication, `ustats` the
    update's, `held` the held-out figures, `cfg` the OnlineConfig. The candidate's consistency is the
    gate's (`ope.consistency`)."""
    serving_consistency, target = consistency
    return {
        "round": r,
        "version": version,
        "published": decision.publish,
        "published_version": pub.version,
        "ope": decision.to_json(),
        "consistency": serving_consistency,
        "consistency_target": target,
        "live_reward": traffic.observed_reward,
        "live_reward_se": traffic.observed_reward_se,
        "live_env_reward": traffic.env_reward,
        "impressions": traffic.impressions,
        "logged_impressions": len(logs.batch),
        "train_impressions": len(logs.train),
        "holdout_impressions": len(logs.holdout),
        "gate_split": "by session",
        "failed_requests": traffic.failed_requests + pub.probe_failed,
        "traffic_errors": traffic.errors,
        "traffic_thread_seconds": traffic.thread_seconds,
        "client": {"concurrency": cfg.concurrency, "batch": cfg.client_batch},
        "swap_probe_requests": pub.probe_requests,
        "update": ustats,
        **held,
        "temperature": cfg.temperature,
    }


def upgrade_state(state: dict) -> dict:
    """A state.json an older run wrote, in the current names: its rounds' `candidate_consistency` (the
    same figure as `ope.consistency`) dropped, their update's `train_agreement` as `train_consistency`."""
    for rec in state.get("rounds", []):
        rec.pop("candidate_consistency", None)
        update = rec.get("update") or {}
        if "train_agreement" in update:
            update["train_consistency"] = update.pop("train_agreement")
    return state


def round_seconds(steps: dict[str, float]) -> dict[str, float]:
    """A round's timings as the report keeps them: steps 1-5 (and the log settling), their sum as the
    round's, then the held-out evaluation."""
    timed = ("traffic", "settle_logs", "read_logs", "update", "gate", "publish")
    return {
        **{k: steps[k] for k in timed},
        "round": sum(steps[k] for k in timed),
        "heldout_eval": steps["heldout_eval"],
    }


def round_line(rec: dict) -> str:
    """One round's record as the line `smar online` prints."""
    o, d = rec["ope"], rec["ope"]["difference"]
    h, f = rec["heldout_reward"], rec["frozen_heldout"]
    return (
        f"round {rec['round']} [{rec['world']}]: v={rec['version']} live {rec['live_reward']:.4f} "
        f"({rec['impressions']} imp, {rec['failed_requests']} failed, "
        f"{rec['seconds']['round']:.0f} s) | held-out {h['mean']:.4f} [{h['lo']:.4f}, {h['hi']:.4f}]"
        f" served {rec['heldout_served']['mean']:.4f} frozen {f['mean']:.4f} | "
        f"DR diff {d['mean']:+.4f} (lcb {d['lcb']:+.4f}) consistency "
        f"{o['consistency']:.3f}/{rec['consistency_target']:.3f} -> "
        + (
            f"PUBLISHED {rec['published_version']}"
            if rec["published"]
            else "rejected: " + "; ".join(o["reasons"])
        )
    )


def summary_lines(summ: dict) -> list[str]:
    """The run's verdicts as the lines `smar online` prints at the end."""
    fm = summ["final_minus_initial"]
    lines = [
        f"held-out reward: initial {summ['initial_heldout']['mean']:.4f}, final "
        f"{summ['final_heldout']['mean']:.4f}; paired final - initial {fm['mean']:+.4f} "
        f"[{fm['lo']:+.4f}, {fm['hi']:+.4f}]; failed requests: {summ['failed_requests']}; "
        f"published {summ['published']}/{summ['rounds']}; consistency min {summ['consistency_min']:.3f} "
        f"(target {summ['consistency_target']:.3f})"
    ]
    if "drift" in summ:
        dr = summ["drift"]
        lines.append(
            f"drift: frozen lost {dr['frozen_lost']:.4f} ({dr['frozen_before']:.4f} -> {dr['frozen_after']:.4f}); "
            "recovered fraction by round after the change: "
            + ", ".join(f"{x['rounds_after_change']}: {x['recovered_fraction']:.2f}" for x in dr["recovery"])
        )
        lines.append(
            f"drift, as served: frozen lost {dr['frozen_lost_served']:.4f}; recovered fraction by round: "
            + ", ".join(
                f"{x['rounds_after_change']}: {x['recovered_fraction_served']:.2f}" for x in dr["recovery"]
            )
        )
    return lines


def plot_rounds(rounds: list[dict], path: Path, drift_round: int | None = None) -> Path:
    """Live reward, held-out reward (serving deterministic / as served, frozen initial policy), consistency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["round"] for r in rounds]
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.8))
    se = [1.96 * r.get("live_reward_se", 0.0) for r in rounds]
    ax[0].errorbar(x, [r["live_reward"] for r in rounds], yerr=se, fmt="o-", capsize=3, label="live ±95%")
    ax[0].set_title("live reward (in-sample; green: published)")
    ax[0].set_ylabel("observed reward per impression")
    if rounds and "heldout_reward" in rounds[0]:
        _heldout_panel(ax[1], x, rounds)
    for a in ax[:2]:
        a.set_xlabel("round")
        for r in rounds:
            if r["published"]:
                a.axvline(r["round"] + 0.5, color="tab:green", alpha=0.25)
        if drift_round is not None:
            a.axvline(drift_round - 0.5, color="tab:red", ls="--", alpha=0.6)
    ax[2].plot(x, [r["consistency"] for r in rounds], "o-", label="serving version")
    ax[2].plot(x, [r["ope"]["consistency"] for r in rounds], "x--", label="the update's candidate (gate)")
    ax[2].axhline(rounds[0]["consistency_target"], color="tab:red", ls=":", label="target")
    ax[2].set_xlabel("round")
    ax[2].set_ylabel("consistency (top-K within-modality agreement)")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _heldout_panel(ax, x: list[int], rounds: list[dict]) -> None:
    """Held-out reward bands: serving version (deterministic, as served), frozen initial, after decision."""

    def band(key: str, label: str, fmt: str) -> None:
        m = [r[key]["mean"] for r in rounds]
        err = [
            [mm - r[key]["lo"] for mm, r in zip(m, rounds)],
            [r[key]["hi"] - mm for mm, r in zip(m, rounds)],
        ]
        ax.errorbar(x, m, yerr=err, fmt=fmt, capsize=3, label=label)

    band("heldout_reward", "online, deterministic", "o-")
    band("heldout_served", "online, as served", "s--")
    band("frozen_heldout", "frozen initial, deterministic", "x:")
    if "heldout_reward_after" in rounds[0]:
        band("heldout_reward_after", "online after the round's decision", "^-.")
    ax.set_title("held-out sessions (never trained on), ±95%")
    ax.set_ylabel("session reward")
    ax.legend(fontsize=8)
