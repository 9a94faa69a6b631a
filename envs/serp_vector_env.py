"""The SERP environment vectorised: `num_envs` sessions stepped at once, one user-model call per step.

`SerpVectorEnv` is a `gymnasium.vector.VectorEnv` with next-step autoreset (the mode RLlib's
SingleAgentEnvRunner and gymnasium's SyncVectorEnv use): the step after an episode ends resets that
sub-env, returns its new first page with reward 0 and ignores its action. Each sub-env behaves as a
`SerpEnv` (same spaces, rewards, session logic, info keys and values) but a step is a handful of
array operations over all of them instead of `num_envs` Python steps: the shown items are gathered
from SerpEnv's padded per-page arrays, the user is simulated on every live page in one
`UserModel.simulate` call, and NDCG and consistency are computed batched.

One RNG drives all sub-envs (sessions drawn at reset, then the user model), so with `num_envs=1` it
reproduces a seeded `SerpEnv` draw for draw; with more, each sub-env's sessions follow SerpEnv's
distribution but not its stream (tests/envs/test_serp_vector_env.py checks both).

Infos are gymnasium's vector form (key -> array with a "_key" mask), exactly SyncVectorEnv's keys:
wrap with `gymnasium.wrappers.vector.DictInfoToList` for per-env dicts (RLlib does).
"""

from __future__ import annotations

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.metrics import dcg_at_k, shown_order_agreement_rows
from envs.pages import Pages
from envs.serp_env import SerpConfig, SerpEnv
from envs.world import ItemTruth

# The per-step info keys of SerpEnv (present on sub-envs that stepped, not on the ones that reset).
STEP_KEYS = (
    "clicks",
    "examined",
    "dwell",
    "satisfied_clicks",
    "good_abandonment",
    "satisfied",
    "abandoned",
    "reformulated",
    "position_rewards",
    "ndcg@10",
    "ndcg@k",
)


