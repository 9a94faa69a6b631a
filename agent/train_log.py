"""The training log and checkpoints of `smar train`: metrics.csv rows, TensorBoard scalars, the progress
bar, learning-curve plots, RLlib checkpoints (save, rotation, `latest.json` for --resume) and the best
iterate kept as a reranker checkpoint (`Selection`).

Consistency columns (one quantity, the top-K within-modality agreement with the single-modal order, on
three page sets): `train_consistency` on the learner's training batches (the constraint's measure),
`select_consistency` on training traffic (best-iterate selection), `eval_consistency` on the held-out
test sessions (agent.evaluation's `consistency`).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from agent.ppo_config import MODULE_ID
from envs.atomic_io import write_json_atomic

if TYPE_CHECKING:
    from agent.train import TrainConfig

CSV_COLUMNS = (
    "iteration",
    "env_steps",
    "time_s",
    "cpu_s",
    "train_return",
    "train_consistency",
    "multiplier",
    "target",
    "hinge",
    "reference_kl",
    "entropy",
    "policy_loss",
    "vf_loss",
    "ppo_kl",
    "clip_fraction",
    "slate_clip_fraction",
    "layout_clip_fraction",
    "vf_explained_var",
    "select_reward",
    "select_consistency",
    "eval_reward",
    "eval_ctr",
    "eval_satisfied_click_rate",
    "eval_ndcg@10",
    "eval_consistency",
)
# metrics.csv columns an older run wrote under another name (read back by --resume, never written).
LEGACY_COLUMNS = {"agreement": "train_consistency", "select_agreement": "select_consistency"}


def metrics_row(
    iteration: int, result: dict, elapsed: float, evaluation: dict | None, cpu: float = float("nan")
) -> dict[str, float]:
    from agent.learner import (
        APPROX_KL,
        CLIP_FRACTION,
        EXPLAINED_VAR,
        HINGE,
        LAYOUT_CLIP_FRACTION,
        MULTIPLIER,
        REFERENCE_KL,
        SLATE_CLIP_FRACTION,
        TARGET,
        TRAIN_CONSISTENCY,
    )

    lr = result.get("learners", {}).get(MODULE_ID, {})
    er = result.get("env_runners", {})

    def f(x) -> float:
        try:
            return float(x)
        except (TypeError, ValueError):
            return float("nan")

    row = {
        "iteration": iteration,
        "env_steps": int(
            f(er.get("num_env_steps_sampled_lifetime", result.get("num_env_steps_sampled_lifetime")))
        ),
        "time_s": round(elapsed, 3),  # wall seconds of algo.train() (sampling + learning)
        "cpu_s": round(cpu, 3),  # this process's CPU seconds in algo.train() (env runners are local)
        "train_return": f(er.get("episode_return_mean")),
        "train_consistency": f(lr.get(TRAIN_CONSISTENCY)),
        "multiplier": f(lr.get(MULTIPLIER)),
        "target": f(lr.get(TARGET)),
        "hinge": f(lr.get(HINGE)),
        "reference_kl": f(lr.get(REFERENCE_KL)),
        "entropy": f(lr.get("entropy")),
        "policy_loss": f(lr.get("policy_loss")),
        "vf_loss": f(lr.get("vf_loss")),
        "ppo_kl": f(lr.get(APPROX_KL)),  # approximate KL(pi_old || pi) of the last minibatch
        "clip_fraction": f(lr.get(CLIP_FRACTION)),
        "slate_clip_fraction": f(lr.get(SLATE_CLIP_FRACTION)),
        "layout_clip_fraction": f(lr.get(LAYOUT_CLIP_FRACTION)),
        "vf_explained_var": f(lr.get(EXPLAINED_VAR)),
        "select_reward": float("nan"),  # filled in by best-iterate selection when it runs
        "select_consistency": float("nan"),
    }
    for k in ("reward", "ctr", "satisfied_click_rate", "ndcg@10", "consistency"):
        row[f"eval_{k}"] = f(evaluation[k]) if evaluation else float("nan")
    return row


def eval_row(iteration: int, env_steps: int, evaluation: dict) -> dict[str, float]:
    row = {c: float("nan") for c in CSV_COLUMNS}
    row.update(iteration=iteration, env_steps=env_steps, time_s=0.0, cpu_s=0.0)
    for k in ("reward", "ctr", "satisfied_click_rate", "ndcg@10", "consistency"):
        row[f"eval_{k}"] = float(evaluation[k])
    return row


def write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, float("nan")) for c in CSV_COLUMNS})
    tmp.replace(path)


def upgrade_row(row: dict) -> dict:
    """A metrics row with LEGACY_COLUMNS renamed to the current columns (other keys as they are)."""
    return {LEGACY_COLUMNS.get(k, k): v for k, v in row.items()}


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        rows = [
            upgrade_row({k: float(v) if v not in ("", None) else float("nan") for k, v in r.items()})
            for r in csv.DictReader(f)
        ]
    for r in rows:  # integer columns stay integers when the file is rewritten after --resume
        r["iteration"], r["env_steps"] = int(r["iteration"]), int(r["env_steps"])
    return rows


def plot_learning_curves(rows: list[dict], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = [r for r in rows if not math.isnan(r["eval_reward"])]
    tr = [r for r in rows if not math.isnan(r["train_return"])]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot(
        [r["env_steps"] for r in ev], [r["eval_reward"] for r in ev], "o-", label="eval (deterministic)"
    )
    axes[0].plot(
        [r["env_steps"] for r in tr], [r["train_return"] for r in tr], ".--", label="train (sampled)"
    )
    axes[0].set_ylabel("session reward")
    axes[1].plot(
        [r["env_steps"] for r in ev], [r["eval_consistency"] for r in ev], "o-", label="eval consistency"
    )
    axes[1].plot(
        [r["env_steps"] for r in tr], [r["train_consistency"] for r in tr], ".--", label="train consistency"
    )
    axes[1].plot([r["env_steps"] for r in tr], [r["target"] for r in tr], ":", label="target")
    axes[1].set_ylabel("consistency (top-K within-modality agreement)")
    axes[2].plot([r["env_steps"] for r in tr], [r["multiplier"] for r in tr], ".-")
    axes[2].set_ylabel("Lagrange multiplier")
    for ax in axes:
        ax.set_xlabel("env steps (pages)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latest_checkpoint(out: Path) -> dict | None:
    f = out / "checkpoints" / "latest.json"
    return json.loads(f.read_text()) if f.exists() else None


def save_algo(algo, out: Path, iteration: int, env_steps: int, keep: int) -> Path:
    ck_root = out / "checkpoints"
    path = ck_root / f"iter_{iteration:05d}"
    if path.exists():
        shutil.rmtree(path)
    algo.save_to_path(str(path.resolve()))
    write_json_atomic(
        ck_root / "latest.json", {"iteration": iteration, "env_steps": env_steps, "path": path.name}
    )
    old = sorted(p for p in ck_root.glob("iter_*") if p.is_dir())
    for p in old[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    return path


class Selection:
    """The best iterate so far (TrainConfig.select_every), kept as a reranker checkpoint at `path` so
    that --resume continues the same selection. Key: feasible iterates (select consistency >= target, or
    any with the constraint off) by reward, above infeasible ones by consistency; ties keep the earlier."""

    def __init__(self, path: Path, constraint: bool, target: float) -> None:
        self.path, self.constraint, self.target = path, constraint, target
        self.key: tuple[bool, float] | None = None
        self.iteration = -1

    def restore(self) -> None:
        if self.path.exists():
            from pretrain.checkpoint import verify_checkpoint

            sel = verify_checkpoint(self.path).manifest["selection"]
            self.key, self.iteration = (bool(sel["key"][0]), float(sel["key"][1])), int(sel["iteration"])

    def offer(self, net, iteration: int, reward: float, consistency: float) -> bool:
        """Keep `net` (its select reward and consistency) if it beats the best so far; True if it does."""
        from pretrain.checkpoint import make_version, save_checkpoint

        feasible = not self.constraint or consistency >= self.target
        key = (feasible, reward if feasible else consistency)
        if self.key is not None and key <= self.key:
            return False
        self.key, self.iteration = key, iteration
        extra = {
            "selection": {
                "iteration": iteration,
                "select_reward": reward,
                "select_consistency": consistency,
                "key": list(key),
            }
        }
        save_checkpoint(net, self.path, version=make_version("ppo-best"), extra=extra, overwrite=True)
        return True


def plot_title(cfg: TrainConfig) -> str:
    init = "scratch" if cfg.scratch else "SMAR init"
    return f"PPO ({init}, constraint {'on' if cfg.constraint else 'off'}, seed {cfg.seed})"


def tb_writer(out: Path):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # TensorBoard logging is optional
        return None
    return SummaryWriter(str(out / "tb"))


def write_scalars(writer, row: dict[str, float], env_steps: int) -> None:
    """A metrics row's measured scalars to TensorBoard (no-op without a writer)."""
    if writer is None:
        return
    for c in CSV_COLUMNS[2:]:
        if not math.isnan(row[c]):
            writer.add_scalar(c, row[c], env_steps)
    writer.flush()


def progress(it, enabled: bool, **kw):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc="ppo", unit="iter", disable=None, **kw)
