"""The product reward: one named definition used by the environment, the offline logs' `reward`
column, the off-policy estimators and the online update.

Every reward is per shown position ([B, K]) so a page's reward is the sum over its positions and a
log row carries its own share. The inputs are the user's observable events on a page (clicks, and
which of them satisfied: a click whose dwell reached its modality's threshold, or a direct answer that
satisfied without a click, which a log sees as the answer card's viewport time reaching its threshold;
`observed_satisfying`) plus the page's index in its session.

Named rewards:
* ``success`` (default): session success discounted by effort. 1 for the session's first satisfying
  event, times ``gamma`` for each result ranked above it on its page (the results a top-down scanner
  passed, the cascade hypothesis behind ERR and RBP; observable from a log, unlike examination) and
  ``delta`` for each reformulation before it; 0 for a session that ends unsatisfied. A satisfied user
  ends the session, so the first satisfying event of a page that has one is the session's first.
  gamma = 0.9 and delta = 0.5: real users compensate for worse rankings by effort more than they fail
  (Turpin & Scholer SIGIR 2006), so effort, not only success, must separate rankings; a reformulation
  costs about as much as scanning six or seven more results (0.9^6.6 = 0.5).
* ``clicks``: 1 per click. Gameable by attractive irrelevant results, kept to show it.
* ``satisfied``: 0.1 per click + 1 per satisfying event (the previous default).
* ``err``: ERR-style utility (Chapelle et al. CIKM 2009): 1 / rank of the page's first satisfying event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from envs.config_io import JsonConfig, from_dict
from envs.pages import MODALITY_ID
from envs.user_model import UserModelConfig, satisfied_dwell_thresholds
from envs.viewport import answer_viewport_threshold

RewardName = Literal["success", "clicks", "satisfied", "err"]
REWARD_NAMES: tuple[str, ...] = get_args(RewardName)


@dataclass(frozen=True)
class RewardConfig(JsonConfig):
    """Which reward, by name, and its parameters."""

    name: RewardName = "success"
    gamma: float = 0.9  # success: factor per result ranked above the satisfying one
    delta: float = 0.5  # success: factor per reformulation before it
    click_weight: float = 0.1  # satisfied: reward per click on top of each satisfying event

    def __post_init__(self) -> None:
        if self.name not in REWARD_NAMES:
            raise ValueError(f"unknown reward {self.name!r}; choose one of {', '.join(REWARD_NAMES)}")
        for name in ("gamma", "delta"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"RewardConfig.{name} must lie in [0, 1], got {v}")
        if not np.isfinite(self.click_weight):
            raise ValueError("RewardConfig.click_weight must be finite")

    @classmethod
    def from_json(cls, d: dict | str | None) -> RewardConfig:
        """Also takes a reward by name."""
        return RewardConfig(name=d) if isinstance(d, str) else from_dict(RewardConfig, d)

    def rewards(
        self,
        click: np.ndarray,
        satisfying: np.ndarray,
        query_index: np.ndarray | int = 0,
        valid: np.ndarray | None = None,
    ) -> np.ndarray:
        """Per-position reward [B, K] (float32) from a page's events in shown order.

        click, satisfying: [B, K] bool (satisfying = satisfied click or answer satisfied without one);
        query_index: the page's index in its session (0 for the first query), scalar or [B];
        valid: [B, K] mask of shown positions (padding earns nothing)."""
        click = np.asarray(click, bool)
        sat = np.asarray(satisfying, bool)
        if click.ndim != 2 or sat.shape != click.shape:
            raise ValueError(
                f"click and satisfying must be [B, K] of one shape, got {click.shape}, {sat.shape}"
            )
        if valid is not None:
            valid = np.asarray(valid, bool)
            click, sat = click & valid, sat & valid
        b, k = click.shape
        if self.name == "clicks":
            return click.astype(np.float32)
        if self.name == "satisfied":
            return (self.click_weight * click + sat).astype(np.float32)
        first = sat & (np.cumsum(sat, axis=1) == 1)  # the page's first satisfying event
        rank = np.arange(k)
        if self.name == "err":
            return (first / (rank + 1.0)).astype(np.float32)
        q = np.broadcast_to(np.asarray(query_index, np.float64), (b,))
        if (q < 0).any():
            raise ValueError("query_index must be >= 0")
        factor = (self.delta**q)[:, None] * self.gamma ** rank[None, :]
        return (first * factor).astype(np.float32)

    def item_rewards(self, outcome, query_index: np.ndarray | int = 0) -> np.ndarray:
        """Per-position reward [B, K] of a simulated `envs.user_model.UserOutcome`."""
        return self.rewards(outcome.click, outcome.satisfied_click | outcome.answer_satisfied, query_index)


def observed_satisfying(
    click: np.ndarray,
    dwell: np.ndarray,
    modality: np.ndarray,
    thresholds: np.ndarray,
    viewport: np.ndarray | None = None,
    viewport_threshold: float = float("inf"),
) -> np.ndarray:
    """Satisfying events as a log sees them: a click whose dwell reached its modality's threshold
    (`envs.user_model.satisfied_dwell_thresholds`), or an unclicked direct answer whose viewport time
    reached `viewport_threshold` (`envs.viewport.answer_viewport_threshold`: good abandonment, the
    evidence production engines log for answers). On simulated outcomes this is exactly the
    satisfaction `RewardConfig.item_rewards` counts. Unknown dwell or viewport (NaN, or no viewport
    column in an older log: `viewport=None`) counts as not satisfying."""
    click = np.asarray(click, bool)
    dwell = np.nan_to_num(np.asarray(dwell, np.float64), nan=0.0)
    mod = np.asarray(modality, np.int64)
    sat = click & (dwell >= np.asarray(thresholds, np.float64)[np.clip(mod, 0, len(thresholds) - 1)])
    if viewport is None:
        return sat
    seen = np.nan_to_num(np.asarray(viewport, np.float64), nan=0.0)
    return sat | (~click & (mod == MODALITY_ID["answer"]) & (seen >= viewport_threshold))


def logged_satisfying(
    config: UserModelConfig,
    click: np.ndarray,
    dwell: np.ndarray,
    modality: np.ndarray,
    viewport: np.ndarray | None = None,
) -> np.ndarray:
    """`observed_satisfying` at the thresholds of a user model (the satisfied dwell per
    modality, the answer viewport): the satisfying events a log of these users shows."""
    return observed_satisfying(
        click,
        dwell,
        modality,
        satisfied_dwell_thresholds(config),
        viewport,
        answer_viewport_threshold(config),
    )
