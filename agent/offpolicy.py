"""Learning from logged feedback: read Serve's impression/feedback logs, improve the policy off-policy.

Why not RLlib's offline API: its BC and MARWIL fit logged actions but ignore the logged propensities,
and its importance-sampling evaluation samples new actions instead of scoring the logged ones. The
endpoint logs the exact Plackett-Luce conditional propensity of every shown position, so the update
is PPO's clipped surrogate applied to the logged rankings, treating each position as one decision
(state = page + items above, action = the item placed there):

    ratio_k = pi_theta(a_k | a_<k) / pi_0(a_k | a_<k)       (pi_0: the logged serving policy)
    L_ppo   = - mean_k min(ratio_k A_k, clip(ratio_k, 1 - eps, 1 + eps) A_k)
    A_k     = reward-to-go from position k minus its per-position mean (cascade: position k's choice
              affects what is seen below it), normalised

plus the same constraint as `smar train` (agent.constraint, shared with agent.learner): the SMAR
pairwise hinge against each modality's single-modal order, weighted by a Lagrange multiplier raised by
dual ascent (one step per epoch) while the measured within-modality agreement of the top-K is below
its target, and a KL to the serving policy
(kept outside the trained parameters) so one round cannot move far from what was logged.
The objective is `UpdateConfig.objective` (agent.objectives): this PPO surrogate, or ascent on the
cascade DR estimate the gate certifies.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from agent.constraint import Lagrangian, LagrangianConfig
from agent.objectives import Fit, dr_steps, ppo_epochs
from envs.pages import Pages
from envs.reward import RewardConfig, logged_satisfying
from envs.user_model import UserModelConfig
from pretrain.losses import LossConfig
from pretrain.page import PageBatch, collate, from_arrow
from pretrain.reranker import PAD_SCORE, WholePageReranker


@dataclass
class LoggedBatch:
    """Explored impressions that received feedback, aligned row by row."""

    pages: Pages  # one page per impression (the full candidate list as served)
    ranking: np.ndarray  # [n, K] candidate index shown at positions 1..K
    logged_logp: np.ndarray  # [n, K] log pi_0(a_k | a_<k)
    reward: np.ndarray  # [n, K] observed reward per position
    temperature: np.ndarray  # [n] the serving temperature
    event_id: np.ndarray  # [n]
    model_version: np.ndarray  # [n]
    ts_ms: np.ndarray  # [n]

    def __len__(self) -> int:
        return len(self.ranking)

    def subset(self, idx: np.ndarray) -> LoggedBatch:
        idx = np.asarray(idx, np.int64)
        return LoggedBatch(
            self.pages.select(idx),
            self.ranking[idx],
            self.logged_logp[idx],
            self.reward[idx],
            self.temperature[idx],
            self.event_id[idx],
            self.model_version[idx],
            self.ts_ms[idx],
        )

    @staticmethod
    def concat(parts: list[LoggedBatch]) -> LoggedBatch:
        parts = [b for b in parts if len(b)]
        if not parts:
            raise ValueError("nothing to concatenate")
        return LoggedBatch(
            Pages.concat([b.pages for b in parts]),
            *(
                np.concatenate([getattr(b, f) for b in parts])
                for f in (
                    "ranking",
                    "logged_logp",
                    "reward",
                    "temperature",
                    "event_id",
                    "model_version",
                    "ts_ms",
                )
            ),
        )

    def split_holdout(self, fraction: float, seed: int) -> tuple[LoggedBatch, LoggedBatch]:
        """(train, holdout) split by event, seeded: the gate judges on impressions the update never saw."""
        rng = np.random.default_rng(seed)
        held = rng.random(len(self)) < fraction
        return self.subset(np.flatnonzero(~held)), self.subset(np.flatnonzero(held))


def observed_reward(
    click: np.ndarray,
    dwell: np.ndarray,
    modality: np.ndarray,
    reward: RewardConfig,
    user: UserModelConfig | None = None,
    query_index: np.ndarray | int = 0,
    viewport: np.ndarray | None = None,
) -> np.ndarray:
    """Per-position reward [n, K] from the logged click, dwell and answer viewport time of the shown
    items (what a production log can see): the shared `envs.reward` definition on its satisfying
    events (`envs.reward.observed_satisfying`: satisfied clicks, and unclicked answers whose viewport
    reached the threshold; `viewport` None = an older log without it). A serve log has no session
    index, so each impression counts as a first query unless `query_index` is given."""
    click = np.clip(np.nan_to_num(click, nan=0.0), 0, 1) > 0
    sat = logged_satisfying(user or UserModelConfig(), click, dwell, modality, viewport)
    return reward.rewards(click, sat, query_index).astype(np.float64)


def logged_batch(
    logs: pa.Table, feature_dims: dict[str, int], slate_size: int, reward: RewardConfig | None = None
) -> LoggedBatch:
    """A `serving.feedback_log.read_logs` table -> the explored impressions that got feedback."""
    reward = reward or RewardConfig()
    keep = [
        i
        for i, (policy, click) in enumerate(zip(logs["policy"].to_pylist(), logs["click"].to_pylist()))
        if policy == "plackett_luce" and click is not None
    ]
    t = logs.take(pa.array(keep, pa.int64()))
    k = slate_size
    if t.num_rows and min(len(a) for a in t["action"].to_pylist()) < k:
        raise ValueError(f"some logged rankings are shorter than the slate size {k}")
    page_cols = {
        "page_id": t["page_id"],
        "query_id": t["event_id"],
        "query_features": t["query_features"],
        "user_features": t["user_features"],
        "item_id": t["item_id"],
        "modality": t["modality"],
        "features": t["features"],
        "single_modal_score": t["single_modal_score"],
    }
    pages = from_arrow(pa.table(page_cols), "serve logs", feature_dims=feature_dims)
    ranking = np.array([a[:k] for a in t["action"].to_pylist()], np.int64).reshape(-1, k)
    pscore = np.array([p[:k] for p in t["pscore"].to_pylist()], np.float64).reshape(-1, k)
    click = np.array([c[:k] for c in t["click"].to_pylist()], np.float64).reshape(-1, k)
    dwell = np.array([d[:k] for d in t["dwell_s"].to_pylist()], np.float64).reshape(-1, k)
    viewport = None
    if "viewport_s" in t.column_names:  # NaN where unknown (older feedback files)
        viewport = np.array([v[:k] for v in t["viewport_s"].to_pylist()], np.float64).reshape(-1, k)
    return LoggedBatch(
        pages=pages,
        ranking=ranking,
        logged_logp=np.log(np.clip(pscore, 1e-300, 1.0)),
        reward=observed_reward(click, dwell, shown_modality(pages, ranking), reward, viewport=viewport),
        temperature=np.asarray(t["temperature"].to_numpy(zero_copy_only=False), np.float64),
        event_id=np.asarray(t["event_id"].to_pylist(), dtype=object),
        model_version=np.asarray(t["model_version"].to_pylist(), dtype=object),
        ts_ms=np.asarray(t["ts"].cast(pa.int64()).to_numpy(zero_copy_only=False), np.int64),
    )


def shown_modality(pages: Pages, ranking: np.ndarray) -> np.ndarray:
    """Modality ids [n, K] of the items shown at each position."""
    return pages.modality[pages.offsets[:-1, None] + ranking].astype(np.int64)


# --------------------------------------------------------------------------- the update
@dataclass(frozen=True)
class UpdateConfig:
    """Off-policy constrained PPO on logged rankings."""

    epochs: int = 8
    minibatch: int = 128
    lr: float = 3e-3  # smaller rates moved the policy without a reward gain within the loop's rounds
    clip: float = 0.2
    grad_clip: float = 1.0
    kl_coeff: float = 0.05  # KL(pi_serving || pi_theta), serving policy frozen
    kl_samples: int = 2
    # SMAR hinge margin. None: the SMAR checkpoint's, which the caller knows and resolves
    # (agent.constraint.checkpoint_margin, as `smar train` does; the online loop does); unresolved, the
    # margin `smar pretrain` trains SMAR with (LossConfig's)
    margin: float | None = None
    multiplier_init: float = 0.0
    multiplier_lr: float = 20.0
    multiplier_max: float = 50.0
    advantage: str = "reward_to_go"  # or "immediate"
    # Learning-rate multipliers of the reranker's modality-offset head (the page layout: how much the
    # context wants each modality, which no within-modality order depends on) and of everything else.
    # body_lr_scale 0 trains the offset head alone: a contextual move of whole modalities, few
    # parameters, well identified from one round of logs (agent.online.diagnose measures the choice).
    offset_lr_scale: float = 1.0
    body_lr_scale: float = 1.0
    # "head": the whole offset head (context-dependent placement); "bias": only its bias, one global
    # score shift per modality (4 numbers: the least a changed world can need, the best identified)
    offset_params: str = "head"
    # "ppo": the clipped surrogate on normalised reward-to-go advantages (above); "dr": ascend the cascade
    # doubly robust estimate of the candidate's value on the logs (agent.ope, the gate's own estimator),
    # full batch for `dr_steps` Adam steps, pessimistic by `pessimism` standard errors of its paired
    # difference to the logged reward (the gate publishes on that difference's lower bound, so the update
    # climbs what the gate certifies; a far move's noisy weights lower the bound and stop it)
    objective: str = "ppo"
    dr_steps: int = 100
    pessimism: float = 1.645
    max_weight: float | None = 100.0  # clip of the DR prefix weights (as the gate's)
    seed: int = 0

    def __post_init__(self) -> None:
        if (
            self.offset_lr_scale < 0
            or self.body_lr_scale < 0
            or self.offset_lr_scale + self.body_lr_scale == 0
        ):
            raise ValueError("UpdateConfig: lr scales must be >= 0 and not both 0")
        if self.offset_params not in ("head", "bias"):
            raise ValueError(f"UpdateConfig.offset_params must be head or bias, got {self.offset_params!r}")
        if self.objective not in ("ppo", "dr"):
            raise ValueError(f"UpdateConfig.objective must be ppo or dr, got {self.objective!r}")

    def to_json(self) -> dict:
        return asdict(self)

    def lagrangian(self) -> LagrangianConfig:
        """The shared constraint (agent.constraint), as `smar train`'s learner uses it."""
        return LagrangianConfig(
            margin=LossConfig().margin if self.margin is None else self.margin,
            multiplier_init=self.multiplier_init,
            multiplier_lr=self.multiplier_lr,
            multiplier_max=self.multiplier_max,
        )


