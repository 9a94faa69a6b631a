"""Out-of-sample evidence: a version's reward on held-out sessions that no round ever trains on.

The sessions are a whole-page split the traffic never draws from (the pretrain run's `test` split by
default): the same sessions, the same seeds and the same number of plays every round, so two versions
(or one version in two rounds) face the same users and their difference is paired per session. Two
figures per version: the deterministic top-K (what the policy ranks) and the policy as the exploring
endpoint serves it (Plackett-Luce at the loop's temperature), whose gap is the live cost of exploring.
`HeldoutEvidence` keeps each version's figures, computed once per world.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from agent.evaluation import explored_scorer, session_returns
from envs.world import Split


@dataclass(frozen=True)
class HeldoutConfig:
    split: str = "test"  # the pretrain run's whole-page split used as held-out sessions
    # Plays of every session per figure (the served figure too: up to `served_samples` Plackett-Luce
    # samples per page, each played repeats // samples times). Within a fixed set of sessions the users'
    # randomness is what makes a figure noisy, so plays are cheap precision (RESULTS.md, held-out plays).
    repeats: int = 32
    served_samples: int = 16
    seed: int = 7919

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.served_samples < 1:
            raise ValueError(
                f"heldout needs repeats >= 1 and served_samples >= 1, got repeats {self.repeats}, "
                f"served_samples {self.served_samples}"
            )

    def served_plan(self) -> tuple[int, int]:
        """(Plackett-Luce samples per page, plays of each) of the served figure: `repeats` plays in all
        when `served_samples` divides it."""
        samples = min(self.served_samples, self.repeats)
        return samples, self.repeats // samples

    def to_json(self) -> dict:
        return asdict(self)


def interval(per_session: np.ndarray) -> dict[str, float]:
    """Mean and normal 95% interval over sessions (each session's value: its mean over plays)."""
    x = np.asarray(per_session, np.float64)
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0
    m = float(x.mean())
    return {"mean": m, "lo": m - 1.96 * se, "hi": m + 1.96 * se, "se": se, "sessions": len(x)}


def deterministic_returns(policy: Any, split: Split, cfg: HeldoutConfig, serp: Any = None) -> np.ndarray:
    """Per-session mean return of the deterministic top-K policy over `repeats` plays."""
    r = session_returns(policy, split.pages, split.truth, seed=cfg.seed, repeats=cfg.repeats, serp=serp)
    return r.mean(0)


def served_returns(
    policy: Any, split: Split, temperature: float, cfg: HeldoutConfig, serp: Any = None
) -> np.ndarray:
    """Per-session mean return of the policy served with exploration at `temperature` (seeded
    Plackett-Luce slates per page, `HeldoutConfig.served_plan`)."""
    from agent.evaluation import as_scorer

    base = as_scorer(policy)
    scores = np.asarray(base(split.pages), np.float64)  # one forward pass shared by every sample

    def fixed(pages):
        return scores

    samples, plays = cfg.served_plan()
    runs = [
        session_returns(
            explored_scorer(fixed, temperature, cfg.seed + s),
            split.pages,
            split.truth,
            seed=cfg.seed + s,
            repeats=plays,
            serp=serp,
        ).mean(0)
        for s in range(samples)
    ]
    return np.mean(runs, axis=0)


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """a - b per session (same sessions, same seeds), mean and 95% interval."""
    return interval(np.asarray(a, np.float64) - np.asarray(b, np.float64))


class HeldoutEvidence:
    """Per-session held-out returns of each version in each world (deterministic and as served), kept
    in `cache` (the loop's state): a version's figure is computed once per world and every round
    reuses it. `worlds`: world name -> its held-out sessions; `load(version)` -> that version's model."""

    def __init__(
        self,
        cache: dict,
        worlds: dict[str, Split],
        cfg: HeldoutConfig,
        temperature: float,
        serp: Any,
        load: Callable[[str], Any],
    ) -> None:
        self.cache, self.worlds, self.cfg = cache, worlds, cfg
        self.temperature, self.serp, self.load = temperature, serp, load

    def returns(self, version: str, world: str, model: Any = None) -> dict[str, np.ndarray]:
        """{"deterministic", "served"}: per-session returns of `version` (`model` if given) in `world`."""
        key = f"{version}|{world}"
        if key not in self.cache:
            model = model if model is not None else self.load(version)
            split = self.worlds[world]
            self.cache[key] = {
                "deterministic": deterministic_returns(model, split, self.cfg, self.serp).tolist(),
                "served": served_returns(model, split, self.temperature, self.cfg, self.serp).tolist(),
            }
        return {k: np.asarray(v) for k, v in self.cache[key].items()}

    def figures(self, version: str, after: str, initial: str, world: str) -> dict:
        """A round's held-out figures: the serving version, the version after the round's decision and
        the frozen initial one."""
        now, nxt = self.returns(version, world), self.returns(after, world)
        frozen = self.returns(initial, world)
        return {
            "world": world,
            "heldout_reward": interval(now["deterministic"]),
            "heldout_served": interval(now["served"]),
            "exploration_cost": paired(now["deterministic"], now["served"]),
            "heldout_reward_after": interval(nxt["deterministic"]),
            "frozen_heldout": interval(frozen["deterministic"]),
            "after_minus_frozen": paired(nxt["deterministic"], frozen["deterministic"]),
        }
