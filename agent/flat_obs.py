"""The SERP observation as one float32 vector where RLlib handles it (`smar train`).

Why: RLlib's episodes, env-to-module and learner connectors walk a Dict observation leaf by leaf
through dm-tree (`map_structure`, `unflatten_as`) at every sub-env step, and again when the learner
builds its train batch; with six leaves that bookkeeping costs more than the vectorised env itself.
The env classes RLlib builds (`agent.ppo_config.RLlibSerpEnv`, `RLlibSerpVectorEnv`) therefore return
the Dict's leaves concatenated in OBS_KEYS order (`flatten`), and the RL module splits them back
(`unflatten`) into contiguous float32 tensors of the Dict's shapes: the same values the Dict carried,
so nothing the policy computes changes. The layout travels in the module's model_config (`layout`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

OBS_KEYS = ("features", "modality", "mask", "single_modal_score", "query", "user")
LAYOUT_KEY = "obs_layout"  # model_config key: [[key, shape], ...] in OBS_KEYS order


def layout(space: spaces.Dict) -> list[list[Any]]:
    """The flat vector's layout, [[key, shape], ...] in OBS_KEYS order (JSON-able)."""
    return [[k, list(space[k].shape)] for k in OBS_KEYS]


def flat_space(space: spaces.Dict) -> spaces.Box:
    """The Box of `flatten`'s vectors: the Dict's bounds, leaf after leaf."""
    low = np.concatenate([np.ravel(space[k].low) for k in OBS_KEYS]).astype(np.float32)
    high = np.concatenate([np.ravel(space[k].high) for k in OBS_KEYS]).astype(np.float32)
    return spaces.Box(low, high, dtype=np.float32)


def flatten(obs: dict[str, np.ndarray], batch_dims: int = 0) -> np.ndarray:
    """One observation (batch_dims 0) or a batch of them ([n, ...] leaves, batch_dims 1) as
    float32 vectors, [W] or [n, W]."""
    lead = next(iter(obs.values())).shape[:batch_dims]
    parts = [np.asarray(obs[k], np.float32).reshape(*lead, -1) for k in OBS_KEYS]
    return np.concatenate(parts, axis=-1)


def unflatten(x: torch.Tensor, obs_layout: list[list[Any]]) -> dict[str, torch.Tensor]:
    """`flatten`'s [B, W] tensor back into the Dict's leaves, each [B, *shape] and contiguous."""
    out, lo = {}, 0
    for key, shape in obs_layout:
        size = int(np.prod(shape)) if shape else 1
        out[key] = x[:, lo : lo + size].reshape(x.shape[0], *shape).contiguous()
        lo += size
    if lo != x.shape[-1]:
        raise ValueError(f"flat observation has width {x.shape[-1]}, its layout {lo}")
    return out
