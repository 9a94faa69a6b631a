"""Reference policies that map the simulator's reward landscape for `smar bench agent`.

Why: whether "PPO earns 1.10 x SMAR's reward" is reachable depends on how much any ranking can earn in
the simulator, and on what earns it. These references answer that with figures, next to the methods:

  smar_modality_offsets  SMAR's scores + one fixed offset per modality. SMAR's within-modality order is
                         kept (consistency stays SMAR's) and only the interleaving moves: roughly what
                         the consistency constraint leaves PPO free to change, without page context.
  smar_modality_intent_offsets  SMAR's scores + per-modality offsets chosen separately for each query intent
                         (the query's true preferred modality, simulator truth): an intent-aware
                         interleaving that keeps SMAR's within-modality order, i.e. what a policy that
                         read the intent perfectly from the query could earn without bending any
                         modality's order. Also reports its in-sample search reward (optimistic).
  smar_attractiveness_offsets  SMAR's scores + a weight x true attractiveness + per-modality offsets
                         (simulator truth): within-modality order bent toward what draws clicks while
                         consistency stays near the constraint's level; a ceiling for constrained PPO.
  smar_attractiveness_intent_offsets  the same with offsets chosen per query intent.
  oracle_relevance       sort by true grade, attractiveness as tie-break (simulator truth).
  truth_offsets          true grade + a weight x attractiveness + per-modality offsets (simulator
                         truth): a practical ceiling for rankings that know what the users will do.
  fresh_network_seed{s}  the untrained network PPO-from-scratch starts from (same init as ppo_scratch
                         seed s), as a deterministic policy: what "scratch" gets before learning anything.

`layout_gradient` answers a different question: how much reward signal a policy-gradient learner gets
about the page layout (one score offset per modality) at a given Plackett-Luce policy, per PPO batch.

Offsets and weights are chosen on `traffic` sessions (the RL training pages), never on `test`; the
chosen policies are then evaluated on `test` exactly like the methods. The choice has two stages, so
that it is not the luckiest of hundreds of noisy grid points: (1) one sweep of the grid (`_sweep`,
`offset_sweep`: per-session returns, SEARCH_REPEATS plays of SEARCH_SESSIONS sessions); (2) the
REFINE_TOP best candidates of the sweep are played again, REFINE_REPEATS times with a fresh seed, and
the best of those is chosen (`_refine`; `_fixed_reference`, `_intent_reference`). The same sweep ranks candidates over all sessions (fixed offsets) and over
each intent's sessions (`top_by_intent`), so the per-intent references add no sweep, only the second
stage on each intent's sessions. `search_reward` is the chosen policy's second-stage mean return on the
search sessions (`search_base_reward`: the base scores without offsets, same plays); with per-intent
offsets it pools the intents' sessions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agent.evaluation import evaluate_policy, session_page_lists, session_returns
from envs.pages import MODALITIES, N_MODALITIES, Pages, pad_items
from envs.user_model import UserModel
from envs.world import ItemTruth, Split

OFFSET_GRID = (-5.0, 0.0, 2.0, 5.0, 10.0, 30.0)  # doc stays at 0; in units of the base score
TRUTH_OFFSET_GRID = (0.0, 2.0, 5.0, 10.0)  # the grade's units (0..4)
ATTRACT_WEIGHTS = (0.0, 4.0, 12.0)  # truth_offsets: weight of attractiveness next to the grade
SMAR_ATTRACT_WEIGHTS = (1.0, 4.0)  # smar_attractiveness_offsets, in units of SMAR's score
SEARCH_SESSIONS = 500  # traffic sessions the grid search plays (500 = all of the default world's)
SEARCH_REPEATS = 2  # plays of each search session per grid point in the sweep
REFINE_TOP = 8  # candidates of the sweep (per intent for the intent-aware references) played again
REFINE_REPEATS = 10  # plays of each search session per candidate in the second stage
REFINE_SEED = 1  # the second stage's simulator seed (the sweep's is 0)


def head_sessions(pages: Pages, truth: ItemTruth, n: int) -> tuple[Pages, ItemTruth]:
    """The pages and truth of the first `n` sessions (a smaller, faster search set)."""
    keep = np.sort(np.concatenate(session_page_lists(pages)[:n]))
    items = np.concatenate([np.arange(pages.offsets[p], pages.offsets[p + 1]) for p in keep])
    sub = ItemTruth(truth.relevance[items], truth.attractiveness[items], truth.preferred_modality[keep])
    return pages.select(keep), sub


def offset_sweep(
    base: Callable[[Pages], np.ndarray],
    pages: Pages,
    truth: ItemTruth,
    serp,
    grid: Sequence[float] = OFFSET_GRID,
    repeats: int = 2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Session returns of `base(pages) + offset[modality]` for every per-modality offset vector of
    `grid` (doc fixed at 0). Returns (offsets [C, 4], returns [C, repeats, sessions])."""
    scores = np.asarray(base(pages), np.float32)
    combos, returns = [], []
    for combo in itertools.product(grid, repeat=N_MODALITIES - 1):
        off = np.array([0.0, *combo], np.float32)
        shifted = scores + off[pages.modality]
        returns.append(
            session_returns(lambda _p, s=shifted: s, pages, truth, seed=seed, repeats=repeats, serp=serp)
        )
        combos.append(off)
    return np.stack(combos), np.stack(returns)


