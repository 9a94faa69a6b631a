"""Shared plumbing for the real-data importers: source files, column checks, robust numeric
parsing, and a streaming, validating, atomic writer of the page contract."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from tqdm import tqdm

from envs.atomic_io import write_json_atomic
from envs.pages import MAX_GRADE, MODALITIES, Pages
from pretrain.importers.config import FeatureSettings
from pretrain.page import FEATURE_DIMS_KEY, PageValidationError, from_arrow, to_arrow


class SourceFormatError(ValueError):
    """A source file is missing, or lacks a required column, or holds an unparsable value."""


def config_files(src: Path, name: str, required: bool = True) -> list[Path]:
    """Parquet files of one dataset config: `src/name/**/*.parquet` (the Hugging Face layout,
    sorted so shard order = row order) or a single `src/name.parquet`."""
    folder, single = src / name, src / f"{name}.parquet"
    files = sorted(folder.glob("**/*.parquet")) if folder.is_dir() else []
    if not files and single.is_file():
        files = [single]
    if not files and required:
        raise SourceFormatError(
            f"{src}: no Parquet files for {name!r} (expected {folder}/*.parquet or {single})"
        )
    return files


def find_file(src: Path, filename: str, required: bool = True) -> Path | None:
    """`src/filename`, or the first match below `src` (datasets often ship in a subfolder)."""
    if (src / filename).is_file():
        return src / filename
    hits = sorted(src.glob(f"**/{filename}"))
    if hits:
        return hits[0]
    if required:
        raise SourceFormatError(f"{src}: required file {filename!r} not found")
    return None


def schema_of(files: Sequence[Path]) -> pa.Schema:
    return pq.read_schema(files[0])


def require_columns(files: Sequence[Path], columns: Sequence[str]) -> pa.Schema:
    """Every file must carry every required column; the error names the file and the column."""
    schema = None
    for f in files:
        schema = pq.read_schema(f)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise SourceFormatError(f"{f}: missing required column(s) {missing}")
    return schema


def require_struct_fields(file: Path, schema: pa.Schema, column: str, fields: Sequence[str]) -> None:
    """`column` must be a list of structs carrying `fields`."""
    t = schema.field(column).type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type):
        raise SourceFormatError(f"{file}: column {column!r} must be a list of structs, got {t}")
    names = [t.value_type.field(i).name for i in range(t.value_type.num_fields)]
    missing = [f for f in fields if f not in names]
    if missing:
        raise SourceFormatError(f"{file}: column {column!r} lacks struct field(s) {missing}")


def require_search_columns(
    files: Sequence[Path], columns: Sequence[str], detail_fields: Sequence[str]
) -> None:
    """A search log: every file carries `columns`, and `search_result_details_with_idx` (one entry per
    shown item) is a list of structs carrying `detail_fields`."""
    schema = require_columns(files, columns)
    require_struct_fields(files[0], schema, "search_result_details_with_idx", detail_fields)


def batches(files: Sequence[Path], columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Stream record batches over files in order (pyarrow.dataset; never the whole table)."""
    for f in files:
        for b in ds.dataset(str(f), format="parquet").to_batches(
            columns=list(columns), batch_size=batch_rows
        ):
            if b.num_rows:
                yield b


