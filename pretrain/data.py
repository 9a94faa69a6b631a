"""Imported real data (`smar import` output) as the splits the SMAR pipeline runs on (`--data DIR`).

DIR holds `train.parquet`, `test.parquet`, optionally `single_modal.parquet`, and `import.json`
(pretrain.importers). They become:
  * `pool`  : train pages except the last `valid_fraction` of them; page labels hidden from the
              learner (relevance -1) and handed to the annotation oracle as its truth, so SMAR's budget,
              bands, anchors and cost ledger work exactly as on the synthetic world;
  * `valid` : the last `valid_fraction` of train pages (labels visible; used by the `valid` selection
              and by `lgbm_full`'s grid). 1/3 matches the synthetic world's pool:valid split (2:1),
              and an exported world's train file holds the pool then the valid pages, so the default
              gives back exactly the world's pool and valid;
  * `test`  : test pages, labels as the truth for evaluation;
  * `single_modal`: per modality, the single-modal part's pages restricted to that modality's
              labelled items (labels comparable within a modality). Without a single-modal part the
              pipeline uses the dataset's own upstream scores (`single_modal_score`, from CrossRank's
              `upstream_label`) instead of trained rankers: `single_modal_source` says which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.config_io import JsonConfig
from envs.pages import MODALITIES, Pages
from envs.world import ItemTruth, Split
from pretrain.page import read_pages

DATA_SPLITS = ("pool", "valid", "test")


@dataclass(frozen=True)
class DataConfig(JsonConfig):
    valid_fraction: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")


def keep_items(pages: Pages, keep: np.ndarray) -> Pages:
    """A copy holding only the items where `keep` (T,) is True; pages left empty are dropped."""
    keep = np.asarray(keep, bool)
    counts = np.add.reduceat(keep.astype(np.int64), pages.offsets[:-1]) if len(pages) else np.zeros(0)
    counts = np.where(pages.sizes > 0, counts, 0)
    alive = counts > 0
    kw = {
        "page_id": pages.page_id[alive],
        "query_id": pages.query_id[alive],
        "query_features": pages.query_features[alive],
        "user_features": pages.user_features[alive],
        "offsets": np.concatenate([[0], np.cumsum(counts[alive])]),
        "item_id": pages.item_id[keep],
        "modality": pages.modality[keep],
        "features": pages.features[keep],
        "feature_dims": dict(pages.feature_dims),
        "single_modal_score": pages.single_modal_score[keep],
        "relevance": pages.relevance[keep],
        "click": pages.click[keep],
        "dwell": pages.dwell[keep],
    }
    return Pages(**kw)


def _truth(relevance: np.ndarray, n_pages: int) -> ItemTruth:
    # Real data has no simulator truth beyond the labels: attractiveness and intent are unknown.
    return ItemTruth(
        np.asarray(relevance, np.int8).copy(),
        np.full(len(relevance), np.nan, np.float32),
        np.full(n_pages, -1, np.int8),
    )


@dataclass
class ImportedData:
    """The splits of an imported dataset, shaped like `envs.world.World` for `pretrain.train.prepare`."""

    root: Path
    info: dict
    config: DataConfig
    single_modal: dict[str, Split]
    pool: Split
    valid: Split
    test: Split

    @property
    def single_modal_source(self) -> str:
        if self.single_modal:
            return "single-modal rankers trained on the dataset's single-modal part (single_modal.parquet)"
        return "the dataset's own upstream scores (upstream_label -> single_modal_score); no rankers trained"

    def whole_page_splits(self) -> dict[str, Split]:
        return {name: getattr(self, name) for name in DATA_SPLITS}

    def describe(self) -> dict:
        return {
            "data": str(self.root),
            "format": self.info.get("format"),
            "config": self.config.to_json(),
            "pages": {n: len(s.pages) for n, s in self.whole_page_splits().items()},
            "single_modal_pages": {m: len(s.pages) for m, s in self.single_modal.items()},
            "single_modal_source": self.single_modal_source,
        }


def load_data(root: str | Path, config: DataConfig | None = None) -> ImportedData:
    """Read `smar import` output; FileNotFoundError / ValueError naming the file and field at fault."""
    cfg = config or DataConfig()
    root = Path(root)
    if not (root / "import.json").exists():
        raise FileNotFoundError(
            f"{root} is not `smar import` output (no import.json); create it with "
            f"`smar import --format crossrank|qilin SRC --out {root}`"
        )
    info = json.loads((root / "import.json").read_text())
    for name in ("train", "test"):
        if not (root / f"{name}.parquet").exists():
            raise FileNotFoundError(f"{root}: no {name}.parquet (the --data pipeline needs train and test)")
    train = read_pages(root / "train.parquet")
    test = read_pages(root / "test.parquet")
    for name, pages in (("train", train), ("test", test)):
        if (pages.relevance < 0).all():
            raise ValueError(f"{root / f'{name}.parquet'}: field 'relevance' holds no page label")
    test = keep_items(test, test.relevance >= 0)  # evaluation needs a grade for every item
    n_valid = max(1, int(round(cfg.valid_fraction * len(train))))
    if len(train) - n_valid < 2:
        raise ValueError(
            f"{root / 'train.parquet'}: {len(train)} pages are too few for a pool and a valid split"
        )
    pool_pages = train.select(np.arange(len(train) - n_valid))
    valid_pages = train.select(np.arange(len(train) - n_valid, len(train)))
    valid_pages = keep_items(valid_pages, valid_pages.relevance >= 0)
    hidden = np.full(pool_pages.n_items, -1, np.int8)
    pool = Split(pool_pages.with_items(relevance=hidden), _truth(pool_pages.relevance, len(pool_pages)))
    single: dict[str, Split] = {}
    sm_path = root / "single_modal.parquet"
    if sm_path.exists():
        sm = read_pages(sm_path)
        for mid, m in enumerate(MODALITIES):
            part = keep_items(sm, (sm.modality == mid) & (sm.relevance >= 0))
            if len(part):
                single[m] = Split(part, _truth(part.relevance, len(part)))
    else:
        for name, pages in (("train", train), ("test", test)):
            if np.isnan(pages.single_modal_score).any():
                i = int(np.nonzero(np.isnan(pages.single_modal_score))[0][0])
                raise ValueError(
                    f"{root / f'{name}.parquet'}: field 'single_modal_score': item {pages.item_id[i]!r} of page "
                    f"{pages.page_id[pages.page_of_item[i]]!r} has none, and there is no single_modal.parquet "
                    "to train single-modal rankers on"
                )
    return ImportedData(
        root=root,
        info=info,
        config=cfg,
        single_modal=single,
        pool=pool,
        valid=Split(valid_pages, _truth(valid_pages.relevance, len(valid_pages))),
        test=Split(test, _truth(test.relevance, len(test))),
    )
