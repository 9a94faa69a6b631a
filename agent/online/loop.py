"""`smar online`: continual updates that close the loop from live feedback to a new served model.

    smar online [--rounds R] [--impressions-per-round N] [--temperature T] [--drift SPEC] [--out DIR]
                [--url URL --registry DIR --log-dir DIR]

Each round:
  1. traffic  simulated users (agent.traffic) rank pages through the HTTP endpoint, which explores
              (Plackett-Luce at a temperature, exact propensities logged), and post clicks and dwell;
              several sessions per client thread share one /rank/batch and one /feedback/batch request;
  2. update   the logs since the cursor (serving.feedback_log.read_logs) are split by *session* into
              train and gate parts (a fixed seeded share of the traffic sessions is the gate's, in every
              round, replayed rounds included); a candidate is trained off-policy from the serving model
              with the constrained objective (agent.offpolicy, agent.constraint);
  3. gate     a lower confidence bound of the candidate-minus-serving difference, paired on the
              held-out impressions (cascade DR), + within-modality consistency (agent.gate);
  4. publish  if the gate passes: registry publish + in-place swap (serving.deploy.apply_version) while
              a background client keeps sending requests, so a failed request during a swap is counted.
  5. held-out the serving version, the version after the decision and a frozen copy of the initial
              policy are played on held-out sessions no round trains on (agent.online.heldout), both
              deterministic and as served with exploration; with --drift the traffic and the held-out
              sessions come from the drifted world from the drift round on (agent.online.drift).
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
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from envs.atomic_io import write_json_atomic, write_parquet_atomic
from pretrain.run import DEFAULT_RUN, open_or_pretrain

DEFAULT_OUT = "runs/online"
DEFAULT_TRAIN = "runs/train"


@dataclass
class OnlineConfig:
    out: str = DEFAULT_OUT
    run: str = DEFAULT_RUN  # pretrain run: traffic pages + truth, the SMAR reranker (consistency reference)
    policy: str | None = None  # initial policy checkpoint; default: DEFAULT_TRAIN/policy (trained if missing)
    train_out: str = DEFAULT_TRAIN
    rounds: int = 4
    impressions_per_round: int = 10_000
    slate_size: int = 10
    # The exploration budget: the endpoint serves Plackett-Luce at this temperature; every round reports
    # its live cost on held-out sessions (served vs deterministic reward of the same version).
    temperature: float = 0.5
    concurrency: int = 4  # client threads
    # Sessions per client thread sharing one POST /rank/batch + one POST /feedback/batch per step
    # (1: one /rank and one /feedback request per impression). Each page is still its own event.
    client_batch: int = 32
    fast_path: bool = True  # Serve's direct ingress (serving.deploy.enable_fast_path) for the app we start
    # The gate's share of the traffic *sessions*: a fixed, seeded set of traffic sessions whose
    # impressions only the gate sees (never the update, in no round, also not through replay), so the
    # gate judges the candidate on users it was not trained on.
    holdout_fraction: float = 0.3
    # A rejected candidate that the gate did not find worse (paired difference >= 0) is where the next
    # round's update starts (still trained on the serving version's logs, gated against it): small
    # consistent gains add up over rounds instead of being discarded by each rejection.
    continue_learner: bool = True
    # The update also replays the logs of up to this many previous rounds (each impression keeps its own
    # logging propensities, so old data stays valid off-policy; PPO's clip down-weights stale policies).
    # After a drift, replayed logs are from the old world, so a short replay follows the change faster.
    replay_rounds: int = 0
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
    # agent.offpolicy.UpdateConfig overrides. Measured (agent.online.diagnose, README): the whole
    # network moved by PPO on one round of logs follows noise; the modality-offset head's bias alone
    # (one score shift per modality), with a wide trust region (clip 1, no KL: the gate is the
    # safeguard), learns a changed modality quality in steps the gate can certify.
    update: dict = field(
        default_factory=lambda: {
            "epochs": 3,
            "body_lr_scale": 0.0,
            "offset_lr_scale": 10.0,
            "offset_params": "bias",
            "clip": 1.0,
            "kl_coeff": 0.0,
        }
    )
    gate: dict = field(default_factory=dict)  # agent.gate.GateConfig overrides
    heldout: dict = field(default_factory=dict)  # agent.online.heldout.HeldoutConfig overrides
    reward: str = "success"  # envs.reward.RewardConfig name: traffic, logged reward and held-out sessions
    drift: dict | None = None  # agent.online.drift.DriftConfig fields; None: the world stays as it is

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.impressions_per_round < 10:
            raise ValueError("online needs rounds >= 1 and impressions_per_round >= 10")
        if self.url and not (self.registry and self.log_dir):
            raise ValueError("--url needs --registry and --log-dir of that app (to publish and read logs)")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must lie in (0, 1), got {self.holdout_fraction}")
        if self.temperature <= 0:
            raise ValueError(f"the endpoint explores: temperature must be > 0, got {self.temperature}")


def ensure_policy(cfg: OnlineConfig) -> Path:
    """The initial policy: --policy, else the default trained policy (trained first if missing)."""
    if cfg.policy:
        return Path(cfg.policy)
    policy = Path(cfg.train_out) / "policy"
    if (policy / "manifest.json").exists():
        return policy
    from agent.train import TrainConfig, train_policy

    print(f"no trained policy at {policy}: training the default constrained policy")
    return train_policy(
        TrainConfig(out=cfg.train_out, run=str(open_or_pretrain(cfg.run).root), seed=cfg.seed)
    ).policy_path


def _settle_logs() -> None:
    """Wait out the endpoint's impression flush bound, so everything served so far is readable.

    Feedback is durable before it is acknowledged; impressions are flushed within
    `LogSettings.impression_max_age_s` (serving.feedback_log's durability contract).
    """
    from serving.settings import LogSettings

    time.sleep(LogSettings().impression_max_age_s + 0.5)


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

        def band(key: str, label: str, fmt: str) -> None:
            m = [r[key]["mean"] for r in rounds]
            err = [
                [mm - r[key]["lo"] for mm, r in zip(m, rounds)],
                [r[key]["hi"] - mm for mm, r in zip(m, rounds)],
            ]
            ax[1].errorbar(x, m, yerr=err, fmt=fmt, capsize=3, label=label)

        band("heldout_reward", "online, deterministic", "o-")
        band("heldout_served", "online, as served", "s--")
        band("frozen_heldout", "frozen initial, deterministic", "x:")
        if "heldout_reward_after" in rounds[0]:
            band("heldout_reward_after", "online after the round's decision", "^-.")
        ax[1].set_title("held-out sessions (never trained on), ±95%")
        ax[1].set_ylabel("session reward")
        ax[1].legend(fontsize=8)
    for a in ax[:2]:
        a.set_xlabel("round")
        for r in rounds:
            if r["published"]:
                a.axvline(r["round"] + 0.5, color="tab:green", alpha=0.25)
        if drift_round is not None:
            a.axvline(drift_round - 0.5, color="tab:red", ls="--", alpha=0.6)
    ax[2].plot(x, [r["consistency"] for r in rounds], "o-", label="serving version")
    ax[2].plot(x, [r["candidate_consistency"] for r in rounds], "x--", label="candidate")
    ax[2].axhline(rounds[0]["consistency_target"], color="tab:red", ls=":", label="target")
    ax[2].set_xlabel("round")
    ax[2].set_ylabel("within-modality agreement (top-K)")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def gate_sessions(pages, fraction: float, seed: int) -> dict[str, bool]:
    """page_id -> whether its traffic session is one of the gate's (a fixed seeded share of sessions)."""
    from agent.evaluation import session_page_lists

    sessions = session_page_lists(pages)
    held = np.random.default_rng([seed, 4242]).random(len(sessions)) < fraction
    return {str(pages.page_id[p]): bool(h) for pp, h in zip(sessions, held) for p in pp}


class OnlineLoop:
    """State, app lifecycle and rounds of `smar online`."""

    def __init__(self, cfg: OnlineConfig) -> None:
        import torch

        from agent.gate import GateConfig
        from agent.learner import topk_consistency
        from agent.offpolicy import UpdateConfig

        torch.set_num_threads(1)
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        from agent.constraint import checkpoint_margin

        self.gate_cfg = GateConfig(**cfg.gate)
        from agent.online.drift import drift_split, parse_drift
        from agent.online.heldout import HeldoutConfig
        from envs.reward import RewardConfig
        from envs.serp_env import SerpConfig

        self.reward = RewardConfig(name=cfg.reward)
        self.serp = SerpConfig(reward=self.reward, slate_size=cfg.slate_size)
        self.heldout_cfg = HeldoutConfig(**cfg.heldout)
        self.drift = parse_drift(cfg.drift)
        self.run = open_or_pretrain(cfg.run)
        # The constraint's hinge margin: the one the SMAR reranker was pretrained with, as `smar train`
        # uses it (agent.constraint.checkpoint_margin), unless the config sets one.
        _, smar_ckpt = self.run.reranker()
        self.update_cfg = UpdateConfig(**{"margin": checkpoint_margin(smar_ckpt.manifest), **cfg.update})
        self.split = self.run.split("traffic")
        self.gate_sessions = gate_sessions(self.split.pages, cfg.holdout_fraction, cfg.seed)
        self.bodies: dict[int, bytes] = {}  # encoded /rank bodies per traffic page (same in every world)
        self.heldout_split = self.run.split(self.heldout_cfg.split)
        # The worlds by name: traffic and held-out sessions of each (drifted truth, same pages).
        self.worlds = {"base": (self.split, self.heldout_split)}
        if self.drift is not None:
            self.worlds["drifted"] = (
                drift_split(self.split, self.drift),
                drift_split(self.heldout_split, self.drift),
            )
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
                "heldout_cache": {},  # "version|world" -> per-session returns (deterministic, served)
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
            if self.owns_app and self.cfg.fast_path:
                deploy.enable_fast_path(no_drain=True)
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
                args={
                    "registry": str(self.registry_dir),
                    "log_dir": str(self.log_dir),
                    "state_dir": str(self.out / "serve_state"),
                },
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

    def learner_start(self, serving, version: str):
        """The model the round's update starts from: the last round's candidate if it was kept
        (`keep_learner`) and was trained on this version's logs, else the serving model."""
        kept = self.state.get("learner")
        if self.cfg.continue_learner and kept and kept["parent_version"] == version:
            return self.version_model_at(kept["path"]), f"candidate of round {kept['round']}"
        return serving, "serving"

    def keep_learner(self, candidate, r: int, decision, version: str) -> None:
        """A rejected candidate whose paired gate difference is not negative keeps learning next round
        (a rejection then costs only evidence, not the update); a published one is the serving version,
        and one that looks worse is dropped (the next update restarts from the serving model)."""
        from agent.offpolicy import save_candidate

        keep = self.cfg.continue_learner and not decision.publish and decision.difference["mean"] >= 0
        if not keep:
            self.state["learner"] = None
            return
        path = self.out / "learner"
        save_candidate(candidate, path, f"learner-r{r}", {"online_round": r})
        self.state["learner"] = {"round": r, "path": str(path), "parent_version": version}

    @staticmethod
    def version_model_at(path: str):
        from pretrain.checkpoint import load_checkpoint

        return load_checkpoint(path)[0]

    def split_gate(self, batch):
        """(train, gate) parts of logged impressions by session: the gate sessions' impressions go to
        the gate only (pages the traffic split does not know, e.g. another client's, go to train)."""
        held = np.array([self.gate_sessions.get(str(p), False) for p in batch.pages.page_id], bool)
        return batch.subset(np.flatnonzero(~held)), batch.subset(np.flatnonzero(held))

    def world(self, r: int) -> str:
        return "drifted" if self.drift is not None and r >= self.drift.at_round else "base"

    def version_model(self, version: str):
        from pretrain.checkpoint import load_checkpoint
        from serving.registry import Registry

        model, _ = load_checkpoint(Registry(self.registry_dir).versions_dir / version)
        return model

    def initial_version(self) -> str:
        from serving.registry import Registry

        return Registry(self.registry_dir).stack()[0]

    def heldout(self, version: str, world: str, model=None) -> dict[str, np.ndarray]:
        """Per-session held-out returns of `version` in `world` (deterministic and as served), cached in
        the state: a version's figure is computed once per world and every round reuses it."""
        from agent.online.heldout import deterministic_returns, served_returns

        key = f"{version}|{world}"
        cache = self.state.setdefault("heldout_cache", {})
        if key not in cache:
            model = model if model is not None else self.version_model(version)
            split = self.worlds[world][1]
            cache[key] = {
                "deterministic": deterministic_returns(model, split, self.heldout_cfg, self.serp).tolist(),
                "served": served_returns(
                    model, split, self.cfg.temperature, self.heldout_cfg, self.serp
                ).tolist(),
            }
        return {k: np.asarray(v) for k, v in cache[key].items()}

    def heldout_figures(self, version: str, after: str, world: str) -> dict:
        """The round's held-out figures: serving version, version after the decision, frozen initial."""
        from agent.online.heldout import interval, paired

        now, nxt = self.heldout(version, world), self.heldout(after, world)
        frozen = self.heldout(self.initial_version(), world)
        return {
            "world": world,
            "heldout_reward": interval(now["deterministic"]),
            "heldout_served": interval(now["served"]),
            "exploration_cost": paired(now["deterministic"], now["served"]),
            "heldout_reward_after": interval(nxt["deterministic"]),
            "frozen_heldout": interval(frozen["deterministic"]),
            "after_minus_frozen": paired(nxt["deterministic"], frozen["deterministic"]),
        }

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
        from pretrain.checkpoint import make_version
        from serving import deploy
        from serving.feedback_log import read_logs
        from serving.registry import Registry

        cfg = self.cfg
        model, version = self.serving_model()
        world = self.world(r)
        traffic_split = self.worlds[world][0]
        t0 = time.time()
        traffic = run_traffic(
            self.url,
            traffic_split,
            cfg.impressions_per_round,
            seed=cfg.seed * 1000 + (0 if cfg.common_traffic else r),
            slate_size=cfg.slate_size,
            concurrency=cfg.concurrency,
            reward=self.reward,
            batch=cfg.client_batch,
            bodies=self.bodies,
        )
        t_traffic = time.time() - t0
        _settle_logs()
        t_settle = time.time() - t0 - t_traffic
        t1 = time.time()
        logs = read_logs(self.log_dir, since_ts=self.state["cursor_ms"] / 1000.0)
        batch = logged_batch(logs, model.config.feature_dims, cfg.slate_size, self.reward)
        train, holdout = self.split_gate(batch)
        # Keep this round's logs as our own replay file (read once from the log folder, never again).
        replay_dir = self.out / "replay"
        write_parquet_atomic(logs, replay_dir / f"round-{r:04d}.parquet")
        previous = [
            logged_batch(
                pq.read_table(replay_dir / f"round-{q:04d}.parquet"),
                model.config.feature_dims,
                cfg.slate_size,
                self.reward,
            )
            for q in range(max(0, r - cfg.replay_rounds), r)
            if (replay_dir / f"round-{q:04d}.parquet").exists()
        ]
        train = LoggedBatch.concat([*(self.split_gate(b)[0] for b in previous), train])
        target = self.state["consistency_target"]
        t_read = time.time() - t1
        t1 = time.time()
        start, start_from = self.learner_start(model, version)
        candidate, ustats = offpolicy_update(start, train, target, self.update_cfg)
        ustats["started_from"] = start_from
        t_update = time.time() - t1
        t1 = time.time()
        decision = gate(candidate, holdout, reward_model_for(train), target, self.gate_cfg)
        serving_consistency = topk_consistency(model, holdout.pages, cfg.slate_size)
        t_gate = time.time() - t1
        t1 = time.time()
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
                        traffic_split,
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
        t_publish = time.time() - t1
        self.keep_learner(candidate, r, decision, version)
        t1 = time.time()
        if published_version is not None:  # the candidate's held-out figures, from the model in memory
            self.heldout(published_version, world, model=candidate)
        held = self.heldout_figures(version, published_version or version, world)
        t_heldout = time.time() - t1
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
            "gate_split": "by session",
            "failed_requests": traffic.failed_requests + probe_failed,
            "traffic_errors": traffic.errors,
            "traffic_thread_seconds": traffic.thread_seconds,
            "client": {"concurrency": cfg.concurrency, "batch": cfg.client_batch},
            "swap_probe_requests": probe_n,
            "update": ustats,
            **held,
            "temperature": cfg.temperature,
            "seconds": {
                "traffic": t_traffic,
                "settle_logs": t_settle,
                "read_logs": t_read,
                "update": t_update,
                "gate": t_gate,
                "publish": t_publish,
                "round": t_traffic + t_settle + t_read + t_update + t_gate + t_publish,
                "heldout_eval": t_heldout,
            },
        }
        self.state["rounds"].append(rec)
        self.state["round"] = r + 1
        self.state["cursor_ms"] = cursor
        write_json_atomic(self.state_path, self.state)
        write_json_atomic(self.report_path, self.report())
        return rec

    def summary(self) -> dict:
        """The run's verdicts: last serving version vs initial on held-out sessions (paired), failed
        requests, consistency; with drift, the frozen policy's loss and the online loop's recovery."""
        from agent.online.heldout import interval, paired

        rounds = self.state["rounds"]
        if not rounds:
            return {}
        last = rounds[-1]
        final = last["published_version"] or last["version"]
        world = last["world"]
        init = self.initial_version()
        fin, ini = self.heldout(final, world), self.heldout(init, world)
        out = {
            "initial_version": init,
            "final_version": final,
            "world": world,
            "final_heldout": interval(fin["deterministic"]),
            "initial_heldout": interval(ini["deterministic"]),
            "final_minus_initial": paired(fin["deterministic"], ini["deterministic"]),
            "final_minus_initial_served": paired(fin["served"], ini["served"]),
            "failed_requests": int(sum(r["failed_requests"] for r in rounds)),
            "published": int(sum(r["published"] for r in rounds)),
            "rounds": len(rounds),
            "consistency_min": float(min(r["consistency"] for r in rounds)),
            "consistency_target": self.state["consistency_target"],
            "consistency_held": bool(
                min(r["consistency"] for r in rounds) >= self.state["consistency_target"]
            ),
        }
        if self.drift is not None and any(r["world"] == "drifted" for r in rounds):
            d = self.drift.at_round
            before = np.mean(self.heldout(init, "base")["deterministic"])
            after = np.mean(self.heldout(init, "drifted")["deterministic"])
            lost = float(before - after)
            recovery = [
                {
                    "round": r["round"],
                    "rounds_after_change": r["round"] - d + 1,
                    "online_minus_frozen": r["after_minus_frozen"],
                    "recovered_fraction": r["after_minus_frozen"]["mean"] / lost
                    if lost > 0
                    else float("nan"),
                }
                for r in rounds
                if r["world"] == "drifted"
            ]
            within = [x for x in recovery if x["rounds_after_change"] <= 4]
            out["drift"] = {
                "config": self.drift.to_json(),
                "frozen_before": float(before),
                "frozen_after": float(after),
                "frozen_lost": lost,
                "recovery": recovery,
                "best_recovered_fraction_within_4": max(
                    (x["recovered_fraction"] for x in within), default=None
                ),
            }
        return out

    def report(self) -> dict:
        return {"rounds": self.state["rounds"], "summary": self.summary(), "config": self.state["config"]}

    def plot(self) -> Path:
        return plot_rounds(
            self.state["rounds"], self.out / "online.png", self.drift.at_round if self.drift else None
        )

    def run_all(self) -> dict:
        if self.state["round"] >= self.cfg.rounds:
            print(f"{self.out}: all {self.cfg.rounds} rounds already done")
            return {"report": str(self.report_path), "plot": str(self.plot()), "rounds": self.state["rounds"]}
        self.start()
        try:
            while self.state["round"] < self.cfg.rounds:
                r = self.state["round"]
                rec = self.round(r)
                o, d = rec["ope"], rec["ope"]["difference"]
                h, f = rec["heldout_reward"], rec["frozen_heldout"]
                print(
                    f"round {r} [{rec['world']}]: v={rec['version']} live {rec['live_reward']:.4f} "
                    f"({rec['impressions']} imp, {rec['failed_requests']} failed, "
                    f"{rec['seconds']['round']:.0f} s) | held-out {h['mean']:.4f} [{h['lo']:.4f}, {h['hi']:.4f}]"
                    f" served {rec['heldout_served']['mean']:.4f} frozen {f['mean']:.4f} | "
                    f"DR diff {d['mean']:+.4f} (lcb {d['lcb']:+.4f}) consistency "
                    f"{rec['candidate_consistency']:.3f}/{rec['consistency_target']:.3f} -> "
                    + (
                        f"PUBLISHED {rec['published_version']}"
                        if rec["published"]
                        else "rejected: " + "; ".join(o["reasons"])
                    )
                )
        finally:
            self.stop()
        return {"report": str(self.report_path), "plot": str(self.plot()), "rounds": self.state["rounds"]}