def session_intents(pages: Pages, truth: ItemTruth) -> np.ndarray:
    """The true intent (preferred modality) of each session, in `session_page_lists` order."""
    return np.array([truth.preferred_modality[s[0]] for s in session_page_lists(pages)], np.int64)


def top_by_intent(returns: np.ndarray, intents: np.ndarray, k: int) -> list[np.ndarray]:
    """For returns [C, repeats, sessions]: per intent, the indices of the `k` candidates with the
    highest mean return over that intent's sessions, best first (empty for an absent intent)."""
    out = []
    for g in range(N_MODALITIES):
        sel = intents == g
        means = returns[:, :, sel].mean(axis=(1, 2)) if sel.any() else np.zeros(0)
        out.append(np.argsort(-means, kind="stable")[:k])
    return out


@dataclass(frozen=True)
class _Sessions:
    """The search sessions (the head of traffic, with their intents and SMAR's scores) and the test
    sessions every chosen reference is evaluated on (the methods' seed and repeats)."""

    pages: Pages
    truth: ItemTruth
    intents: np.ndarray
    smar: np.ndarray
    test: Any
    smar_test: np.ndarray
    serp: Any
    seed: int
    repeats: int

    def evaluate(self, policy) -> dict:
        """A policy (or a scorer) played on the test sessions like the methods."""
        t = self.test
        return evaluate_policy(policy, t.pages, t.truth, seed=self.seed, repeats=self.repeats, serp=self.serp)

    def evaluate_scores(self, scores: np.ndarray) -> dict:
        """Fixed scores of the test pages played like the methods."""
        return self.evaluate(lambda _p: scores)

    def replay(self, scores: np.ndarray, sessions: np.ndarray | None = None) -> np.ndarray:
        """Second-stage returns [REFINE_REPEATS, sessions] of fixed scores on the search sessions."""
        return session_returns(
            lambda _p: scores,
            self.pages,
            self.truth,
            sessions=sessions,
            seed=REFINE_SEED,
            repeats=REFINE_REPEATS,
            serp=self.serp,
        )


@dataclass(frozen=True)
class _Sweep:
    """Stage 1 of one reference family: every (weight, offsets) candidate's sweep returns."""

    base: np.ndarray  # the family's base scores on the search sessions
    weights: np.ndarray  # [C] attractiveness weight of each candidate
    offsets: np.ndarray  # [C, 4] per-modality offsets
    returns: np.ndarray  # [C, SEARCH_REPEATS, sessions]

    def scores(self, j: int, ss: _Sessions) -> np.ndarray:
        return self.base + self.weights[j] * ss.truth.attractiveness + self.offsets[j][ss.pages.modality]


Base = Callable[[ItemTruth, np.ndarray], np.ndarray]  # (truth, SMAR's scores) -> a family's base scores


