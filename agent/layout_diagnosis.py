"""What a trained policy's page layout is worth, split into its per-intent part and the rest.

Why: the reward between SMAR and the feasible reference lies in the layout (how far each modality
moves per query intent; `agent.reward_landscape`). A policy's layout move (its modality offsets minus
SMAR's, per page) can be right on average for each intent and still vary from page to page within an
intent, where the reference moves every page of an intent alike. Playing SMAR with (a) the policy's
move per page and (b) each true intent's mean of that move tells which of the two the reward lacks:
if (b) earns far more than (a), the policy found the direction and the within-intent variation costs
the rest. A diagnostic (the intent is simulator truth); no policy uses it.

  policy                 the trained policy itself
  body_only              the trained policy's scores without its layout move (its item scoring alone)
  smar_plus_move         SMAR's scores + the policy's layout move, page by page
  smar_plus_intent_mean  SMAR's scores + the mean of that move over each true intent's pages
  intent_mean_move       per intent (doc, image, video, answer) the mean move of image, video, answer
                         relative to doc; within_intent_sd the standard deviation of the move there

`linear_layout_ceiling` asks the question one level up: how much of the per-intent reference any layout
of the head's form (linear in the context) can express.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agent import layout_exploration as layout
from agent.evaluation import evaluate_policy
from agent.reward_landscape import context_matrix, fit_intent_classifier
from envs.pages import N_MODALITIES, Pages
from envs.world import Split
from pretrain.checkpoint import load_checkpoint
from pretrain.reranker import WholePageReranker


def relative_layout(net: WholePageReranker, pages: Pages) -> np.ndarray:
    """The network's modality offsets of every page relative to the first modality's, [pages, M]."""
    with torch.no_grad():
        q, u = (torch.tensor(np.asarray(x, np.float32)) for x in (pages.query_features, pages.user_features))
        return layout.relative(net.layout_offsets(q, u).double()).numpy()


def per_item(pages: Pages, layout: np.ndarray) -> np.ndarray:
    """A per-page layout [pages, M] as each item's offset (its page's entry for its modality), [items]."""
    return np.repeat(layout, pages.sizes, axis=0)[np.arange(pages.n_items), pages.modality.astype(np.int64)]


def _reward(scores: np.ndarray, split: Split, serp: Any, seed: int, repeats: int) -> float:
    """The session reward of fixed item scores on `split`, played like the bench's methods."""
    s = np.asarray(scores, np.float32)
    return evaluate_policy(lambda _p: s, split.pages, split.truth, seed=seed, repeats=repeats, serp=serp)[
        "reward"
    ]


def layout_decomposition(
    policy: Any, smar: WholePageReranker, split: Split, serp: Any, seed: int, repeats: int
) -> dict[str, Any]:
    """The module docstring's figures for `policy` (a reranker or a checkpoint folder) on `split`,
    played like the bench's methods (`evaluate_policy` with `seed` and `repeats`)."""
    net = load_checkpoint(policy)[0] if not isinstance(policy, WholePageReranker) else policy
    if net.offset_head is None or smar.offset_head is None:
        raise ValueError("layout_decomposition needs rerankers with a modality-offset head")
    pages = split.pages
    intent = np.asarray(split.truth.preferred_modality, np.int64)
    move = relative_layout(net, pages) - relative_layout(smar, pages)
    means = np.zeros((N_MODALITIES, N_MODALITIES))
    sds = np.zeros((N_MODALITIES, N_MODALITIES))
    for g in range(N_MODALITIES):
        if (intent == g).any():
            means[g], sds[g] = move[intent == g].mean(0), move[intent == g].std(0)
    base = np.asarray(smar.score_pages(pages), np.float64)
    scores = np.asarray(net.score_pages(pages), np.float64)

    def reward(s: np.ndarray) -> float:
        return _reward(s, split, serp, seed, repeats)

    return {
        "policy": reward(scores),
        "body_only": reward(scores - per_item(pages, move)),
        "smar_plus_move": reward(base + per_item(pages, move)),
        "smar_plus_intent_mean": reward(base + per_item(pages, means[intent])),
        "intent_mean_move": means[:, 1:].tolist(),
        "within_intent_sd": sds[:, 1:].tolist(),
    }


def linear_layout_ceiling(
    smar: WholePageReranker,
    train: Split,
    test: Split,
    intent_offsets: Any,
    serp: Any,
    seed: int,
    repeats: int,
    scales: tuple[float, ...] = (0.25, 0.5, 1.0),
) -> dict[str, Any]:
    """What a layout linear in the page context can express of the per-intent reference: its offsets
    (`intent_offsets` [intent, M], simulator truth as labels) fitted by least squares on `train` pages
    from SMAR's context embedding (what the offset head reads) and from the raw query and user
    features, each fit played on `test` at every scale (SMAR + scale x fit), beside the same offsets
    mixed by a logistic intent classifier on the raw features (a non-linear map of the same inputs).
    Why: the policy's offset head is one linear map of the context embedding; if no linear map, fitted
    with the answer known, earns the reward the criterion asks, the head's form bounds what RL can
    earn through it."""
    ref = np.asarray(intent_offsets, np.float64)
    ref = ref - ref[:, :1]

    def inputs(split: Split, kind: str) -> np.ndarray:
        if kind == "raw_context":
            return context_matrix(split).numpy()
        p = split.pages
        q, u = (torch.tensor(np.asarray(x, np.float32)) for x in (p.query_features, p.user_features))
        with torch.no_grad():
            x = smar.context_embedding(q, u).numpy().astype(np.float64)
        return np.c_[x, np.ones(len(x))]

    def intents(split: Split) -> np.ndarray:
        return np.asarray(split.truth.preferred_modality, np.int64)

    base = np.asarray(smar.score_pages(test.pages), np.float64)

    def reward(offsets: np.ndarray) -> float:
        return _reward(base + per_item(test.pages, offsets), test, serp, seed, repeats)

    out: dict[str, Any] = {"reference_with_true_intent": reward(ref[intents(test)])}
    target = ref[intents(test)]
    for kind in ("context_embedding", "raw_context"):
        x, xt = inputs(train, kind), inputs(test, kind)
        w = np.linalg.lstsq(x, ref[intents(train)], rcond=None)[0]
        fit = xt @ w
        r2 = 1.0 - float(((fit - target) ** 2).sum() / max(((target - target.mean(0)) ** 2).sum(), 1e-12))
        out[f"linear_in_{kind}"] = {
            "test_r2": r2,
            "reward_by_scale": {str(a): reward(a * fit) for a in scales},
        }
    w = fit_intent_classifier(train, max_iter=200)
    prob = torch.softmax(context_matrix(test) @ w, 1).numpy()
    out["intent_classifier_mixture"] = reward(prob @ ref)
    return out
