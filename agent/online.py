"""`smar online`: continual updates that close the loop from live feedback to a new served model.

    smar online [--rounds R] [--impressions-per-round N] [--url URL --registry DIR --log-dir DIR] [--out DIR]

Each round:
  1. traffic  simulated users (agent.traffic) rank pages through the HTTP endpoint, which explores
              (Plackett-Luce at a temperature, exact propensities logged), and post clicks and dwell;
  2. update   the logs since the cursor (serving.feedback_log.read_logs) are split by event into train
              and held-out parts; a candidate is trained off-policy from the serving model with the
              constrained objective (agent.offpolicy);
  3. gate     IPS / SNIPS / DR on the held-out part + within-modality consistency (agent.gate);
  4. publish  if the gate passes: registry publish + in-place swap (serving.deploy.apply_version) while
              a background client keeps sending requests, so a failed request during a swap is counted.
The cursor, the serving version and every round's figures are written atomically to OUT/state.json and
OUT/report.json after each round: a killed run restarted with the same OUT resumes at the next round
and reads only logs after its cursor (nothing re-read, nothing lost: logs written after the cursor,
even by a round that was interrupted, are read by the next update).

By default the command starts its own app on a free loopback port, serving the latest trained policy
(OUT_TRAIN/policy; trained first if missing, from the default pretrain run, itself built if missing),
and stops it at the end. With --url it drives a running app instead (its registry and log folder must
be given, and this process must reach its Ray cluster for the swap: RAY_ADDRESS or --address).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DEFAULT_OUT = "runs/online"
DEFAULT_RUN = "runs/pretrain"
DEFAULT_TRAIN = "runs/train"


@dataclass
class OnlineConfig:
    out: str = DEFAULT_OUT
    run: str = DEFAULT_RUN  # pretrain run: traffic pages + truth, the SMAR reranker (consistency reference)
    policy: str | None = None  # initial policy checkpoint; default: DEFAULT_TRAIN/policy (trained if missing)
    train_out: str = DEFAULT_TRAIN
    rounds: int = 4
    impressions_per_round: int = 1500
    slate_size: int = 10
    temperature: float = 0.5  # exploration temperature of the endpoint
    concurrency: int = 4
    holdout_fraction: float = 0.3
    # The update also replays the logs of up to this many previous rounds (each impression keeps its own
    # logging propensities, so old data stays valid off-policy; PPO's clip down-weights stale policies).
    replay_rounds: int = 3
    # Common random numbers: every round replays the same simulated sessions and user randomness, so
    # round-to-round changes in live reward come from the policy, not from which users arrived.
    common_traffic: bool = True
    consistency_fraction: float = 0.95  # target = this x the SMAR reranker's top-K agreement
    url: str | None = None
    registry: str | None = None
    log_dir: str | None = None
    address: str | None = None
    num_cpus: float = 1.0  # the Ranker replica's CPU reservation
    seed: int = 0
    update: dict = field(default_factory=dict)  # agent.offpolicy.UpdateConfig overrides
    gate: dict = field(default_factory=dict)  # agent.gate.GateConfig overrides

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.impressions_per_round < 10:
            raise ValueError("online needs rounds >= 1 and impressions_per_round >= 10")
        if self.url and not (self.registry and self.log_dir):
            raise ValueError("--url needs --registry and --log-dir of that app (to publish and read logs)")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must lie in (0, 1), got {self.holdout_fraction}")


def _atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=float)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def ensure_run(cfg: OnlineConfig) -> Path:
    """The pretrain run: --run, pretrained on the default world first if it does not exist."""
    if not (Path(cfg.run) / "run.json").exists():
        from pretrain.train import run_pretrain

        print(f"no pretrain run at {cfg.run}: pretraining the default one")
        run_pretrain(None, cfg.run)
    return Path(cfg.run)


def ensure_policy(cfg: OnlineConfig) -> Path:
    """The initial policy: --policy, else the default trained policy (trained first if missing)."""
    if cfg.policy:
        return Path(cfg.policy)
    policy = Path(cfg.train_out) / "policy"
    if (policy / "manifest.json").exists():
        return policy
    from agent.train import TrainConfig, train_policy

    print(f"no trained policy at {policy}: training the default constrained policy")
    return train_policy(TrainConfig(out=cfg.train_out, run=str(ensure_run(cfg)), seed=cfg.seed)).policy_path


def _settle_logs() -> None:
    """Wait out the endpoint's impression flush bound, so everything served so far is readable.

    Feedback is durable before it is acknowledged; impressions are flushed within
    `LogSettings.impression_max_age_s` (serving.feedback_log's durability contract).
    """
    from serving.settings import LogSettings

    time.sleep(LogSettings().impression_max_age_s + 0.5)


def plot_rounds(rounds: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["round"] for r in rounds]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    se = [1.96 * r.get("live_reward_se", 0.0) for r in rounds]
    ax[0].errorbar(
        x, [r["live_reward"] for r in rounds], yerr=se, fmt="o-", capsize=3, label="live reward ±95%"
    )
    for r in rounds:
        if r["published"]:
            ax[0].axvline(r["round"] + 0.5, color="tab:green", alpha=0.25)
    ax[0].set_xlabel("round")
    ax[0].set_ylabel("reward per impression")
    ax[0].set_title("live reward (green line: new version published)")
    ax[1].plot(x, [r["consistency"] for r in rounds], "o-", label="serving version")
    ax[1].plot(x, [r["candidate_consistency"] for r in rounds], "x--", label="candidate")
    ax[1].axhline(rounds[0]["consistency_target"], color="tab:red", ls=":", label="target")
    ax[1].set_xlabel("round")
    ax[1].set_ylabel("within-modality agreement (top-K)")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


class OnlineLoop:
    """State, app lifecycle and rounds of `smar online`."""

    def __init__(self, cfg: OnlineConfig) -> None:
        import torch

        from agent.gate import GateConfig
        from agent.learner import topk_consistency
        from agent.offpolicy import UpdateConfig
        from pretrain.run import PretrainRun

        torch.set_num_threads(1)
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.update_cfg = UpdateConfig(**cfg.update)
        self.gate_cfg = GateConfig(**cfg.gate)
        self.run = PretrainRun.open(ensure_run(cfg))
        self.split = self.run.split("traffic")
        self.registry_dir = Path(cfg.registry or self.out / "registry")
        self.log_dir = Path(cfg.log_dir or self.out / "logs")
        self.state_path, self.report_path = self.out / "state.json", self.out / "report.json"
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())
            print(
                f"resuming {self.out}: {self.state['round']} round(s) done, cursor {self.state['cursor_ms']}"
            )
        else:
            smar, _ = self.run.reranker()
            sample = self.split.pages.select(np.arange(min(len(self.split.pages), 1500)))
            smar_consistency = topk_consistency(smar, sample, cfg.slate_size)
            self.state = {
                "round": 0,
                "cursor_ms": 0,
                "smar_consistency": smar_consistency,
                "consistency_target": cfg.consistency_fraction * smar_consistency,
                "rounds": [],
                "config": asdict(cfg),
            }
        self.url: str | None = cfg.url
        self.owns_app = cfg.url is None

    # ------------------------------------------------------------------ app lifecycle
    def start(self) -> None:
        import ray

        from serving import deploy
        from serving.registry import Registry
        from serving.settings import load_config, with_overrides

        registry = Registry(self.registry_dir)
        if registry.current() is None:
            policy = ensure_policy(self.cfg)
            print(f"publishing the initial policy {policy}")
            registry.publish(policy)
        if not ray.is_initialized():
            # Driving a running app (--url) means joining its Ray cluster, for the in-place swap.
            ray.init(
                address=self.cfg.address or ("auto" if self.cfg.url else None),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        if self.owns_app:
            cfg = with_overrides(
                load_config(),
                port=deploy.free_port(),
                num_cpus=self.cfg.num_cpus,
                args={"registry": str(self.registry_dir), "log_dir": str(self.log_dir)},
                user_config={
                    "version": registry.current().version,
                    "exploration": "plackett_luce",
                    "temperature": self.cfg.temperature,
                },
            )
            self.url = deploy.deploy(cfg)
            print(f"serving {registry.current().version} at {self.url}")

    def stop(self) -> None:
        if self.owns_app:
            from serving import deploy

            _settle_logs()  # the last swap probe's impressions reach disk before the replicas stop
            deploy.shutdown()

    # ------------------------------------------------------------------ one round
    def serving_model(self):
        from pretrain.checkpoint import load_checkpoint
        from serving.registry import Registry

        entry = Registry(self.registry_dir).current()
        model, ckpt = load_checkpoint(entry.path)
        return model, ckpt.version

    def round(self, r: int) -> dict:
        from agent.gate import gate, reward_model_for
        from agent.learner import topk_consistency
        from agent.offpolicy import (
            LoggedBatch,
            logged_batch,
            offpolicy_update,
            save_candidate,
        )
        from agent.traffic import run_traffic
        from envs.simulation import write_parquet_atomic
        from pretrain.checkpoint import make_version
        from serving import deploy
        from serving.feedback_log import read_logs
        from serving.registry import Registry

        cfg = self.cfg
        model, version = self.serving_model()
        t0 = time.time()
        traffic = run_traffic(
            self.url,
            self.split,
            cfg.impressions_per_round,
            seed=cfg.seed * 1000 + (0 if cfg.common_traffic else r),
            slate_size=cfg.slate_size,
            concurrency=cfg.concurrency,
        )
        t_traffic = time.time() - t0
        _settle_logs()
        logs = read_logs(self.log_dir, since_ts=self.state["cursor_ms"] / 1000.0)
        batch = logged_batch(logs, model.config.feature_dims, cfg.slate_size)
        train, holdout = batch.split_holdout(cfg.holdout_fraction, seed=cfg.seed * 1000 + r)
        # Keep this round's logs as our own replay file (read once from the log folder, never again).
        replay_dir = self.out / "replay"
        write_parquet_atomic(logs, replay_dir / f"round-{r:04d}.parquet")
        previous = [
            logged_batch(
                pq.read_table(replay_dir / f"round-{q:04d}.parquet"),
                model.config.feature_dims,
                cfg.slate_size,
            )
            for q in range(max(0, r - cfg.replay_rounds), r)
            if (replay_dir / f"round-{q:04d}.parquet").exists()
        ]
        train = LoggedBatch.concat([*previous, train])
        target = self.state["consistency_target"]
        t1 = time.time()
        candidate, ustats = offpolicy_update(model, train, target, self.update_cfg)
        decision = gate(candidate, holdout, reward_model_for(train), target, self.gate_cfg)
        t_update = time.time() - t1
        serving_consistency = topk_consistency(model, holdout.pages, cfg.slate_size)
        published_version = None
        probe_failed = probe_n = 0
        if decision.publish:
            new_version = make_version(f"online-r{r}")
            path = save_candidate(
                candidate,
                self.out / "candidates" / new_version,
                new_version,
                {"online_round": r, "parent_version": version, "gate": decision.to_json(), "update": ustats},
            )
            published_version = Registry(self.registry_dir).publish(path)
            # Swap in place while a client keeps requesting: any failed request is counted.
            stop = threading.Event()
            probe: dict = {}
            thread = threading.Thread(
                target=lambda: probe.update(
                    stats=run_traffic(
                        self.url,
                        self.split,
                        10**9,
                        seed=cfg.seed * 1000 + 500 + r,
                        slate_size=cfg.slate_size,
                        concurrency=1,
                        stop=stop,
                    )
                )
            )
            thread.start()
            try:
                deploy.apply_version(published_version, url=self.url)
            finally:
                stop.set()
                thread.join()
            probe_failed = probe["stats"].failed_requests
            probe_n = probe["stats"].impressions
        # The next round reads what was logged after everything read now (e.g. the swap probe).
        cursor = (
            int(pc.max(logs["ts"]).cast(pa.int64()).as_py()) + 1 if logs.num_rows else self.state["cursor_ms"]
        )
        rec = {
            "round": r,
            "version": version,
            "published": decision.publish,
            "published_version": published_version,
            "ope": decision.to_json(),
            "consistency": serving_consistency,
            "candidate_consistency": decision.consistency,
            "consistency_target": target,
            "live_reward": traffic.observed_reward,
            "live_reward_se": traffic.observed_reward_se,
            "live_env_reward": traffic.env_reward,
            "impressions": traffic.impressions,
            "logged_impressions": len(batch),
            "train_impressions": len(train),
            "holdout_impressions": len(holdout),
            "failed_requests": traffic.failed_requests + probe_failed,
            "swap_probe_requests": probe_n,
            "update": ustats,
            "seconds": {"traffic": t_traffic, "update_and_gate": t_update},
        }
        self.state["rounds"].append(rec)
        self.state["round"] = r + 1
        self.state["cursor_ms"] = cursor
        _atomic_json(self.state_path, self.state)
        _atomic_json(self.report_path, {"rounds": self.state["rounds"], "config": self.state["config"]})
        return rec

    def run_all(self) -> dict:
        if self.state["round"] >= self.cfg.rounds:
            print(f"{self.out}: all {self.cfg.rounds} rounds already done")
            return {
                "report": str(self.report_path),
                "plot": str(plot_rounds(self.state["rounds"], self.out / "online.png")),
                "rounds": self.state["rounds"],
            }
        self.start()
        try:
            while self.state["round"] < self.cfg.rounds:
                r = self.state["round"]
                rec = self.round(r)
                o = rec["ope"]
                print(
                    f"round {r}: v={rec['version']} live reward {rec['live_reward']:.4f} "
                    f"({rec['impressions']} imp, {rec['failed_requests']} failed) | "
                    f"serving {o['serving_value']['value']:.4f} vs candidate DR {o['dr']['value']:.4f} "
                    f"[{o['dr']['lo']:.4f}, {o['dr']['hi']:.4f}] SNIPS {o['snips']['value']:.4f} "
                    f"IPS {o['ips']['value']:.4f} | consistency {rec['candidate_consistency']:.3f} "
                    f"(target {rec['consistency_target']:.3f}) -> "
                    + (
                        f"PUBLISHED {rec['published_version']}"
                        if rec["published"]
                        else "rejected: " + "; ".join(o["reasons"])
                    )
                )
        finally:
            self.stop()
        plot = plot_rounds(self.state["rounds"], self.out / "online.png")
        return {"report": str(self.report_path), "plot": str(plot), "rounds": self.state["rounds"]}


def evaluate_versions(loop: OnlineLoop, sessions: int, seeds: int = 2) -> list[dict]:
    """Re-evaluate every version the registry served, offline in the simulator, at the serving temperature.

    One round's live reward is noisy; this replays `sessions` simulated sessions per seed on the traffic
    split for each version and reports the observed reward per page (the quantity the loop optimises).
    """
    from agent.offpolicy import observed_reward
    from agent.simulate import score_policy
    from envs.serp_env import RewardConfig
    from envs.simulation import SimulationConfig, simulate
    from pretrain.checkpoint import load_checkpoint
    from serving.registry import Registry

    registry = Registry(loop.registry_dir)
    out = []
    for version in registry.stack():
        model, _ = load_checkpoint(registry.versions_dir / version)
        values = []
        for seed in range(seeds):
            log = simulate(
                score_policy(version, model.score_pages, loop.cfg.temperature),
                loop.split.pages,
                loop.split.truth,
                SimulationConfig(sessions=sessions, slate_size=loop.cfg.slate_size, seed=seed),
            )
            click = np.asarray(log.feedback["click"].to_numpy(zero_copy_only=False), np.float64)
            dwell = np.asarray(log.feedback["dwell"].to_numpy(zero_copy_only=False), np.float64)
            values.append(float(observed_reward(click, dwell, RewardConfig()).sum() / log.pages.num_rows))
        out.append({"version": version, "observed_reward": float(np.mean(values)), "per_seed": values})
        print(
            f"  {version:<40} observed reward/page {np.mean(values):.4f}  (seeds: {np.round(values, 4).tolist()})"
        )
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = OnlineConfig()
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--impressions-per-round", type=int, default=d.impressions_per_round)
    p.add_argument("--out", default=d.out)
    p.add_argument("--run", default=d.run, help="pretrain run (traffic pages, SMAR reference)")
    p.add_argument("--policy", default=None, help="initial policy checkpoint (default: the trained one)")
    p.add_argument("--train-out", default=d.train_out)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--url", default=None, help="drive a running app instead of starting one")
    p.add_argument("--registry", default=None, help="registry folder of the app at --url")
    p.add_argument("--log-dir", default=None, help="log folder of the app at --url")
    p.add_argument("--address", default=None, help="Ray address of the app at --url")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--lr", type=float, default=None, help="learning rate of the off-policy update")
    p.add_argument("--epochs", type=int, default=None, help="passes over each round's logs")
    p.add_argument("--advantage", choices=("reward_to_go", "immediate"), default=None)
    p.add_argument(
        "--evaluate-versions",
        type=int,
        default=0,
        metavar="SESSIONS",
        help="afterwards, re-evaluate every served version offline with this many sessions per seed",
    )
    p.add_argument("--fresh-traffic", action="store_true", help="new simulated sessions every round")


def run(args: argparse.Namespace) -> int:
    cfg = OnlineConfig(
        out=args.out,
        run=args.run,
        policy=args.policy,
        train_out=args.train_out,
        rounds=args.rounds,
        impressions_per_round=args.impressions_per_round,
        temperature=args.temperature,
        concurrency=args.concurrency,
        url=args.url,
        registry=args.registry,
        log_dir=args.log_dir,
        address=args.address,
        seed=args.seed,
        common_traffic=not args.fresh_traffic,
        update={
            k: v
            for k, v in (("lr", args.lr), ("epochs", args.epochs), ("advantage", args.advantage))
            if v is not None
        },
    )
    loop = OnlineLoop(cfg)
    res = loop.run_all()
    rounds = res["rounds"]
    if args.evaluate_versions:
        print(
            f"offline re-evaluation of each version ({args.evaluate_versions} sessions x 2 seeds, T={cfg.temperature}):"
        )
        loop.state["offline_versions"] = evaluate_versions(loop, args.evaluate_versions)
        _atomic_json(loop.state_path, loop.state)
        _atomic_json(
            loop.report_path,
            {
                "rounds": rounds,
                "offline_versions": loop.state["offline_versions"],
                "config": loop.state["config"],
            },
        )
    print(
        f"live reward: first round {rounds[0]['live_reward']:.4f}, last round {rounds[-1]['live_reward']:.4f}; "
        f"failed requests: {sum(r['failed_requests'] for r in rounds)}; "
        f"published {sum(r['published'] for r in rounds)}/{len(rounds)}"
    )
    print(f"report: {res['report']}\nplot:   {res['plot']}")
    return 0
