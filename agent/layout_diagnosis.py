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
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agent.evaluation import evaluate_policy
from envs.pages import N_MODALITIES, Pages
from envs.world import Split
from pretrain.checkpoint import load_checkpoint
from pretrain.reranker import WholePageReranker


def relative_layout(net: WholePageReranker, pages: Pages) -> np.ndarray:
    """The network's modality offsets of every page relative to the first modality's, [pages, M]."""
    with torch.no_grad():
        q, u = (torch.tensor(np.asarray(x, np.float32)) for x in (pages.query_features, pages.user_features))
        o = net.layout_offsets(q, u)
    o = o.numpy().astype(np.float64)
    return o - o[:, :1]


def per_item(pages: Pages, layout: np.ndarray) -> np.ndarray:
    """A per-page layout [pages, M] as each item's offset (its page's entry for its modality), [items]."""
    return np.repeat(layout, pages.sizes, axis=0)[np.arange(pages.n_items), pages.modality.astype(np.int64)]


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
        return evaluate_policy(
            lambda _p: s.astype(np.float32), pages, split.truth, seed=seed, repeats=repeats, serp=serp
        )["reward"]

    return {
        "policy": reward(scores),
        "body_only": reward(scores - per_item(pages, move)),
        "smar_plus_move": reward(base + per_item(pages, move)),
        "smar_plus_intent_mean": reward(base + per_item(pages, means[intent])),
        "intent_mean_move": means[:, 1:].tolist(),
        "within_intent_sd": sds[:, 1:].tolist(),
    }
