"""The simulated search world, the user model and the gymnasium SERP environment (numpy only).

Importing `envs` registers "smar/Serp-v0" with gymnasium (no torch import: the env is pure numpy).
"""

from __future__ import annotations

import gymnasium as _gym

SERP_ENV_ID = "smar/Serp-v0"

if SERP_ENV_ID not in _gym.registry:
    _gym.register(
        id=SERP_ENV_ID,
        entry_point="envs.serp_env:SerpEnv",
        # gym.make_vec(SERP_ENV_ID, num_envs=N, vectorization_mode="vector_entry_point", ...) builds the
        # batched SerpVectorEnv (one user-model call per step); "sync" stacks N SerpEnvs.
        vector_entry_point="envs.serp_vector_env:SerpVectorEnv",
        disable_env_checker=False,
    )