def _sweep(ss: _Sessions, base: Base, weights: Sequence[float], grid: Sequence[float]) -> _Sweep:
    """Stage 1: `base + w * attractiveness + offsets[modality]` for every w and offset vector of `grid`."""
    base_search = base(ss.truth, ss.smar)
    ws, combos, returns = [], [], []
    for w in weights:
        c, r = offset_sweep(
            lambda _p, w=w: base_search + w * ss.truth.attractiveness,
            ss.pages,
            ss.truth,
            ss.serp,
            grid,
            repeats=SEARCH_REPEATS,
        )
        ws += [w] * len(c)
        combos.append(c)
        returns.append(r)
    return _Sweep(base_search, np.asarray(ws, np.float32), np.concatenate(combos), np.concatenate(returns))


def _refine(
    ss: _Sessions, sweep: _Sweep, cands: np.ndarray, sessions: np.ndarray | None
) -> tuple[int, float, int]:
    """Stage 2: (candidate, its second-stage mean, episodes) of the best of `cands` on `sessions`."""
    plays = [ss.replay(sweep.scores(int(j), ss), sessions) for j in cands]
    means = [float(r.mean()) for r in plays]
    i = int(np.argmax(means))
    return int(cands[i]), means[i], plays[i].size


def _fixed_reference(ss: _Sessions, sweep: _Sweep, base: Base, weights: Sequence[float]) -> tuple[dict, int]:
    """The best candidate over all search sessions, evaluated on test; returns (its row, its index)."""
    means = sweep.returns.reshape(len(sweep.offsets), -1).mean(1)
    i, search_reward, _ = _refine(ss, sweep, np.argsort(-means, kind="stable")[:REFINE_TOP], None)
    t = ss.test
    s = (
        base(t.truth, ss.smar_test)
        + sweep.weights[i] * t.truth.attractiveness
        + sweep.offsets[i][t.pages.modality]
    )
    row = {"attractiveness_weight": float(sweep.weights[i])} if len(weights) > 1 or weights[0] != 0 else {}
    search = {"search_reward": search_reward}
    if 0.0 in weights:  # the base itself (no offsets) with the same second-stage plays
        search["search_base_reward"] = float(ss.replay(sweep.base).mean())
    return {**ss.evaluate_scores(s), **row, "offsets": sweep.offsets[i].tolist(), **search}, i


def _intent_reference(ss: _Sessions, sweep: _Sweep, base: Base, fixed: dict, i: int) -> dict:
    """The best candidate per query intent (the same sweep, stage 2 on each intent's sessions), each
    test page scored with its intent's choice; an intent absent from the search keeps the fixed one."""
    choice = np.full(N_MODALITIES, i, np.int64)
    pooled, episodes = 0.0, 0
    for g, top in enumerate(top_by_intent(sweep.returns, ss.intents, REFINE_TOP)):
        if len(top):
            choice[g], m, n = _refine(ss, sweep, top, np.flatnonzero(ss.intents == g))
            pooled, episodes = pooled + m * n, episodes + n
    t = ss.test
    item_choice = choice[np.repeat(np.asarray(t.truth.preferred_modality, np.int64), t.pages.sizes)]
    s = (
        base(t.truth, ss.smar_test)
        + sweep.weights[item_choice] * t.truth.attractiveness
        + sweep.offsets[item_choice, t.pages.modality]
    )
    search = {k: v for k, v in fixed.items() if k.startswith("search_")}
    return {
        **ss.evaluate_scores(s),
        **(
            {"attractiveness_weight": sweep.weights[choice].tolist()}
            if "attractiveness_weight" in fixed
            else {}
        ),
        "offsets": sweep.offsets[choice].tolist(),  # one row per intent (doc, image, video, answer)
        **search,
        "search_reward": pooled / episodes,
    }


def _smar_base(_truth: ItemTruth, smar: np.ndarray) -> np.ndarray:
    return np.asarray(smar, np.float32)


def _grade_base(truth: ItemTruth, _smar: np.ndarray) -> np.ndarray:
    return truth.relevance.astype(np.float32)


