"""Qilin's source files: the published columns, finding and checking the config folders, streaming them.

Every check runs before anything is read in bulk, so a wrong layout fails at once, naming the file and
the column.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from pretrain.importers.common import (
    SourceFormatError,
    batches,
    config_files,
    limit_rows,
    require_columns,
    require_search_columns,
    schema_of,
)
from pretrain.importers.config import QilinConfig

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
SPLITS = (("search_train", "train"), ("search_test", "test"))


def index_of(table_files: list[Path], idx_column: str, n_rows: int) -> np.ndarray | None:
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


class QilinFiles:
    """The config folders of one Qilin dataset, checked: search logs per split, notes, users, DQA."""

    def __init__(self, src: Path, cfg: QilinConfig) -> None:
        self.src, self.cfg = src, cfg
        if not src.is_dir():
            raise SourceFormatError(f"{src}: not a folder (expected the Qilin dataset folders)")
        search = {split: config_files(src, name, required=False) for name, split in SPLITS}
        self.search = {s: f for s, f in search.items() if f}
        if not self.search:
            raise SourceFormatError(f"{src}: no search_train or search_test Parquet files")
        self.notes = config_files(src, "notes")
        self.users = config_files(src, "user_feat")
        self.dqa = config_files(src, "dqa", required=False)
        for files in self.search.values():
            require_search_columns(files, SEARCH_COLUMNS, DETAIL_FIELDS)
        if self.dqa:
            require_search_columns(self.dqa, DQA_COLUMNS, DETAIL_FIELDS)
        require_columns(self.notes, NOTE_COLUMNS)
        self.user_schema = require_columns(self.users, USER_REQUIRED)
        if self.dqa and "answer" in cfg.note_types.values():
            raise SourceFormatError(
                f"{self.dqa[0].parent}: DQA answers are present and note_types also maps a note type "
                "to 'answer'; an answer comes from one of the two"
            )
        self.upstream = self._upstream_column()

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
                raise SourceFormatError(f"{files[0]}: missing column {want!r} (--import.upstream {want})")
        return "dpr_results" if want == "auto" else want

    def limited(self, files: list[Path], columns: list[str]) -> Iterator[pa.RecordBatch]:
        """Record batches of `files`, at most `cfg.limit` rows in all."""
        return limit_rows(batches(files, columns, self.cfg.batch_rows), self.cfg.limit)

    def needed_notes(self) -> np.ndarray:
        """The note_idx values the (limited) logs show or reference, sorted and unique."""
        parts = []
        sources = [*self.search.values()] + ([self.dqa] if self.dqa else [])
        for files in sources:
            for b in self.limited(files, ["search_result_details_with_idx"]):
                flat = b.column(0).flatten()
                parts.append(
                    np.asarray(flat.field("note_idx").drop_null().to_numpy(zero_copy_only=False), np.int64)
                )
        if self.dqa:
            for b in self.limited(self.dqa, ["ref_note_idx_list"]):
                parts.append(
                    np.asarray(b.column(0).flatten().drop_null().to_numpy(zero_copy_only=False), np.int64)
                )
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def search_columns(self, files: list[Path]) -> list[str]:
        """The search-log columns page assembly reads (the upstream list where these files have it)."""
        names = schema_of(files).names
        extra = [self.upstream] if self.upstream is not None and self.upstream in names else []
        return [*SEARCH_COLUMNS, *extra]


def search_idx_of(b: pa.RecordBatch) -> np.ndarray:
    return np.asarray(b.column("search_idx").to_numpy(zero_copy_only=False), np.int64)
