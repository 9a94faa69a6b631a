"""`OnlineConfig`: every setting of `smar online`, typed; the command line derives from it (agent.online.cli).

The update, the gate, the held-out evidence and the drift are their own config dataclasses, nested here
whole (`--online.update.lr`, `--online.gate.alpha`, `--online.heldout.repeats`, `--online.drift`), so
each setting has one home and one default. A run saves this config into its state and report
(`dataclasses.asdict`); `OnlineConfig.from_json` loads such a dict back strictly, also one an older run
wrote with partial dicts of overrides for the nested settings (a missing key takes its default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.gate import GateConfig
from agent.offpolicy import UpdateConfig
from agent.online.drift import DriftConfig
from agent.online.heldout import HeldoutConfig
from envs.config_io import JsonConfig
from pretrain.run import DEFAULT_RUN
from serving.settings import SERVING_TEMPERATURE

DEFAULT_OUT = "runs/online"
DEFAULT_TRAIN = "runs/train"


def online_update() -> UpdateConfig:
    """The loop's off-policy update. Measured (agent.online.diagnose, RESULTS.md): the whole network
    moved by PPO on one round of logs follows noise; the modality-offset head's bias alone (one score
    shift per modality) learns a changed modality quality in steps the gate can certify. It ascends the
    gate's own pessimistic DR estimate (objective "dr"): over five seeds of the default drift it
    recovered more of the frozen policy's loss in the first rounds than PPO's clipped surrogate (clip 1,
    no KL; still `--online.update.objective ppo`). The margin (None) is the SMAR checkpoint's."""
    return UpdateConfig(
        epochs=3,
        body_lr_scale=0.0,
        offset_lr_scale=10.0,
        offset_params="bias",
        clip=1.0,
        kl_coeff=0.0,
        objective="dr",
    )


@dataclass
class OnlineConfig(JsonConfig):
    out: str = DEFAULT_OUT
    run: str = DEFAULT_RUN  # pretrain run: traffic pages + truth, the SMAR reranker (consistency reference)
    policy: str | None = None  # initial policy checkpoint; default: DEFAULT_TRAIN/policy (trained if missing)
    train_out: str = DEFAULT_TRAIN
    rounds: int = 4
    impressions_per_round: int = 10_000
    slate_size: int = 10
    # The exploration budget: the endpoint serves Plackett-Luce at this temperature (the serving one by
    # default); every round reports its live cost on held-out sessions (served vs deterministic reward).
    temperature: float = SERVING_TEMPERATURE
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
    # round-to-round changes in live reward come from the policy, not from which users arrived
    # (false: new simulated sessions every round).
    common_traffic: bool = True
    consistency_fraction: float = 0.95  # target = this x the SMAR reranker's consistency (top-K)
    url: str | None = None  # drive a running app instead of starting one (needs registry and log_dir)
    registry: str | None = None  # registry folder of the app at url (default: OUT/registry)
    log_dir: str | None = None  # log folder of the app at url (default: OUT/logs)
    address: str | None = None  # Ray address of the app at url (default: "auto" with url)
    num_cpus: float = 1.0  # the Ranker replica's CPU reservation
    seed: int = 0
    update: UpdateConfig = field(default_factory=online_update)  # the off-policy update (agent.offpolicy)
    gate: GateConfig = field(default_factory=GateConfig)  # the publish gate (agent.gate)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)  # held-out evidence (agent.online.heldout)
    reward: str = "success"  # envs.reward.RewardConfig name: traffic, logged reward and held-out sessions
    drift: DriftConfig | None = None  # a changing world (agent.online.drift); None: it stays as it is

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.impressions_per_round < 10:
            raise ValueError("online needs rounds >= 1 and impressions_per_round >= 10")
        if self.url and not (self.registry and self.log_dir):
            raise ValueError(
                "online url needs the registry and log_dir of that app (to publish and read logs)"
            )
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must lie in (0, 1), got {self.holdout_fraction}")
        if self.temperature <= 0:
            raise ValueError(f"the endpoint explores: temperature must be > 0, got {self.temperature}")
