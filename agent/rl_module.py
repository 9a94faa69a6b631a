"""The RLlib policy: the SMAR whole-page reranker as a TorchRLModule (new API stack) with a value head.

    obs (Dict of float32 Boxes, fixed n_max slots) --WholePageReranker--> per-item scores [B, N]
    logits = masked_logits(scores, mask, temperature)      -> Columns.ACTION_DIST_INPUTS
    action ~ PlackettLuce(logits), top-K                    (agent.distribution)
    value  = small MLP on pooled, normalised page features (separate from the scoring path)

The scoring network is `pretrain.reranker.WholePageReranker`, unchanged: loaded from a SMAR checkpoint
(checksum verified by `pretrain.checkpoint.load_checkpoint`), or built fresh from a `RerankerConfig` with
its normaliser fitted on given pages (`scratch_model_config`). The exported policy is therefore a normal
reranker checkpoint that Serve loads.

The value head does not touch the scoring path (no shared parameters, no gradient into the reranker)
and its last layer starts at zero, so at step 0 the policy is exactly the SMAR policy and V == 0.

model_config keys (a plain dict so it travels to every env runner and learner):
  checkpoint       path of a reranker checkpoint folder, or None for a fresh network
  reranker_config  RerankerConfig.to_json() for a fresh network (ignored with a checkpoint)
  normalizer       {"feat_mean", "feat_std", "ctx_mean", "ctx_std"} nested lists for a fresh network
  seed             torch seed of the fresh network / value head (identical on every worker)
  temperature      logits = scores / temperature (exploration width; 1.0 = the reranker's own scale)
  layout_noise     sigma of the Gaussian layout exploration (agent.layout_exploration); 0: none
  value_hidden     width of the value MLP
  obs_layout       with a flat Box observation space (`agent.flat_obs`, what `smar train` uses): the
                   layout of the Dict leaves in the flat vector; without it the space is the SerpEnv Dict
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces as gym_spaces
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.utils.annotations import override
from torch import nn

from agent import flat_obs
from agent import layout_exploration as layout
from agent.distribution import plackett_luce_cls
from envs.pages import N_MODALITIES, Pages
from pretrain import plackett_luce as pl
from pretrain.checkpoint import load_checkpoint
from pretrain.reranker import RerankerConfig, WholePageReranker, signed_log

OBS_KEYS = flat_obs.OBS_KEYS
# Batch column of the env-to-module connector `MarkEndedEpisodes`: the row's episode has ended.
ENDED = "episode_ended"
SCORES = "reranker_scores"  # extra forward_train output: raw scores (before temperature) for the learner
# Batch column of the learner connector piece `agent.learner_connectors.ValueInputs`: `value_inputs`
# of the observations, computed once per train batch instead of once per minibatch and epoch.
VALUE_INPUTS = "value_inputs"
NORMALIZER_BUFFERS = ("feat_mean", "feat_std", "ctx_mean", "ctx_std")


def build_reranker(model_config: dict[str, Any]) -> WholePageReranker:
    """The scoring network a model_config describes (checkpoint or fresh), in train mode."""
    path = model_config.get("checkpoint")
    if path:
        net, _ = load_checkpoint(path)  # verifies the SHA-256
    else:
        cfg = model_config.get("reranker_config")
        if cfg is None:
            raise ValueError("model_config needs 'checkpoint' or 'reranker_config' (fresh network)")
        with torch.random.fork_rng():  # seeded init without disturbing the worker's global RNG
            torch.manual_seed(int(model_config.get("seed", 0)))
            net = WholePageReranker(RerankerConfig.from_json(cfg))
        norm = model_config.get("normalizer")
        if norm is not None:
            with torch.no_grad():
                for name in NORMALIZER_BUFFERS:
                    getattr(net, name).copy_(torch.as_tensor(np.asarray(norm[name]), dtype=torch.float32))
    net.train()
    return net


def scratch_model_config(pages: Pages, seed: int = 0, **reranker_kwargs: Any) -> dict[str, Any]:
    """model_config for a fresh reranker whose normaliser is fitted on `pages` (no SMAR pretraining)."""
    cfg = RerankerConfig.for_pages(pages, **reranker_kwargs)
    net = WholePageReranker(cfg)
    net.fit_normalizer(pages)
    return {
        "checkpoint": None,
        "reranker_config": cfg.to_json(),
        "normalizer": {k: getattr(net, k).tolist() for k in NORMALIZER_BUFFERS},
        "seed": int(seed),
    }


class RerankerPolicyModule(TorchRLModule, ValueFunctionAPI):
    """PPO policy + value function around the WholePageReranker. See the module docstring."""

    def setup(self) -> None:
        mc = dict(self.model_config or {})
        self.temperature = float(mc.get("temperature", 1.0))
        if self.temperature <= 0:
            raise ValueError(f"model_config['temperature'] must be > 0, got {self.temperature}")
        self.layout_noise = float(mc.get("layout_noise", 0.0))
        if self.layout_noise < 0:
            raise ValueError(f"model_config['layout_noise'] must be >= 0, got {self.layout_noise}")
        self.slate_size = int(len(self.action_space.nvec))
        self.n_max = int(self.action_space.nvec[0])
        self.reranker = build_reranker(mc)
        self.reranker.lean = True  # the same scores with less work (WholePageReranker.lean)
        obs = self.observation_space
        self.obs_layout = mc.get(flat_obs.LAYOUT_KEY)
        if obs is not None:
            shapes = self._obs_shapes(obs)
            missing = [k for k in OBS_KEYS if k not in shapes]
            if missing:
                raise ValueError(f"observation space lacks {missing}; expected the SerpEnv Dict {OBS_KEYS}")
            d_obs = shapes["features"][-1]
            if d_obs != self.reranker.dmax:
                raise ValueError(
                    f"observation 'features' width {d_obs} != reranker feature width {self.reranker.dmax}"
                )
        cfg = self.reranker.config
        value_in = cfg.query_dim + cfg.user_dim + N_MODALITIES * (self.reranker.dmax + 2)
        hidden = int(mc.get("value_hidden", 64))
        with torch.random.fork_rng():
            torch.manual_seed(int(mc.get("seed", 0)) + 1)
            self.value_head = nn.Sequential(
                nn.Linear(value_in, hidden),
                nn.Tanh(),
                nn.Linear(hidden, hidden),
                nn.Tanh(),
                nn.Linear(hidden, 1),
            )
        nn.init.zeros_(self.value_head[-1].weight)
        nn.init.zeros_(self.value_head[-1].bias)
        self.action_dist_cls = plackett_luce_cls(self.slate_size)

    def _obs_shapes(self, space: Any) -> dict[str, tuple]:
        """Leaf shapes of the observation space: the Dict's, or those of a flat Box's layout."""
        if isinstance(space, gym_spaces.Dict):
            return {k: tuple(v.shape) for k, v in space.spaces.items()}
        if self.obs_layout is None:
            raise ValueError("a flat observation space needs model_config['obs_layout'] (agent.flat_obs)")
        width = sum(int(np.prod(shape)) for _, shape in self.obs_layout)
        if tuple(space.shape) != (width,):
            raise ValueError(
                f"flat observation space {space.shape} does not match its layout (width {width})"
            )
        return {k: tuple(shape) for k, shape in self.obs_layout}

    def observations(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The batch's observations as the SerpEnv Dict of tensors (split from a flat [B, W] tensor)."""
        obs = batch[Columns.OBS]
        return obs if isinstance(obs, dict) else flat_obs.unflatten(obs, self.obs_layout)

    # ------------------------------------------------------------------ policy
    def scores(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw reranker scores [B, N] (PAD_SCORE on padding)."""
        return self.reranker(obs["features"], obs["modality"], obs["mask"], obs["query"], obs["user"])

    def logits(self, obs: dict[str, torch.Tensor], scores: torch.Tensor | None = None) -> torch.Tensor:
        s = self.scores(obs) if scores is None else scores
        return pl.masked_logits(s, obs["mask"], self.temperature)

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.logits(self.observations(batch))}

    def layout_mean(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The policy's page layout [B, M]: its modality offsets relative to the first modality, the
        mean of the Gaussian layout exploration (one definition for sampling and training)."""
        return layout.relative(self.reranker.layout_offsets(obs["query"], obs["user"]))

    @torch.no_grad()
    def _forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """Sampling. RLlib computes an action for every sub-env each step, also for those whose
        episode just ended (the env's next-step autoreset ignores it, and so do the episodes);
        sessions are 1-3 pages, so many rows are such. Rows marked ended (`MarkEndedEpisodes`) get
        zero scores (a uniform, valid slate) instead of a reranker pass. With `layout_noise` the
        page's layout is explored too (`agent.layout_exploration`): the noise and the policy's own
        relative offsets become batch columns for the learner. No autograd graph is built (RLlib's
        default `_forward_exploration` has the same `no_grad`)."""
        obs = self.observations(batch)
        ended = batch.get(ENDED)
        if ended is None or not bool(ended.any()):
            scores = self.scores(obs)
        else:
            keep = ~ended.bool()
            scores = obs["mask"].new_zeros(obs["mask"].shape)
            if bool(keep.any()):
                scores = scores.index_put((keep,), self.scores({k: v[keep] for k, v in obs.items()}))
        if not self.layout_noise:
            return {Columns.ACTION_DIST_INPUTS: self.logits(obs, scores)}
        mean = self.layout_mean(obs)
        noise = layout.sample_noise(scores.shape[0], N_MODALITIES, self.layout_noise, scores)
        return {
            Columns.ACTION_DIST_INPUTS: self.logits(
                obs, layout.layout_scores(scores, noise, obs["modality"])
            ),
            layout.LAYOUT_MEAN: mean,
            layout.LAYOUT_NOISE: noise,
        }

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """Scores for the rows that carry a loss only. PPO's learner connector appends one artificial
        timestep to every episode (for the value bootstrap) and masks it out of the loss; sessions are
        1-3 pages, so those rows are a third or more of the batch. They get zero scores (a uniform,
        finite policy, no gradient) instead of a reranker forward and backward pass. With layout
        exploration the sampled layout is re-centred on this policy's offsets (LAYOUT_LOGP: its
        Gaussian log-density, the first factor of the action's probability)."""
        obs = self.observations(batch)
        rows = batch.get(Columns.LOSS_MASK)
        if rows is None or bool(rows.all()):
            scores = self.scores(obs)
        else:
            keep = rows.bool()
            part = self.scores({k: v[keep] for k, v in obs.items()})
            scores = part.new_zeros(obs["mask"].shape).index_put((keep,), part)
        out = {SCORES: scores}
        sampled = scores
        if self.layout_noise and layout.LAYOUT_NOISE in batch:
            mean = self.layout_mean(obs)
            noise = layout.recentre(batch[layout.LAYOUT_MEAN], batch[layout.LAYOUT_NOISE], mean)
            sampled = layout.layout_scores(scores, noise, obs["modality"])
            out[layout.LAYOUT_LOGP] = layout.log_density(noise, self.layout_noise)
        out[Columns.ACTION_DIST_INPUTS] = self.logits(obs, sampled)
        return out

    # ------------------------------------------------------------------ value
    def value_inputs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-modality mean of the normalised item features, counts and mean single-modal score, plus
        the normalised query/user context: cheap (no attention) and detached from the scoring path."""
        net = self.reranker
        mask = obs["mask"].float()
        mod = obs["modality"].long().clamp(0, N_MODALITIES - 1)
        with torch.no_grad():
            x = (signed_log(obs["features"].float()) - net.feat_mean[mod]) / net.feat_std[mod]
            ctx = (torch.cat([obs["query"].float(), obs["user"].float()], -1) - net.ctx_mean) / net.ctx_std
        onehot = nn.functional.one_hot(mod, N_MODALITIES).float() * mask[..., None]  # [B, N, M]
        counts = onehot.sum(1)  # [B, M]
        denom = counts.clamp_min(1.0)
        pooled = torch.einsum("bnm,bnd->bmd", onehot, x) / denom[..., None]
        sm = torch.einsum("bnm,bn->bm", onehot, obs["single_modal_score"].float()) / denom
        frac = counts / max(self.n_max, 1)
        return torch.cat([ctx, pooled.flatten(1), frac, sm], -1).detach()

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        """V(obs); the batch's VALUE_INPUTS column when it has one (the same values: `value_inputs`
        depends only on the observations and the normaliser buffers, which training never changes)."""
        x = batch.get(VALUE_INPUTS)
        if x is None:
            x = self.value_inputs(self.observations(batch))
        return self.value_head(x).squeeze(-1)


class MarkEndedEpisodes(ConnectorV2):
    """Env-to-module connector piece: the batch column ENDED, True for the rows whose episode has
    ended (their action goes nowhere), in the row order RLlib's observation piece uses."""

    @override(ConnectorV2)
    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        for ep in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=True):
            self.add_batch_item(batch, ENDED, ep.is_done, single_agent_episode=ep)
        return batch


def env_to_module_pieces(env=None, spaces=None, device=None) -> list[ConnectorV2]:
    """`config.env_runners(env_to_module_connector=...)`: the pieces before RLlib's defaults."""
    return [MarkEndedEpisodes()]


def module_spec(model_config: dict[str, Any]) -> RLModuleSpec:
    """RLModuleSpec for `config.rl_module(rl_module_spec=...)`."""
    return RLModuleSpec(module_class=RerankerPolicyModule, model_config=dict(model_config))
