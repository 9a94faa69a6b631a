"""`lgbm_full`: LightGBM's LambdaMART (`lambdarank` objective) on 100% of the pool's page labels.

The peer baseline a ranking team would pick first. Same inputs as the whole-page reranker: each item's
features (zero-padded to the widest modality), a one-hot of its modality, and its page's query and
user features (trees need no standardisation). A small grid (`LGBMConfig`) is tuned fairly on the
fully labelled valid split: each setting trains with early stopping on valid NDCG@10, and the setting
with the best valid NDCG@10 (our metric, `pretrain.single_modal.mean_ndcg`) is kept. Single-threaded
and seeded; the wall time of the whole grid is reported.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

from envs.config_io import JsonConfig
from envs.pages import N_MODALITIES, Pages
from pretrain.single_modal import mean_ndcg


@dataclass(frozen=True)
class LGBMConfig(JsonConfig):
    num_leaves: tuple[int, ...] = (15, 63)
    learning_rate: tuple[float, ...] = (0.05, 0.1)
    min_data_in_leaf: tuple[int, ...] = (20, 100)
    max_rounds: int = 1000
    early_stopping: int = 50
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    threads: int = 1
    seed: int = 0

    def grid(self) -> list[dict]:
        return [
            {"num_leaves": a, "learning_rate": b, "min_data_in_leaf": c}
            for a, b, c in itertools.product(self.num_leaves, self.learning_rate, self.min_data_in_leaf)
        ]


def item_matrix(pages: Pages) -> np.ndarray:
    """(T, Dmax + modalities + Dq + Du) float32: what the reranker sees, one row per item."""
    page_of = pages.page_of_item
    onehot = np.eye(N_MODALITIES, dtype=np.float32)[pages.modality]
    return np.concatenate(
        [pages.features, onehot, pages.query_features[page_of], pages.user_features[page_of]], axis=1
    ).astype(np.float32)


class LGBMRanker:
    """A trained LambdaMART booster as a page scorer: `.score_pages(pages)` -> (T,)."""

    def __init__(self, booster, params: dict) -> None:
        self.booster = booster
        self.params = params

    def score_pages(self, pages: Pages) -> np.ndarray:
        return np.asarray(self.booster.predict(item_matrix(pages), num_threads=1), np.float64)


def _dataset(lgb, pages: Pages, relevance: np.ndarray, reference=None):
    keep = relevance >= 0
    if not keep.all():
        raise ValueError("lgbm_full trains on fully labelled pages; field 'relevance' has -1")
    return lgb.Dataset(
        item_matrix(pages),
        label=relevance.astype(np.int32),
        group=pages.sizes,
        reference=reference,
        free_raw_data=False,
    )


def train_lgbm(
    train: Pages, train_relevance: np.ndarray, valid: Pages, valid_relevance: np.ndarray, cfg: LGBMConfig
) -> tuple[LGBMRanker, dict]:
    """Grid over `cfg` with early stopping on valid; returns (best ranker, info with the grid's results)."""
    import lightgbm as lgb

    t0 = time.perf_counter()
    dtrain = _dataset(lgb, train, train_relevance)
    dvalid = _dataset(lgb, valid, valid_relevance, reference=dtrain)
    results, best = [], None
    for g in cfg.grid():
        params = {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [10],
            "feature_fraction": cfg.feature_fraction,
            "bagging_fraction": cfg.bagging_fraction,
            "bagging_freq": 1,
            "num_threads": cfg.threads,
            "seed": cfg.seed,
            "deterministic": True,
            "verbosity": -1,
            **g,
        }
        booster = lgb.train(
            params,
            dtrain,
            num_boost_round=cfg.max_rounds,
            valid_sets=[dvalid],
            callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False)],
        )
        model = LGBMRanker(booster, params)
        v = mean_ndcg(model.score_pages(valid), valid, valid_relevance.astype(np.float64))
        results.append({**g, "rounds": booster.best_iteration, "valid_ndcg@10": v})
        if best is None or v > best[0]:
            best = (v, model, results[-1])
    return best[1], {
        "best": best[2],
        "grid": results,
        "seconds": time.perf_counter() - t0,
    }
