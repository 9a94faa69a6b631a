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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from envs.config_io import JsonConfig
from envs.pages import MODALITIES, Pages
from envs.world import ItemTruth, Split
from pretrain.page import iter_pages

DATA_SPLITS = ("pool", "valid", "test")


@dataclass(frozen=True)
class DataConfig(JsonConfig):
    valid_fraction: float = 1.0 / 3.0
    # Feature columns that hold one value on every train item carry nothing a model can learn (the
    # normalisers map them to 0 anyway); they are dropped on reading, which bounds memory at scale.
    drop_constant_columns: bool = True
    batch_pages: int = 4096  # pages per streamed read

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
    dropped_columns: list[int] = field(default_factory=list)

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
            "constant_feature_columns_dropped": len(self.dropped_columns),
        }


def scan_columns(path: Path, batch_pages: int) -> tuple[int, int, np.ndarray]:
    """(pages, feature width, indices of feature columns holding one value over every item), streamed."""
    lo = hi = None
    n_pages, width = 0, 0
    for part in iter_pages(path, batch_pages):
        n_pages += len(part)
        width = part.features.shape[1]
        if not part.n_items:
            continue
        a, b = part.features.min(axis=0), part.features.max(axis=0)
        lo, hi = (a, b) if lo is None else (np.minimum(lo, a), np.maximum(hi, b))
    return n_pages, width, (np.zeros(0, np.int64) if lo is None else np.nonzero(lo == hi)[0])


def _compact(pages: Pages, keep: np.ndarray | None) -> Pages:
    """`pages` with only the feature columns `keep` (None: all); per-modality widths follow."""
    if keep is None:
        return pages
    dims = {m: int((keep < d).sum()) for m, d in pages.feature_dims.items()}
    return replace(pages, features=np.ascontiguousarray(pages.features[:, keep]), feature_dims=dims)


def _concat(parts: list[Pages]) -> Pages:
    return parts[0] if len(parts) == 1 else Pages.concat(parts)


def read_compact(path: Path, keep: np.ndarray | None, batch_pages: int, split_at: int | None = None):
    """A page file read in batches, each compacted as it arrives (peak: the result plus one batch).
    With `split_at`, returns (its first `split_at` pages, the rest)."""
    first, rest, seen = [], [], 0
    for p in iter_pages(path, batch_pages):
        p = _compact(p, keep)
        if split_at is None or seen + len(p) <= split_at:
            first.append(p)
        elif seen >= split_at:
            rest.append(p)
        else:
            cut = split_at - seen
            first.append(p.select(np.arange(cut)))
            rest.append(p.select(np.arange(cut, len(p))))
        seen += len(p)
    if not first:
        raise ValueError(f"{path}: no pages")
    if split_at is None:
        return _concat(first)
    if not rest:
        raise ValueError(f"{path}: {seen} pages, none left after the first {split_at}")
    return _concat(first), _concat(rest)


def load_data(root: str | Path, config: DataConfig | None = None) -> ImportedData:
    """Read `smar import` output; FileNotFoundError / ValueError naming the file and field at fault.

    Files are streamed in batches (`pyarrow.dataset`) and compacted as they are read, so the peak
    memory is the splits themselves plus one batch."""
    cfg = config or DataConfig()
    root = Path(root)
    if not (root / "import.json").exists():
        raise FileNotFoundError(
            f"{root} is not `smar import` output (no import.json); create it with "
            f"`smar import SRC --out {root} --import.format crossrank|qilin`"
        )
    info = json.loads((root / "import.json").read_text())
    for name in ("train", "test"):
        if not (root / f"{name}.parquet").exists():
            raise FileNotFoundError(f"{root}: no {name}.parquet (the --data pipeline needs train and test)")
    n_train, width, dropped = scan_columns(root / "train.parquet", cfg.batch_pages)
    keep = None
    if cfg.drop_constant_columns and len(dropped):
        keep = np.setdiff1d(np.arange(width), dropped)
        if not len(keep):
            raise ValueError(f"{root / 'train.parquet'}: field 'features' holds one value in every column")
    if not cfg.drop_constant_columns:
        dropped = np.zeros(0, np.int64)
    n_valid = max(1, int(round(cfg.valid_fraction * n_train)))
    if n_train - n_valid < 2:
        raise ValueError(
            f"{root / 'train.parquet'}: {n_train} pages are too few for a pool and a valid split"
        )
    pool_pages, valid_pages = read_compact(root / "train.parquet", keep, cfg.batch_pages, n_train - n_valid)
    test = read_compact(root / "test.parquet", keep, cfg.batch_pages)
    for name, parts in (("train", (pool_pages, valid_pages)), ("test", (test,))):
        if all((p.relevance < 0).all() for p in parts):
            raise ValueError(f"{root / f'{name}.parquet'}: field 'relevance' holds no page label")
    if (test.relevance < 0).any():
        test = keep_items(test, test.relevance >= 0)  # evaluation needs a grade for every item
    if (valid_pages.relevance < 0).any():
        valid_pages = keep_items(valid_pages, valid_pages.relevance >= 0)
    truth = pool_pages.relevance
    pool = Split(
        pool_pages.with_items(relevance=np.full(pool_pages.n_items, -1, np.int8)),
        _truth(truth, len(pool_pages)),
    )
    single: dict[str, Split] = {}
    sm_path = root / "single_modal.parquet"
    if sm_path.exists():
        sm = read_compact(sm_path, keep, cfg.batch_pages)
        for mid, m in enumerate(MODALITIES):
            part = keep_items(sm, (sm.modality == mid) & (sm.relevance >= 0))
            if len(part):
                single[m] = Split(part, _truth(part.relevance, len(part)))
        del sm
    else:
        for name, pages in (("train", pool_pages), ("train", valid_pages), ("test", test)):
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
        dropped_columns=[int(i) for i in dropped],
    )