def count_rows(files: Sequence[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def limit_rows(batches: Iterable[pa.RecordBatch], limit: int | None) -> Iterator[pa.RecordBatch]:
    """The batches cut to at most `limit` rows in all (None: all of them)."""
    left = limit
    for b in batches:
        if left is not None:
            if left <= 0:
                return
            b = b.slice(0, left)
            left -= b.num_rows
        yield b


# --------------------------------------------------------------------------- numbers
_SPLIT = re.compile(r"[\s,;]+")


def _parse_numbers(v: object) -> list[float] | None:
    """A number, a string of one or more numbers ("0.5", "[1, 2]", "1 2"), or a list of numbers."""
    if v is None:
        return None
    if isinstance(v, bool | int | float):
        return [float(v)]
    if isinstance(v, str):
        body = v.strip().strip("[]()").strip()
        if not body:
            return None
        return [float(x) for x in _SPLIT.split(body) if x]
    if isinstance(v, list | tuple):
        return [float("nan") if x is None else float(x) for x in v]
    raise TypeError(type(v).__name__)


def numeric_matrix(
    values: pa.Array | pa.ChunkedArray, file: Path | str, column: str, width: int | None = None
):
    """(n, k) float64 from a numeric, string or list column; nulls -> NaN rows. Returns (matrix, k).

    Accepted per value: a number (int/float/bool), a string holding one or more numbers separated by
    commas/spaces/semicolons (optionally in brackets), or a list of numbers. All non-null values of a
    column must have the same length `k` (or `width` when given). Anything else raises
    SourceFormatError naming the file, column and row.
    """
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    n = len(arr)
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type):
        if pa.types.is_boolean(arr.type):
            arr = arr.cast(pa.int8())
        col = np.asarray(arr.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), np.float64)
        if width not in (None, 1):
            raise SourceFormatError(f"{file}: column {column!r} holds scalars, expected {width} values")
        return col.reshape(n, 1), 1
    if (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)) and (
        pa.types.is_integer(arr.type.value_type) or pa.types.is_floating(arr.type.value_type)
    ):  # fast path: a numeric list column (no per-row Python)
        lens = np.asarray(arr.value_lengths().to_numpy(zero_copy_only=False))
        valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
        k = width if width is not None else (int(lens[valid][0]) if valid.any() else 1)
        off = np.nonzero(valid & (lens != k))[0]
        if len(off):
            i = int(off[0])
            raise SourceFormatError(
                f"{file}: column {column!r}, row {i}: {int(lens[i])} values, expected {k}"
            )
        out = np.full((n, k), np.nan, np.float64)
        if valid.any():
            flat = arr.filter(pa.array(valid)).flatten().cast(pa.float64()).fill_null(np.nan)
            out[valid] = np.asarray(flat.to_numpy(zero_copy_only=False), np.float64).reshape(-1, k)
        return out, k
    rows = arr.to_pylist()
    parsed: list[list[float] | None] = []
    for i, v in enumerate(rows):
        try:
            parsed.append(_parse_numbers(v))
        except (TypeError, ValueError) as e:
            raise SourceFormatError(
                f"{file}: column {column!r}, row {i}: cannot parse {v!r} as numbers ({e})"
            ) from None
    k = width
    if k is None:
        k = next((len(p) for p in parsed if p is not None), 1)
    out = np.full((n, k), np.nan, np.float64)
    for i, p in enumerate(parsed):
        if p is None:
            continue
        if len(p) != k:
            raise SourceFormatError(f"{file}: column {column!r}, row {i}: {len(p)} values, expected {k}")
        out[i] = p
    return out, k


def scalar_column(arr: pa.Array, source: str, name: str) -> np.ndarray:
    """(n,) float64 of a column holding one number per row (see `numeric_matrix`)."""
    return numeric_matrix(arr, source, name, width=1)[0][:, 0]


def item_index(
    flat: pa.StructArray, column: str, source: str, page_ids: np.ndarray, page_of: np.ndarray
) -> np.ndarray:
    """(n,) int64 item ids from `column` of the flattened search details; a null raises naming its page."""
    ids = flat.field(column)
    if ids.null_count:
        i = int(np.nonzero(np.asarray(ids.is_null().to_numpy(zero_copy_only=False)))[0][0])
        raise PageValidationError(f"{source}: page {page_ids[page_of[i]]!r}, field 'item_id': null {column}")
    return np.asarray(ids.cast(pa.int64()).to_numpy(zero_copy_only=False), np.int64)


def log1p_count(x: np.ndarray) -> np.ndarray:
    """Heavy-tailed non-negative counts -> log1p; negatives stay negative-signed (never silently NaN)."""
    return np.sign(x) * np.log1p(np.abs(x))


# --------------------------------------------------------------------------- the writer
class PageFileWriter:
    """Writes validated page batches to one Parquet file in the page contract, atomically.

    Each batch goes through the contract (`to_arrow` then `from_arrow` with the source named), so a
    malformed value raises PageValidationError naming the source file, page and field before anything
    reaches the output; the file appears only once complete (temp file, then rename).
    """

    def __init__(self, path: Path, feature_dims: dict[str, int]) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.feature_dims = {m: int(feature_dims.get(m, 0)) for m in MODALITIES}
        self.writer: pq.ParquetWriter | None = None
        self.pages = 0
        self.items = {m: 0 for m in MODALITIES}
        self.grades = {m: [0] * (MAX_GRADE + 1) for m in MODALITIES}
        self.clicks = 0

    def write(self, pages: Pages, source: str) -> None:
        if len(pages) == 0:
            return
        pages.feature_dims = dict(self.feature_dims)
        table = to_arrow(pages)
        from_arrow(table, source, feature_dims=self.feature_dims)  # raises PageValidationError
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, table.schema, compression="zstd")
        self.writer.write_table(table)
        self.pages += len(pages)
        for mid, m in enumerate(MODALITIES):
            sel = pages.modality == mid
            self.items[m] += int(sel.sum())
            rel = pages.relevance[sel]
            for g, c in enumerate(np.bincount(rel[rel >= 0], minlength=MAX_GRADE + 1)):
                self.grades[m][g] += int(c)
        self.clicks += int((pages.click > 0).sum())

    def close(self) -> dict | None:
        if self.writer is None:
            return None
        self.writer.close()
        self.tmp.replace(self.path)
        return {
            "file": self.path.name,
            "pages": self.pages,
            "items": {m: n for m, n in self.items.items() if n},
            "grades": {m: g for m, g in self.grades.items() if self.items[m]},
            "clicks": self.clicks,
        }

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


