"""`smar online`'s loop: continual updates that close the loop from live feedback to a new served model.

Each round (`OnlineLoop.round`, one method per step):
  1. traffic  simulated users (agent.traffic) rank pages through the HTTP endpoint, which explores
              (Plackett-Luce at a temperature, exact propensities logged), and post clicks and dwell;
              several sessions per client thread share one /rank/batch and one /feedback/batch request;
  2. logs     the logs since the cursor (serving.feedback_log.read_logs) are split by *session* into
              train and gate parts (a fixed seeded share of the traffic sessions is the gate's, in every
              round, replayed rounds included); the update also replays `replay_rounds` earlier rounds;
  3. update   a candidate is trained off-policy from the serving model (or the kept learner) with the
              constrained objective (agent.offpolicy, agent.constraint);
  4. gate     a lower confidence bound of the candidate-minus-serving difference, paired on the
              held-out impressions (cascade DR), + within-modality consistency (agent.gate);
  5. publish  if the gate passes: registry publish + in-place swap (serving.deploy.apply_version) while
              a background client keeps sending requests, so a failed request during a swap is counted.
  6. held-out the serving version, the version after the decision and a frozen copy of the initial
              policy are played on held-out sessions no round trains on (agent.online.heldout), both
              deterministic and as served with exploration; with a drift the traffic and the held-out
              sessions come from the drifted world from the drift round on (agent.online.drift).
The cursor, the serving version and every round's figures are written atomically to OUT/state.json and
OUT/report.json after each round: a killed run restarted with the same OUT resumes at the next round
and reads only logs after its cursor (nothing re-read, nothing lost: logs written after the cursor,
even by a round that was interrupted, are read by the next update).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from agent.online import app
from agent.online.config import OnlineConfig
from agent.online.heldout import HeldoutEvidence
from agent.online.report import plot_rounds, round_line, round_record, round_seconds, summarise, upgrade_state
from envs.atomic_io import write_json_atomic, write_parquet_atomic
from pretrain.run import open_or_pretrain

# Sample of traffic pages the SMAR reranker's consistency (the target's reference) is measured on.
CONSISTENCY_SAMPLE = 1500


def gate_sessions(pages, fraction: float, seed: int) -> dict[str, bool]:
    """page_id -> whether its traffic session is one of the gate's (a fixed seeded share of sessions)."""
    from agent.evaluation import session_page_lists

    sessions = session_page_lists(pages)
    held = np.random.default_rng([seed, 4242]).random(len(sessions)) < fraction
    return {str(pages.page_id[p]): bool(h) for pp, h in zip(sessions, held) for p in pp}


@dataclass
class RoundLogs:
    """What step 2 read: the raw logs since the cursor and the round's train and gate impressions."""

    logs: pa.Table
    batch: object  # agent.offpolicy.LoggedBatch of this round's logs
    train: object  # LoggedBatch the update learns from (this round's train part + replayed rounds')
    holdout: object  # LoggedBatch of the gate's sessions, this round only


@dataclass
class Publication:
    """Step 5's outcome: the published version (None: rejected) and the swap probe's requests."""

    version: str | None = None
    probe_failed: int = 0
    probe_requests: int = 0


