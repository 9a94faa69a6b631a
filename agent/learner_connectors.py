"""The learner connector pieces of `agent.learner.ConstrainedPPOLearner`: the flat observations split
back into their Dict (`SplitObservations`) and the value function's inputs once per train batch
(`ValueInputs`), both before RLlib's GAE, and after GAE the per-position advantages
of ratio "position" (`PositionAdvantages`) and the removal of PPO's value-bootstrap rows
(`DropBootstrapRows`)."""

from __future__ import annotations

import numpy as np
import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.annotations import override

from agent.rl_module import VALUE_INPUTS

POSITION_REWARDS = "position_rewards"  # batch column [B, K]: the page reward per shown position (env info)
POSITION_ADVANTAGES = "position_advantages"  # batch column [B, K]: PositionAdvantages' output


class SplitObservations(ConnectorV2):
    """Learner connector piece (first of ours): a flat observation column (`agent.flat_obs`, as the
    env runners sample it) back into the SerpEnv Dict of tensors, once per train batch, so the
    minibatches, the loss and the value inputs see the Dict's leaves."""

    @override(ConnectorV2)
    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        for mid, mb in batch.items():
            module = rl_module[mid].unwrapped()
            if Columns.OBS in mb and hasattr(module, "observations"):
                mb[Columns.OBS] = module.observations(mb)
        return batch


class ValueInputs(ConnectorV2):
    """Learner connector piece (before RLlib's GAE): the batch column `agent.rl_module.VALUE_INPUTS`,
    the value function's inputs for every row, computed once. GAE, PositionAdvantages and the loss of
    every minibatch in every epoch then read their rows instead of recomputing them from the
    observations (the same values: they depend on nothing that training changes)."""

    @override(ConnectorV2)
    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        for mid, mb in batch.items():
            module = rl_module[mid].unwrapped()
            if Columns.OBS in mb and hasattr(module, "value_inputs"):
                mb[VALUE_INPUTS] = module.value_inputs(mb[Columns.OBS])
        return batch


def position_advantages(
    advantages: torch.Tensor, raw_advantages: torch.Tensor, position_rewards: torch.Tensor, real: torch.Tensor
) -> torch.Tensor:
    """Per-position advantages [B, K] from the page's standardised GAE advantages [B] (RLlib's:
    (raw - mean) / std(raw), raw_advantages [B] = VALUE_TARGETS - V) and the page reward per shown
    position [B, K]: A[t, k] = A[t] - (R_<k[t] - mean over real rows of R_<k) / std(raw), R_<k the
    reward earned above position k. Rows not `real` (RLlib's bootstrap rows) earn nothing."""
    rewards = torch.where(real[:, None], position_rewards, torch.zeros_like(position_rewards))
    scale = max(1e-4, float(raw_advantages.std(unbiased=False)))  # GAE's np.std
    prefix = torch.cumsum(rewards, -1) - rewards  # reward above each position
    centred = prefix - prefix[real].mean(0) if real.any() else prefix
    return advantages[:, None] - centred / scale


class PositionAdvantages(ConnectorV2):
    """Learner connector piece (after RLlib's GAE): the per-position advantage of ratio "position".

    A[t, k] = A[t] - (R_<k[t] - mean over the batch of R_<k) / s, with A[t] the page's GAE advantage
    (standardised by RLlib with the std s of the raw advantages VALUE_TARGETS - V), R_<k[t] the reward
    the page earned at positions above k (env info `position_rewards`) and s recomputed exactly as
    GAE computed it. The k-th placement cannot change what the user did above it (the cascade), so
    that reward is noise for its gradient; centring per position keeps the baseline's mean.
    Episodes and batch rows are walked in the same order as RLlib's own pieces walk them."""

    @override(ConnectorV2)
    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        per_module: dict[str, list[np.ndarray]] = {}
        for ep in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            mid = ep.module_id or next(iter(batch))
            k = int(rl_module[mid].unwrapped().slate_size)
            infos = ep.get_infos(slice(1, len(ep) + 1))  # infos[t + 1] is step t's (index 0: reset's)
            rewards = np.zeros((len(ep), k), np.float32)
            for t, info in enumerate(infos[: len(ep)]):
                r = info.get(POSITION_REWARDS) if isinstance(info, dict) else None
                if r is not None:
                    rewards[t] = np.asarray(r, np.float32)
            per_module.setdefault(mid, []).append(rewards)
        for mid, parts in per_module.items():
            mb = batch[mid]
            rewards = torch.as_tensor(np.concatenate(parts))
            adv = mb[Postprocessing.ADVANTAGES]
            if rewards.shape[0] != adv.shape[0]:
                raise ValueError(f"position rewards for {rewards.shape[0]} rows, batch has {adv.shape[0]}")
            real = mb[Columns.LOSS_MASK].bool() if Columns.LOSS_MASK in mb else torch.ones_like(adv).bool()
            if Columns.REWARDS in mb:  # the rows line up: each real row's positions sum to its reward
                step = torch.as_tensor(mb[Columns.REWARDS]).to(rewards)
                if not torch.allclose(rewards.sum(-1)[real], step[real], atol=1e-5):
                    raise ValueError("position rewards do not sum to the batch's rewards: rows misaligned")
            with torch.no_grad():
                values = rl_module[mid].unwrapped().compute_values(mb)
            mb[POSITION_ADVANTAGES] = position_advantages(
                adv, mb[Postprocessing.VALUE_TARGETS] - values, rewards.to(adv.device), real
            )
        return batch


class DropBootstrapRows(ConnectorV2):
    """Learner connector piece (last): removes the rows RLlib's PPO adds for the value bootstrap
    (`Columns.LOSS_MASK` False) from every column once GAE (and PositionAdvantages) have used them.
    The loss then sees only real pages; PPO's loss is a masked mean, so on the same rows it is
    unchanged, but minibatches of `minibatch_size` rows now hold that many real pages."""

    @override(ConnectorV2)
    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        for mid, mb in batch.items():
            if Columns.LOSS_MASK not in mb:
                continue
            keep = torch.as_tensor(mb.pop(Columns.LOSS_MASK)).bool()
            idx = torch.nonzero(keep).squeeze(-1)

            def take(x, idx=idx):
                if isinstance(x, dict):
                    return {k: take(v) for k, v in x.items()}
                if isinstance(x, torch.Tensor):
                    return x.index_select(0, idx.to(x.device))
                return np.asarray(x)[idx.numpy()]

            batch[mid] = {k: take(v) for k, v in mb.items()}
        return batch
