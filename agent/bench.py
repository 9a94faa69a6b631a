"""`smar bench agent`: random / merge / SMAR / PPO variants, side by side on the same held-out sessions.

    smar bench agent [--out DIR] [--bench.seeds N] [--bench.run RUN] [--bench.iterations I]
                     [--bench.train_batch B] [--bench.FIELD V ...]   (every AgentBenchConfig field)

For each seed, every method is evaluated as a deterministic policy (top-K by score) on the held-out
`test` sessions of the pretrain run with the same simulator seed and repeats (`agent.evaluation`):
  random             uniform random slates
  merge              single-modal scores merged by calibration (no page labels; pretrain.merge)
  smar               the pretrained SMAR reranker, no RL
  ppo_scratch        PPO from a fresh network of the same shape, constraint on
  ppo_unconstrained  PPO from SMAR, constraint off
  ppo_constrained    PPO from SMAR, consistency constraint on (Lagrangian, target 0.99 x SMAR's)
Every RL method gets the same env-step budget (iterations x train batch). Reference policies
(`agent.reward_landscape`: SMAR with the best per-modality offsets, simulator-truth ceilings, the
untrained networks ppo_scratch starts from) are reported apart from the methods: they map what any
ranking can earn in the simulator and why.

Writes DIR/report.json ({"methods": {NAME: {metric: {"mean", "std"}, "env_steps": n}}, ...}, std over
seeds), DIR/learning_curves.png (evaluation reward and consistency against env steps for the RL
methods, mean and min-max spread over seeds), DIR/reward_vs_ndcg.png (every method and reference) and
DIR/runs/{method}/seed{s}/ (each run's `smar train` folder). The report, its checks and plots are in
agent/bench_report.py, the training-speed comparison (`--bench.speed_against`) in agent/bench_speed.py.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.bench_report import (
    FROM_SMAR,
    RL_METHODS,
    aggregate,
    checks,
    format_report,
    landscape,
    layout_summary,
    plot_curves,
    plot_landscape,
)
from agent.evaluation import evaluate_policy, random_scorer
from agent.layout_diagnosis import layout_decomposition, linear_layout_ceiling
from agent.ppo_config import ppo_options
from agent.reward_landscape import fresh_network, intent_readability, layout_gradient, reference_policies
from agent.train import TrainConfig, serp_config_for, train_policy
from agent.train_log import upgrade_row
from envs.atomic_io import write_json_atomic
from envs.config_io import JsonConfig
from envs.reward import RewardConfig
from pretrain.run import DEFAULT_RUN, open_or_pretrain

REFERENCE_SETS = ("core", "all")


@dataclass(frozen=True)
class AgentBenchConfig(JsonConfig):
    """Every setting of `smar bench agent` (`--bench.FIELD`; the output folder is `--out`)."""

    out: str = "results/agent"
    seeds: int = 3
    run: str = DEFAULT_RUN  # pretrain run (trained with defaults if missing)
    iterations: int = 8  # PPO iterations per RL run (every RL method gets the same env-step budget)
    # PPO, as `smar train` takes it (defaults: TrainConfig's; agent.ppo_config.ppo_options maps them)
    train_batch: int = TrainConfig.train_batch  # env steps (pages) per iteration
    epochs: int = TrainConfig.epochs
    minibatch: int = TrainConfig.minibatch  # PPO minibatch (pages)
    lr: float = TrainConfig.lr
    lr_end: float | None = TrainConfig.lr_end  # linear decay from lr to this; None or negative: constant
    temperature: float = TrainConfig.temperature  # training exploration: logits = scores / T
    layout_noise: float = TrainConfig.layout_noise  # sigma of the Gaussian layout exploration
    offset_lr_scale: float = TrainConfig.offset_lr_scale  # the modality-offset head (page layout) x lr
    body_lr_scale: float = TrainConfig.body_lr_scale  # the rest of the reranker x lr
    ratio: str = TrainConfig.ratio  # PPO importance ratio: slate, or position (position-level reward-to-go)
    layout_ratio: str = TrainConfig.layout_ratio  # the layout's trust region: joint, or own
    reward: str = RewardConfig.name  # product reward by name (envs.reward.REWARD_NAMES)
    target_fraction: float = TrainConfig.target_fraction  # consistency target, x SMAR's consistency
    eval_every: int = 2
    # Each RL run exports its best iterate on traffic (agent.train_log.Selection, checked at the start
    # and every N iterations; never on test); 0: the last iterate. Off by default: it guards against a
    # bad last iterate (PPO from SMAR is decided by where its first large steps land), but the start is
    # a candidate, so when RL does not beat SMAR on traffic both RL methods from SMAR export SMAR
    # itself, which makes their comparison degenerate (RESULTS.md, "Constrained RL defaults");
    # ppo_scratch picks its most consistent iterate when none meets the target.
    select_every: int = 0
    eval_repeats: int = 10  # plays of each held-out session per method and seed
    # all: the whole bench here; seed:S or references: one piece into OUT/parts/ (pieces can run as
    # parallel processes); assemble: the report from OUT/parts/, missing pieces computed
    part: str = "all"
    # A source tree of the code to compare training speed with (e.g. an older commit via git
    # archive): alternating timed runs of both, written to OUT/speed.json (agent.bench_speed).
    speed_against: str | None = None
    speed_only: bool = False  # with speed_against: only the speed runs
    speed_repeats: int = 3
    speed_iterations: int = 5
    # core: SMAR + offsets (fixed / per intent), sort by true grade, true grade + attractiveness +
    # offsets, the fresh networks; all: also SMAR + true attractiveness + offsets
    references: str = "core"

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.ratio not in ("slate", "position"):
            raise ValueError(f"ratio must be slate or position, got {self.ratio!r}")
        if self.layout_ratio not in ("joint", "own"):
            raise ValueError(f"layout_ratio must be joint or own, got {self.layout_ratio!r}")
        if self.references not in REFERENCE_SETS:
            raise ValueError(f"references must be one of {REFERENCE_SETS}, got {self.references!r}")
        seed_part = self.part.startswith("seed:") and self.part[5:].isdigit()
        if not (seed_part or self.part in ("all", "references", "assemble")):
            raise ValueError(f"part must be all, seed:S, references or assemble, got {self.part!r}")


def _train_config(method: str, seed: int, cfg: AgentBenchConfig) -> TrainConfig:
    return TrainConfig(
        out=str(Path(cfg.out) / "runs" / method / f"seed{seed}"),
        run=cfg.run,
        scratch=method == "ppo_scratch",
        constraint=method != "ppo_unconstrained",
        iterations=cfg.iterations,
        **ppo_options(cfg),
        seed=seed,
        eval_every=cfg.eval_every,
        select_every=cfg.select_every,
        eval_repeats=2,
        final_eval_repeats=2,
        checkpoint_every=0,
        progress=False,
    )


def layout_gradients(run, smar, serp, cfg: AgentBenchConfig) -> dict[str, dict]:
    """`layout_gradient` on the traffic pages at the policies the RL runs start from (SMAR, and the
    fresh network of ppo_scratch seed 0): at the bench's exploration (temperature and layout noise),
    and at the items' Plackett-Luce noise alone at 4 (the previous default) and 0.5: how clearly one
    PPO batch shows which modality to move up, and what the exploration costs."""
    train = run.split("traffic")
    fresh = fresh_network(train.pages, smar, seed=0)
    settings = {(4.0, 0.0), (0.5, 0.0), (cfg.temperature, cfg.layout_noise)}
    out = {}
    for name, net in (("smar", smar), ("fresh_network_seed0", fresh)):
        scores = net.score_pages(train.pages)
        for t, sigma in sorted(settings):
            key = f"{name}@T{t:g}" + (f"+layout{sigma:g}" if sigma else "")
            out[key] = layout_gradient(
                scores, train.pages, train.truth, serp, t, cfg.train_batch, layout_noise=sigma
            )
    return out


@dataclass(frozen=True)
class _Setup:
    """What every piece of the bench shares: the pretrain run, its test split, the SERP and SMAR."""

    run: Any
    test: Any
    serp: Any
    smar: Any


def _setup(cfg: AgentBenchConfig) -> _Setup:
    run = open_or_pretrain(cfg.run)
    test = run.split("test")
    serp = serp_config_for([run.scored_pages("traffic"), test.pages], {"reward": {"name": cfg.reward}})
    smar, _ = run.reranker()
    return _Setup(run, test, serp, smar)


def _seed_part(cfg: AgentBenchConfig, seed: int, s: _Setup) -> dict:
    """Every method of one seed: baselines evaluated, RL methods trained and evaluated."""
    eval_seed = 1_000 + seed

    def ev(policy):
        return evaluate_policy(
            policy, s.test.pages, s.test.truth, seed=eval_seed, repeats=cfg.eval_repeats, serp=s.serp
        )

    part: dict[str, dict] = {}
    for name, policy in (("random", random_scorer(seed)), ("merge", s.run.merge()), ("smar", s.smar)):
        part[name] = {"eval": ev(policy)}
    for method in RL_METHODS:
        t = time.time()
        res = train_policy(_train_config(method, seed, cfg))
        seconds = time.time() - t
        trained = [r for r in res.history if r["iteration"] > 0]
        train_s = sum(r["time_s"] for r in trained)  # algo.train() only (no evaluation)
        cpu_s = sum(r["cpu_s"] for r in trained)
        part[method] = {
            "eval": ev(res.policy_path),
            "env_steps": res.env_steps,
            "history": res.history,
            "seconds": seconds,
            "steps_per_s": res.env_steps / train_s if train_s > 0 else float("nan"),
            "steps_per_cpu_s": res.env_steps / cpu_s if cpu_s > 0 else float("nan"),
        }
        if method in FROM_SMAR and s.smar.offset_head is not None:  # its layout move, per intent and page
            part[method]["layout"] = layout_decomposition(
                res.policy_path, s.smar, s.test, s.serp, seed=eval_seed, repeats=cfg.eval_repeats
            )
        r = part[method]["eval"]
        print(
            f"seed {seed} {method:<18} reward {r['reward']:.4f} consistency {r['consistency']:.4f} "
            f"({res.env_steps} env steps, {seconds:.0f} s)",
            flush=True,
        )
    return part


def _references_part(cfg: AgentBenchConfig, s: _Setup) -> dict:
    refs = reference_policies(
        s.run, s.smar, s.serp, seed=1_000, repeats=cfg.eval_repeats, attractiveness=cfg.references == "all"
    )
    return {
        "references": refs,
        "linear_layout_ceiling": linear_layout_ceiling(
            s.smar,
            s.run.split("traffic"),
            s.test,
            refs["smar_modality_intent_offsets"]["offsets"],
            s.serp,
            seed=1_000,
            repeats=cfg.eval_repeats,
        ),
        "layout_gradient": layout_gradients(s.run, s.smar, s.serp, cfg),
        "intent_readability": intent_readability(s.run.split("traffic"), s.run.split("test")),
    }


class _Parts:
    """The bench's pieces (one per seed, and the references), each written to OUT/parts/ when computed;
    with `part: assemble` a piece already there is read instead."""

    def __init__(self, cfg: AgentBenchConfig, setup: _Setup) -> None:
        self.cfg, self.setup = cfg, setup
        self.dir = Path(cfg.out) / "parts"
        self.dir.mkdir(parents=True, exist_ok=True)

    def _cached(self, name: str, compute) -> dict:
        path = self.dir / f"{name}.json"
        if self.cfg.part == "assemble" and path.exists():
            return json.loads(path.read_text())
        part = compute()
        write_json_atomic(path, part)
        return part

    def seed(self, seed: int) -> dict:
        part = self._cached(f"seed{seed}", lambda: self._seed(seed))
        for method in RL_METHODS:  # a piece an older tree wrote: its metrics rows in the current columns
            if "history" in part.get(method, {}):
                part[method]["history"] = [upgrade_row(r) for r in part[method]["history"]]
        return part

    def references(self) -> dict:
        return self._cached("references", lambda: _references_part(self.cfg, self.setup))

    def _seed(self, seed: int) -> dict:
        import ray

        started = not ray.is_initialized()
        if started:  # one Ray for the seed's runs; the RL runs sample in the driver (one core)
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            return _seed_part(self.cfg, seed, self.setup)
        finally:
            if started:
                ray.shutdown()


def run_bench(cfg: AgentBenchConfig) -> dict | None:
    """The whole bench in this process (`part: all`), or one piece of it written to OUT/parts/
    (`seed:S`, `references`) so that pieces can run as parallel processes, and `assemble` builds the
    report from OUT/parts/ (computing any piece that is missing)."""
    t0 = time.time()
    setup = _setup(cfg)
    parts = _Parts(cfg, setup)
    if cfg.part.startswith("seed:"):
        parts.seed(int(cfg.part.split(":")[1]))
        return None
    if cfg.part == "references":
        parts.references()
        return None
    by_seed = [parts.seed(s) for s in range(cfg.seeds)]
    refs = parts.references()
    report = _report(cfg, setup, by_seed, refs, t0)
    out = Path(cfg.out)
    write_json_atomic(out / "report.json", report)
    histories = {m: [p[m]["history"] for p in by_seed] for m in RL_METHODS}
    plot_curves(histories, out / "learning_curves.png")
    plot_landscape(report["methods"], report["references"], out / "reward_vs_ndcg.png")
    return report


def _report(cfg: AgentBenchConfig, s: _Setup, by_seed: list[dict], refs: dict, t0: float) -> dict:
    methods = aggregate(by_seed)
    references = refs["references"]
    return {
        "methods": methods,
        "references": references,
        "landscape": landscape(methods, references),
        "layout_gradient": refs["layout_gradient"],
        "layout_decomposition": layout_summary(by_seed),
        "linear_layout_ceiling": refs.get("linear_layout_ceiling"),
        "checks": checks(methods, references),
        "setup": {
            "run": str(s.run.root),
            "seeds": len(by_seed),
            "reward": cfg.reward,
            "eval": {
                "split": "test",
                "sessions": int(len(np.unique(s.test.pages.query_id))),
                "repeats": cfg.eval_repeats,
            },
            "rl_budget_env_steps": cfg.iterations * cfg.train_batch,
            "train_config": _train_config("ppo_constrained", 0, cfg).to_json(),
            "serp": s.serp.to_json(),
            "seconds": round(time.time() - t0, 1),
            "parts": cfg.part,
        },
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=AgentBenchConfig.out, help="folder for the report, plots and runs")
    p.add_class_arguments(AgentBenchConfig, "bench", skip={"out"})


def run(args: argparse.Namespace) -> int:
    cfg = replace(args.bench, out=args.out)
    if cfg.speed_against:
        from agent.bench_speed import speed_comparison

        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        speed = speed_comparison(cfg, _train_config("ppo_constrained", 0, cfg), out)
        write_json_atomic(out / "speed.json", speed)
        for key in ("env_steps_per_s", "env_steps_per_cpu_s"):
            st = speed[f"speedup_{key}"]
            print(
                f"speed-up in {key}: {st['mean']:.2f} x (rounds {', '.join(f'{x:.2f}' for x in st['per_seed'])})"
            )
        if cfg.speed_only:
            return 0
    report = run_bench(cfg)
    if report is None:
        print(f"wrote the {cfg.part} piece under {Path(cfg.out) / 'parts'}")
        return 0
    print(format_report(report))
    names = ", ".join(
        str(Path(cfg.out) / f) for f in ("report.json", "learning_curves.png", "reward_vs_ndcg.png")
    )
    print(f"wrote {names}")
    return 0