def reference_policies(
    run, smar, serp, seed: int, repeats: int, fresh_seeds: int = 3, attractiveness: bool = True
) -> dict[str, dict]:
    """Evaluate every reference policy on the run's `test` sessions (same seed/repeats as the methods).
    `attractiveness=False` skips the smar_attractiveness_* pair (two thirds of the search's cost)."""
    train, test = run.split("traffic"), run.split("test")
    pages, truth = head_sessions(train.pages, train.truth, SEARCH_SESSIONS)
    ss = _Sessions(
        pages=pages,
        truth=truth,
        intents=session_intents(pages, truth),
        smar=smar.score_pages(pages),
        test=test,
        smar_test=smar.score_pages(test.pages),
        serp=serp,
        seed=seed,
        repeats=repeats,
    )
    families = {
        "smar_modality_offsets": (0.0,)
    }  # SMAR + offsets (+ w x attractiveness), fixed and per intent
    if attractiveness:
        families["smar_attractiveness_offsets"] = SMAR_ATTRACT_WEIGHTS
    out: dict[str, dict] = {}
    for name, weights in families.items():
        sweep = _sweep(ss, _smar_base, weights, OFFSET_GRID)
        out[name], i = _fixed_reference(ss, sweep, _smar_base, weights)
        out[name.replace("_offsets", "_intent_offsets")] = _intent_reference(
            ss, sweep, _smar_base, out[name], i
        )
    out["oracle_relevance"] = ss.evaluate_scores(_grade_base(test.truth, None) + test.truth.attractiveness)
    sweep = _sweep(ss, _grade_base, ATTRACT_WEIGHTS, TRUTH_OFFSET_GRID)
    out["truth_offsets"], _ = _fixed_reference(ss, sweep, _grade_base, ATTRACT_WEIGHTS)
    for s in range(fresh_seeds):
        out[f"fresh_network_seed{s}"] = ss.evaluate(fresh_network(train.pages, smar, s))
    return out


def fresh_network(pages: Pages, like, seed: int):
    """The untrained network ppo_scratch seed `seed` starts from: `like`'s architecture, normaliser
    fitted on `pages` (the same model_config `smar train --scratch` builds)."""
    from agent.ppo_config import network_shape
    from agent.rl_module import build_reranker, scratch_model_config

    return build_reranker(scratch_model_config(pages, seed=seed, **network_shape(like.config)))


