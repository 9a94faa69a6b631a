"""The page data contract: Arrow schema, Parquet I/O, validation, and padded torch batches.

Layout on disk: **one row per page**, with the per-item fields as parallel list columns (Arrow
`list<...>`, nested `list<list<float32>>` for features). One row per page keeps a page atomic (a
reader never sees half a candidate list), and parallel lists convert to numpy without a per-item
Python loop. Per-modality feature dimensions are stored in the file's schema metadata
(`smar.feature_dims`) and enforced on load.

Nullable fields: `single_modal_score` (unknown until single-modal rankers have run), `relevance`
(unknown for unannotated items), `click` and `dwell` (only for logged pages).

Validation on load raises `PageValidationError` naming the file, page and field; nothing is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from envs.atomic_io import write_parquet_atomic
from envs.pages import MAX_GRADE, MODALITIES, MODALITY_ID, Pages, pad_items

SCHEMA_VERSION = "1"
FEATURE_DIMS_KEY = b"smar.feature_dims"
VERSION_KEY = b"smar.schema_version"

PAGE_SCHEMA = pa.schema(
    [
        pa.field("page_id", pa.string(), nullable=False),
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("query_features", pa.list_(pa.float32()), nullable=False),
        pa.field("user_features", pa.list_(pa.float32()), nullable=False),
        pa.field("item_id", pa.list_(pa.string()), nullable=False),
        pa.field("modality", pa.list_(pa.string()), nullable=False),
        pa.field("features", pa.list_(pa.list_(pa.float32())), nullable=False),
        pa.field("single_modal_score", pa.list_(pa.float32())),
        pa.field("relevance", pa.list_(pa.int8())),
        pa.field("click", pa.list_(pa.bool_())),
        pa.field("dwell", pa.list_(pa.float32())),
    ]
)
REQUIRED_COLUMNS = (
    "page_id",
    "query_id",
    "query_features",
    "user_features",
    "item_id",
    "modality",
    "features",
)
ITEM_LIST_COLUMNS = ("item_id", "modality", "features", "single_modal_score", "relevance", "click", "dwell")


class PageValidationError(ValueError):
    """A page violates the contract. The message names the source, the page and the field."""


# --------------------------------------------------------------------------- numpy <-> Arrow
def _list_of(values: pa.Array, offsets: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


def to_arrow(pages: Pages) -> pa.Table:
    """Pages -> Arrow table in `PAGE_SCHEMA`, with feature dims in the schema metadata."""
    off = pages.offsets
    mod_names = np.array(MODALITIES, dtype=object)[pages.modality]
    dims = np.array([pages.feature_dims[m] for m in MODALITIES], np.int64)[pages.modality]
    flat_feats = pages.features[np.arange(pages.features.shape[1])[None, :] < dims[:, None]]
    inner = _list_of(pa.array(flat_feats, pa.float32()), np.concatenate([[0], np.cumsum(dims)]))
    score = pa.array(pages.single_modal_score, pa.float32(), mask=np.isnan(pages.single_modal_score))
    rel = pa.array(pages.relevance, pa.int8(), mask=pages.relevance < 0)
    click = pa.array(pages.click > 0, pa.bool_(), mask=pages.click < 0)
    dwell = pa.array(pages.dwell, pa.float32(), mask=np.isnan(pages.dwell))
    dq, du = pages.query_dim, pages.user_dim
    cols = {
        "page_id": pa.array(pages.page_id.astype(str), pa.string()),
        "query_id": pa.array(pages.query_id.astype(str), pa.string()),
        "query_features": _list_of(
            pa.array(pages.query_features.ravel(), pa.float32()), np.arange(len(pages) + 1) * dq
        ),
        "user_features": _list_of(
            pa.array(pages.user_features.ravel(), pa.float32()), np.arange(len(pages) + 1) * du
        ),
        "item_id": _list_of(pa.array(pages.item_id.astype(str), pa.string()), off),
        "modality": _list_of(pa.array(mod_names, pa.string()), off),
        "features": _list_of(inner, off),
        "single_modal_score": _list_of(score, off),
        "relevance": _list_of(rel, off),
        "click": _list_of(click, off),
        "dwell": _list_of(dwell, off),
    }
    meta = {FEATURE_DIMS_KEY: json.dumps(pages.feature_dims).encode(), VERSION_KEY: SCHEMA_VERSION.encode()}
    return pa.Table.from_pydict(cols, schema=PAGE_SCHEMA.with_metadata(meta))


def _fail(source: str, page_id: str, field: str, why: str) -> PageValidationError:
    return PageValidationError(f"{source}: page {page_id!r}, field {field!r}: {why}")


def _offsets(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return np.asarray(arr.offsets, np.int64) - int(arr.offsets[0].as_py())


def _flat(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.flatten()


def from_arrow(table: pa.Table, source: str = "<table>", feature_dims: dict[str, int] | None = None) -> Pages:
    """Arrow table in the page schema -> validated Pages. Raises PageValidationError on any violation."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise PageValidationError(f"{source}: missing required column(s) {missing}")
    meta = table.schema.metadata or {}
    if feature_dims is None and FEATURE_DIMS_KEY in meta:
        feature_dims = json.loads(meta[FEATURE_DIMS_KEY])
    page_ids = np.array(table.column("page_id").to_pylist(), dtype=object)
    if any(p is None for p in page_ids):
        raise PageValidationError(f"{source}: field 'page_id' has a null")
    off = _offsets(table.column("item_id"))
    for c in ITEM_LIST_COLUMNS:
        if c in table.column_names and table.column(c).null_count == 0:
            o = _offsets(table.column(c))
            bad = np.nonzero(np.diff(o) != np.diff(off))[0]
            if len(bad):
                p = bad[0]
                raise _fail(source, page_ids[p], c, f"{np.diff(o)[p]} entries for {np.diff(off)[p]} items")
    ctx = _Items(table, source, page_ids, off, np.repeat(np.arange(len(page_ids)), np.diff(off)))
    item_id = np.array(_flat(table.column("item_id")).to_pylist(), dtype=object)
    modality = ctx.modalities(item_id)
    features, feature_dims = ctx.features(item_id, modality, feature_dims)
    relevance, score, click, dwell = ctx.labels(item_id)
    pages = Pages(
        page_id=page_ids,
        query_id=np.array(table.column("query_id").to_pylist(), dtype=object),
        query_features=ctx.per_page_matrix("query_features"),
        user_features=ctx.per_page_matrix("user_features"),
        offsets=off,
        item_id=item_id,
        modality=modality,
        features=features,
        feature_dims={m: int(d) for m, d in feature_dims.items()},
        single_modal_score=score,
        relevance=relevance,
        click=click,
        dwell=dwell,
    )
    _check_unique_items(pages, source)
    return pages