def write_page_file(
    path: Path,
    feature_dims: dict[str, int],
    batches: Iterable[pa.RecordBatch],
    build: Callable[[pa.RecordBatch], Pages | None],
    source: str,
    progress: tuple[str, int] | None = None,
) -> dict | None:
    """The pages `build` makes of each batch (None: none), written to one page file by a
    PageFileWriter (nothing is left behind on an error); `progress`: a bar's (description, total
    rows). Returns the file's summary (None: no page written)."""
    writer = PageFileWriter(path, feature_dims)
    bar = None
    if progress is not None:
        bar = tqdm(total=progress[1], desc=progress[0], unit="page", leave=False, disable=None)
    try:
        for b in batches:
            if bar is not None:
                bar.update(b.num_rows)
            pages = build(b)
            if pages is not None:
                writer.write(pages, source)
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    return writer.close()


def kept_pages(
    keep: np.ndarray,
    page_ids: np.ndarray,
    query_ids: Sequence[str | None],
    sizes: np.ndarray,
    query_features: np.ndarray,
    user_features: np.ndarray,
    **items: np.ndarray,
) -> Pages:
    """The pages of a batch that are kept: `keep`, `page_ids`, `query_ids` (None: the page's own id),
    `sizes` (items per page) and the features are per page of the batch; `items` (the Pages item
    fields) hold the kept pages' items only, in page order."""
    kept = np.nonzero(keep)[0]
    return Pages(
        page_id=page_ids[kept],
        query_id=np.array(
            [query_ids[p] if query_ids[p] is not None else page_ids[p] for p in kept], dtype=object
        ),
        query_features=query_features[kept],
        user_features=user_features[kept],
        offsets=np.concatenate([[0], np.cumsum(sizes[kept])]),
        **items,
    )


def write_summary(out: Path, summary: dict) -> dict:
    """DIR/import.json: what was imported, how features and labels were made, counts per split."""
    write_json_atomic(Path(out) / "import.json", summary)
    return summary


class Importer:
    """The frame both readers share: `run(out)` creates the output folder, has `write` (the reader's)
    write the page files, then writes import.json: format, source, config, the files written, the
    feature widths, the reader's own entries, its counters (`stats`, in `counters` order), seconds."""

    format = ""

    def __init__(self, src: str | Path, cfg: FeatureSettings, counters: Sequence[str]) -> None:
        self.src, self.cfg = Path(src), cfg
        self.stats: dict[str, int] = dict.fromkeys(counters, 0)

    @property
    def feature_dims(self) -> dict[str, int]:
        raise NotImplementedError

    def write(self, out: Path) -> tuple[dict[str, dict | None], dict]:
        """Write the page files under `out`: ({output: its file summary or None}, the summary entries)."""
        raise NotImplementedError

    def run(self, out: str | Path) -> dict:
        t0 = time.perf_counter()
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        outputs, details = self.write(out)
        summary = {
            "format": self.format,
            "source": str(self.src),
            "config": asdict(self.cfg),
            "outputs": {k: v for k, v in outputs.items() if v},
            "feature_dims": self.feature_dims,
            **details,
            **self.stats,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        return write_summary(out, summary)


def check_finite(
    values: np.ndarray,
    names: Sequence[str],
    source: str,
    page_ids: np.ndarray,
    page_of: np.ndarray,
    item_ids: np.ndarray,
    field: str,
    hint: str = "",
) -> None:
    """Raise PageValidationError naming page, field and the source column of the first non-finite value."""
    bad = ~np.isfinite(values)
    if bad.any():
        i, j = (int(x[0]) for x in np.nonzero(bad))
        raise PageValidationError(
            f"{source}: page {page_ids[page_of[i]]!r}, field {field!r}: item {item_ids[i]!r} has "
            f"{values[i, j]} in {names[j]!r}{hint}"
        )


__all__ = [
    "FEATURE_DIMS_KEY",
    "Importer",
    "PageFileWriter",
    "SourceFormatError",
    "batches",
    "check_finite",
    "config_files",
    "count_rows",
    "find_file",
    "item_index",
    "kept_pages",
    "limit_rows",
    "log1p_count",
    "numeric_matrix",
    "require_columns",
    "require_search_columns",
    "require_struct_fields",
    "scalar_column",
    "write_page_file",
    "write_summary",
]
