"""`smar demo`: the whole story end to end on the built-in default world.

world -> single-modal rankers -> SMAR reranker -> offline simulation (merge vs SMAR) -> constrained PPO
-> Ray Serve (HTTP rank + feedback) -> continual online rounds -> a closing table on held-out sessions.
Every artefact lands under --out; the plots' paths are printed at the end.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

from envs.atomic_io import write_json_atomic
from envs.config_io import JsonConfig
from envs.world import WorldConfig, format_summary, generate_world
from pretrain.world_io import save_world


@dataclass(frozen=True)
class DemoConfig(JsonConfig):
    """Every setting of `smar demo` (`--demo.FIELD`; the output folder is `--out`). Every stage runs
    with its command's defaults but for these."""

    out: str = "runs/demo"  # folder for every artefact of the demo
    seed: int = 0  # the world's, pretraining's, the simulator's, PPO's and the online loop's seed
    simulate_sessions: int = 1000  # sessions of the offline simulation (merge vs SMAR)
    train_iterations: int = 8  # PPO iterations
    online_rounds: int = 4
    impressions_per_round: int = 1500


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=DemoConfig.out, help="folder for every artefact of the demo")
    p.add_class_arguments(DemoConfig, "demo", skip={"out"})


def _stage(title: str, t0: float) -> None:
    print(f"\n== {title}  (t = {time.time() - t0:.0f} s)", flush=True)


def run(args: argparse.Namespace) -> int:
    return run_demo(replace(args.demo, out=args.out))


def run_demo(cfg: DemoConfig) -> int:
    import torch

    torch.set_num_threads(1)
    out = Path(cfg.out)
    t0 = time.time()
    plots: dict[str, str] = {}
    _stage("1. world", t0)
    _world(cfg, out)
    _stage("2. SMAR pretraining (single-modal rankers, budgeted annotation, whole-page reranker)", t0)
    run_ = _pretrain(cfg, out)
    _stage("3. offline simulation: merge vs SMAR (greedy) on the traffic split", t0)
    plots.update(_simulate(cfg, out, run_))
    _stage("4. constrained PPO fine-tuning from the SMAR reranker (RLlib)", t0)
    train = _train(cfg, out, run_)
    plots["train/learning_curves"] = str(out / "train" / "learning_curves.png")
    _stage("5. Ray Serve: rank simulator pages over HTTP, send feedback, shut down", t0)
    from serving.demo import serving_demo

    serving_demo(train.policy_path, run_.split("traffic"), out / "serve", n_pages=8, seed=cfg.seed)
    _stage("6. continual online updates (traffic -> logs -> update -> gate -> publish)", t0)
    online_cfg, online = _online(cfg, out, run_, train)
    plots["online/rounds"] = online["plot"]
    _stage("7. closing table: held-out test sessions, deterministic top-10 and as served", t0)
    table = _closing_table(cfg, out, run_, train, online_cfg.temperature)
    write_json_atomic(out / "summary.json", {"closing_table": table, "plots": plots})
    print("\nplots:")
    for name, path in plots.items():
        print(f"  {name:<28} {path}")
    print(f"summary: {out / 'summary.json'}   total time {time.time() - t0:.0f} s")
    return 0


def _world(cfg: DemoConfig, out: Path) -> None:
    world = generate_world(WorldConfig(seed=cfg.seed))
    save_world(world, out / "world")
    print(format_summary(world.summary()))


def _pretrain(cfg: DemoConfig, out: Path):
    from pretrain.config import PretrainConfig
    from pretrain.run import PretrainRun
    from pretrain.train import run_pretrain, run_table

    if (out / "pretrain" / "run.json").exists():
        run_ = PretrainRun.open(out / "pretrain")
        print(f"reusing {run_.root}")
    else:
        run_ = run_pretrain(out / "world", out / "pretrain", PretrainConfig().with_seed(cfg.seed))
    print(run_table(run_))
    return run_


def _simulate(cfg: DemoConfig, out: Path, run_) -> dict[str, str]:
    from agent.simulate import score_policy
    from envs.feedback_summary import format_side_by_side
    from envs.simulation import SimulationConfig, simulate

    traffic = run_.split("traffic")
    smar_model, _ = run_.reranker()
    sim_cfg = SimulationConfig(sessions=cfg.simulate_sessions, seed=cfg.seed)
    summaries, plots = {}, {}
    for name, scorer in (("merge", run_.merge().score), ("SMAR", smar_model.score_pages)):
        log = simulate(score_policy(name, scorer, 0.0), traffic.pages, traffic.truth, sim_cfg)
        summaries[name] = log.summary()
        for kind, path in log.write(out / "simulate" / name).items():
            if str(path).endswith(".png"):
                plots[f"simulate/{name}/{kind}"] = str(path)
    print(format_side_by_side(summaries))
    return plots


def _train(cfg: DemoConfig, out: Path, run_):
    from agent.train import TrainConfig, train_policy

    train = train_policy(
        TrainConfig(
            out=str(out / "train"), run=str(run_.root), iterations=cfg.train_iterations, seed=cfg.seed
        )
    )
    print(f"{'held-out sessions':<22}{'reward':>9}{'ndcg@10':>9}{'consistency':>13}")
    for label, e in (("before (SMAR)", train.initial_eval), ("after (PPO)", train.final_eval)):
        print(f"{label:<22}{e['reward']:>9.4f}{e['ndcg@10']:>9.4f}{e['consistency']:>13.4f}")
    return train


def _online(cfg: DemoConfig, out: Path, run_, train):
    from agent.online import OnlineConfig, OnlineLoop

    online_cfg = OnlineConfig(
        out=str(out / "online"),
        run=str(run_.root),
        policy=str(train.policy_path),
        rounds=cfg.online_rounds,
        impressions_per_round=cfg.impressions_per_round,
        seed=cfg.seed,
    )
    return online_cfg, OnlineLoop(online_cfg).run_all()


def _closing_table(cfg: DemoConfig, out: Path, run_, train, t_serve: float) -> dict:
    """Every stage's policy on the held-out test sessions: deterministic top-10 and as served."""
    from agent.evaluation import evaluate_policy, served_reward
    from serving.registry import Registry

    test = run_.split("test")
    smar_model, smar_ckpt = run_.reranker()
    final = Registry(out / "online" / "registry").current()
    rows = {
        "merge": run_.merge(),
        f"SMAR ({smar_ckpt.version})": smar_model,
        f"RL ({train.version})": str(train.policy_path),
        f"online ({final.version})": str(final.path),
    }
    table = {}
    for name, policy in rows.items():
        table[name] = evaluate_policy(policy, test.pages, test.truth, seed=cfg.seed, repeats=3)
        table[name]["served_reward"] = served_reward(policy, test.pages, test.truth, t_serve)["mean"]
    width = max(len(n) for n in table) + 2
    served = f"served T={t_serve:g}"
    print(f"{'policy':<{width}}{'reward':>9}{served:>15}{'ndcg@10':>9}{'consistency':>13}{'ctr':>8}")
    for name, e in table.items():
        print(
            f"{name:<{width}}{e['reward']:>9.4f}{e['served_reward']:>15.4f}{e['ndcg@10']:>9.4f}"
            f"{e['consistency']:>13.4f}{e['ctr']:>8.4f}"
        )
    print(
        "reward: the deterministic top-10 (what the policy ranks); served: Plackett-Luce slates at the\n"
        "endpoint's exploration temperature (what users of the exploring endpoint see), 3 samples per page"
    )
    return table
