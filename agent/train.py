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

Where is what: this module holds the settings (TrainConfig), the loop (`train_policy`)
and the CLI; the RLlib PPO config, its env wrappers and the policy read back from it are in agent/ppo_config.py, the
metrics log, plots, checkpoints and best-iterate selection in agent/train_log.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.ppo_config import (
    build_ppo_config,
    model_config_json,
    network_shape,
    policy_network,
    pretrain_margin,
)
from agent.train_log import (
    Selection,
    eval_row,
    latest_checkpoint,
    metrics_row,
    plot_learning_curves,
    plot_title,
    progress,
    read_csv,
    save_algo,
    tb_writer,
    write_csv,
    write_scalars,
)
from envs.atomic_io import write_json_atomic
from envs.serp_env import SerpConfig
from pretrain.run import DEFAULT_RUN

log = logging.getLogger(__name__)


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
    # The batched SerpVectorEnv (envs.serp_vector_env: one user-model call per vector step) instead of
    # gymnasium's SyncVectorEnv of SerpEnvs (False: the previous path, kept measurable).
    vector_env: bool = True
    seed: int = 0
    # PPO. The defaults are the ones `smar bench agent` measured (RESULTS.md).
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
    # Exploration, in two levels (agent.layout_exploration): first the page layout, a Gaussian offset
    # of sigma `layout_noise` per modality and page, then the items, logits = scores / temperature.
    # Items' noise alone shows the layout's gradient only at a temperature (4) whose pages are nearly
    # random; the layout's own noise shows more of it per batch, far cheaper (RESULTS.md).
    # Not the endpoint's (SERVING_TEMPERATURE). Export and evaluation are deterministic (no noise).
    temperature: float = 0.5
    layout_noise: float = 2.0  # 0: the items' Plackett-Luce noise only
    # constraint (agent.learner.ConstraintConfig)
    target: float | None = None  # absolute consistency target; None -> target_fraction x SMAR's
    # Above 0.95: dual ascent holds the target on average over training pages, and the last iterate's
    # test consistency lands a little lower, so the margin must cover that (RESULTS.md).
    target_fraction: float = 0.99
    multiplier_lr: float = 20.0
    # hinge margin of the constraint's surrogate; None: the margin the run's SMAR reranker was
    # pretrained with (its manifest's loss config; 1.0, the SMAR authors', if it records none), so the
    # constraint asks for the score gaps SMAR's own consistency loss asked for, whatever its scale
    margin: float | None = None
    multiplier_init: float = 0.0
    reference_kl_coeff: float = 0.0  # KL(pi_SMAR || pi): needs a SMAR reranker (not with --scratch)
    # The layout (the offset head) must travel several score units per intent within the budget, the
    # item scoring only a little: at temperature 0.5 a step of the body moves the slate's log-ratio
    # 8 x as far as at 4, so it learns at an eighth of lr (RESULTS.md, "Constrained RL").
    offset_lr_scale: float = 30.0  # the reranker's modality-offset head learns at this x lr
    body_lr_scale: float = 0.125  # the rest of the reranker at this x lr (0: only the layout learns)
    # PPO's importance ratio (agent.learner.ConstraintConfig.ratio): "slate" (one per ranking) or
    # "position" (one per placement, with position-level reward-to-go under the cascade)
    ratio: str = "slate"
    layout_ratio: str = "joint"  # the layout's trust region: joint or own (ConstraintConfig.layout_ratio)
    # agent.learner.ConstraintConfig.drop_bootstrap_rows: minibatches of real pages only (fewer,
    # larger updates per iteration; off: it trained worse on 2 of 2 paired seeds, README)
    drop_bootstrap_rows: bool = False
    # environment / evaluation
    # the environment: slots, shown positions, session length, the user model and the product reward
    # (`--train.serp.reward.name clicks`); n_max None = the longest traffic or test page
    serp: SerpConfig = field(default_factory=SerpConfig)
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
        if isinstance(self.serp, dict):  # from JSON (a saved run's config, a child process's argv)
            self.serp = SerpConfig.from_dict(self.serp)
        if self.scratch and self.init:
            raise ValueError("--scratch and --init are exclusive")
        if self.scratch and self.reference_kl_coeff > 0 and not self.run:
            raise ValueError("reference_kl_coeff needs a SMAR reranker (the run's)")
        for name in ("iterations", "train_batch", "minibatch", "epochs", "envs_per_runner"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.env_runners < 0:
            raise ValueError(f"TrainConfig.env_runners must be >= 0, got {self.env_runners}")
        if self.temperature <= 0 or self.layout_noise < 0:
            raise ValueError(
                f"TrainConfig needs temperature > 0 and layout_noise >= 0, got {self.temperature}, "
                f"{self.layout_noise}"
            )

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


def serp_config_for(pages_list: list, overrides: SerpConfig | dict | None = None) -> SerpConfig:
    """SerpConfig (or overrides of the defaults) with n_max resolved over every split the policy plays."""
    cfg = overrides if isinstance(overrides, SerpConfig) else SerpConfig.from_dict(dict(overrides or {}))
    return cfg.for_pages(pages_list)


# ----------------------------------------------------------------------------- the Python API
def open_run(path: str | Path):
    """The pretrain run (raises FileNotFoundError naming the `smar pretrain` command if absent)."""
    from pretrain.run import PretrainRun

    return PretrainRun.open(path)


@dataclass
class _Setup:
    """What step 1 of `train_policy` resolves before Ray starts: data, environment, start policy, target."""

    out: Path
    train_split: Any  # the pretrain run's `traffic` split (training pages and their truth)
    test_split: Any  # its held-out `test` split (evaluation only)
    serp: SerpConfig
    smar_net: Any
    smar_ckpt: Any
    model_config: dict  # the RL module's (agent.rl_module.module_spec)
    init_desc: dict
    smar_agree: float  # SMAR's top-K agreement on the training pages
    target: float  # the consistency target


class _Training:
    """The algorithm of one run with its evaluations: of the current policy on the held-out test pages, and
    of iterates on training traffic for best-iterate selection."""

    def __init__(self, cfg: TrainConfig, s: _Setup, algo, margin: float) -> None:
        self.cfg, self.s, self.algo, self.margin = cfg, s, algo, margin
        self.selection = Selection(s.out / "best", cfg.constraint, s.target)

    def policy(self):
        """The learner's current policy as a reranker."""
        return policy_network(self.algo, model_config_json(self.s.model_config, self.s.smar_ckpt))

    def play(self, net, split, seed: int, repeats: int) -> dict:
        """`net`'s deterministic evaluation on `split`'s sessions (agent.evaluation.evaluate_policy)."""
        from agent.evaluation import evaluate_policy

        return evaluate_policy(net, split.pages, split.truth, seed=seed, repeats=repeats, serp=self.s.serp)

    def evaluate(self, repeats: int, seed: int, net=None) -> dict:
        """Held-out test evaluation of `net` (default: the learner's current policy)."""
        return self.play(self.policy() if net is None else net, self.s.test_split, seed, repeats)

    def select(self, row: dict, iteration: int) -> None:
        """Play the current policy on training traffic, record it in `row`, offer it to the selection."""
        from agent.learner import topk_consistency

        cfg, s = self.cfg, self.s
        net = self.policy()
        r = self.play(net, s.train_split, cfg.seed + 30_000, cfg.select_repeats)["reward"]
        agreement = topk_consistency(net, s.train_split.pages, s.serp.slate_size)
        row["select_reward"], row["select_consistency"] = r, agreement
        self.selection.offer(net, iteration, r, agreement)


def train_policy(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) one PPO policy as configured; export it; return where everything is."""
    import ray

    from pretrain.runtime import frozen_heap, torch_threads

    t0 = time.time()
    s = _setup(cfg)  # 1. data, environment, start policy, constraint target
    started_ray = _start_ray(cfg)
    with torch_threads(cfg.torch_threads):
        margin = cfg.margin if cfg.margin is not None else pretrain_margin(s.smar_ckpt)
        algo = build_ppo_config(cfg, s.train_split, s.model_config, s.serp, s.target, margin).build_algo()
        try:
            t = _Training(cfg, s, algo, margin)
            initial_eval, rows, start_iter = _initial_evaluation(t)  # 2. (or where --resume continues)
            with frozen_heap():  # the set-up's objects out of the garbage collector's full passes
                rows, env_steps = _iterate(t, rows, start_iter)  # 3. PPO iterations, logged, checkpointed
            net = _best_iterate(t)  # 4. the policy to export
            final_eval = t.evaluate(cfg.final_eval_repeats, cfg.seed + 20_000, net)
        finally:
            algo.stop()
            if started_ray:
                ray.shutdown()
    return _export(t, net, rows, env_steps, initial_eval, final_eval, t0)  # 5.


def _setup(cfg: TrainConfig) -> _Setup:
    """Step 1: the pretrain run's splits, the SerpConfig, the start policy, the consistency target."""
    from agent.learner import topk_consistency
    from agent.rl_module import scratch_model_config
    from pretrain.checkpoint import load_checkpoint

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    run = open_run(cfg.run)
    train_split, test_split = run.split("traffic"), run.split("test")
    serp = serp_config_for([train_split.pages, test_split.pages], cfg.serp)
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
    smar_agree = topk_consistency(smar_net, train_split.pages, serp.slate_size)
    target = cfg.target if cfg.target is not None else cfg.target_fraction * smar_agree
    return _Setup(
        out, train_split, test_split, serp, smar_net, smar_ckpt, model_config, init_desc, smar_agree, target
    )


def _start_ray(cfg: TrainConfig) -> bool:
    """Start Ray unless it runs (cfg.address, RAY_ADDRESS, or a local one); True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        kw["address"] = address
    else:
        kw["num_cpus"] = max(2, cfg.env_runners + 1)
    ray.init(**kw)
    return True


def _initial_evaluation(t: _Training) -> tuple[dict, list[dict], int]:
    """Step 2: the starting policy's test evaluation; then either --resume's checkpoint, rows and selection,
    or iteration 0's row (and selection offer). Returns (initial evaluation, rows, first iteration)."""
    cfg, out = t.cfg, t.s.out
    rows: list[dict] = []
    start_iter = 0
    initial_eval = t.evaluate(cfg.final_eval_repeats, cfg.seed + 20_000)  # the starting policy
    latest = latest_checkpoint(out) if cfg.resume else None
    if latest:
        t.algo.restore_from_path(str((out / "checkpoints" / latest["path"]).resolve()))
        start_iter = int(latest["iteration"])
        if (out / "metrics.csv").exists():
            rows = [r for r in read_csv(out / "metrics.csv") if r["iteration"] <= start_iter]
    elif cfg.resume:
        log.info("--resume: no checkpoint under %s; starting fresh", out / "checkpoints")
    if cfg.resume and start_iter > 0:
        t.selection.restore()
    if start_iter == 0:
        rows = [eval_row(0, 0, t.evaluate(cfg.eval_repeats, cfg.seed + 10_000))]
        if cfg.select_every:
            t.select(rows[0], 0)
    return initial_eval, rows, start_iter


def _iterate(t: _Training, rows: list[dict], start_iter: int) -> tuple[list[dict], int]:
    """Step 3: PPO iterations start_iter + 1 .. cfg.iterations, each evaluated, selected and checkpointed as
    configured and logged (metrics.csv, TensorBoard, progress bar). Returns (rows, env steps)."""
    cfg, out = t.cfg, t.s.out
    writer = tb_writer(out)
    bar = progress(range(start_iter, cfg.iterations), cfg.progress, total=cfg.iterations, initial=start_iter)
    env_steps = int(rows[-1]["env_steps"]) if rows else 0
    for it in bar:
        t_it, c_it = time.perf_counter(), time.process_time()
        result = t.algo.train()
        elapsed, cpu = time.perf_counter() - t_it, time.process_time() - c_it
        it1 = it + 1
        do_eval = (cfg.eval_every and it1 % cfg.eval_every == 0) or it1 == cfg.iterations
        evaluation = t.evaluate(cfg.eval_repeats, cfg.seed + 10_000) if do_eval else None
        row = metrics_row(it1, result, elapsed, evaluation, cpu)
        if cfg.select_every and (it1 % cfg.select_every == 0 or it1 == cfg.iterations):
            t.select(row, it1)
        env_steps = int(row["env_steps"])
        rows.append(row)
        write_csv(out / "metrics.csv", rows)
        write_scalars(writer, row, env_steps)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(
                steps=env_steps,
                ret=f"{row['train_return']:.3f}",
                train_consistency=f"{row['train_consistency']:.3f}",
                lam=f"{row['multiplier']:.2f}",
            )
        if cfg.checkpoint_every and (it1 % cfg.checkpoint_every == 0 or it1 == cfg.iterations):
            save_algo(t.algo, out, it1, env_steps, cfg.keep_checkpoints)
    if writer is not None:
        writer.close()
    return rows, env_steps


def _best_iterate(t: _Training):
    """Step 4: the selected iterate (TrainConfig.select_every) or else the last one, as a reranker."""
    from pretrain.checkpoint import load_checkpoint

    if t.cfg.select_every and t.selection.path.exists():
        net, _ = load_checkpoint(t.selection.path)
        return net
    return t.policy()


def _export(
    t: _Training, net, rows: list[dict], env_steps: int, initial_eval: dict, final_eval: dict, t0: float
) -> TrainResult:
    """Step 5: learning curves, the policy as a reranker checkpoint (policy/), result.json."""
    from pretrain.checkpoint import make_version, save_checkpoint

    cfg, s = t.cfg, t.s
    plot_learning_curves(rows, s.out / "learning_curves.png", title=plot_title(cfg))
    version = make_version("ppo")
    extra = {
        "kind": "ppo",
        "train_config": cfg.to_json(),
        "init": s.init_desc,
        "smar_version": s.smar_ckpt.version,
        "consistency_target": s.target,
        "consistency_margin": t.margin,
        "smar_select_consistency": s.smar_agree,
        "env_steps": env_steps,
        "selected_iteration": t.selection.iteration if cfg.select_every else cfg.iterations,
        "metrics": {"initial_eval": initial_eval, "final_eval": final_eval},
    }
    policy_path = s.out / "policy"
    save_checkpoint(net, policy_path, version=version, extra=extra, overwrite=True)
    seconds = time.time() - t0
    summary = {
        "config": cfg.to_json(),
        "policy": str(policy_path),
        "version": version,
        "env_steps": env_steps,
        "initial_eval": initial_eval,
        "final_eval": final_eval,
        "consistency_target": s.target,
        "seconds": round(seconds, 1),
    }
    write_json_atomic(s.out / "result.json", summary, default=str)
    return TrainResult(s.out, policy_path, version, rows, initial_eval, final_eval, env_steps, seconds)


# ----------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    # Every TrainConfig setting as --train.FIELD: the start (run, init, scratch), PPO, the constraint,
    # the environment (--train.serp.*: slots, user model, reward), evaluation, Ray (address).
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
