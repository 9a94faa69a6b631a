"""`smar train`: refine the SMAR reranker with constrained PPO (RLlib, new API stack) on simulated users.

    smar train [--run RUN] [--init CHECKPOINT | --scratch] [--constraint on|off] [--iterations N]
               [--env-runners R] [--seed S] --out DIR [--resume] [--address ADDR]

Data: the pretrain run folder RUN (`smar pretrain --out RUN`; pretrain/run.py) gives the SerpEnv its
pages and simulator truth: the `traffic` split for training, the held-out `test` sessions for the
deterministic evaluation. The policy starts from RUN's SMAR reranker (or --init CHECKPOINT, or a fresh
network with --scratch) and is trained by `agent.learner.ConstrainedPPOLearner`.

Writes into DIR:
  metrics.csv            one row per iteration (env steps, training return, learner stats, evaluation)
  tb/                    the same scalars for TensorBoard (tensorboardX)
  learning_curves.png    evaluation reward / consistency and the multiplier against env steps
  checkpoints/           RLlib `algo.save_to_path` every --checkpoint-every iterations (+ latest.json);
                         `--resume` continues from the latest one
  policy/                the trained policy EXPORTED as a reranker checkpoint (pretrain.checkpoint
                         format; manifest extra holds the train config and final metrics): Serve loads it
  result.json            config, initial and final evaluation, timings

Scale-out: everything runs on Ray. `--env-runners 0` samples in the driver (tests, laptops);
`--env-runners R` starts R remote EnvRunner actors. To use a Ray cluster, start the command on a node of
it with `--address auto` (or `RAY_ADDRESS=ray://head:10001 smar train ...`): the same command then
places env runners on the cluster's nodes. Pages travel inside the env config, so workers need no
shared filesystem; the init checkpoint path must be readable on every node (shared storage).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from envs.atomic_io import write_json_atomic
from envs.serp_env import SerpConfig, SerpEnv
from pretrain.run import DEFAULT_RUN

log = logging.getLogger(__name__)

MODULE_ID = "default_policy"
CSV_COLUMNS = (
    "iteration",
    "env_steps",
    "time_s",
    "cpu_s",
    "train_return",
    "agreement",
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
    "vf_explained_var",
    "select_reward",
    "select_agreement",
    "eval_reward",
    "eval_ctr",
    "eval_satisfied_click_rate",
    "eval_ndcg@10",
    "eval_consistency",
)


@dataclass
class TrainConfig:
    """Everything one training run needs. Defaults: small PPO settings for a 2-core machine."""

    out: str = "runs/train"  # the run folder (`smar train --out`)
    run: str = DEFAULT_RUN  # pretrain run folder (world, SMAR reranker, scored splits)
    init: str | None = None  # reranker checkpoint to start from (default: the run's SMAR reranker)
    scratch: bool = False  # fresh network (same shape as the SMAR reranker), normaliser fitted on traffic
    constraint: bool = True
    iterations: int = 10
    env_runners: int = 0
    # Vectorised envs per env runner (the driver's with env_runners=0): one batched module forward per
    # vector step, so 64 envs make 16 forwards per 1,024-step iteration instead of 128 with 8.
    envs_per_runner: int = 64
    seed: int = 0
    # PPO. The defaults are the ones `smar bench agent` measured (README, "Constrained RL").
    train_batch: int = 1024  # env steps (pages) per iteration
    minibatch: int = 256
    epochs: int = 2
    lr: float = 1e-3
    # Linear decay from lr to lr_end over the run's env steps (None: constant). Decaying to 0 ends a
    # run on small steps: with a constant 1e-3 the clipped slate ratio stays saturated to the end.
    lr_end: float | None = 0.0
    lr_warmup: int = 0  # env steps of linear warm-up from lr / 10 to lr before that (0: none)
    gamma: float = 0.95
    lambda_: float = 0.95
    clip: float = 0.2
    entropy_coeff: float = 0.0
    use_kl_loss: bool = False  # PPO's own KL to the previous policy (the clip already bounds steps)
    grad_clip: float = 1.0
    # Exploration: logits = scores / temperature. SMAR's scores are in grade units (per-page std ~1.3),
    # so at 0.5 its Plackett-Luce policy hardly varies the page layout and one 1,024-page batch cannot
    # tell which modality to move up (agent.reward_landscape.layout_gradient: video z 2.1 at 0.5, 4.3
    # at 4, about a fresh network's 4.7 at 0.5). Measured on 6 paired seeds, constrained PPO from
    # SMAR: 1.051 x SMAR's test reward at 4 vs 1.018 x at 0.5, with higher NDCG@10.
    temperature: float = 4.0
    # constraint (agent.learner.ConstraintConfig)
    target: float | None = None  # absolute consistency target; None -> target_fraction x SMAR's
    # 0.99, not 0.97: dual ascent holds the target on average over training pages, and the last
    # iterate's test consistency lands about 2.5% lower (measured: 0.97 -> 0.945 x SMAR's on test,
    # 0.99 -> 0.969 x; smar bench agent --target-fraction), so the margin must cover that.
    target_fraction: float = 0.99
    multiplier_lr: float = 20.0
    # hinge margin of the constraint's surrogate; None: the margin the run's SMAR reranker was
    # pretrained with (its manifest's loss config; 1.0, the SMAR authors', if it records none), so the
    # constraint asks for the score gaps SMAR's own consistency loss asked for, whatever its scale
    margin: float | None = None
    multiplier_init: float = 0.0
    reference_kl_coeff: float = 0.0  # KL(pi_SMAR || pi): needs a SMAR reranker (not with --scratch)
    offset_lr_scale: float = 1.0  # the reranker's modality-offset head learns at this x lr
    # PPO's importance ratio (agent.learner.ConstraintConfig.ratio): "slate" (one per ranking) or
    # "position" (one per placement, with position-level reward-to-go under the cascade)
    ratio: str = "slate"
    # agent.learner.ConstraintConfig.drop_bootstrap_rows: minibatches of real pages only (fewer,
    # larger updates per iteration; off: it trained worse on 2 of 2 paired seeds, README)
    drop_bootstrap_rows: bool = False
    # environment / evaluation
    serp: dict = field(default_factory=dict)  # SerpConfig overrides (n_max defaults to the longest page)
    reward: str = "success"  # the product reward by name (envs.reward.RewardConfig), unless serp sets one
    eval_every: int = 1  # iterations between evaluations (0 = only at start and end)
    # Best-iterate selection on TRAINING traffic (never test): every `select_every` iterations (and at
    # the start and the end) the deterministic policy plays the traffic sessions `select_repeats`
    # times; the exported policy is the iterate with the highest reward among those meeting the
    # consistency target (agreement on traffic, the constraint's own measure; every iterate is
    # feasible with the constraint off), or the most consistent one if none does. 0 = the last iterate.
    select_every: int = 0
    select_repeats: int = 4
    eval_repeats: int = 2  # plays of each held-out session per evaluation during training
    final_eval_repeats: int = 5
    checkpoint_every: int = 5
    keep_checkpoints: int = 2
    resume: bool = False
    address: str | None = None  # Ray cluster address (None: RAY_ADDRESS or a local Ray)
    torch_threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if self.scratch and self.init:
            raise ValueError("--scratch and --init are exclusive")
        if self.scratch and self.reference_kl_coeff > 0 and not self.run:
            raise ValueError("reference_kl_coeff needs a SMAR reranker (the run's)")
        for name in ("iterations", "train_batch", "minibatch", "epochs", "envs_per_runner"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.env_runners < 0:
            raise ValueError(f"TrainConfig.env_runners must be >= 0, got {self.env_runners}")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    out: Path
    policy_path: Path  # the exported reranker checkpoint
    version: str
    history: list[dict[str, float]]  # metrics.csv rows
    initial_eval: dict[str, float]
    final_eval: dict[str, float]
    env_steps: int
    seconds: float


class RLlibSerpEnv(SerpEnv):
    """SerpEnv built from an RLlib env config {"pages", "truth", "serp"} (RLlib calls `env_cls(config)`)."""

    def __init__(self, config: dict | None = None) -> None:
        config = dict(config or {})
        super().__init__(pages=config.get("pages"), truth=config.get("truth"), config=config.get("serp"))


# ----------------------------------------------------------------------------- pieces
def serp_config_for(pages_list: list, overrides: dict | None = None) -> SerpConfig:
    """SerpConfig with n_max = the longest page (fewer padded slots = cheaper forward passes)."""
    d = dict(overrides or {})
    d.setdefault("n_max", int(max(int(p.sizes.max()) for p in pages_list)))
    return SerpConfig.from_dict(d)


def reranker_state(module_state: dict[str, Any]) -> dict[str, Any]:
    """The WholePageReranker state dict inside an RLModule state ("reranker." prefix), as torch tensors."""
    import torch

    out = {
        k[len("reranker.") :]: torch.as_tensor(np.asarray(v))
        for k, v in module_state.items()
        if k.startswith("reranker.")
    }
    if not out:
        raise ValueError("module state holds no 'reranker.*' weights")
    return out


def policy_network(algo, config_json: dict):
    """The trained scoring network as a standalone WholePageReranker (eval mode), from the learner."""
    import torch

    from pretrain.reranker import RerankerConfig, WholePageReranker

    with torch.random.fork_rng():  # building a module draws init weights: keep training's RNG untouched,
        net = WholePageReranker(RerankerConfig.from_json(config_json))  # so evaluating never changes a run
    net.load_state_dict(reranker_state(algo.learner_group.get_weights([MODULE_ID])[MODULE_ID]))
    return net.eval()


def lr_schedule(cfg: TrainConfig) -> float | list[list[float]]:
    """PPO's learning rate: a constant, or RLlib's piecewise-linear schedule [[env steps, lr], ...]
    (the learner applies the value at the env steps sampled so far, so iteration i + 1 uses the value
    at i x train_batch and the first iteration uses the first point's)."""
    if cfg.lr_end is None and not cfg.lr_warmup:
        return cfg.lr
    total = cfg.iterations * cfg.train_batch
    points = [[0, cfg.lr / 10 if cfg.lr_warmup else cfg.lr]]
    if cfg.lr_warmup:
        points.append([min(cfg.lr_warmup, total), cfg.lr])
    if cfg.lr_end is not None and points[-1][0] < total:
        points.append([total, cfg.lr_end])
    return points


def pretrain_margin(ckpt) -> float:
    """The consistency-hinge margin a reranker checkpoint was pretrained with (agent.constraint)."""
    from agent.constraint import checkpoint_margin

    return checkpoint_margin(ckpt.manifest)


def build_ppo_config(
    cfg: TrainConfig,
    train_split,
    model_config: dict,
    serp: SerpConfig,
    target: float | None,
    margin: float | None = None,
):
    from ray.rllib.algorithms.ppo import PPOConfig

    from agent.learner import ConstrainedPPOLearner, ConstraintConfig
    from agent.rl_module import module_spec

    constraint = ConstraintConfig(
        enabled=cfg.constraint,
        target=target,
        target_fraction=cfg.target_fraction,
        margin=ConstraintConfig.margin if margin is None else margin,
        multiplier_lr=cfg.multiplier_lr,
        multiplier_init=cfg.multiplier_init,
        reference_checkpoint=model_config.get("reference_checkpoint"),
        reference_kl_coeff=cfg.reference_kl_coeff,
        offset_lr_scale=cfg.offset_lr_scale,
        ratio=cfg.ratio,
        drop_bootstrap_rows=cfg.drop_bootstrap_rows,
    )
    lr: float | list = lr_schedule(cfg)
    mc = {k: v for k, v in model_config.items() if k != "reference_checkpoint"}
    mc["temperature"] = cfg.temperature
    return (
        PPOConfig()
        .environment(
            RLlibSerpEnv,
            env_config={"pages": train_split.pages, "truth": train_split.truth, "serp": serp.to_json()},
        )
        .env_runners(
            num_env_runners=cfg.env_runners,
            num_envs_per_env_runner=cfg.envs_per_runner,
            rollout_fragment_length="auto",
            num_cpus_per_env_runner=1,
        )
        .rl_module(rl_module_spec=module_spec(mc))
        .learners(learner_class=ConstrainedPPOLearner, learner_config_dict=constraint.to_dict())
        .training(
            train_batch_size_per_learner=cfg.train_batch,
            minibatch_size=cfg.minibatch,
            num_epochs=cfg.epochs,
            lr=lr,
            gamma=cfg.gamma,
            lambda_=cfg.lambda_,
            clip_param=cfg.clip,
            entropy_coeff=cfg.entropy_coeff,
            use_kl_loss=cfg.use_kl_loss,
            grad_clip=cfg.grad_clip,
            vf_clip_param=100.0,
        )
        .debugging(seed=cfg.seed)
    )


def _row(
    iteration: int, result: dict, elapsed: float, evaluation: dict | None, cpu: float = float("nan")
) -> dict[str, float]:
    from agent.learner import (
        AGREEMENT,
        APPROX_KL,
        CLIP_FRACTION,
        EXPLAINED_VAR,
        HINGE,
        MULTIPLIER,
        REFERENCE_KL,
        SLATE_CLIP_FRACTION,
        TARGET,
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
        "agreement": f(lr.get(AGREEMENT)),
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
        "vf_explained_var": f(lr.get(EXPLAINED_VAR)),
        "select_reward": float("nan"),  # filled in by best-iterate selection when it runs
        "select_agreement": float("nan"),
    }
    for k in ("reward", "ctr", "satisfied_click_rate", "ndcg@10", "consistency"):
        row[f"eval_{k}"] = f(evaluation[k]) if evaluation else float("nan")
    return row


def _eval_row(iteration: int, env_steps: int, evaluation: dict) -> dict[str, float]:
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


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        rows = [
            {k: float(v) if v not in ("", None) else float("nan") for k, v in r.items()}
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
    axes[1].plot([r["env_steps"] for r in tr], [r["agreement"] for r in tr], ".--", label="batch agreement")
    axes[1].plot([r["env_steps"] for r in tr], [r["target"] for r in tr], ":", label="target")
    axes[1].set_ylabel("within-modality agreement")
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


def _latest_checkpoint(out: Path) -> dict | None:
    f = out / "checkpoints" / "latest.json"
    return json.loads(f.read_text()) if f.exists() else None


def _save_algo(algo, out: Path, iteration: int, env_steps: int, keep: int) -> Path:
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


# ----------------------------------------------------------------------------- the Python API
def open_run(path: str | Path):
    """The pretrain run (raises FileNotFoundError naming the `smar pretrain` command if absent)."""
    from pretrain.run import PretrainRun

    return PretrainRun.open(path)


def train_policy(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) one PPO policy as configured; export it; return where everything is."""
    import ray

    from agent.evaluation import evaluate_policy
    from agent.rl_module import scratch_model_config
    from pretrain.checkpoint import load_checkpoint, make_version, save_checkpoint
    from pretrain.runtime import torch_threads

    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    run = open_run(cfg.run)
    train_split, test_split = run.split("traffic"), run.split("test")
    serp = serp_config_for(
        [train_split.pages, test_split.pages], {"reward": {"name": cfg.reward}, **cfg.serp}
    )
    k = serp.slate_size

    smar_net, smar_ckpt = run.reranker()
    if cfg.scratch:
        model_config = scratch_model_config(
            train_split.pages, seed=cfg.seed, **network_shape(smar_ckpt.config)
        )
        init_desc = {"kind": "scratch"}
    else:
        init_path = Path(cfg.init) if cfg.init else run.reranker_path
        _, init_ckpt = load_checkpoint(init_path)  # verify before any worker tries
        model_config = {"checkpoint": str(init_path.resolve()), "seed": cfg.seed}
        init_desc = {"kind": "checkpoint", "path": str(init_path), "version": init_ckpt.version}
    if cfg.reference_kl_coeff > 0:
        model_config["reference_checkpoint"] = str(run.reranker_path.resolve())
    # The constraint target: a fraction of the SMAR policy's own agreement on the training pages.
    from agent.learner import topk_consistency

    smar_agree = topk_consistency(smar_net, train_split.pages, k)
    target = cfg.target if cfg.target is not None else cfg.target_fraction * smar_agree

    started_ray = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if address:
            kw["address"] = address
        else:
            kw["num_cpus"] = max(2, cfg.env_runners + 1)
        ray.init(**kw)
        started_ray = True

    rows: list[dict] = []
    start_iter = 0
    with torch_threads(cfg.torch_threads):
        margin = cfg.margin if cfg.margin is not None else pretrain_margin(smar_ckpt)
        algo = build_ppo_config(cfg, train_split, model_config, serp, target, margin).build_algo()
        try:

            def evaluate(repeats: int, seed: int, net=None) -> dict:
                """Held-out test evaluation of `net` (default: the learner's current policy)."""
                if net is None:
                    net = policy_network(algo, model_config_json(model_config, smar_ckpt))
                return evaluate_policy(
                    net, test_split.pages, test_split.truth, seed=seed, repeats=repeats, serp=serp
                )

            initial_eval = evaluate(cfg.final_eval_repeats, cfg.seed + 20_000)  # the starting policy
            latest = _latest_checkpoint(out) if cfg.resume else None
            if latest:
                algo.restore_from_path(str((out / "checkpoints" / latest["path"]).resolve()))
                start_iter = int(latest["iteration"])
                if (out / "metrics.csv").exists():
                    rows = [r for r in read_csv(out / "metrics.csv") if r["iteration"] <= start_iter]
            elif cfg.resume:
                log.info("--resume: no checkpoint under %s; starting fresh", out / "checkpoints")
            selection = Selection(out / "best", cfg.constraint, target)
            if cfg.resume and start_iter > 0:
                selection.restore()

            def select(row: dict, iteration: int) -> None:
                net = policy_network(algo, model_config_json(model_config, smar_ckpt))
                r = evaluate_policy(
                    net,
                    train_split.pages,
                    train_split.truth,
                    seed=cfg.seed + 30_000,
                    repeats=cfg.select_repeats,
                    serp=serp,
                )["reward"]
                agreement = topk_consistency(net, train_split.pages, k)
                row["select_reward"], row["select_agreement"] = r, agreement
                selection.offer(net, iteration, r, agreement)

            if start_iter == 0:
                rows = [_eval_row(0, 0, evaluate(cfg.eval_repeats, cfg.seed + 10_000))]
                if cfg.select_every:
                    select(rows[0], 0)
            writer = _tb_writer(out)
            bar = _progress(
                range(start_iter, cfg.iterations), cfg.progress, total=cfg.iterations, initial=start_iter
            )
            env_steps = int(rows[-1]["env_steps"]) if rows else 0
            for it in bar:
                t_it, c_it = time.perf_counter(), time.process_time()
                result = algo.train()
                elapsed, cpu = time.perf_counter() - t_it, time.process_time() - c_it
                it1 = it + 1
                do_eval = (cfg.eval_every and it1 % cfg.eval_every == 0) or it1 == cfg.iterations
                evaluation = evaluate(cfg.eval_repeats, cfg.seed + 10_000) if do_eval else None
                row = _row(it1, result, elapsed, evaluation, cpu)
                if cfg.select_every and (it1 % cfg.select_every == 0 or it1 == cfg.iterations):
                    select(row, it1)
                env_steps = int(row["env_steps"])
                rows.append(row)
                write_csv(out / "metrics.csv", rows)
                if writer is not None:
                    for c in CSV_COLUMNS[2:]:
                        if not math.isnan(row[c]):
                            writer.add_scalar(c, row[c], env_steps)
                    writer.flush()
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(
                        steps=env_steps,
                        ret=f"{row['train_return']:.3f}",
                        agree=f"{row['agreement']:.3f}",
                        lam=f"{row['multiplier']:.2f}",
                    )
                if cfg.checkpoint_every and (it1 % cfg.checkpoint_every == 0 or it1 == cfg.iterations):
                    _save_algo(algo, out, it1, env_steps, cfg.keep_checkpoints)
            if writer is not None:
                writer.close()

            if cfg.select_every and selection.path.exists():
                net, _ = load_checkpoint(selection.path)
            else:
                net = policy_network(algo, model_config_json(model_config, smar_ckpt))
            final_eval = evaluate(cfg.final_eval_repeats, cfg.seed + 20_000, net)
        finally:
            algo.stop()
            if started_ray:
                ray.shutdown()

    plot_learning_curves(rows, out / "learning_curves.png", title=_title(cfg))
    version = make_version("ppo")
    extra = {
        "kind": "ppo",
        "train_config": cfg.to_json(),
        "init": init_desc,
        "smar_version": smar_ckpt.version,
        "consistency_target": target,
        "consistency_margin": margin,
        "smar_agreement_traffic": smar_agree,
        "env_steps": env_steps,
        "selected_iteration": selection.iteration if cfg.select_every else cfg.iterations,
        "metrics": {"initial_eval": initial_eval, "final_eval": final_eval},
    }
    policy_path = out / "policy"
    save_checkpoint(net, policy_path, version=version, extra=extra, overwrite=True)
    seconds = time.time() - t0
    summary = {
        "config": cfg.to_json(),
        "policy": str(policy_path),
        "version": version,
        "env_steps": env_steps,
        "initial_eval": initial_eval,
        "final_eval": final_eval,
        "consistency_target": target,
        "seconds": round(seconds, 1),
    }
    write_json_atomic(out / "result.json", summary, default=str)
    return TrainResult(out, policy_path, version, rows, initial_eval, final_eval, env_steps, seconds)


class Selection:
    """The best iterate so far (TrainConfig.select_every), kept as a reranker checkpoint at `path` so
    that --resume continues the same selection. Key: feasible iterates (agreement >= target, or any
    with the constraint off) by reward, above infeasible ones by agreement; ties keep the earlier."""

    def __init__(self, path: Path, constraint: bool, target: float) -> None:
        self.path, self.constraint, self.target = path, constraint, target
        self.key: tuple[bool, float] | None = None
        self.iteration = -1

    def restore(self) -> None:
        if self.path.exists():
            from pretrain.checkpoint import verify_checkpoint

            sel = verify_checkpoint(self.path).manifest["selection"]
            self.key, self.iteration = (bool(sel["key"][0]), float(sel["key"][1])), int(sel["iteration"])

    def offer(self, net, iteration: int, reward: float, agreement: float) -> bool:
        """Keep `net` if it beats the best so far; True if it does."""
        from pretrain.checkpoint import make_version, save_checkpoint

        feasible = not self.constraint or agreement >= self.target
        key = (feasible, reward if feasible else agreement)
        if self.key is not None and key <= self.key:
            return False
        self.key, self.iteration = key, iteration
        extra = {
            "selection": {"iteration": iteration, "reward": reward, "agreement": agreement, "key": list(key)}
        }
        save_checkpoint(net, self.path, version=make_version("ppo-best"), extra=extra, overwrite=True)
        return True


def model_config_json(model_config: dict, smar_ckpt) -> dict:
    """The RerankerConfig (as JSON) of the network a model_config builds."""
    if model_config.get("reranker_config") is not None:
        return model_config["reranker_config"]
    from pretrain.checkpoint import verify_checkpoint

    return verify_checkpoint(model_config["checkpoint"]).config.to_json()


def network_shape(config) -> dict:
    """Every RerankerConfig field but the data-derived input widths, so --scratch trains a network of
    exactly the SMAR architecture (including options added to the reranker later)."""
    return {k: v for k, v in config.to_json().items() if k not in ("feature_dims", "query_dim", "user_dim")}


def _title(cfg: TrainConfig) -> str:
    init = "scratch" if cfg.scratch else "SMAR init"
    return f"PPO ({init}, constraint {'on' if cfg.constraint else 'off'}, seed {cfg.seed})"


def _tb_writer(out: Path):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # TensorBoard logging is optional
        return None
    return SummaryWriter(str(out / "tb"))


def _progress(it, enabled: bool, **kw):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc="ppo", unit="iter", disable=None, **kw)


# ----------------------------------------------------------------------------- CLI
def add_ppo_arguments(p: argparse.ArgumentParser) -> None:
    """The PPO options `smar train` and `smar bench agent` share (defaults: TrainConfig's)."""
    p.add_argument(
        "--train-batch", type=int, default=TrainConfig.train_batch, help="env steps (pages) per iteration"
    )
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--minibatch", type=int, default=TrainConfig.minibatch, help="PPO minibatch (pages)")
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument(
        "--lr-end",
        type=float,
        default=TrainConfig.lr_end,
        help="learning rate at the end of the run (linear decay from --lr; negative: constant --lr)",
    )
    p.add_argument(
        "--temperature", type=float, default=TrainConfig.temperature, help="exploration: logits = scores / T"
    )
    p.add_argument(
        "--offset-lr-scale",
        type=float,
        default=TrainConfig.offset_lr_scale,
        help="learning-rate multiplier of the reranker's modality-offset head (the page layout)",
    )
    p.add_argument(
        "--ratio",
        choices=("slate", "position"),
        default=TrainConfig.ratio,
        help="PPO importance ratio: per slate, or per position with position-level reward-to-go",
    )
    p.add_argument(
        "--reward",
        default=TrainConfig.reward,
        help="product reward by name (envs.reward.REWARD_NAMES) the policy plays and learns from",
    )
    p.add_argument(
        "--target-fraction",
        type=float,
        default=TrainConfig.target_fraction,
        help="consistency target, as a fraction of SMAR's agreement",
    )


def ppo_options(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig keyword arguments from `add_ppo_arguments`' options."""
    return {
        "train_batch": args.train_batch,
        "epochs": args.epochs,
        "minibatch": args.minibatch,
        "lr": args.lr,
        "lr_end": args.lr_end if args.lr_end is not None and args.lr_end >= 0 else None,
        "temperature": args.temperature,
        "offset_lr_scale": args.offset_lr_scale,
        "ratio": args.ratio,
        "target_fraction": args.target_fraction,
        "reward": args.reward,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    # Every TrainConfig setting as --train.FIELD: the start (run, init, scratch), PPO, the constraint,
    # the environment (serp: SerpConfig overrides as JSON, reward), evaluation, Ray (address).
    p.add_class_arguments(TrainConfig, "train", skip={"out"})


def run(args: argparse.Namespace) -> int:
    cfg = replace(args.train, out=args.out)
    res = train_policy(cfg)
    fmt = "reward {reward:.3f}  ctr {ctr:.3f}  sat-click {satisfied_click_rate:.3f}  ndcg@10 {ndcg@10:.3f}  consistency {consistency:.3f}"
    print(f"before: {fmt.format(**res.initial_eval)}")
    print(f"after:  {fmt.format(**res.final_eval)}")
    print(
        f"{res.env_steps} env steps in {res.seconds:.0f} s; policy exported to {res.policy_path} ({res.version})"
    )
    return 0