class SerpVectorEnv(VectorEnv):
    """`num_envs` SerpEnv sessions stepped together. Observations are the SerpEnv Dict batched
    ([num_envs, ...] per key), actions [num_envs, K] slot indices; see the module docstring."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        pages: Pages | None = None,
        truth: ItemTruth | None = None,
        config: SerpConfig | dict | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        # One SerpEnv holds the validated padded arrays, the sessions and the spaces: both envs
        # read the same ones, so they cannot drift apart.
        self.single_env = env = SerpEnv(pages=pages, truth=truth, config=config)
        self.config: SerpConfig = env.config
        self.num_envs = int(num_envs)
        self.single_observation_space = env.observation_space
        self.single_action_space = env.action_space
        self.observation_space = batch_space(env.observation_space, self.num_envs)
        self.action_space = batch_space(env.action_space, self.num_envs)
        self.user_model = env.user_model
        self._obs_arrays = env.obs_arrays
        n_sessions = env.n_sessions
        lengths = np.array([len(s) for s in env._sessions], np.int64)
        self._session_pages = np.zeros((n_sessions, int(lengths.max())), np.int64)
        for i, s in enumerate(env._sessions):
            self._session_pages[i, : len(s)] = s
        self._session_len = np.minimum(lengths, self.config.max_queries)
        self._page_id = np.array([str(x) for x in env.pages.page_id], dtype=object)
        self._ideal = self._ideal_dcg(env)
        sizes = env._sizes
        slots = np.arange(self.config.n_max)
        self._sm_known = ~(np.isnan(env._sm_raw) & (slots < sizes[:, None])).any(axis=1)
        k = self.config.slate_size
        self._discount = np.log2(np.arange(2, k + 2))  # dcg_at_k's, divided by as it does
        self._session = np.zeros(self.num_envs, np.int64)
        self._t = np.zeros(self.num_envs, np.int64)
        self._page = np.zeros(self.num_envs, np.int64)
        self._autoreset = np.zeros(self.num_envs, bool)
        self._started = False

    @staticmethod
    def _ideal_dcg(env: SerpEnv) -> dict[int, np.ndarray]:
        """Each page's ideal DCG@10 and DCG@K (SerpEnv's NDCG denominators), per cutoff."""
        out = {}
        for cut in sorted({10, env.config.slate_size}):
            out[cut] = np.array(
                [dcg_at_k(np.sort(env._rel[p, : env._sizes[p]])[::-1], cut) for p in range(len(env._sizes))]
            )
        return out

    @property
    def n_sessions(self) -> int:
        return self.single_env.n_sessions

    # ------------------------------------------------------------------ helpers
    def _obs(self) -> dict[str, np.ndarray]:
        return {key: arr[self._page] for key, arr in self._obs_arrays.items()}

    def _start(self, envs: np.ndarray, sessions: np.ndarray | None = None) -> None:
        """Begin a session on sub-envs `envs` (drawn by the env RNG unless given)."""
        if sessions is None:
            sessions = self.np_random.integers(self.n_sessions, size=len(envs))
        self._session[envs] = sessions
        self._t[envs] = 0
        self._page[envs] = self._session_pages[sessions, 0]
        self._autoreset[envs] = False

    def _reset_info(self, envs: np.ndarray, info: dict) -> None:
        """SerpEnv's reset info (page_id, session, query_index 0) for sub-envs `envs`."""
        for key, values in (
            ("page_id", self._page_id[self._page[envs]]),
            ("session", self._session[envs]),
            ("query_index", np.zeros(len(envs), np.int64)),
        ):
            _put(info, key, envs, values, self.num_envs)

    def validate_actions(self, actions: np.ndarray, live: np.ndarray) -> np.ndarray:
        """[num_envs, K] int64 slot indices; the sub-envs `live` (those that step) must show K distinct
        candidates of their page (SerpEnv.validate_action's rules, batched)."""
        a = np.asarray(actions)
        k, n_max = self.config.slate_size, self.config.n_max
        if a.shape != (self.num_envs, k):
            raise ValueError(f"actions must have shape ({self.num_envs}, {k}), got {a.shape}")
        if a.dtype.kind not in "iu" and (a.dtype.kind != "f" or not np.all(np.mod(a, 1) == 0)):
            raise ValueError(f"actions must hold integer slot indices, got {a}")
        a = a.astype(np.int64)
        la = a[live]
        if la.size == 0:
            return a
        if la.min() < 0 or la.max() >= n_max:
            raise ValueError(f"action slots must lie in [0, {n_max}), got {la.tolist()}")
        s = np.sort(la, axis=1)
        if (s[:, 1:] == s[:, :-1]).any():
            bad = live[int(np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))[0])]
            raise ValueError(f"sub-env {bad}: action repeats a slot: {a[bad].tolist()}")
        over = s[:, -1] >= self.single_env._sizes[self._page[live]]
        if over.any():
            bad = live[int(np.flatnonzero(over)[0])]
            p = self._page[bad]
            raise ValueError(
                f"sub-env {bad}: action points at masked slot(s): page {self._page_id[p]!r} has "
                f"{self.single_env._sizes[p]} candidates, got {a[bad].tolist()}"
            )
        return a

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start a session on every sub-env. options: {"sessions": [num_envs] session indices}."""
        if seed is not None and not isinstance(seed, int | np.integer):
            raise ValueError(f"SerpVectorEnv takes one int seed for all sub-envs, got {seed!r}")
        super().reset(seed=None if seed is None else int(seed))
        sessions = None
        if options and "sessions" in options:
            sessions = np.asarray(options["sessions"], np.int64)
            if sessions.shape != (self.num_envs,) or sessions.min() < 0 or sessions.max() >= self.n_sessions:
                raise ValueError(
                    f"options['sessions'] must be {self.num_envs} indices in [0, {self.n_sessions})"
                )
        envs = np.arange(self.num_envs)
        self._start(envs, sessions)
        self._started = True
        info: dict = {}
        self._reset_info(envs, info)
        return self._obs(), info

    def step(self, actions):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        n = self.num_envs
        resets = np.flatnonzero(self._autoreset)
        live = np.flatnonzero(~self._autoreset)
        a = self.validate_actions(actions, live)
        rewards = np.zeros(n, np.float64)
        terminated = np.zeros(n, bool)
        truncated = np.zeros(n, bool)
        info: dict = {}
        if len(live):
            self._step_live(live, a[live], rewards, terminated, truncated, info)
        if len(resets):
            self._start(resets)
            self._reset_info(resets, info)
        return self._obs(), rewards, terminated, truncated, info

    def _step_live(
        self,
        live: np.ndarray,
        a: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        info: dict,
    ) -> None:
        """Show slates `a` [B, K] on the live sub-envs' pages: simulate, reward, advance, fill info."""
        env, n = self.single_env, self.num_envs
        p = self._page[live]
        t = self._t[live]
        rel = env._rel[p[:, None], a]
        out = self.user_model.simulate(
            rel, env._att[p[:, None], a], env._mod_int[p[:, None], a], None, self.np_random
        )
        item_rewards = np.ascontiguousarray(self.config.reward.item_rewards(out, t))
        rewards[live] = item_rewards.sum(axis=1)
        term = out.satisfied | out.abandon
        t1 = t + 1
        trunc = ~term & (t1 >= self._session_len[self._session[live]])
        terminated[live], truncated[live] = term, trunc
        done = term | trunc
        self._t[live] = t1
        self._autoreset[live] = done
        # The next page of a continuing session; a finished one keeps showing its last page.
        go = live[~done]
        self._page[go] = self._session_pages[self._session[go], self._t[go]]
        ndcg = self._ndcg(rel, p)
        values = {
            "page_id": self._page_id[p],
            "query_index": t,
            "clicks": out.click.sum(axis=1),
            "examined": out.examined.sum(axis=1),
            "dwell": np.ascontiguousarray(out.dwell).sum(axis=1).astype(np.float64),
            "satisfied_clicks": out.satisfied_click.sum(axis=1),
            "good_abandonment": out.good_abandon,
            "satisfied": out.satisfied,
            "abandoned": out.abandon,
            "reformulated": out.reformulate,
            "position_rewards": item_rewards.astype(np.float64),
            "ndcg@10": ndcg[10],
            "ndcg@k": ndcg[self.config.slate_size],
        }
        for key, v in values.items():
            _put(info, key, live, v, n)
        known = self._sm_known[p]
        if known.any():
            pk, ak = p[known][:, None], a[known]
            cons = shown_order_agreement_rows(
                self.single_env._sm_raw[pk, ak], self.single_env._mod_int[pk, ak]
            )
            _put(info, "consistency", live[known], cons, n)

    def _ndcg(self, rel: np.ndarray, p: np.ndarray) -> dict[int, np.ndarray]:
        """NDCG@10 and NDCG@K of the shown grades [B, K] on pages p (1.0 where nothing is relevant)."""
        gains = (2.0 ** rel.astype(np.float64) - 1.0) / self._discount
        out = {}
        for cut, ideal in self._ideal.items():
            dcg = gains[:, :cut].sum(axis=1)
            ideal_p = ideal[p]
            out[cut] = np.where(ideal_p > 0, dcg / np.where(ideal_p > 0, ideal_p, 1.0), 1.0)
        return out


def _put(info: dict, key: str, envs: np.ndarray, values: np.ndarray, n: int) -> None:
    """Set `info[key][envs] = values` in gymnasium's vector-info form (array + "_key" mask)."""
    values = np.asarray(values)
    if key not in info:
        dtype = object if values.dtype == object else values.dtype
        info[key] = np.zeros((n,) + values.shape[1:], dtype)
        info["_" + key] = np.zeros(n, bool)
    info[key][envs] = values
    info["_" + key][envs] = True