@dataclass
class _Items:
    """The item columns of one page table being read; each method reads and validates one part."""

    table: pa.Table
    source: str
    page_ids: np.ndarray
    off: np.ndarray  # item offsets per page
    page_of: np.ndarray  # page index of each item

    def fail(self, item: int, column: str, why: str) -> PageValidationError:
        return _fail(self.source, self.page_ids[self.page_of[item]], column, why)

    def modalities(self, item_id: np.ndarray) -> np.ndarray:
        names = _flat(self.table.column("modality")).to_pylist()
        unknown = [i for i, m in enumerate(names) if m not in MODALITY_ID]
        if unknown:
            i = unknown[0]
            raise self.fail(i, "modality", f"unknown modality {names[i]!r}; expected {MODALITIES}")
        return np.array([MODALITY_ID[m] for m in names], np.int8)

    def features(
        self, item_id: np.ndarray, modality: np.ndarray, feature_dims: dict[str, int] | None
    ) -> tuple[np.ndarray, dict[str, int]]:
        feats_col = _flat(self.table.column("features"))
        inner_len = np.diff(np.asarray(feats_col.offsets, np.int64))
        if feature_dims is None:  # infer: every item of a modality must then agree
            feature_dims = {}
            for mid, m in enumerate(MODALITIES):
                lens = np.unique(inner_len[modality == mid])
                feature_dims[m] = int(lens[0]) if len(lens) else 0
        expected = np.array([feature_dims.get(m, 0) for m in MODALITIES], np.int64)[modality]
        bad = np.nonzero(inner_len != expected)[0]
        if len(bad):
            i = bad[0]
            name = MODALITIES[modality[i]]
            raise self.fail(
                i,
                "features",
                f"item {item_id[i]!r} ({name}) has {inner_len[i]} features, expected {expected[i]}",
            )
        flat = np.asarray(feats_col.flatten().to_numpy(zero_copy_only=False), np.float32)
        if not np.isfinite(flat).all():
            pos = np.nonzero(~np.isfinite(flat))[0][0]
            i = int(np.searchsorted(np.cumsum(inner_len), pos, side="right"))
            raise self.fail(i, "features", f"item {item_id[i]!r} has NaN or inf")
        dmax = max(feature_dims.values()) if feature_dims else 0
        features = np.zeros((len(item_id), dmax), np.float32)
        features[np.arange(dmax)[None, :] < inner_len[:, None]] = flat
        return features, feature_dims

    def per_page_matrix(self, name: str) -> np.ndarray:
        col = self.table.column(name)
        o = _offsets(col)
        lens = np.unique(np.diff(o))
        if len(lens) > 1:
            p = int(np.argmax(np.diff(o) != np.diff(o)[0]))
            raise _fail(
                self.source, self.page_ids[p], name, f"length {np.diff(o)[p]} differs from {np.diff(o)[0]}"
            )
        vals = np.asarray(_flat(col).to_numpy(zero_copy_only=False), np.float32)
        if not np.isfinite(vals).all():
            p = int(np.nonzero(~np.isfinite(vals))[0][0] // max(int(lens[0]), 1))
            raise _fail(self.source, self.page_ids[p], name, "has NaN or inf")
        return vals.reshape(len(self.page_ids), int(lens[0]) if len(lens) else 0)

    def optional(self, name: str, dtype, null) -> np.ndarray:
        n_items = int(self.off[-1])
        if name not in self.table.column_names:
            return np.full(n_items, null, dtype)
        col = self.table.column(name)
        if not col.null_count:
            return _fill(_flat(col), dtype, null)
        # a null list = unknown for every item of that page
        arr = col.combine_chunks()
        sizes = np.diff(self.off)
        out = np.full(n_items, null, dtype)
        o = _offsets(arr)
        vals = arr.flatten()
        pos = 0
        for p in range(len(self.page_ids)):
            if arr[p].is_valid:
                out[pos : pos + sizes[p]] = _fill(vals.slice(o[p], o[p + 1] - o[p]), dtype, null)
            pos += sizes[p]
        return out

    def labels(self, item_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Relevance, single-modal score, click and dwell, each checked for its valid range."""
        relevance = self.optional("relevance", np.int8, -1)
        bad = np.nonzero((relevance != -1) & ((relevance < 0) | (relevance > MAX_GRADE)))[0]
        if len(bad):
            i = bad[0]
            raise self.fail(i, "relevance", f"item {item_id[i]!r} has grade {relevance[i]}, not in 0-4")
        score = self.optional("single_modal_score", np.float32, np.nan)
        if np.isinf(score).any():
            i = int(np.nonzero(np.isinf(score))[0][0])
            raise self.fail(i, "single_modal_score", f"item {item_id[i]!r} is inf")
        click = self.optional("click", np.int8, -1)
        dwell = self.optional("dwell", np.float32, np.nan)
        if np.isinf(dwell).any() or (dwell < 0).any():
            i = int(np.nonzero(np.isinf(dwell) | (dwell < 0))[0][0])
            raise self.fail(i, "dwell", f"item {item_id[i]!r} has dwell {dwell[i]}")
        return relevance, score, click, dwell


def _fill(arr: pa.Array, dtype, null) -> np.ndarray:
    if pa.types.is_boolean(arr.type):
        arr = pa.compute.cast(arr, pa.int8())
    return np.asarray(arr.fill_null(null).to_numpy(zero_copy_only=False), dtype)


def _check_unique_items(pages: Pages, source: str) -> None:
    # (page, item code) integer keys: a string key with a NUL separator loses the separator in numpy
    # (trailing NULs are padding), which made page 1 item "1a" collide with page 11 item "a".
    if pages.n_items == 0:
        return
    _, code = np.unique(pages.item_id.astype(str), return_inverse=True)
    keys = pages.page_of_item * (int(code.max()) + 1) + code.astype(np.int64)
    uniq, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        i = int(np.nonzero(keys == uniq[np.argmax(counts > 1)])[0][0])
        page = pages.page_id[pages.page_of_item[i]]
        raise _fail(source, page, "item_id", f"duplicate item id {pages.item_id[i]!r}")


def validate(pages: Pages, source: str = "<pages>") -> Pages:
    """Validate in-memory pages by a round trip through the Arrow contract."""
    return from_arrow(to_arrow(pages), source)


# --------------------------------------------------------------------------- Parquet
def write_pages(pages: Pages, path: str | Path, row_group_pages: int = 2048) -> Path:
    """Write pages to one Parquet file, atomically (temp file, then rename)."""
    return write_parquet_atomic(to_arrow(pages), path, row_group_size=row_group_pages, compression="zstd")


def read_pages(path: str | Path) -> Pages:
    """Read and validate a whole Parquet file (or a folder of them) of pages."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no pages at {path}")
    table = ds.dataset(path, format="parquet").to_table()
    if path.is_file():
        table = table.replace_schema_metadata(pq.read_schema(path).metadata)
    else:
        first = sorted(path.glob("**/*.parquet"))
        if first:
            table = table.replace_schema_metadata(pq.read_schema(first[0]).metadata)
    return from_arrow(table, str(path))


def iter_pages(path: str | Path, batch_pages: int = 1024) -> Iterator[Pages]:
    """Stream validated page batches from data larger than memory (pyarrow.dataset scanner)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("**/*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet pages under {path}")
    dims = json.loads((pq.read_schema(files[0]).metadata or {}).get(FEATURE_DIMS_KEY, b"null"))
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    for batch in dataset.to_batches(batch_size=batch_pages):
        if batch.num_rows:
            yield from_arrow(pa.Table.from_batches([batch]), str(path), feature_dims=dims)


# --------------------------------------------------------------------------- torch batches
@dataclass
class PageBatch:
    """Padded torch tensors for a batch of pages: [B, N, ...] with `mask` True on real items."""

    features: torch.Tensor  # [B, N, Dmax] float32
    modality: torch.Tensor  # [B, N] int64 (0 on padding)
    mask: torch.Tensor  # [B, N] bool
    query: torch.Tensor  # [B, Dq]
    user: torch.Tensor  # [B, Du]
    single_modal_score: torch.Tensor  # [B, N] float32 (0 where unknown)
    has_score: torch.Tensor  # [B, N] bool
    relevance: torch.Tensor  # [B, N] int64, -1 = unknown or padding

    def to(self, device: str | torch.device) -> PageBatch:
        return PageBatch(**{k: v.to(device) for k, v in self.__dict__.items()})

    def __len__(self) -> int:
        return self.features.shape[0]


def collate(pages: Pages, n_max: int | None = None) -> PageBatch:
    """Pad a batch of pages to `n_max` slots (default: the longest page) with a boolean mask."""
    n = int(n_max if n_max is not None else (pages.sizes.max() if len(pages) else 0))
    score = pages.single_modal_score
    known = ~np.isnan(score)
    return PageBatch(
        features=torch.from_numpy(pad_items(pages, pages.features, n)),
        modality=torch.from_numpy(pad_items(pages, pages.modality.astype(np.int64), n)),
        mask=torch.from_numpy(pad_items(pages, np.ones(pages.n_items, bool), n, fill=False)),
        query=torch.from_numpy(pages.query_features.copy()),
        user=torch.from_numpy(pages.user_features.copy()),
        single_modal_score=torch.from_numpy(
            pad_items(pages, np.where(known, score, 0.0).astype(np.float32), n)
        ),
        has_score=torch.from_numpy(pad_items(pages, known, n, fill=False)),
        relevance=torch.from_numpy(pad_items(pages, pages.relevance.astype(np.int64), n, fill=-1)),
    )