def layout_gradient(
    scores: np.ndarray,
    pages: Pages,
    truth: ItemTruth,
    serp,
    temperature: float,
    batch: int = 1024,
    repeats: int = 4,
    seed: int = 0,
    layout_noise: float = 0.0,
) -> dict[str, list[float] | float | int]:
    """The REINFORCE gradient of expected page reward w.r.t. one score offset per modality, at the
    Plackett-Luce policy `scores / temperature` over `pages`, and its signal-to-noise per PPO batch.

    Why: the layout (how modalities interleave) is where the reward is (`smar_modality_offsets`), and
    a policy-gradient learner sees it only through sampled slates. Each page is played `repeats` times
    (one slate, one simulated user, page reward only, batch-mean baseline). Returns the mean gradient
    per modality (doc, image, video, answer; they sum to 0: only relative offsets matter) and
    `z_per_batch` = mean / (std / sqrt(batch)), how many standard errors a `batch`-page estimate of
    each component sits from 0 (|z| < 2: one PPO iteration cannot tell its sign). With `layout_noise`
    sigma > 0 the layout is explored as the RL module does (`agent.layout_exploration`): a Gaussian
    offset per modality and page before the slate, whose score function (noise / sigma^2) carries the
    gradient; `page_reward` is then what that exploration earns.
    """
    from agent import layout_exploration as layout
    from pretrain import plackett_luce as pl

    n, k = serp.n_max, serp.slate_size
    s = torch.as_tensor(pad_items(pages, np.asarray(scores, np.float32), n))
    mask = torch.as_tensor(pad_items(pages, np.ones(pages.n_items, np.float32), n))
    mod = pad_items(pages, pages.modality.astype(np.int64), n)
    rel = pad_items(pages, truth.relevance.astype(np.int64), n)
    att = pad_items(pages, truth.attractiveness.astype(np.float32), n)
    user, rng = UserModel(serp.user), np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    grads, rewards = [], []
    for _ in range(repeats):
        offsets = torch.zeros(len(pages), N_MODALITIES, requires_grad=True)  # per page: per-page gradients
        noise = torch.zeros(len(pages), N_MODALITIES)
        if layout_noise > 0:
            noise[:, 1:] = torch.randn(len(pages), N_MODALITIES - 1, generator=gen) * layout_noise
        moved = layout.layout_scores(s + offsets.gather(1, torch.as_tensor(mod)), noise, torch.as_tensor(mod))
        logits = pl.masked_logits(moved, mask, temperature)
        slates = pl.sample_topk(logits.detach(), k, gen)
        if layout_noise > 0:
            grad = (noise - noise.mean(1, keepdim=True)) / layout_noise**2  # relative offsets only
        else:
            pl.log_prob(logits, slates).sum().backward()
            grad = offsets.grad
        shown = slates.numpy()

        def at(x: np.ndarray, shown: np.ndarray = shown) -> np.ndarray:
            return np.take_along_axis(x, shown, axis=1)

        outcome = user.simulate(at(rel), at(att), at(mod), None, rng)
        rewards.append(serp.reward.item_rewards(outcome).sum(axis=1))
        grads.append(grad.numpy().copy())
    g, r = np.concatenate(grads), np.concatenate(rewards).astype(np.float64)
    per_page = (r - r.mean())[:, None] * g
    mean, std = per_page.mean(0), per_page.std(0)
    z = np.divide(mean, std / np.sqrt(batch), out=np.zeros_like(mean), where=std > 0)
    # The same per query intent (simulator truth): the placement that pays depends on the intent
    # (smar_modality_intent_offsets), so a fixed offset's gradient can average to ~0 while each
    # intent's is not. z is per batch of `batch` pages, of which the intent's share has that intent.
    intent = np.tile(np.asarray(truth.preferred_modality, np.int64), repeats)
    by_intent = {}
    for i, name in enumerate(MODALITIES):
        sel = intent == i
        if sel.sum() < 2:
            continue
        m, sd = per_page[sel].mean(0), per_page[sel].std(0)
        n = batch * sel.mean()
        by_intent[name] = np.divide(m, sd / np.sqrt(n), out=np.zeros_like(m), where=sd > 0).tolist()
    return {
        "z_per_batch_by_intent": by_intent,
        "gradient": mean.tolist(),
        "z_per_batch": z.tolist(),
        "page_reward": float(r.mean()),
        "pages": int(len(r)),
        "batch": int(batch),
        "temperature": float(temperature),
        "layout_noise": float(layout_noise),
    }


def context_matrix(split: Split) -> torch.Tensor:
    """A page's context as the policy sees it (query and user features) plus a constant, [pages, D+1]."""
    p = split.pages
    x = np.concatenate([p.query_features, p.user_features, np.ones((len(p.page_id), 1))], axis=1)
    return torch.as_tensor(x, dtype=torch.float64)


def fit_intent_classifier(train: Split, l2: float = 1e-3, max_iter: int = 100) -> torch.Tensor:
    """Multinomial logistic regression of the true intent (simulator truth) on `context_matrix`,
    L2-penalised, by L-BFGS: its weights [D+1, M]."""
    x = context_matrix(train)
    y = torch.as_tensor(train.truth.preferred_modality, dtype=torch.long)
    w = torch.zeros(x.shape[1], N_MODALITIES, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w, y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def intent_readability(train: Split, test: Split, l2: float = 1e-3) -> dict[str, float]:
    """How well a page's context (query and user features, what the policy sees) tells its true
    intent: `fit_intent_classifier` on `train` pages, its accuracy on `test` pages. The per-intent
    reference reads the true intent; this says whether a policy could read it too, so that the
    reference's gap is reachable in principle."""
    w = fit_intent_classifier(train, l2)

    def accuracy(split: Split) -> float:
        y = torch.as_tensor(split.truth.preferred_modality, dtype=torch.long)
        return float(((context_matrix(split) @ w).argmax(1) == y).double().mean())

    yt = torch.as_tensor(test.truth.preferred_modality, dtype=torch.long)
    majority = float(torch.bincount(yt, minlength=N_MODALITIES).max()) / max(len(yt), 1)
    return {
        "train_accuracy": accuracy(train),
        "test_accuracy": accuracy(test),
        "test_majority_share": majority,
    }
