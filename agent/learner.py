"""Constrained PPO: RLlib's PPO loss + a Lagrangian single-modal consistency term (+ optional KL to SMAR).

THE LOSS (per module, per minibatch; see `ConstrainedPPOLearner.compute_loss_for_module`):

    loss = PPO(clip surrogate + vf + entropy [+ kl to old policy])          # RLlib, unchanged
         + lambda * hinge                                                   # consistency constraint
         + reference_kl_coeff * KL(pi_SMAR || pi_theta)                     # optional, frozen SMAR

  hinge   = SMAR's pairwise hinge (`pretrain.losses.pairwise_consistency`, equal beta_m; `smar train`
            sets the margin the SMAR reranker was pretrained with, the authors' 1 by default) of
            the policy's raw scores against each modality's single-modal order (obs single_modal_score):
            the differentiable surrogate of "keep every modality's internal order".
  lambda  = Lagrange multiplier, dual ascent once per training iteration on the *measured* constraint
            lambda <- clip(lambda + multiplier_lr * (target - agreement), 0, multiplier_max)
            agreement = within-modality pairwise agreement (envs.metrics semantics, computed in torch)
            of the deterministic policy's top-K with the single-modal scores, averaged over the
            iteration's minibatches. target = `target`, or `target_fraction` x the agreement measured
            on the first batch (the SMAR policy itself when fine-tuning from SMAR).
  KL      = chain-rule estimate (pretrain.plackett_luce.kl_estimate) with prefixes sampled from the
            frozen SMAR policy, which lives in the learner only (never a submodule of the trained
            RLModule, so it is neither optimised, synced to env runners nor checkpointed with it).

The learner connector pieces it adds (the value inputs once per batch, per-position advantages, dropping
the bootstrap rows) are in
`agent.learner_connectors`. Configure through `config.training(learner_class=ConstrainedPPOLearner,
learner_config_dict=ConstraintConfig(...).to_dict())`. Multiplier, hinge, train consistency, target and
KL are logged every iteration under the module id in the learner results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from ray.rllib.algorithms.ppo.ppo import (
    LEARNER_RESULTS_KL_KEY,
    LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY,
    LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY,
)
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.learner.general_advantage_estimation import GeneralAdvantageEstimation
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.annotations import override
from ray.rllib.utils.torch_utils import explained_variance

from agent import layout_exploration as layout
from agent.constraint import Lagrangian, LagrangianConfig, topk_agreement
from agent.distribution import ENTROPY_SAMPLES
from agent.env_runner import skip_nan_fill
from agent.learner_connectors import (
    POSITION_ADVANTAGES,
    DropBootstrapRows,
    PositionAdvantages,
    SplitObservations,
    ValueInputs,
)
from agent.rl_module import SCORES
from envs.config_io import from_dict
from envs.pages import Pages
from pretrain import plackett_luce as pl
from pretrain.checkpoint import load_checkpoint
from pretrain.losses import LossConfig
from pretrain.page import collate
from pretrain.reranker import WholePageReranker

# Metric names (learner results, under the module id).
MULTIPLIER = "consistency_multiplier"
HINGE = "consistency_hinge"
TRAIN_CONSISTENCY = "train_consistency"  # the top-K consistency on the training batches
TARGET = "consistency_target"
REFERENCE_KL = "reference_kl"
CLIP_FRACTION = "clip_fraction"  # share of the objective's ratios (slates or positions) outside 1 +- clip
SLATE_CLIP_FRACTION = "slate_clip_fraction"  # the same for the slate ratio, whatever the objective
APPROX_KL = "approx_kl"  # E[(r - 1) - log r] over the minibatch, r = pi / pi_old of the sampled slate
EXPLAINED_VAR = "vf_explained_var"  # RLlib's own (PPOTorchLearner logs it)
OFFSET_OPTIMIZER = "offset_head"  # a named optimizer (ConstraintConfig.offset_lr_scale != 1)
BODY_OPTIMIZER = "reranker_body"  # a named optimizer (ConstraintConfig.body_lr_scale != 1)
RATIOS = ("slate", "position")
LAYOUT_RATIOS = ("joint", "own")
LAYOUT_CLIP_FRACTION = "layout_clip_fraction"  # share of the layout ratios outside 1 +- clip


@dataclass(frozen=True)
class ConstraintConfig:
    """The consistency constraint and the optional KL to the frozen SMAR policy."""

    enabled: bool = True  # False: plain PPO (agreement is still measured and logged)
    target: float | None = None  # absolute agreement target in [0, 1]; None -> target_fraction x initial
    target_fraction: float = 0.99
    # hinge margin gamma; agent.train passes the SMAR checkpoint's own (agent.constraint.checkpoint_margin)
    margin: float = LossConfig().margin
    multiplier_init: float = 0.0
    multiplier_lr: float = 20.0  # dual step per unit of agreement shortfall
    multiplier_max: float = 50.0
    reference_checkpoint: str | None = None  # frozen SMAR policy for the KL term
    reference_kl_coeff: float = 0.0
    kl_samples: int = 2
    # The optimiser: the reranker's modality-offset head (the page layout: how modalities interleave,
    # which no within-modality order depends on) learns at offset_lr_scale x the learning rate.
    offset_lr_scale: float = 1.0
    # The rest of the reranker (item scoring and the context embedding) learns at body_lr_scale x the
    # learning rate; 0 keeps every within-modality order as pretrained, so only the layout moves (the
    # value head always learns at the full rate).
    body_lr_scale: float = 1.0
    # The trust region (PPO's importance ratio):
    #   "slate"     one ratio per page, pi(a) / pi_old(a) of the whole top-K ranking (RLlib's PPO loss);
    #               a product of K per-position ratios, so it leaves 1 +- clip after a small step
    #   "position"  one ratio per position, pi(a_k | a_<k) / pi_old(a_k | a_<k), each with its own
    #               advantage: the page's GAE advantage minus the reward earned above position k
    #               (under the cascade the k-th choice cannot change what the user did above it),
    #               centred per position over the batch (PositionAdvantages). PPO on the MDP whose
    #               steps are the K placements of a page.
    ratio: str = "slate"
    # The layout's trust region: "joint", its Gaussian log-ratio is part of the action's (the slate's or
    # position 1's); "own", its own clipped surrogate beside the items' (the summed surrogates have the
    # joint one's gradient at the old policy; a saturated item ratio no longer silences the layout)
    layout_ratio: str = "joint"
    # PPO's learner connector appends one artificial timestep to every episode chunk for the value
    # bootstrap (sessions are 1-3 pages, so that is ~40% of the rows) and masks it out of the loss.
    # True: drop those rows once GAE has used them, so a minibatch of `minibatch` rows is that many
    # real pages and no forward or backward pass is spent on rows without loss.
    drop_bootstrap_rows: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("ratio", RATIOS), ("layout_ratio", LAYOUT_RATIOS)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"ConstraintConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.target is not None and not 0.0 <= self.target <= 1.0:
            raise ValueError(f"ConstraintConfig.target must lie in [0, 1], got {self.target}")
        if not 0.0 < self.target_fraction <= 1.0:
            raise ValueError(
                f"ConstraintConfig.target_fraction must lie in (0, 1], got {self.target_fraction}"
            )
        if self.offset_lr_scale <= 0:
            raise ValueError(f"ConstraintConfig.offset_lr_scale must be > 0, got {self.offset_lr_scale}")
        if self.body_lr_scale < 0:
            raise ValueError(f"ConstraintConfig.body_lr_scale must be >= 0, got {self.body_lr_scale}")
        for name in ("margin", "multiplier_init", "multiplier_lr", "multiplier_max", "reference_kl_coeff"):
            if getattr(self, name) < 0:
                raise ValueError(f"ConstraintConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.reference_kl_coeff > 0 and not self.reference_checkpoint:
            raise ValueError("ConstraintConfig.reference_kl_coeff > 0 needs reference_checkpoint")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lagrangian(self) -> LagrangianConfig:
        """The shared constraint's part of this config (agent.constraint)."""
        return LagrangianConfig(
            enabled=self.enabled,
            margin=self.margin,
            multiplier_init=self.multiplier_init,
            multiplier_lr=self.multiplier_lr,
            multiplier_max=self.multiplier_max,
        )

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> ConstraintConfig:
        return from_dict(ConstraintConfig, d, "learner_config_dict")


