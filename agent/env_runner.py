"""The env runner `smar train` samples with: RLlib's SingleAgentEnvRunner, minus the per-step cost of
episode callbacks nobody configured.

RLlib calls the episode callbacks (created, start, step, end) for every sub-env at every vector step,
building their keyword arguments each time (64 sub-envs, sessions of 1-3 pages), while RLlibCallback's
own methods do nothing. With only those, `SerpEnvRunner` skips the calls; any configured callback
class or function restores RLlib's behaviour.
"""

from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

EPISODE_CALLBACKS = ("on_episode_created", "on_episode_start", "on_episode_step", "on_episode_end")


class SerpEnvRunner(SingleAgentEnvRunner):
    """SingleAgentEnvRunner that calls episode callbacks only when some are configured."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        own = any(type(c) is not RLlibCallback for c in self._callbacks)
        functions = any(getattr(self.config, f"callbacks_{which}", None) for which in EPISODE_CALLBACKS)
        self.episode_callbacks = own or functions

    def _make_on_episode_callback(self, which: str, idx: int, episodes: list) -> None:
        if self.episode_callbacks:
            super()._make_on_episode_callback(which, idx, episodes)