def evaluate_versions(loop: OnlineLoop, sessions: int, seeds: int = 2) -> list[dict]:
    """Re-evaluate every version the registry served, offline in the simulator, at the serving temperature.

    One round's live reward is noisy; this replays `sessions` simulated sessions per seed on the traffic
    split for each version and reports the observed reward per page (the quantity the loop optimises).
    """
    from agent.simulate import score_policy
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
            reward = np.asarray(log.feedback["reward"].to_numpy(zero_copy_only=False), np.float64)
            values.append(float(reward.sum() / log.pages.num_rows))
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
    p.add_argument(
        "--client-batch",
        type=int,
        default=d.client_batch,
        help="sessions per client thread sharing one /rank/batch and /feedback/batch request (1: single)",
    )
    p.add_argument("--url", default=None, help="drive a running app instead of starting one")
    p.add_argument("--registry", default=None, help="registry folder of the app at --url")
    p.add_argument("--log-dir", default=None, help="log folder of the app at --url")
    p.add_argument("--address", default=None, help="Ray address of the app at --url")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--lr", type=float, default=None, help="learning rate of the off-policy update")
    p.add_argument("--epochs", type=int, default=None, help="passes over each round's logs")
    p.add_argument("--advantage", choices=("reward_to_go", "immediate"), default=None)
    p.add_argument(
        "--offset-params", choices=("head", "bias"), default=None, help="what of the offset head learns"
    )
    p.add_argument("--offset-lr-scale", type=float, default=None, help="offset head lr multiplier")
    p.add_argument("--body-lr-scale", type=float, default=None, help="lr multiplier of the rest (0: fixed)")
    p.add_argument("--clip", type=float, default=None, help="PPO clip of the update (trust region)")
    p.add_argument("--kl-coeff", type=float, default=None, help="KL-to-serving coefficient of the update")
    p.add_argument(
        "--evaluate-versions",
        type=int,
        default=0,
        metavar="SESSIONS",
        help="afterwards, re-evaluate every served version offline with this many sessions per seed",
    )
    p.add_argument("--fresh-traffic", action="store_true", help="new simulated sessions every round")
    p.add_argument(
        "--drift",
        default=None,
        metavar="SPEC",
        help='change the simulated world at a round: "default" (video 2 grades worse from round 1) or '
        '"round=R,modality=M,relevance=D,attractiveness=F" (agent.online.drift)',
    )
    p.add_argument("--replay-rounds", type=int, default=d.replay_rounds)
    p.add_argument("--reward", default=d.reward, help="product reward by name (envs.reward.REWARD_NAMES)")
    p.add_argument("--alpha", type=float, default=None, help="the gate's one-sided confidence level 1-alpha")
    p.add_argument("--heldout-repeats", type=int, default=None, help="plays of every held-out session")