def _advantages(reward: np.ndarray, kind: str) -> np.ndarray:
    """Per-position advantages, baseline = the position's mean, normalised.

    "reward_to_go": credit position k with everything at and below it (its choice decides whether the
    user stops); "immediate": only its own reward (lower variance, ignores the effect on what follows).
    """
    if kind == "reward_to_go":
        ret = np.cumsum(reward[:, ::-1], axis=1)[:, ::-1]
    elif kind == "immediate":
        ret = reward
    else:
        raise ValueError(f"advantage must be 'reward_to_go' or 'immediate', got {kind!r}")
    adv = ret - ret.mean(0, keepdims=True)
    return adv / (adv.std() + 1e-8)


def _tensors(
    batch: LoggedBatch, advantage: str
) -> tuple[PageBatch, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n_max = int(batch.pages.sizes.max())
    pb = collate(batch.pages, n_max)
    return (
        pb,
        torch.from_numpy(batch.ranking),
        torch.from_numpy(batch.logged_logp).float(),
        torch.from_numpy(_advantages(batch.reward, advantage)).float(),
        torch.from_numpy(batch.temperature).float()[:, None],
    )


def _param_groups(model: WholePageReranker, cfg: UpdateConfig) -> list[dict]:
    """Adam groups: the offset head at lr x offset_lr_scale, the rest at lr x body_lr_scale (a group
    whose scale is 0 is left out, so its parameters stay exactly as served)."""
    head = model.offset_head
    offset = list(head.parameters()) if head is not None else []
    ids = {id(p) for p in offset}
    body = [p for p in model.parameters() if id(p) not in ids]
    if head is not None and cfg.offset_params == "bias":  # the head's weights follow the body's scale
        offset = [head.bias]
        body = body + [head.weight]
    if not offset and cfg.body_lr_scale == 0:
        raise ValueError("body_lr_scale 0 trains the offset head only, but this reranker has none")
    groups = [
        {"params": ps, "lr": cfg.lr * scale}
        for ps, scale in ((body, cfg.body_lr_scale), (offset, cfg.offset_lr_scale))
        if ps and scale > 0
    ]
    for ps, scale in ((body, cfg.body_lr_scale), (offset, cfg.offset_lr_scale)):
        if scale == 0:
            for p in ps:
                p.requires_grad_(False)
    return groups


def _scorers(cand: WholePageReranker, serving: WholePageReranker, pb: PageBatch, cfg: UpdateConfig):
    """(score(i), reference(i)): the candidate's (differentiable) and the serving policy's scores of
    impressions i. When only the offset head (or its bias) learns (body_lr_scale 0), the rest
    of the network is fixed, so its item scores and the context embedding are computed once and each
    step only re-applies the head: the same scores, without a forward pass per step."""
    head = cand.offset_head
    if cfg.body_lr_scale > 0 or head is None:

        def full(i):
            return cand(pb.features[i], pb.modality[i], pb.mask[i], pb.query[i], pb.user[i])

        def ref(i):
            return serving(pb.features[i], pb.modality[i], pb.mask[i], pb.query[i], pb.user[i])

        return full, ref
    modality = pb.modality.long().clamp(0, len(cand.modalities) - 1)
    with torch.no_grad():
        parts = [
            (
                serving(pb.features[j], pb.modality[j], pb.mask[j], pb.query[j], pb.user[j]),
                serving.context_embedding(pb.query[j].float(), pb.user[j].float()),
            )
            for j in torch.split(torch.arange(len(pb.mask)), 512)
        ]
        served = torch.cat([p[0] for p in parts])
        context = torch.cat([p[1] for p in parts])
        base = served - serving.offset_head(context).gather(1, modality)

    def offsets_only(i):
        return (base[i] + head(context[i]).gather(1, modality[i])).masked_fill(~pb.mask[i], PAD_SCORE)

    def ref(i):
        return served[i]

    return offsets_only, ref


def offpolicy_update(
    model: WholePageReranker, batch: LoggedBatch, consistency_target: float, cfg: UpdateConfig | None = None
) -> tuple[WholePageReranker, dict[str, float]]:
    """A candidate policy trained from `model` on logged `batch`; `model` itself is left untouched.
    Its stats' `train_consistency` is the last period's top-K consistency on the batch."""
    cfg = cfg or UpdateConfig()
    if len(batch) == 0:
        raise ValueError("no explored impressions with feedback to learn from")
    torch.manual_seed(cfg.seed)
    serving = copy.deepcopy(model).eval()
    for p in serving.parameters():
        p.requires_grad_(False)
    cand = copy.deepcopy(model).train()
    opt = torch.optim.Adam(_param_groups(cand, cfg))
    pb, ranking, logged_logp, adv, temp = _tensors(batch, cfg.advantage)
    lagrangian = Lagrangian(cfg.lagrangian(), ranking.shape[1])
    history: dict[str, list[float]] = {
        k: [] for k in ("objective", "hinge", "kl", "train_consistency", "multiplier")
    }
    score, reference = _scorers(cand, serving, pb, cfg)
    fit = Fit(
        cfg,
        batch,
        (pb, ranking, logged_logp, adv, temp),
        score,
        reference,
        opt,
        lagrangian,
        history,
        consistency_target,
    )
    (ppo_epochs if cfg.objective == "ppo" else dr_steps)(fit)
    cand.eval()
    stats = {
        "impressions": len(batch),
        "objective": cfg.objective,
        "loss": float(np.mean(history["objective"][-10:])),
        "hinge": float(np.mean(history["hinge"][-10:])),
        "kl_to_serving": float(np.mean(history["kl"][-10:])),
        "train_consistency": history["train_consistency"][-1],
        "multiplier": lagrangian.multiplier,
        "margin": lagrangian.cfg.margin,
        **_offset_move(cand, serving),
    }
    return cand, stats


def _offset_move(cand: WholePageReranker, serving: WholePageReranker) -> dict:
    """How far the modality-offset bias moved (one score shift per modality), for the round's record."""
    if cand.offset_head is None:
        return {}
    move = (cand.offset_head.bias - serving.offset_head.bias).detach().numpy()
    return {"offset_bias_move": {m: float(v) for m, v in zip(cand.modalities, move)}}


def save_candidate(model: WholePageReranker, path: str | Path, version: str, extra: dict) -> Path:
    from pretrain.checkpoint import save_checkpoint

    return save_checkpoint(model, path, version=version, extra=extra, overwrite=True).path
