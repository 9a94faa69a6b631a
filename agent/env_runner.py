"""The env runner `smar train` samples with: RLlib's SingleAgentEnvRunner, minus the per-step cost of
episode callbacks nobody configured and of torch's NaN fill of new tensors (`skip_nan_fill`).

RLlib calls the episode callbacks (created, start, step, end) for every sub-env at every vector step,
building their keyword arguments each time (64 sub-envs, sessions of 1-3 pages), while RLlibCallback's
own methods do nothing. With only those, `SerpEnvRunner` skips the calls; any configured callback
class or function restores RLlib's behaviour.
"""

from __future__ import annotations

import torch
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

EPISODE_CALLBACKS = ("on_episode_created", "on_episode_start", "on_episode_step", "on_episode_end")


def skip_nan_fill() -> None:
    """Keep torch's deterministic algorithms but stop filling every new tensor with NaN.

    With a seed on a CPU-only torch, RLlib turns on `torch.use_deterministic_algorithms(True)` in each
    env runner and learner (`ray.rllib.utils.torch_utils.set_torch_seed`). That also makes every
    `torch.empty` (inside layer norm, attention, clone, dtype casts...) write NaN into its memory,
    an aid for finding reads of uninitialised memory that costs a full write of every such tensor.
    The algorithms stay the deterministic ones; only the fill goes, so no value changes (a read of
    uninitialised memory would have shown up as NaN)."""
    torch.utils.deterministic.fill_uninitialized_memory = False


class SerpEnvRunner(SingleAgentEnvRunner):
    """SingleAgentEnvRunner that calls episode callbacks only when some are configured and samples
    without torch's NaN fill (`skip_nan_fill`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        skip_nan_fill()  # after RLlib's seeding turned on the deterministic algorithms
        own = any(type(c) is not RLlibCallback for c in self._callbacks)
        functions = any(getattr(self.config, f"callbacks_{which}", None) for which in EPISODE_CALLBACKS)
        self.episode_callbacks = own or functions

    def _make_on_episode_callback(self, which: str, idx: int, episodes: list) -> None:
        if self.episode_callbacks:
            super()._make_on_episode_callback(which, idx, episodes)