class _Clock:
    """Wall seconds of named steps (`with clock("update"): ...`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.time()
        try:
            yield
        finally:
            self.seconds[name] = time.time() - t


class OnlineLoop:
    """State, app lifecycle and rounds of `smar online`."""

    def __init__(self, cfg: OnlineConfig) -> None:
        import torch

        from agent.constraint import checkpoint_margin
        from envs.reward import RewardConfig
        from envs.serp_env import SerpConfig

        torch.set_num_threads(1)
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.gate_cfg, self.heldout_cfg, self.drift = cfg.gate, cfg.heldout, cfg.drift
        self.reward = RewardConfig(name=cfg.reward)
        self.serp = SerpConfig(reward=self.reward, slate_size=cfg.slate_size)
        self.run = open_or_pretrain(cfg.run)
        # The constraint's hinge margin: the one the SMAR reranker was pretrained with, as `smar train`
        # uses it (agent.constraint.checkpoint_margin), unless the config sets one.
        _, smar_ckpt = self.run.reranker()
        margin = cfg.update.margin
        self.update_cfg = replace(
            cfg.update, margin=checkpoint_margin(smar_ckpt.manifest) if margin is None else margin
        )
        self.split = self.run.split("traffic")
        self.gate_sessions = gate_sessions(self.split.pages, cfg.holdout_fraction, cfg.seed)
        self.bodies: dict[int, bytes] = {}  # encoded /rank bodies per traffic page (same in every world)
        self.heldout_split = self.run.split(self.heldout_cfg.split)
        self.worlds = self._worlds()
        self.registry_dir = Path(cfg.registry or self.out / "registry")
        self.log_dir = Path(cfg.log_dir or self.out / "logs")
        self.state_path, self.report_path = self.out / "state.json", self.out / "report.json"
        if self.state_path.exists():
            self.state = upgrade_state(json.loads(self.state_path.read_text()))
            # A state an older run wrote (nested settings as partial dicts) is kept in the typed layout.
            self.state["config"] = OnlineConfig.from_json(self.state["config"]).to_json()
            print(
                f"resuming {self.out}: {self.state['round']} round(s) done, cursor {self.state['cursor_ms']}"
            )
        else:
            self.state = self._new_state()
        self.evidence = HeldoutEvidence(
            self.state.setdefault("heldout_cache", {}),
            {name: heldout for name, (_, heldout) in self.worlds.items()},
            self.heldout_cfg,
            cfg.temperature,
            self.serp,
            self.version_model,
        )
        self.url: str | None = cfg.url
        self.owns_app = cfg.url is None

    def _worlds(self) -> dict:
        """The worlds by name: traffic and held-out sessions of each (drifted truth, same pages)."""
        from agent.online.drift import drift_split

        worlds = {"base": (self.split, self.heldout_split)}
        if self.drift is not None:
            worlds["drifted"] = (
                drift_split(self.split, self.drift),
                drift_split(self.heldout_split, self.drift),
            )
        return worlds

    def _new_state(self) -> dict:
        """A fresh run's state: no round done, the consistency target from the SMAR reranker."""
        from agent.learner import topk_consistency

        smar, _ = self.run.reranker()
        sample = self.split.pages.select(np.arange(min(len(self.split.pages), CONSISTENCY_SAMPLE)))
        smar_consistency = topk_consistency(smar, sample, self.cfg.slate_size)
        return {
            "round": 0,
            "cursor_ms": 0,
            "smar_consistency": smar_consistency,
            "consistency_target": self.cfg.consistency_fraction * smar_consistency,
            "rounds": [],
            "heldout_cache": {},  # "version|world" -> per-session returns (deterministic, served)
            "config": self.cfg.to_json(),
        }

    # ------------------------------------------------------------------ app lifecycle
    def start(self) -> None:
        """Publish the initial policy if the registry is empty; start our app unless driving one."""
        registry = self.registry()
        if registry.current() is None:
            policy = app.ensure_policy(self.cfg)
            print(f"publishing the initial policy {policy}")
            registry.publish(policy)
        # Driving a running app (url) means joining its Ray cluster, for the in-place swap.
        app.init_ray(
            self.owns_app and self.cfg.fast_path, self.cfg.address or ("auto" if self.cfg.url else None)
        )
        if self.owns_app:
            self.url = app.deploy_explorer(
                self.registry_dir,
                self.log_dir,
                self.out / "serve_state",
                self.cfg.temperature,
                self.cfg.num_cpus,
            )
            print(f"serving {registry.current().version} at {self.url}")

    def stop(self) -> None:
        if self.owns_app:
            from serving import deploy

            app.settle_logs()  # the last swap probe's impressions reach disk before the replicas stop
            deploy.shutdown()

    # ------------------------------------------------------------------ versions
    def registry(self):
        from serving.registry import Registry

        return Registry(self.registry_dir)

    def serving_model(self):
        from pretrain.checkpoint import load_checkpoint

        model, ckpt = load_checkpoint(self.registry().current().path)
        return model, ckpt.version

    def version_model(self, version: str):
        from pretrain.checkpoint import load_checkpoint

        return load_checkpoint(self.registry().versions_dir / version)[0]

    def initial_version(self) -> str:
        return self.registry().stack()[0]

    def learner_start(self, serving, version: str):
        """The model the round's update starts from: the last round's candidate if it was kept
        (`keep_learner`) and was trained on this version's logs, else the serving model."""
        from pretrain.checkpoint import load_checkpoint

        kept = self.state.get("learner")
        if self.cfg.continue_learner and kept and kept["parent_version"] == version:
            return load_checkpoint(kept["path"])[0], f"candidate of round {kept['round']}"
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

    def world(self, r: int) -> str:
        return "drifted" if self.drift is not None and r >= self.drift.at_round else "base"

    # ------------------------------------------------------------------ one round
    def round(self, r: int) -> dict:
        """Round r: steps 1-6 of the module docstring; the state and report are saved after it."""
        model, version = self.serving_model()
        world = self.world(r)
        traffic_split = self.worlds[world][0]
        clock = _Clock()
        with clock("traffic"):
            traffic = self.traffic(r, traffic_split)
        with clock("settle_logs"):
            app.settle_logs()
        with clock("read_logs"):
            logs = self.read_round_logs(r, model)
        target = self.state["consistency_target"]
        with clock("update"):
            candidate, ustats = self.update(model, version, logs.train, target)
        with clock("gate"):
            decision, serving_consistency = self.judge(candidate, model, logs, target)
        with clock("publish"):
            pub = self.publish(candidate, r, version, decision, ustats, traffic_split)
        self.keep_learner(candidate, r, decision, version)
        with clock("heldout_eval"):
            if pub.version is not None:  # the candidate's held-out figures, from the model in memory
                self.heldout(pub.version, world, model=candidate)
            held = self.evidence.figures(version, pub.version or version, self.initial_version(), world)
        rec = round_record(
            r,
            version,
            traffic=traffic,
            logs=logs,
            decision=decision,
            consistency=(serving_consistency, target),
            pub=pub,
            ustats=ustats,
            held=held,
            cfg=self.cfg,
        )
        rec["seconds"] = round_seconds(clock.seconds)
        self.advance(r, rec, logs.logs)
        return rec

    def traffic(self, r: int, split):
        """Step 1: this round's simulated users through the endpoint (the same sessions every round
        with common_traffic)."""
        from agent.traffic import run_traffic

        cfg = self.cfg
        return run_traffic(
            self.url,
            split,
            cfg.impressions_per_round,
            seed=cfg.seed * 1000 + (0 if cfg.common_traffic else r),
            slate_size=cfg.slate_size,
            concurrency=cfg.concurrency,
            reward=self.reward,
            batch=cfg.client_batch,
            bodies=self.bodies,
        )

    def split_gate(self, batch):
        """(train, gate) parts of logged impressions by session: the gate sessions' impressions go to
        the gate only (pages the traffic split does not know, e.g. another client's, go to train)."""
        held = np.array([self.gate_sessions.get(str(p), False) for p in batch.pages.page_id], bool)
        return batch.subset(np.flatnonzero(~held)), batch.subset(np.flatnonzero(held))

    def read_round_logs(self, r: int, model) -> RoundLogs:
        """Step 2: the logs since the cursor, kept as this round's replay file (read once from the log
        folder, never again), split by session; the train part gets the replayed rounds' train parts."""
        from agent.offpolicy import LoggedBatch, logged_batch
        from serving.feedback_log import read_logs

        cfg, dims = self.cfg, model.config.feature_dims
        logs = read_logs(self.log_dir, since_ts=self.state["cursor_ms"] / 1000.0)
        batch = logged_batch(logs, dims, cfg.slate_size, self.reward)
        train, holdout = self.split_gate(batch)
        replay_dir = self.out / "replay"
        write_parquet_atomic(logs, replay_dir / f"round-{r:04d}.parquet")
        previous = [
            logged_batch(pq.read_table(path), dims, cfg.slate_size, self.reward)
            for q in range(max(0, r - cfg.replay_rounds), r)
            if (path := replay_dir / f"round-{q:04d}.parquet").exists()
        ]
        train = LoggedBatch.concat([*(self.split_gate(b)[0] for b in previous), train])
        return RoundLogs(logs, batch, train, holdout)

    def update(self, model, version: str, train, target: float):
        """Step 3: the candidate, trained off-policy from the learner's start on the train impressions."""
        from agent.offpolicy import offpolicy_update

        start, start_from = self.learner_start(model, version)
        candidate, ustats = offpolicy_update(start, train, target, self.update_cfg)
        ustats["started_from"] = start_from
        return candidate, ustats

    def judge(self, candidate, model, logs: RoundLogs, target: float):
        """Step 4: the gate's decision on the gate impressions, and the serving model's consistency."""
        from agent.gate import gate, reward_model_for
        from agent.learner import topk_consistency

        decision = gate(candidate, logs.holdout, reward_model_for(logs.train), target, self.gate_cfg)
        return decision, topk_consistency(model, logs.holdout.pages, self.cfg.slate_size)

    def publish(self, candidate, r: int, version: str, decision, ustats: dict, split) -> Publication:
        """Step 5: a passing candidate is saved, published and swapped in under a probing client."""
        from agent.offpolicy import save_candidate
        from pretrain.checkpoint import make_version

        if not decision.publish:
            return Publication()
        new_version = make_version(f"online-r{r}")
        path = save_candidate(
            candidate,
            self.out / "candidates" / new_version,
            new_version,
            {"online_round": r, "parent_version": version, "gate": decision.to_json(), "update": ustats},
        )
        published = self.registry().publish(path)
        failed, requests = self.swap_under_probe(published, r, split)
        return Publication(published, failed, requests)

    def swap_under_probe(self, version: str, r: int, split) -> tuple[int, int]:
        """Swap the app to `version` in place while one client keeps requesting; (failed, requests)."""
        from agent.traffic import run_traffic
        from serving import deploy

        cfg = self.cfg
        stop = threading.Event()
        probe: dict = {}
        thread = threading.Thread(
            target=lambda: probe.update(
                stats=run_traffic(
                    self.url,
                    split,
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
            deploy.apply_version(version, url=self.url)
        finally:
            stop.set()
            thread.join()
        return probe["stats"].failed_requests, probe["stats"].impressions

    def heldout(self, version: str, world: str, model=None) -> dict[str, np.ndarray]:
        """Step 6, per version: its per-session held-out returns in `world`, cached in the state."""
        return self.evidence.returns(version, world, model)

    def advance(self, r: int, rec: dict, logs: pa.Table) -> None:
        """Append the round, move the cursor past everything read now (e.g. the swap probe's logs are
        read by the next round) and save state and report atomically."""
        if logs.num_rows:
            cursor = int(pc.max(logs["ts"]).cast(pa.int64()).as_py()) + 1
        else:
            cursor = self.state["cursor_ms"]
        self.state["rounds"].append(rec)
        self.state["round"] = r + 1
        self.state["cursor_ms"] = cursor
        write_json_atomic(self.state_path, self.state)
        write_json_atomic(self.report_path, self.report())

    # ------------------------------------------------------------------ the run
    def summary(self) -> dict:
        """The run's verdicts (agent.online.report.summarise)."""
        rounds = self.state["rounds"]
        if not rounds:
            return {}
        return summarise(
            rounds, self.state["consistency_target"], self.heldout, self.initial_version(), self.drift
        )

    def report(self) -> dict:
        return {"rounds": self.state["rounds"], "summary": self.summary(), "config": self.state["config"]}

    def plot(self) -> Path:
        return plot_rounds(
            self.state["rounds"], self.out / "online.png", self.drift.at_round if self.drift else None
        )

    def run_all(self) -> dict:
        """Every round not done yet (resuming after the last saved one), then the plot."""
        if self.state["round"] >= self.cfg.rounds:
            print(f"{self.out}: all {self.cfg.rounds} rounds already done")
            return {"report": str(self.report_path), "plot": str(self.plot()), "rounds": self.state["rounds"]}
        self.start()
        try:
            while self.state["round"] < self.cfg.rounds:
                print(round_line(self.round(self.state["round"])))
        finally:
            self.stop()
        return {"report": str(self.report_path), "plot": str(self.plot()), "rounds": self.state["rounds"]}
