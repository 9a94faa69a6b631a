"""The in-memory page container: a columnar batch of search pages, numpy only.

A *page* is one query's candidate list. `Pages` holds many pages column-wise (per-page arrays of
length P, per-item arrays of length T = total items, and `offsets` so page p owns items
`offsets[p]:offsets[p+1]`). It lives in `envs/` because it is the lowest layer: the synthetic world,
the user simulator and the gymnasium environment use it, and `pretrain.page` (the on-disk contract:
Arrow schema, Parquet I/O, validation, torch batches) reads and writes it.

Item features have a different dimension per modality; in memory they are zero-padded to
`max(feature_dims.values())` columns and only the first `feature_dims[modality]` are meaningful.
Nullable per-item fields use sentinels in memory: NaN for floats, -1 for grades and clicks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np

MODALITIES: tuple[str, ...] = ("doc", "image", "video", "answer")
MODALITY_ID: dict[str, int] = {m: i for i, m in enumerate(MODALITIES)}
N_MODALITIES = len(MODALITIES)
MAX_GRADE = 4

PER_PAGE = ("page_id", "query_id", "query_features", "user_features")
PER_ITEM = ("item_id", "modality", "features", "single_modal_score", "relevance", "click", "dwell")


@dataclass
class Pages:
    """A columnar batch of pages. See the module docstring for the layout."""

    page_id: np.ndarray  # (P,) str
    query_id: np.ndarray  # (P,) str
    query_features: np.ndarray  # (P, Dq) float32
    user_features: np.ndarray  # (P, Du) float32
    offsets: np.ndarray  # (P+1,) int64
    item_id: np.ndarray  # (T,) str
    modality: np.ndarray  # (T,) int8, index into MODALITIES
    features: np.ndarray  # (T, Dmax) float32, zero-padded past the modality's dimension
    feature_dims: dict[str, int]  # modality -> feature dimension
    single_modal_score: np.ndarray = field(default=None)  # (T,) float32, NaN = unknown
    relevance: np.ndarray = field(default=None)  # (T,) int8 0..4, -1 = unknown
    click: np.ndarray = field(default=None)  # (T,) int8 0/1, -1 = unknown
    dwell: np.ndarray = field(default=None)  # (T,) float32 seconds, NaN = unknown

    def __post_init__(self) -> None:
        t = len(self.item_id)
        if self.single_modal_score is None:
            self.single_modal_score = np.full(t, np.nan, np.float32)
        if self.relevance is None:
            self.relevance = np.full(t, -1, np.int8)
        if self.click is None:
            self.click = np.full(t, -1, np.int8)
        if self.dwell is None:
            self.dwell = np.full(t, np.nan, np.float32)
        self.offsets = np.asarray(self.offsets, np.int64)
        self.modality = np.asarray(self.modality, np.int8)
        self.features = np.asarray(self.features, np.float32)
        self.query_features = np.asarray(self.query_features, np.float32)
        self.user_features = np.asarray(self.user_features, np.float32)
        self.single_modal_score = np.asarray(self.single_modal_score, np.float32)
        self.relevance = np.asarray(self.relevance, np.int8)
        self.click = np.asarray(self.click, np.int8)
        self.dwell = np.asarray(self.dwell, np.float32)
        if len(self.offsets) != len(self.page_id) + 1 or self.offsets[-1] != t:
            raise ValueError(
                f"offsets must have P+1={len(self.page_id) + 1} entries ending at T={t}, "
                f"got {len(self.offsets)} ending at {self.offsets[-1] if len(self.offsets) else None}"
            )

    # ----------------------------------------------------------------- shape helpers
    def __len__(self) -> int:
        return len(self.page_id)

    @property
    def n_items(self) -> int:
        return len(self.item_id)

    @property
    def sizes(self) -> np.ndarray:
        """Number of candidates on each page, (P,)."""
        return np.diff(self.offsets)

    @property
    def page_of_item(self) -> np.ndarray:
        """Page index of each item, (T,)."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.sizes)

    @property
    def query_dim(self) -> int:
        return self.query_features.shape[1]

    @property
    def user_dim(self) -> int:
        return self.user_features.shape[1]

    def item_slice(self, p: int) -> slice:
        return slice(int(self.offsets[p]), int(self.offsets[p + 1]))

    # ----------------------------------------------------------------- selection
    def select(self, pages: np.ndarray | list[int] | slice) -> Pages:
        """A new `Pages` with the given pages (in the given order)."""
        idx = np.arange(len(self))[pages] if isinstance(pages, slice) else np.asarray(pages, np.int64)
        sizes = self.sizes[idx]
        starts = self.offsets[idx]
        item_idx = (
            np.concatenate([np.arange(s, s + n) for s, n in zip(starts, sizes)])
            if len(idx)
            else np.zeros(0, np.int64)
        ).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in PER_PAGE:
            kw[name] = kw[name][idx]
        for name in PER_ITEM:
            kw[name] = kw[name][item_idx]
        kw["offsets"] = offsets
        return Pages(**kw)

    def with_items(self, **columns: np.ndarray) -> Pages:
        """A copy with some per-item columns replaced (e.g. filled single-modal scores)."""
        for name, col in columns.items():
            if name not in PER_ITEM:
                raise KeyError(f"{name!r} is not a per-item column; expected one of {PER_ITEM}")
            if len(col) != self.n_items:
                raise ValueError(f"column {name!r} has {len(col)} rows, pages hold {self.n_items} items")
        return replace(self, **columns)

    @staticmethod
    def concat(parts: list[Pages]) -> Pages:
        """Concatenate page batches that share feature dimensions."""
        if not parts:
            raise ValueError("concat needs at least one Pages")
        dims = parts[0].feature_dims
        for p in parts[1:]:
            if p.feature_dims != dims:
                raise ValueError(f"feature_dims differ: {dims} vs {p.feature_dims}")
        kw = {}
        for name in PER_PAGE + PER_ITEM:
            kw[name] = np.concatenate([getattr(p, name) for p in parts])
        sizes = np.concatenate([p.sizes for p in parts])
        kw["offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return Pages(feature_dims=dict(dims), **kw)


def pad_items(pages: Pages, values: np.ndarray, n_max: int, fill: float = 0.0) -> np.ndarray:
    """Scatter a per-item array (T, ...) into padded page slots (P, n_max, ...).

    Pages longer than `n_max` raise: truncation would silently drop candidates.
    """
    sizes = pages.sizes
    if len(sizes) and sizes.max() > n_max:
        worst = int(np.argmax(sizes))
        raise ValueError(f"page {pages.page_id[worst]!r} has {sizes[worst]} candidates > n_max={n_max}")
    out = np.full((len(pages), n_max) + values.shape[1:], fill, dtype=values.dtype)
    slot = np.arange(pages.n_items) - np.repeat(pages.offsets[:-1], sizes)
    out[pages.page_of_item, slot] = values
    return out