class ConstrainedPPOLearner(PPOTorchLearner):
    """PPOTorchLearner + Lagrangian consistency constraint + optional frozen-SMAR KL. See module docstring."""

    @override(PPOTorchLearner)
    def build(self) -> None:
        # Parsed before super().build(): configure_optimizers_for_module reads offset_lr_scale.
        self.constraint = ConstraintConfig.from_dict(self.config.learner_config_dict)
        super().build()
        skip_nan_fill()  # RLlib's seeding (in Learner.__init__) turned on torch's NaN fill too
        if self._learner_connector is not None:  # the Dict observations and value inputs once, before GAE
            self._learner_connector.insert_before(GeneralAdvantageEstimation, SplitObservations())
            self._learner_connector.insert_before(GeneralAdvantageEstimation, ValueInputs())
        if self.constraint.ratio == "position" and self._learner_connector is not None:
            # after RLlib's GAE (which PPOLearner.build appends last): per-position advantages
            self._learner_connector.append(PositionAdvantages())
        if self.constraint.drop_bootstrap_rows and self._learner_connector is not None:
            self._learner_connector.append(DropBootstrapRows())
        self.lagrangians: dict[str, Lagrangian] = {}
        self._pending_entropy: dict[str, tuple] = {}  # _defer_entropy
        # At lambda 0 the hinge is a logged statistic only, and RLlib keeps the last minibatch's
        # (window 1): its inputs are kept and it is computed once, after the update (_log_deferred_hinge).
        self._pending_hinge: dict[str, tuple] = {}
        self.targets: dict[str, float] = {}
        # The frozen SMAR policy: a plain attribute of the learner, NOT a submodule of the trained
        # RLModule (a parameter without gradient inside the trained module breaks RLlib's gradient
        # handling, and it must not be synced or exported).
        self._reference: WholePageReranker | None = None
        if self.constraint.reference_kl_coeff > 0:
            net, _ = load_checkpoint(self.constraint.reference_checkpoint)
            for p in net.parameters():
                p.requires_grad_(False)
            self._reference = net.eval()

    @property
    def multipliers(self) -> dict[str, float]:
        return {m: lag.multiplier for m, lag in self.lagrangians.items()}

    def _lagrangian(self, module_id: str) -> Lagrangian:
        if module_id not in self.lagrangians:
            k = self.module[module_id].unwrapped().slate_size
            self.lagrangians[module_id] = Lagrangian(self.constraint.lagrangian(), k, pooled_hinge=True)
        return self.lagrangians[module_id]

    # ------------------------------------------------------------------ the optimisers
    @override(PPOTorchLearner)
    def configure_optimizers_for_module(self, module_id: str, config: Any = None) -> None:
        """Adam over the module at the (scheduled) learning rate. With offset_lr_scale != 1 the
        reranker's modality-offset head, and with body_lr_scale != 1 the rest of the reranker, get
        their own named Adam (OFFSET_OPTIMIZER, BODY_OPTIMIZER) on the same schedule scaled. RLlib
        steps and schedules all of them."""
        module = self._module[module_id]
        params = self.get_parameters(module)
        reranker = module.unwrapped().reranker
        offset_head = getattr(reranker, "offset_head", None)
        c = self.constraint
        head = {id(p) for p in offset_head.parameters()} if offset_head is not None else set()
        groups: dict[str, tuple[set[int], float]] = {}
        if head and c.offset_lr_scale != 1.0:
            groups[OFFSET_OPTIMIZER] = (head, c.offset_lr_scale)
        if c.body_lr_scale != 1.0:
            body = {id(p) for p in reranker.parameters()} - head
            if c.offset_lr_scale == c.body_lr_scale:
                body |= head
                groups.pop(OFFSET_OPTIMIZER, None)
            groups[BODY_OPTIMIZER] = (body, c.body_lr_scale)
        grouped = set().union(*(ids for ids, _ in groups.values())) if groups else set()
        rest = [p for p in params if id(p) not in grouped]
        self.register_optimizer(
            module_id=module_id,
            optimizer=torch.optim.Adam(rest),
            params=rest,
            lr_or_lr_schedule=config.lr,
        )
        for name, (ids, scale) in groups.items():
            ps = [p for p in params if id(p) in ids]
            self.register_optimizer(
                module_id=module_id,
                optimizer_name=name,
                optimizer=torch.optim.Adam(ps),
                params=ps,
                lr_or_lr_schedule=scaled_schedule(config.lr, scale),
            )

    @override(PPOTorchLearner)
    def apply_gradients(self, gradients_dict: dict) -> None:
        """RLlib's, with its finiteness checks (two per parameter, each a host sync) done once over
        all gradients: with every gradient finite RLlib's checks all pass, so they are skipped
        (`torch_skip_nan_gradients` for this call); otherwise RLlib's own handling runs."""
        grads = [g.reshape(-1) for g in gradients_dict.values() if g is not None]
        if not grads or not bool(torch.isfinite(torch.cat(grads)).all()):
            return super().apply_gradients(gradients_dict)
        skip = self.config.torch_skip_nan_gradients
        self.config.torch_skip_nan_gradients = True
        try:
            super().apply_gradients(gradients_dict)
        finally:
            self.config.torch_skip_nan_gradients = skip

    # ------------------------------------------------------------------ the loss
    @override(PPOTorchLearner)
    def compute_loss_for_module(
        self, *, module_id: str, config: Any, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> torch.Tensor:
        c = self.constraint
        module = self.module[module_id].unwrapped()
        rows = batch[Columns.LOSS_MASK].bool() if Columns.LOSS_MASK in batch else None
        total = self._ppo_loss(module_id, module, config, batch, fwd_out, rows)
        obs = batch[Columns.OBS]
        mask = obs["mask"].bool()
        if rows is not None:  # RLlib's artificial bootstrap timesteps carry no loss
            mask = mask & rows[:, None]
        scores = fwd_out[SCORES]
        reference, modality = obs["single_modal_score"], obs["modality"].long()

        lag = self._lagrangian(module_id)
        if lag.weight == 0.0:  # the penalty is exactly 0: the hinge is only logged (_defer_hinge)
            lag.measure(scores, reference, modality, mask)
            self._pending_hinge[module_id] = (scores.detach(), reference, modality, mask)
        else:
            penalty, hinge = lag.penalty(scores, reference, modality, mask)
            total = total + penalty
            self._pending_hinge.pop(module_id, None)
            self.metrics.log_value((module_id, HINGE), hinge.detach(), window=1)
        if module_id not in self.targets:  # target_fraction x the first batch's agreement
            first = lag.agreement if lag.agreement is not None else 1.0
            self.targets[module_id] = c.target if c.target is not None else c.target_fraction * first

        if self._reference is not None:
            with torch.no_grad():
                ref_scores = self._reference(
                    obs["features"], obs["modality"], obs["mask"], obs["query"], obs["user"]
                )
                ref_layout = None  # with layout exploration: SMAR's slate at the page's sampled layout
                if module.layout_noise and layout.LAYOUT_NOISE in batch:
                    ref_layout = layout.relative(self._reference.layout_offsets(obs["query"], obs["user"]))
                    ref_scores = layout.at_sampled_layout(ref_scores, ref_layout, batch, obs["modality"])
                ref_logits = pl.masked_logits(ref_scores, obs["mask"], module.temperature)
            kl = pl.kl_estimate(
                ref_logits, fwd_out[Columns.ACTION_DIST_INPUTS], module.slate_size, c.kl_samples
            )
            if ref_layout is not None:  # plus the layouts' own KL: the action's density factorises
                kl = kl + layout.gaussian_kl(ref_layout, module.layout_mean(obs), module.layout_noise)
            keep = mask.any(-1)
            kl = kl[keep].mean() if keep.any() else kl.sum() * 0.0
            total = total + c.reference_kl_coeff * kl
            self.metrics.log_value((module_id, REFERENCE_KL), kl.detach(), window=1)

        return total

    def _ppo_loss(self, module_id, module, config, batch, fwd_out, rows) -> torch.Tensor:
        """RLlib's PPO loss (clipped surrogate + clipped vf loss - entropy bonus [+ KL to the old
        policy]) with the importance ratio of `ConstraintConfig.ratio`. With ratio "slate" this is
        PPOTorchLearner's loss term for term; the entropy is only differentiated when its
        coefficient is non-zero (it is a 4-sample x K-position estimate: costly to back-propagate)."""

        def mean(x: torch.Tensor) -> torch.Tensor:
            return x[rows].mean() if rows is not None else x.mean()

        logits = fwd_out[Columns.ACTION_DIST_INPUTS]
        actions = batch[Columns.ACTIONS].long()
        step_logp = pl.stepwise_log_probs(logits, actions)  # [B, K]
        adv = batch[Postprocessing.ADVANTAGES]
        layout_log_ratio = self._layout_log_ratio(module, batch, fwd_out)
        slate_log_ratio = step_logp.sum(-1) - batch[Columns.ACTION_LOGP] + layout_log_ratio
        lo, hi = 1.0 - config.clip_param, 1.0 + config.clip_param
        own_layout = self.constraint.layout_ratio == "own" and torch.is_tensor(layout_log_ratio)
        joint_log_ratio = slate_log_ratio  # the whole action's, for the trust-region statistics
        if own_layout:  # the items' ratio without the layout's; the layout's is its own term below
            slate_log_ratio = slate_log_ratio - layout_log_ratio
        if self.constraint.ratio == "position":
            with torch.no_grad():
                old_step = pl.stepwise_log_probs(batch[Columns.ACTION_DIST_INPUTS], actions)
            log_ratio = step_logp - old_step
            if torch.is_tensor(layout_log_ratio) and not own_layout:  # drawn first: position 1 carries it
                log_ratio = torch.cat([log_ratio[:, :1] + layout_log_ratio[:, None], log_ratio[:, 1:]], -1)
            adv_k = batch.get(POSITION_ADVANTAGES)
            if adv_k is None:  # no position rewards in this batch: every position gets the page's
                adv_k = adv[:, None].expand_as(log_ratio)
            ratio = torch.exp(log_ratio)
            surrogate = torch.min(adv_k * ratio, adv_k * torch.clamp(ratio, lo, hi)).sum(-1)
        else:
            log_ratio = slate_log_ratio
            ratio = torch.exp(log_ratio)
            surrogate = torch.min(adv * ratio, adv * torch.clamp(ratio, lo, hi))
        if own_layout:
            layout_ratio = torch.exp(layout_log_ratio)
            surrogate = surrogate + torch.min(adv * layout_ratio, adv * torch.clamp(layout_ratio, lo, hi))

        dist = module.get_train_action_dist_cls().from_logits(logits)
        entropy_coeff = self.entropy_coeff_schedulers_per_module[module_id].get_current_value()
        values = module.compute_values(batch, embeddings=fwd_out.get(Columns.EMBEDDINGS))
        vf_loss = torch.pow(values - batch[Postprocessing.VALUE_TARGETS], 2.0)
        vf_clipped = torch.clamp(vf_loss, 0, config.vf_clip_param)
        if entropy_coeff:
            entropy = dist.entropy()
            total = mean(-surrogate + config.vf_loss_coeff * vf_clipped - entropy_coeff * entropy)
            self.metrics.log_value((module_id, ENTROPY_KEY), mean(entropy).detach(), window=1)
        else:  # only logged: the estimate of the iteration's last minibatch, after the update
            self._defer_entropy(module_id, dist, rows)
            total = mean(-surrogate + config.vf_loss_coeff * vf_clipped)
        kl_loss = torch.zeros((), device=logits.device)
        if config.use_kl_loss:
            prev = module.get_exploration_action_dist_cls().from_logits(batch[Columns.ACTION_DIST_INPUTS])
            kl_loss = mean(prev.kl(dist))
            total = total + self.curr_kl_coeffs_per_module[module_id] * kl_loss

        with torch.no_grad():  # the trust region: clip shares and approximate KL to the sampling policy
            sel = (lambda x: x[rows]) if rows is not None else (lambda x: x)  # noqa: E731
            stats = trust_region_stats(sel(joint_log_ratio), config.clip_param)
            stats[SLATE_CLIP_FRACTION] = stats[CLIP_FRACTION]
            if self.constraint.ratio != "slate" or own_layout:  # the objective's own item ratios
                stats[CLIP_FRACTION] = trust_region_stats(sel(log_ratio), config.clip_param)[CLIP_FRACTION]
            if torch.is_tensor(layout_log_ratio):
                layout_stats = trust_region_stats(sel(layout_log_ratio), config.clip_param)
                stats[LAYOUT_CLIP_FRACTION] = layout_stats[CLIP_FRACTION]
            for key, value in stats.items():
                self.metrics.log_value((module_id, key), value, window=1)
            self.metrics.log_dict(
                {
                    POLICY_LOSS_KEY: -mean(surrogate),
                    VF_LOSS_KEY: mean(vf_clipped),
                    LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY: mean(vf_loss),
                    LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY: explained_variance(
                        batch[Postprocessing.VALUE_TARGETS], values
                    ),
                    LEARNER_RESULTS_KL_KEY: kl_loss,
                },
                key=module_id,
                window=1,
            )
        return total

    @staticmethod
    def _layout_log_ratio(module, batch, fwd_out) -> torch.Tensor | float:
        """log N(d; nu', sigma^2) - log N(d; nu, sigma^2) of each page's sampled layout (0 without
        layout exploration; `agent.layout_exploration`)."""
        new = fwd_out.get(layout.LAYOUT_LOGP)
        if new is None:
            return 0.0
        return new - layout.log_density(batch[layout.LAYOUT_NOISE], module.layout_noise)

    def _defer_entropy(self, module_id: str, dist: Any, rows: torch.Tensor | None) -> None:
        """With no entropy bonus the entropy is a logged statistic only, and RLlib keeps the last
        minibatch's (window 1). Its Monte-Carlo estimate costs as much as the rest of the loss, so it
        is computed once, for the last minibatch, in `after_gradient_based_update`, from the same
        random draws: the RNG state is kept and the draws the estimate takes are consumed here, so
        everything sampled later (the next iteration's actions too) is unchanged."""
        logits = dist.logits.detach()
        self._pending_entropy[module_id] = (type(dist), logits, rows, torch.get_rng_state())
        pl.skip_entropy_draws(logits, ENTROPY_SAMPLES)

    def _log_deferred_entropy(self) -> None:
        for module_id, (dist_cls, logits, rows, rng) in self._pending_entropy.items():
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.set_rng_state(rng)
                entropy = dist_cls.from_logits(logits).entropy()
            value = entropy[rows].mean() if rows is not None else entropy.mean()
            self.metrics.log_value((module_id, ENTROPY_KEY), value, window=1)
        self._pending_entropy.clear()

    def _log_deferred_hinge(self) -> None:
        for module_id, (scores, reference, modality, mask) in self._pending_hinge.items():
            hinge = self.lagrangians[module_id].hinge_value(scores, reference, modality, mask)
            self.metrics.log_value((module_id, HINGE), hinge, window=1)
        self._pending_hinge.clear()

    # ------------------------------------------------------------------ dual ascent
    @override(PPOTorchLearner)
    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        self._log_deferred_entropy()
        self._log_deferred_hinge()  # before the dual step changes lambda
        for module_id, lag in self.lagrangians.items():
            agreement = lag.dual_step(self.targets[module_id])
            if agreement is None:
                continue  # no single-modal scores in this batch: nothing measured, no dual step
            self.metrics.log_value((module_id, TRAIN_CONSISTENCY), agreement, window=1)
            self.metrics.log_value((module_id, TARGET), self.targets[module_id], window=1)
            self.metrics.log_value((module_id, MULTIPLIER), lag.multiplier, window=1)

    # ------------------------------------------------------------------ checkpointing (--resume)
    @override(PPOTorchLearner)
    def get_state(self, *args, **kwargs) -> dict[str, Any]:
        state = super().get_state(*args, **kwargs)
        state["constraint"] = {"multipliers": self.multipliers, "targets": dict(self.targets)}
        return state

    @override(PPOTorchLearner)
    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        if "constraint" in state:
            for module_id, lam in state["constraint"]["multipliers"].items():
                self._lagrangian(module_id).multiplier = float(lam)
            self.targets = dict(state["constraint"]["targets"])


def scaled_schedule(lr: float | list, scale: float) -> float | list:
    """An RLlib learning rate (constant or [[timestep, lr], ...]) times `scale`."""
    if isinstance(lr, (int, float)):
        return float(lr) * scale
    return [[t, v * scale] for t, v in lr]


def trust_region_stats(log_ratio: torch.Tensor, clip: float) -> dict[str, float]:
    """How far the updated policy is from the sampling one on its samples (log pi / pi_old):
    the share of ratios outside 1 +- clip, and the approximate KL(pi_old || pi), the unbiased
    non-negative estimator E[(r - 1) - log r] (Schulman's k3)."""
    if not log_ratio.numel():
        return {CLIP_FRACTION: 0.0, APPROX_KL: 0.0}
    ratio = torch.exp(log_ratio)
    return {
        CLIP_FRACTION: float(((ratio - 1.0).abs() > clip).float().mean()),
        APPROX_KL: float(((ratio - 1.0) - log_ratio).mean()),
    }


@torch.no_grad()
def topk_consistency(model: WholePageReranker, pages: Pages, k: int) -> float:
    """Within-modality agreement of the model's deterministic top-K with the single-modal scores over
    `pages`: the constraint's measure (`topk_agreement`), so targets and measurements agree."""
    model.eval()
    mass = pairs = 0.0
    for start in range(0, len(pages), 512):
        part = pages.select(slice(start, start + 512))
        pb = collate(part)
        scores = model.score_batch(pb)
        m, c = topk_agreement(scores, pb.single_modal_score, pb.modality, pb.mask & pb.has_score, k)
        mass, pairs = mass + float(m), pairs + float(c)
    return mass / pairs if pairs else float("nan")