def run(args: argparse.Namespace) -> int:
    from agent.online.drift import parse_drift

    cfg = OnlineConfig(
        out=args.out,
        run=args.run,
        policy=args.policy,
        train_out=args.train_out,
        rounds=args.rounds,
        impressions_per_round=args.impressions_per_round,
        temperature=args.temperature,
        concurrency=args.concurrency,
        client_batch=args.client_batch,
        url=args.url,
        registry=args.registry,
        log_dir=args.log_dir,
        address=args.address,
        seed=args.seed,
        common_traffic=not args.fresh_traffic,
        replay_rounds=args.replay_rounds,
        reward=args.reward,
        update={
            **OnlineConfig().update,
            **{
                k: v
                for k, v in (
                    ("lr", args.lr),
                    ("epochs", args.epochs),
                    ("advantage", args.advantage),
                    ("offset_params", args.offset_params),
                    ("offset_lr_scale", args.offset_lr_scale),
                    ("body_lr_scale", args.body_lr_scale),
                    ("clip", args.clip),
                    ("kl_coeff", args.kl_coeff),
                )
                if v is not None
            },
        },
        gate={} if args.alpha is None else {"alpha": args.alpha},
        heldout={} if args.heldout_repeats is None else {"repeats": args.heldout_repeats},
        drift=None if parse_drift(args.drift) is None else parse_drift(args.drift).to_json(),
    )
    loop = OnlineLoop(cfg)
    res = loop.run_all()
    if args.evaluate_versions:
        print(
            f"offline re-evaluation of each version ({args.evaluate_versions} sessions x 2 seeds, T={cfg.temperature}):"
        )
        loop.state["offline_versions"] = evaluate_versions(loop, args.evaluate_versions)
        write_json_atomic(loop.state_path, loop.state)
        write_json_atomic(
            loop.report_path,
            {**loop.report(), "offline_versions": loop.state["offline_versions"]},
        )
    summ = loop.summary()
    fm = summ["final_minus_initial"]
    print(
        f"held-out reward: initial {summ['initial_heldout']['mean']:.4f}, final "
        f"{summ['final_heldout']['mean']:.4f}; paired final - initial {fm['mean']:+.4f} "
        f"[{fm['lo']:+.4f}, {fm['hi']:+.4f}]; failed requests: {summ['failed_requests']}; "
        f"published {summ['published']}/{summ['rounds']}; consistency min {summ['consistency_min']:.3f} "
        f"(target {summ['consistency_target']:.3f})"
    )
    if "drift" in summ:
        dr = summ["drift"]
        print(
            f"drift: frozen lost {dr['frozen_lost']:.4f} ({dr['frozen_before']:.4f} -> {dr['frozen_after']:.4f}); "
            "recovered fraction by round after the change: "
            + ", ".join(f"{x['rounds_after_change']}: {x['recovered_fraction']:.2f}" for x in dr["recovery"])
        )
    print(f"report: {res['report']}\nplot:   {res['plot']}")
    return 0
