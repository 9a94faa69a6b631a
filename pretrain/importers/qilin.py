"""Qilin (Xiaohongshu search logs, arXiv 2503.00501) -> the page contract.

Source layout (as published on Hugging Face, one folder of Parquet shards per config):
  SRC/search_train/*.parquet, SRC/search_test/*.parquet   search requests (at least one of the two)
  SRC/notes/*.parquet                                     notes; row index (shards in name order) = note_idx
  SRC/user_feat/*.parquet                                 users; row index = user_idx
  SRC/dqa/*.parquet                                       optional: direct answers (the `answer` modality)
A single `SRC/<config>.parquet` is accepted too, and an explicit `note_idx` / `user_idx` column, when
present, overrides the row index.

Output: DIR/train.parquet, DIR/test.parquet (one per search config present) and DIR/dqa.parquet (DQA
requests not found in the search logs), plus DIR/import.json.

Pages: one per search request (`page_id` = "{split}-{search_idx}", `query_id` = "session{session_idx}",
so a session's reformulations share a query_id as in the synthetic world). Items, in shown order: the
DQA answer first (when one was shown for that request, i.e. `is_like_clk` is not null), then the notes
by `position`. Modality: note_type 1 -> image, 2 -> video; DQA answer -> answer.

Modality: `note_types` (`--note-types 1=image,2=video`, the published codes, by default) maps a
note_type to a modality; `smar export --format qilin` writes a world's documents and answers as note
types 3 and 4, imported with `--note-types 1=image,2=video,3=doc,4=answer` (an answer then comes from
the notes, so DQA files are refused). Single-modal (upstream) score: a shown note's score in the
request's `dpr_results` list of [note_idx, score] pairs (`--upstream`; NaN where the note is not listed,
and for DQA answers).

Labels (SMAR's Qilin ordering: clicked items by dwell first, then clicked without dwell, then
unclicked), as grades: unclicked 0; clicked without a positive dwell 1; clicked with dwell t seconds
2 (t < cut1), 3 (cut1 <= t < cut2), 4 (t >= cut2), default cuts 30 s and 120 s (30 s is the usual
satisfied-click threshold). The answer has no dwell: any answer interaction (like / onebox trace /
content / experience click) is a click without dwell (grade 1). Raw `click` and `dwell`
(`page_time`; NaN or -1 = absent) are kept.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from envs.pages import MODALITY_ID, Pages
from pretrain.importers.common import (
    PageFileWriter,
    SourceFormatError,
    batches,
    check_finite,
    config_files,
    count_rows,
    log1p_count,
    numeric_matrix,
    require_columns,
    require_struct_fields,
    schema_of,
    write_summary,
)
from pretrain.importers.text import categorical_onehot, hash_texts, normalise_text
from pretrain.page import PageValidationError

SEARCH_COLUMNS = (
    "query",
    "query_from_type",
    "recent_clicked_note_idxs",
    "search_idx",
    "session_idx",
    "user_idx",
    "search_result_details_with_idx",
)
DETAIL_FIELDS = ("note_idx", "position", "click", "page_time")
DQA_COLUMNS = (
    *SEARCH_COLUMNS,
    "is_like_clk",
    "is_onebox_trace_clk",
    "is_content_clk",
    "is_experience_clk",
    "ref_note_idx_list",
)
ANSWER_CLICKS = ("is_like_clk", "is_onebox_trace_clk", "is_content_clk", "is_experience_clk")
NOTE_COUNTS = (
    "imp_num",
    "click_num",
    "like_num",
    "collect_num",
    "comment_num",
    "share_num",
    "view_time",
    "valid_view_times",
    "full_view_times",
)
NOTE_COLUMNS = (
    "note_title",
    "note_content",
    "note_type",
    "image_num",
    "content_length",
    "video_duration",
    "video_height",
    "video_width",
    "commercial_flag",
    *NOTE_COUNTS,
)
USER_CATEGORICAL = ("gender", "platform", "age")
USER_REQUIRED = (*USER_CATEGORICAL, "fans_num", "follows_num")
NOTE_TYPE_MODALITY = {1: "image", 2: "video"}  # the published note types
UPSTREAM_COLUMNS = ("dpr_results", "bm25_results")  # retrieval lists of [note_idx, score] pairs
SPLITS = (("search_train", "train"), ("search_test", "test"))


@dataclass(frozen=True)
class QilinConfig:
    """How Qilin fields become features and labels."""

    text_dim: int = 32  # hashed note content (titles use text_dim // 2)
    query_text_dim: int = 32
    cat_buckets: int = 8  # hashed one-hot width for categorical codes
    dwell_cuts: tuple[float, float] = (30.0, 120.0)  # seconds: grade 2 | 3 | 4
    batch_rows: int = 1024
    impute_missing: bool = False  # fill null/NaN numeric source values with 0 instead of failing
    limit: int | None = None  # at most this many requests per split (trial runs)
    max_chars: int = 512
    # note_type -> modality. The release has 1 (image-text) and 2 (video); other codes (written by
    # `smar export --format qilin` for a world's documents and answers) need an explicit entry.
    note_types: dict[int, str] = field(default_factory=lambda: dict(NOTE_TYPE_MODALITY))
    # Where single_modal_score comes from: the score of the note in this retrieval list of the
    # request ("auto": dpr_results when the search files have it), or "none" (all unknown).
    upstream: str = "auto"

    def __post_init__(self) -> None:
        bad = [m for m in self.note_types.values() if m not in MODALITY_ID]
        if bad:
            raise ValueError(f"note_types targets must be modalities {tuple(MODALITY_ID)}, got {bad}")
        if self.upstream not in ("auto", "none", *UPSTREAM_COLUMNS):
            raise ValueError(
                f"upstream must be auto, none or one of {UPSTREAM_COLUMNS}, got {self.upstream!r}"
            )

    @property
    def title_dim(self) -> int:
        return max(self.text_dim // 2, 1)


def dwell_grades(click: np.ndarray, dwell: np.ndarray, cuts: tuple[float, float]) -> np.ndarray:
    """SMAR's Qilin ordering as grades 0-4 (see the module docstring)."""
    has_dwell = np.nan_to_num(dwell, nan=0.0) > 0
    g = np.where(click > 0, 1, 0)
    g = np.where((click > 0) & has_dwell, 2 + np.digitize(np.nan_to_num(dwell), cuts), g)
    return g.astype(np.int8)


