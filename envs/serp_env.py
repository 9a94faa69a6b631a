"""The gymnasium SERP environment: one episode is one user session, one step is one query page.

The agent sees a page's candidates in fixed `n_max` slots and answers with the top-K slate
(`MultiDiscrete([n_max] * K)`); the simulated user (`envs.user_model`) examines, clicks, dwells and
decides whether to stop, reformulate (the next page of the same intent) or abandon. Everything the
step needs is precomputed once at construction as padded per-page arrays, so a step costs one user
model call and a few array lookups (RL runs many thousands of steps).

The observation/action/info contract is stated in `SerpEnv`'s docstring; the RL stage codes against it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.config_io import JsonConfig, from_dict
from envs.metrics import ndcg_at_k, shown_order_agreement
from envs.pages import N_MODALITIES, Pages, pad_items
from envs.reward import RewardConfig
from envs.user_model import UserModel, UserModelConfig, UserOutcome
from envs.world import ItemTruth, WorldConfig, WorldGenerator


@dataclass(frozen=True)
class SerpConfig(JsonConfig):
    """Shape of the environment. `n_max` must be at least the longest page."""

    # Candidate slots of the observation; None: the longest page the environment is built on (fewer
    # padded slots = cheaper forward passes). Train and test envs share one (`for_pages`).
    n_max: int | None = None
    slate_size: int = 10  # K shown positions
    max_queries: int = 3  # queries per session (the episode is truncated after this many pages)
    reward: RewardConfig = field(default_factory=RewardConfig)
    user: UserModelConfig = field(default_factory=UserModelConfig)

    def __post_init__(self) -> None:
        if self.slate_size < 1 or (self.n_max is not None and self.n_max < self.slate_size):
            raise ValueError(
                f"SerpConfig needs 1 <= slate_size <= n_max, got slate_size={self.slate_size}, n_max={self.n_max}"
            )
        if self.max_queries < 1:
            raise ValueError(f"SerpConfig.max_queries must be >= 1, got {self.max_queries}")

    def for_pages(self, pages_list: list[Pages]) -> SerpConfig:
        """This config with n_max resolved: as set, else the longest page of `pages_list`."""
        if self.n_max is not None:
            return self
        return replace(self, n_max=int(max(int(p.sizes.max()) for p in pages_list)))

    @staticmethod
    def from_dict(d: dict) -> SerpConfig:
        d = dict(d)
        if isinstance(d.get("reward"), str):  # a reward given by name
            d["reward"] = RewardConfig(name=d["reward"])
        return from_dict(SerpConfig, d)


# A small default world's traffic split, built once per process (vector envs share it).
DEFAULT_WORLD = WorldConfig(seed=0, queries=100, single_modal_queries=10)


@functools.lru_cache(maxsize=2)
def default_traffic(seed: int = DEFAULT_WORLD.seed) -> tuple[Pages, ItemTruth]:
    cfg = WorldConfig(seed=seed, queries=DEFAULT_WORLD.queries, single_modal_queries=10)
    n_traffic = cfg.queries - int(np.floor(np.array(cfg.split_fractions[:3]) * cfg.queries).sum())
    split = WorldGenerator(cfg).whole_pages(np.random.default_rng([seed, 1, 3]), n_traffic, "traffic")
    return split.pages, split.truth


class SlateSpace(spaces.MultiDiscrete):
    """MultiDiscrete([n_max] * K) whose unmasked `sample()` draws K *distinct* slots among the first
    `n_valid` (every page has at least that many candidates), so a random action is a valid slate
    (gymnasium's env checker and random baselines step with `action_space.sample()`). Membership
    (`contains`) is plain MultiDiscrete: validity against a page's mask is the env's job."""

    def __init__(self, n_max: int, k: int, n_valid: int, seed: int | None = None) -> None:
        super().__init__(np.full(k, n_max, dtype=np.int64), seed=seed)
        if n_valid < k:
            raise ValueError(f"n_valid={n_valid} < K={k}: no valid slate exists")
        self.n_valid = int(n_valid)

    def sample(self, mask=None, probability=None) -> np.ndarray:
        if mask is not None or probability is not None:
            return super().sample(mask=mask, probability=probability)
        return self.np_random.permutation(self.n_valid)[: len(self.nvec)].astype(self.dtype)


class SerpEnv(gym.Env):
    """Whole-page ranking against a simulated user.

    Observation (Dict of float32 Boxes, fixed slots): "features" (n_max, d_max), "modality" (n_max,),
    "mask" (n_max,), "single_modal_score" (n_max,) (0 where unknown), "query" (query_dim,), "user" (user_dim,).
    Action: MultiDiscrete([n_max] * K), slot indices for positions 1..K; repeats or masked slots raise
    ValueError. Episode: the reformulation pages of one query_id, drawn by the env RNG; terminated when
    the user is satisfied or abandons, truncated after `max_queries` pages (or when the session's pages
    run out). info: clicks, examined, dwell, satisfied_clicks, abandoned, satisfied, good_abandonment,
    reformulated, position_rewards (the page reward per shown position, K floats; they sum to the step's
    reward), ndcg@10, ndcg@k, consistency, page_id, query_index.

    `consistency` (within-modality agreement of the shown list with the single-modal scores) is present
    only when the page carries single-modal scores (a pretrain run's splits; not the built-in default
    world): a NaN placeholder would break gymnasium's determinism check, which compares infos with ==.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        pages: Pages | None = None,
        truth: ItemTruth | None = None,
        config: SerpConfig | dict | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = SerpConfig.from_dict(config)
        self.config = cfg = config or SerpConfig()
        if (pages is None) != (truth is None):
            raise ValueError("pass both `pages` and `truth` (aligned), or neither for the default world")
        if pages is None:
            pages, truth = default_traffic()
        self.config = cfg = cfg.for_pages([pages])
        if len(truth.relevance) != pages.n_items or len(truth.attractiveness) != pages.n_items:
            raise ValueError(f"truth has {len(truth.relevance)} items, pages have {pages.n_items}")
        if len(pages) == 0:
            raise ValueError("SerpEnv needs at least one page")
        if pages.sizes.min() < cfg.slate_size:
            worst = int(np.argmin(pages.sizes))
            raise ValueError(
                f"page {pages.page_id[worst]!r} has {pages.sizes[worst]} candidates < slate_size={cfg.slate_size}"
            )
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        self.pages = pages
        n = cfg.n_max
        sm = np.nan_to_num(pages.single_modal_score, nan=0.0)
        # Padded per-page arrays, built once.
        self._features = pad_items(pages, pages.features.astype(np.float32), n)
        self._modality = pad_items(pages, pages.modality.astype(np.float32), n)
        self._mask = pad_items(pages, np.ones(pages.n_items, np.float32), n)
        self._sm = pad_items(pages, sm.astype(np.float32), n)
        self._sm_raw = pad_items(pages, pages.single_modal_score.astype(np.float64), n, fill=np.nan)
        self._query = pages.query_features.astype(np.float32)
        self._user = pages.user_features.astype(np.float32)
        # The observation's per-page arrays [pages, ...] by Dict key: what `_obs` indexes (and the
        # batched and flat envs gather from)
        self.obs_arrays = {
            "features": self._features,
            "modality": self._modality,
            "mask": self._mask,
            "single_modal_score": self._sm,
            "query": self._query,
            "user": self._user,
        }
        self._rel = pad_items(pages, truth.relevance.astype(np.int8), n)
        self._att = pad_items(pages, truth.attractiveness.astype(np.float32), n)
        self._mod_int = pad_items(pages, pages.modality.astype(np.int8), n)
        self._sizes = pages.sizes
        # Sessions: the pages of each query_id, in page order.
        qids, first, inverse = np.unique(pages.query_id.astype(str), return_index=True, return_inverse=True)
        order = np.argsort(first)  # sessions in order of first appearance
        self._sessions = [np.flatnonzero(inverse == i) for i in order]
        self._sessions_ids = qids[order]
        self.user_model = UserModel(cfg.user)

        d = pages.features.shape[1]
        box = functools.partial(spaces.Box, dtype=np.float32)
        self.observation_space = spaces.Dict(
            {
                "features": box(-np.inf, np.inf, (n, d)),
                "modality": box(0.0, float(N_MODALITIES - 1), (n,)),
                "mask": box(0.0, 1.0, (n,)),
                "single_modal_score": box(-np.inf, np.inf, (n,)),
                "query": box(-np.inf, np.inf, (pages.query_dim,)),
                "user": box(-np.inf, np.inf, (pages.user_dim,)),
            }
        )
        self.action_space = SlateSpace(n, cfg.slate_size, int(self._sizes.min()))
        self._session: np.ndarray | None = None
        self._t = 0
        self._last: str = ""

    # ------------------------------------------------------------------ helpers
    @property
    def n_sessions(self) -> int:
        return len(self._sessions)

    def _page(self) -> int:
        return int(self._session[self._t])

    def _obs(self, p: int) -> dict[str, np.ndarray]:
        return {key: arr[p] for key, arr in self.obs_arrays.items()}

    def validate_action(self, action: np.ndarray, p: int) -> np.ndarray:
        a = np.asarray(action)
        k = self.config.slate_size
        if a.shape != (k,):
            raise ValueError(f"action must have shape ({k},) (slots for positions 1..{k}), got {a.shape}")
        if a.dtype.kind not in "iu" and (a.dtype.kind != "f" or not np.all(np.mod(a, 1) == 0)):
            raise ValueError(f"action must hold integer slot indices, got {a}")
        a = a.astype(np.int64)
        slots = a.tolist()
        lo, hi = min(slots), max(slots)
        if lo < 0 or hi >= self.config.n_max:
            raise ValueError(f"action slots must lie in [0, {self.config.n_max}), got {slots}")
        if len(set(slots)) != k:
            raise ValueError(f"action repeats a slot: {slots} (each position must show a different item)")
        if hi >= self._sizes[p]:
            bad = [s for s in slots if s >= self._sizes[p]]
            raise ValueError(
                f"action points at masked slot(s) {bad}: page {self.pages.page_id[p]!r} has {self._sizes[p]} candidates"
            )
        return a

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "session" in options:
            s = int(options["session"])
            if not 0 <= s < self.n_sessions:
                raise ValueError(f"options['session'] must lie in [0, {self.n_sessions}), got {s}")
        else:
            s = int(self.np_random.integers(self.n_sessions))
        self._session = self._sessions[s]
        self._t = 0
        p = self._page()
        return self._obs(p), {"page_id": str(self.pages.page_id[p]), "session": s, "query_index": 0}

    def step(self, action):
        if self._session is None:
            raise RuntimeError("call reset() before step()")
        p = self._page()
        a = self.validate_action(action, p)
        rel = self._rel[p, a][None]
        out = self.user_model.simulate(
            rel, self._att[p, a][None], self._mod_int[p, a][None], None, self.np_random
        )
        item_rewards = self.config.reward.item_rewards(out, self._t)[0]
        reward = float(item_rewards.sum())
        satisfied = bool(out.satisfied[0])
        abandoned = bool(out.abandon[0])
        terminated = satisfied or abandoned
        self._t += 1
        truncated = not terminated and (self._t >= self.config.max_queries or self._t >= len(self._session))
        size = int(self._sizes[p])
        all_rel = self._rel[p, :size]
        ndcg10 = ndcg_at_k(rel[0], all_rel, 10)
        info = {
            "page_id": str(self.pages.page_id[p]),
            "query_index": self._t - 1,
            "clicks": int(out.click.sum()),
            "examined": int(out.examined.sum()),
            "dwell": float(out.dwell.sum()),
            "satisfied_clicks": int(out.satisfied_click.sum()),
            "good_abandonment": bool(out.good_abandon[0]),
            "satisfied": satisfied,
            "abandoned": abandoned,
            "reformulated": bool(out.reformulate[0]),
            "position_rewards": tuple(float(r) for r in item_rewards),
            "ndcg@10": ndcg10,
            "ndcg@k": ndcg10
            if self.config.slate_size == 10
            else ndcg_at_k(rel[0], all_rel, self.config.slate_size),
        }
        if not np.isnan(self._sm_raw[p, :size]).any():
            info["consistency"] = shown_order_agreement(a, self._sm_raw[p, :size], self._mod_int[p, :size])[0]
        if self.render_mode == "ansi":
            self._last = self._describe(p, a, out)
        # After the episode ends the observation is unused; keep showing the last page.
        obs = self._obs(p if terminated or truncated else self._page())
        return obs, reward, terminated, truncated, info

    def _describe(self, p: int, a: np.ndarray, out: UserOutcome) -> str:
        from envs.pages import MODALITIES

        rows = [f"page {self.pages.page_id[p]}"]
        for k, slot in enumerate(a):
            mark = (
                "S"
                if out.satisfied_click[0, k]
                else "C"
                if out.click[0, k]
                else "A"
                if out.answer_satisfied[0, k]
                else "."
            )
            rows.append(
                f"  {k + 1:>2} {MODALITIES[self._mod_int[p, slot]]:<6} rel={self._rel[p, slot]} "
                f"att={self._att[p, slot]:.2f} {mark} dwell={out.dwell[0, k]:.0f}s"
            )
        return "\n".join(rows)

    def render(self):
        if self.render_mode == "ansi":
            return self._last
        return None