def _index_of(table_files: list[Path], idx_column: str, n_rows: int) -> np.ndarray | None:
    """Explicit id column values (if the config has one) in row order, else None (row index = id)."""
    if idx_column not in schema_of(table_files).names:
        return None
    ids = np.concatenate(
        [
            np.asarray(b.column(0).to_numpy(zero_copy_only=False), np.int64)
            for b in batches(table_files, [idx_column], 65536)
        ]
    )
    if len(ids) != n_rows:
        raise SourceFormatError(
            f"{table_files[0].parent}: column {idx_column!r} has {len(ids)} values for {n_rows} rows"
        )
    return ids


@dataclass
class _Notes:
    """Per-note feature blocks for the notes the logs reference (row-aligned, looked up by `row_of`)."""

    row_of: np.ndarray  # note_idx -> row, -1 = not loaded
    note_type: np.ndarray
    common: np.ndarray  # (n, len(COMMON_NAMES))
    image: np.ndarray
    video: np.ndarray
    title: np.ndarray
    content: np.ndarray
    imputed: int = 0


COMMON_NAMES = (
    *(f"log1p_{c}" for c in NOTE_COUNTS),
    "ctr",
    "like_per_click",
    "collect_per_click",
    "commercial_flag",
    "log1p_title_chars",
    "log1p_content_length",
)
IMAGE_NAMES = ("log1p_image_num",)
VIDEO_NAMES = (
    "log1p_video_duration",
    "log1p_video_height",
    "log1p_video_width",
    "video_aspect",
    "full_view_rate",
)
SIM_NAMES = ("query_title_sim", "query_content_sim")
ANSWER_NAMES = (
    "log1p_ref_notes",
    "ref_on_page_frac",
    "ref_video_frac",
    "ref_mean_log1p_click_num",
    "ref_mean_log1p_like_num",
    "ref_mean_log1p_collect_num",
    "ref_mean_ctr",
    "query_ref_title_sim",
)


class QilinImporter:
    """Streams Qilin search logs into page files. See the module docstring for the mapping."""

    def __init__(self, src: str | Path, cfg: QilinConfig | None = None) -> None:
        self.src = Path(src)
        self.cfg = cfg or QilinConfig()
        if not self.src.is_dir():
            raise SourceFormatError(f"{self.src}: not a folder (expected the Qilin dataset folders)")
        self.search = {split: config_files(self.src, name, required=False) for name, split in SPLITS}
        self.search = {s: f for s, f in self.search.items() if f}
        if not self.search:
            raise SourceFormatError(f"{self.src}: no search_train or search_test Parquet files")
        self.notes_files = config_files(self.src, "notes")
        self.user_files = config_files(self.src, "user_feat")
        self.dqa_files = config_files(self.src, "dqa", required=False)
        for files in self.search.values():
            schema = require_columns(files, SEARCH_COLUMNS)
            require_struct_fields(files[0], schema, "search_result_details_with_idx", DETAIL_FIELDS)
        if self.dqa_files:
            schema = require_columns(self.dqa_files, DQA_COLUMNS)
            require_struct_fields(self.dqa_files[0], schema, "search_result_details_with_idx", DETAIL_FIELDS)
        require_columns(self.notes_files, NOTE_COLUMNS)
        self.user_schema = require_columns(self.user_files, USER_REQUIRED)
        if self.dqa_files and "answer" in self.cfg.note_types.values():
            raise SourceFormatError(
                f"{self.dqa_files[0].parent}: DQA answers are present and note_types also maps a note type "
                "to 'answer'; an answer comes from one of the two"
            )
        self.upstream = self._upstream_column()
        self.stats: dict = {
            "skipped_empty_pages": 0,
            "unknown_users": 0,
            "answers_attached": 0,
            "imputed_values": 0,
        }

    def _upstream_column(self) -> str | None:
        """The retrieval list single_modal_score is read from (None: no upstream scores)."""
        want = self.cfg.upstream
        if want == "none":
            return None
        for files in self.search.values():
            names = schema_of(files).names
            if want == "auto":
                if "dpr_results" not in names:
                    return None
            elif want not in names:
                raise SourceFormatError(f"{files[0]}: missing column {want!r} (--upstream {want})")
        return "dpr_results" if want == "auto" else want

    # ------------------------------------------------------------------ feature layout
    def _extra_names(self, m: str) -> tuple[str, ...]:
        return {"image": IMAGE_NAMES, "video": VIDEO_NAMES}.get(m, ())

    @property
    def feature_names(self) -> dict[str, list[str]]:
        c = self.cfg
        title = [f"title_hash{i}" for i in range(c.title_dim)]
        content = [f"content_hash{i}" for i in range(c.text_dim)]
        base = [*COMMON_NAMES, *SIM_NAMES]
        names = {
            "doc": [],
            "image": [],
            "video": [],
            "answer": [*ANSWER_NAMES, *(f"ref_title_hash{i}" for i in range(c.title_dim))],
        }
        for m in ("image", "video", *c.note_types.values()):
            names[m] = [*base, *self._extra_names(m), *title, *content]
        return names

    @property
    def feature_dims(self) -> dict[str, int]:
        return {m: len(v) for m, v in self.feature_names.items()}

    # ------------------------------------------------------------------ pass 1: which notes are needed
    def _limited(self, files: list[Path], columns: list[str]):
        left = self.cfg.limit
        for b in batches(files, columns, self.cfg.batch_rows):
            if left is not None:
                if left <= 0:
                    return
                b = b.slice(0, left)
                left -= b.num_rows
            yield b

    def _needed_notes(self) -> np.ndarray:
        parts = []
        sources = [*self.search.values()] + ([self.dqa_files] if self.dqa_files else [])
        for files in sources:
            for b in self._limited(files, ["search_result_details_with_idx"]):
                flat = b.column(0).flatten()
                parts.append(
                    np.asarray(flat.field("note_idx").drop_null().to_numpy(zero_copy_only=False), np.int64)
                )
        if self.dqa_files:
            for b in self._limited(self.dqa_files, ["ref_note_idx_list"]):
                parts.append(
                    np.asarray(b.column(0).flatten().drop_null().to_numpy(zero_copy_only=False), np.int64)
                )
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    # ------------------------------------------------------------------ notes
    def _load_notes(self, needed: np.ndarray) -> _Notes:
        cfg = self.cfg
        n_rows = count_rows(self.notes_files)
        explicit = _index_of(self.notes_files, "note_idx", n_rows)
        size = (
            int(
                max(
                    needed.max() if len(needed) else 0,
                    explicit.max() if explicit is not None and len(explicit) else n_rows,
                )
            )
            + 1
        )
        row_of = np.full(size, -1, np.int64)
        blocks: dict[str, list[np.ndarray]] = {
            k: [] for k in ("type", "common", "image", "video", "title", "content")
        }
        want = np.zeros(size, bool)
        want[needed] = True
        start, kept, imputed = 0, 0, 0
        cols = list(NOTE_COLUMNS)
        bar = tqdm(total=n_rows, desc="notes", unit="note", leave=False, disable=None)
        for b in batches(self.notes_files, cols, 8192):
            ids = (
                explicit[start : start + b.num_rows]
                if explicit is not None
                else np.arange(start, start + b.num_rows)
            )
            start += b.num_rows
            bar.update(b.num_rows)
            sel = np.nonzero(want[ids])[0]
            if not len(sel):
                continue
            b = b.take(pa.array(sel))
            file = self.notes_files[0].parent

            def num(name: str, b=b, file=file) -> np.ndarray:
                return numeric_matrix(b.column(name), file, name, width=1)[0][:, 0]

            counts = {c: num(c) for c in NOTE_COUNTS}
            titles = b.column("note_title").to_pylist()
            contents = b.column("note_content").to_pylist()
            title_chars = np.array([len(normalise_text(t, 10**9)) for t in titles], np.float64)
            common = np.column_stack(
                [log1p_count(counts[c]) for c in NOTE_COUNTS]
                + [
                    counts["click_num"] / np.maximum(counts["imp_num"], 1.0),
                    counts["like_num"] / np.maximum(counts["click_num"], 1.0),
                    counts["collect_num"] / np.maximum(counts["click_num"], 1.0),
                    num("commercial_flag"),
                    np.log1p(title_chars),
                    log1p_count(num("content_length")),
                ]
            )
            h, w = num("video_height"), num("video_width")
            video = np.column_stack(
                [
                    log1p_count(num("video_duration")),
                    log1p_count(h),
                    log1p_count(w),
                    h / np.maximum(w, 1.0),
                    counts["full_view_times"] / np.maximum(counts["valid_view_times"], 1.0),
                ]
            )
            image = log1p_count(num("image_num"))[:, None]
            ntype = num("note_type")
            if cfg.impute_missing:
                for arr in (common, video, image):
                    bad = ~np.isfinite(arr)
                    imputed += int(bad.sum())
                    arr[bad] = 0.0
            blocks["type"].append(np.nan_to_num(ntype, nan=-1).astype(np.int64))
            blocks["common"].append(common)
            blocks["image"].append(image)
            blocks["video"].append(video)
            blocks["title"].append(hash_texts(titles, cfg.title_dim, max_chars=cfg.max_chars))
            blocks["content"].append(hash_texts(contents, cfg.text_dim, max_chars=cfg.max_chars))
            row_of[ids[sel]] = kept + np.arange(len(sel))
            kept += len(sel)
        bar.close()
        cat = {k: (np.concatenate(v) if v else None) for k, v in blocks.items()}
        c = self.cfg
        return _Notes(
            row_of=row_of,
            note_type=cat["type"] if kept else np.zeros(0, np.int64),
            common=cat["common"] if kept else np.zeros((0, len(COMMON_NAMES))),
            image=cat["image"] if kept else np.zeros((0, 1)),
            video=cat["video"] if kept else np.zeros((0, len(VIDEO_NAMES))),
            title=cat["title"] if kept else np.zeros((0, c.title_dim), np.float32),
            content=cat["content"] if kept else np.zeros((0, c.text_dim), np.float32),
            imputed=imputed,
        )

    # ------------------------------------------------------------------ users
    def _load_users(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(row_of user_idx, feature matrix (with NaN where null), feature names)."""
        cfg = self.cfg
        names_in = self.user_schema.names
        dense = sorted(
            (c for c in names_in if re.fullmatch(r"dense_feat\d+", c)),
            key=lambda c: int(c[len("dense_feat") :]),
        )
        cats = [*USER_CATEGORICAL] + (["location"] if "location" in names_in else [])
        table = pa.Table.from_batches(
            list(batches(self.user_files, [*cats, "fans_num", "follows_num", *dense], 65536))
        )
        file = self.user_files[0].parent
        parts, names = [], []
        for c in cats:
            parts.append(categorical_onehot(table.column(c).to_pylist(), cfg.cat_buckets))
            names += [f"{c}_bucket{i}" for i in range(cfg.cat_buckets)]
        for c in ("fans_num", "follows_num", *dense):
            v = numeric_matrix(table.column(c), file, c, width=1)[0]
            parts.append(log1p_count(v) if c in ("fans_num", "follows_num") else v)
            names.append(f"log1p_{c}" if c in ("fans_num", "follows_num") else c)
        parts.append(np.ones((table.num_rows, 1)))
        names.append("user_known")
        feats = np.concatenate(parts, axis=1)
        if cfg.impute_missing:
            bad = ~np.isfinite(feats)
            self.stats["imputed_values"] += int(bad.sum())
            feats[bad] = 0.0
        explicit = _index_of(self.user_files, "user_idx", table.num_rows)
        ids = explicit if explicit is not None else np.arange(table.num_rows)
        row_of = np.full(int(ids.max()) + 1 if len(ids) else 1, -1, np.int64)
        row_of[ids] = np.arange(len(ids))
        return row_of, feats, names

    # ------------------------------------------------------------------ answers
    def _load_answers(self, notes: _Notes) -> dict[int, tuple[np.ndarray, int]]:
        """search_idx -> (rows of referenced notes, clicked 0/1) for requests that showed an answer."""
        out: dict[int, tuple[np.ndarray, int]] = {}
        if not self.dqa_files:
            return out
        cols = ["search_idx", "ref_note_idx_list", *ANSWER_CLICKS]
        for b in self._limited(self.dqa_files, cols):
            sidx = b.column("search_idx").to_pylist()
            refs = b.column("ref_note_idx_list").to_pylist()
            flags = {c: b.column(c).to_pylist() for c in ANSWER_CLICKS}
            for i, s in enumerate(sidx):
                if flags["is_like_clk"][i] is None:  # no answer was shown
                    continue
                ref = np.asarray([r for r in (refs[i] or []) if r is not None], np.int64)
                rows = self._note_rows(
                    ref, f"{self.dqa_files[0].parent}: search {s}, column 'ref_note_idx_list'", notes
                )
                clicked = any((flags[c][i] or 0) > 0 for c in ANSWER_CLICKS)  # NaN > 0 is False
                out[int(s)] = (rows, int(clicked))
        return out

    def _upstream_scores(
        self, b: pa.RecordBatch, source: str, page_ids: np.ndarray, page_of: np.ndarray, note_idx: np.ndarray
    ) -> np.ndarray:
        """(len(note_idx),) score of each shown note in its request's upstream retrieval list, NaN if absent."""
        out = np.full(len(note_idx), np.nan)
        col_name = self.upstream
        if col_name is None or col_name not in b.schema.names or not len(note_idx):
            return out
        col = b.column(col_name)
        lens = np.asarray(col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), np.int64)
        pairs = col.flatten()
        plen = np.asarray(pairs.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), np.int64)
        ppage = np.repeat(np.arange(b.num_rows), lens)
        if (plen != 2).any():
            i = int(np.nonzero(plen != 2)[0][0])
            raise SourceFormatError(
                f"{source}: page {page_ids[ppage[i]]!r}, column {col_name!r}: an entry of length {plen[i]}, "
                "expected a [note_idx, score] pair"
            )
        vals = numeric_matrix(pairs.flatten(), source, col_name, width=1)[0][:, 0].reshape(-1, 2)
        bad = ~np.isfinite(vals).all(axis=1) | (vals[:, 0] != np.round(vals[:, 0]))
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise SourceFormatError(
                f"{source}: page {page_ids[ppage[i]]!r}, column {col_name!r}: pair {vals[i].tolist()} is not "
                "[integer note_idx, finite score]"
            )
        span = int(max(note_idx.max(), vals[:, 0].max() if len(vals) else 0)) + 1
        keys = ppage * span + vals[:, 0].astype(np.int64)
        uniq, first = np.unique(keys, return_index=True)  # a note listed twice: its first score
        want = page_of * span + note_idx
        pos = np.minimum(np.searchsorted(uniq, want), max(len(uniq) - 1, 0))
        hit = (uniq[pos] == want) if len(uniq) else np.zeros(len(want), bool)
        out[hit] = vals[first[pos[hit]], 1]
        return out

    @staticmethod
    def _note_rows(note_idx: np.ndarray, where: str, notes: _Notes) -> np.ndarray:
        inside = (note_idx >= 0) & (note_idx < len(notes.row_of))
        rows = np.full(len(note_idx), -1, np.int64)
        rows[inside] = notes.row_of[note_idx[inside]]
        if (rows < 0).any():
            raise SourceFormatError(
                f"{where}: note_idx {int(note_idx[rows < 0][0])} is not in the notes table"
            )
        return rows

    # ------------------------------------------------------------------ pages
    def _pages(
        self,
        b: pa.RecordBatch,
        split: str,
        source: str,
        notes: _Notes,
        users: tuple[np.ndarray, np.ndarray, list[str]],
        answers: dict[int, tuple[np.ndarray, int]],
    ) -> Pages:
        cfg = self.cfg
        details = b.column("search_result_details_with_idx")
        sizes = np.asarray(details.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), np.int64)
        search_idx = np.asarray(b.column("search_idx").to_numpy(zero_copy_only=False), np.int64)
        has_answer = np.array([int(s) in answers for s in search_idx], bool)
        keep = (sizes > 0) | has_answer
        self.stats["skipped_empty_pages"] += int((~keep).sum())
        flat = details.flatten()  # skips null lists, honours slicing offsets
        page_of = np.repeat(np.arange(b.num_rows), sizes)
        note_idx = flat.field("note_idx")
        if note_idx.null_count:
            p = page_of[np.nonzero(np.asarray(note_idx.is_null().to_numpy(zero_copy_only=False)))[0][0]]
            raise PageValidationError(
                f"{source}: page '{split}-{search_idx[p]}', field 'item_id': null note_idx"
            )
        note_idx = np.asarray(note_idx.to_numpy(zero_copy_only=False), np.int64)
        position = numeric_matrix(flat.field("position"), source, "position", width=1)[0][:, 0]
        click_raw = numeric_matrix(flat.field("click"), source, "click", width=1)[0][:, 0]
        dwell = numeric_matrix(flat.field("page_time"), source, "page_time", width=1)[0][:, 0].astype(
            np.float64
        )
        page_ids = np.array([f"{split}-{s}" for s in search_idx], dtype=object)
        bad = ~np.isin(click_raw, (0.0, 1.0))
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise PageValidationError(
                f"{source}: page {page_ids[page_of[i]]!r}, field 'click': note {note_idx[i]} has click {click_raw[i]}, expected 0 or 1"
            )
        dwell = np.where(dwell == -1, np.nan, dwell)
        bad = (dwell < 0) | np.isinf(dwell)
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise PageValidationError(
                f"{source}: page {page_ids[page_of[i]]!r}, field 'dwell': note {note_idx[i]} has page_time {dwell[i]}"
            )
        order = np.lexsort((np.nan_to_num(position, nan=np.inf), page_of))
        note_idx, click, dwell, page_of = (
            note_idx[order],
            click_raw[order].astype(np.int8),
            dwell[order],
            page_of[order],
        )
        rows = self._note_rows(note_idx, f"{source}: column 'search_result_details_with_idx'", notes)
        note_score = self._upstream_scores(b, source, page_ids, page_of, note_idx)
        ntype = notes.note_type[rows]
        bad = ~np.isin(ntype, list(cfg.note_types))
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            known = ", ".join(f"{t} ({m})" for t, m in cfg.note_types.items())
            raise PageValidationError(
                f"{source}: page {page_ids[page_of[i]]!r}, field 'modality': note {note_idx[i]} has note_type {ntype[i]}, expected one of {known}"
            )
        # query features
        queries = b.column("query").to_pylist()
        q_title = hash_texts(queries, cfg.title_dim, max_chars=cfg.max_chars)
        q_content = hash_texts(queries, cfg.text_dim, max_chars=cfg.max_chars)
        q_hash = (
            q_content
            if cfg.query_text_dim == cfg.text_dim
            else hash_texts(queries, cfg.query_text_dim, max_chars=cfg.max_chars)
        )
        recent = b.column("recent_clicked_note_idxs")
        n_recent = np.asarray(recent.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), np.float64)
        q_chars = np.array([len(normalise_text(q, 10**9)) for q in queries], np.float64)
        query_features = np.concatenate(
            [
                q_hash,
                categorical_onehot(b.column("query_from_type").to_pylist(), cfg.cat_buckets),
                np.log1p(q_chars)[:, None],
                np.log1p(n_recent)[:, None],
            ],
            axis=1,
        )
        # user features
        u_row_of, u_feats, u_names = users
        uidx = np.asarray(
            b.column("user_idx").cast(pa.float64()).fill_null(-1).to_numpy(zero_copy_only=False), np.int64
        )
        known = (uidx >= 0) & (uidx < len(u_row_of))
        urow = np.full(len(uidx), -1, np.int64)
        urow[known] = u_row_of[uidx[known]]
        user_features = np.zeros((len(uidx), u_feats.shape[1]))
        user_features[urow >= 0] = u_feats[urow[urow >= 0]]
        self.stats["unknown_users"] += int(((urow < 0) & keep).sum())
        check_finite(
            user_features,
            u_names,
            source,
            page_ids,
            np.arange(len(page_ids)),
            np.array([f"user {u}" for u in uidx], dtype=object),
            "user_features",
            _IMPUTE_HINT,
        )
        # note items
        dims = self.feature_dims
        dmax = max(dims.values())
        n_common = len(COMMON_NAMES)
        sims = np.column_stack(
            [
                np.einsum("ij,ij->i", q_title[page_of], notes.title[rows]),
                np.einsum("ij,ij->i", q_content[page_of], notes.content[rows]),
            ]
        )
        note_feats = np.zeros((len(rows), dmax), np.float64)
        note_mod = np.empty(len(rows), np.int8)
        for t, m in cfg.note_types.items():
            sel = ntype == t
            if m == "image":
                extra = notes.image[rows[sel]]
            elif m == "video":
                extra = notes.video[rows[sel]]
            else:
                extra = np.zeros((int(sel.sum()), 0))
            block = np.concatenate(
                [notes.common[rows[sel]], sims[sel], extra, notes.title[rows[sel]], notes.content[rows[sel]]],
                axis=1,
            )
            note_feats[sel, : block.shape[1]] = block
            note_mod[sel] = MODALITY_ID[m]
            names = self.feature_names[m]
            check_finite(
                block[:, : n_common + 2 + extra.shape[1]],
                names,
                source,
                page_ids,
                page_of[sel],
                np.array([f"note{n}" for n in note_idx[sel]], dtype=object),
                "features",
                _IMPUTE_HINT,
            )
        # answer items
        a_pages = np.nonzero(has_answer & keep)[0]
        a_feats = np.zeros((len(a_pages), dmax), np.float64)
        a_click = np.zeros(len(a_pages), np.int8)
        for k, p in enumerate(a_pages):
            ref_rows, clicked = answers[int(search_idx[p])]
            a_click[k] = clicked
            page_rows = rows[page_of == p]
            if len(ref_rows):
                common = notes.common[ref_rows]
                ref_title = notes.title[ref_rows].mean(axis=0)
                nrm = np.linalg.norm(ref_title)
                ref_title = ref_title / nrm if nrm > 0 else ref_title
                stats = [
                    np.log1p(len(ref_rows)),
                    float(np.isin(ref_rows, page_rows).mean()),
                    float((notes.note_type[ref_rows] == 2).mean()),
                    common[:, COMMON_NAMES.index("log1p_click_num")].mean(),
                    common[:, COMMON_NAMES.index("log1p_like_num")].mean(),
                    common[:, COMMON_NAMES.index("log1p_collect_num")].mean(),
                    common[:, COMMON_NAMES.index("ctr")].mean(),
                    float(q_title[p] @ ref_title),
                ]
            else:
                ref_title = np.zeros(cfg.title_dim, np.float32)
                stats = [0.0] * len(ANSWER_NAMES)
            a_feats[k, : dims["answer"]] = np.concatenate([stats, ref_title])
        check_finite(
            a_feats[:, : len(ANSWER_NAMES)],
            self.feature_names["answer"],
            source,
            page_ids,
            a_pages,
            np.array([f"dqa{search_idx[p]}" for p in a_pages], dtype=object),
            "features",
            _IMPUTE_HINT,
        )
        self.stats["answers_attached"] += len(a_pages)
        # merge: answer first, then notes in shown order
        all_page = np.concatenate([a_pages, page_of])
        slot = np.concatenate([np.full(len(a_pages), -1), np.arange(len(rows))])
        final = np.lexsort((slot, all_page))
        all_ids = np.concatenate(
            [
                np.array([f"dqa{search_idx[p]}" for p in a_pages], dtype=object),
                np.array([f"note{n}" for n in note_idx], dtype=object),
            ]
        )
        all_click = np.concatenate([a_click, click])
        all_score = np.concatenate([np.full(len(a_pages), np.nan), note_score])
        all_dwell = np.concatenate([np.full(len(a_pages), np.nan), dwell])
        all_mod = np.concatenate([np.full(len(a_pages), MODALITY_ID["answer"], np.int8), note_mod])
        all_feats = np.concatenate([a_feats, note_feats])
        counts = np.bincount(all_page, minlength=b.num_rows)
        kept_pages = np.nonzero(keep)[0]
        sessions = b.column("session_idx").to_pylist()
        pages = Pages(
            page_id=page_ids[kept_pages],
            query_id=np.array(
                [f"session{sessions[p]}" if sessions[p] is not None else page_ids[p] for p in kept_pages],
                dtype=object,
            ),
            query_features=query_features[kept_pages],
            user_features=user_features[kept_pages],
            offsets=np.concatenate([[0], np.cumsum(counts[kept_pages])]),
            item_id=all_ids[final],
            modality=all_mod[final],
            features=all_feats[final],
            feature_dims=dims,
            single_modal_score=all_score[final],
            relevance=dwell_grades(all_click[final], all_dwell[final], cfg.dwell_cuts),
            click=all_click[final],
            dwell=all_dwell[final],
        )
        return pages

    # ------------------------------------------------------------------ run
    def run(self, out: str | Path) -> dict:
        t0 = time.perf_counter()
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        needed = self._needed_notes()
        notes = self._load_notes(needed)
        self.stats["imputed_values"] += notes.imputed
        users = self._load_users()
        answers = self._load_answers(notes)
        matched: set[int] = set()
        outputs = {}
        jobs = [(split, files, answers) for split, files in self.search.items()]
        for split, files, ans in jobs:
            outputs[split] = self._write_split(out, split, files, notes, users, ans, matched)
        if self.dqa_files:
            rest = {s: a for s, a in answers.items() if s not in matched}
            outputs["dqa"] = self._write_split(
                out, "dqa", self.dqa_files, notes, users, rest, matched, skip=True
            )
        summary = {
            "format": "qilin",
            "source": str(self.src),
            "config": asdict(self.cfg),
            "outputs": {k: v for k, v in outputs.items() if v},
            "feature_dims": self.feature_dims,
            "feature_names": self.feature_names,
            "query_dim": self.cfg.query_text_dim + self.cfg.cat_buckets + 2,
            "user_feature_names": users[2],
            "labels": (
                "grade 0 unclicked; 1 clicked without positive dwell (answers: any interaction); "
                f"2/3/4 clicked with dwell < {self.cfg.dwell_cuts[0]} s / < {self.cfg.dwell_cuts[1]} s / longer"
            ),
            "modalities": {
                **{f"note_type {t}": m for t, m in self.cfg.note_types.items()},
                **({"dqa answer": "answer"} if self.dqa_files else {}),
            },
            "single_modal": (
                f"single_modal_score = the note's score in {self.upstream} (NaN where absent)"
                if self.upstream
                else "none (no upstream retrieval list read): single_modal_score unknown"
            ),
            "notes_loaded": int(len(notes.note_type)),
            **self.stats,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        return write_summary(out, summary)

    def _write_split(self, out, split, files, notes, users, answers, matched, skip=False) -> dict | None:
        writer = PageFileWriter(out / f"{split}.parquet", self.feature_dims)
        total = count_rows(files) if self.cfg.limit is None else min(self.cfg.limit, count_rows(files))
        bar = tqdm(total=total, desc=f"qilin {split}", unit="page", leave=False, disable=None)
        try:
            names = schema_of(files).names
            extra = [self.upstream] if self.upstream is not None and self.upstream in names else []
            for b in self._limited(files, [*SEARCH_COLUMNS, *extra]):
                bar.update(b.num_rows)
                if skip:  # DQA requests already attached to a search-log page
                    sidx = np.asarray(b.column("search_idx").to_numpy(zero_copy_only=False), np.int64)
                    keep = ~np.isin(sidx, np.fromiter(matched, np.int64, len(matched)))
                    if not keep.all():
                        b = b.filter(pa.array(keep))
                    if not b.num_rows:
                        continue
                else:
                    sidx = np.asarray(b.column("search_idx").to_numpy(zero_copy_only=False), np.int64)
                    matched.update(int(s) for s in sidx if int(s) in answers)
                writer.write(
                    self._pages(b, split, str(files[0].parent), notes, users, answers), str(files[0].parent)
                )
        except BaseException:
            writer.abort()
            raise
        finally:
            bar.close()
        return writer.close()


_IMPUTE_HINT = " (null or NaN in the source; pass --impute-missing to fill with 0)"


def import_qilin(src: str | Path, out: str | Path, cfg: QilinConfig | None = None) -> dict:
    """Convert a Qilin folder into page files under `out`; returns the summary written to import.json."""
    return QilinImporter(src, cfg).run(out)


__all__ = ["QilinConfig", "QilinImporter", "dwell_grades", "import_qilin"]
