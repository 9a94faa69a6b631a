"""The Qilin tables pages look up: notes (feature blocks per note), users, DQA answers, and the feature
layout they make per modality.

Only the notes the logs reference are loaded (`QilinFiles.needed_notes`), one streamed batch at a time, so
memory follows the logs, not the notes table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from pretrain.importers.common import (
    SourceFormatError,
    batches,
    count_rows,
    log1p_count,
    numeric_matrix,
)
from pretrain.importers.config import QilinConfig
from pretrain.importers.qilin_files import (
    ANSWER_CLICKS,
    NOTE_COLUMNS,
    NOTE_COUNTS,
    USER_CATEGORICAL,
    QilinFiles,
    index_of,
)
from pretrain.importers.text import categorical_onehot, hash_texts, normalise_text

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
IMPUTE_HINT = " (null or NaN in the source; pass --import.impute_missing true to fill with 0)"
_BLOCKS = ("type", "common", "image", "video", "title", "content")


def extra_names(m: str) -> tuple[str, ...]:
    """The modality's own note columns, after the common ones and the query similarities."""
    return {"image": IMAGE_NAMES, "video": VIDEO_NAMES}.get(m, ())


def feature_names(cfg: QilinConfig) -> dict[str, list[str]]:
    """Item feature names per modality (every note modality: common, sims, own columns, text hashes)."""
    title = [f"title_hash{i}" for i in range(cfg.title_dim)]
    content = [f"content_hash{i}" for i in range(cfg.text_dim)]
    base = [*COMMON_NAMES, *SIM_NAMES]
    names = {
        "doc": [],
        "image": [],
        "video": [],
        "answer": [*ANSWER_NAMES, *(f"ref_title_hash{i}" for i in range(cfg.title_dim))],
    }
    for m in ("image", "video", *cfg.note_types.values()):
        names[m] = [*base, *extra_names(m), *title, *content]
    return names


@dataclass
class Notes:
    """Per-note feature blocks for the notes the logs reference (row-aligned, looked up by `row_of`)."""

    row_of: np.ndarray  # note_idx -> row, -1 = not loaded
    note_type: np.ndarray
    common: np.ndarray  # (n, len(COMMON_NAMES))
    image: np.ndarray
    video: np.ndarray
    title: np.ndarray
    content: np.ndarray
    imputed: int = 0


def _note_blocks(b: pa.RecordBatch, file: Path, cfg: QilinConfig) -> tuple[dict[str, np.ndarray], int]:
    """Feature blocks of the note rows `b` (and how many values were imputed)."""

    def num(name: str) -> np.ndarray:
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
    imputed = 0
    if cfg.impute_missing:
        for arr in (common, video, image):
            bad = ~np.isfinite(arr)
            imputed += int(bad.sum())
            arr[bad] = 0.0
    blocks = {
        "type": np.nan_to_num(num("note_type"), nan=-1).astype(np.int64),
        "common": common,
        "image": image,
        "video": video,
        "title": hash_texts(titles, cfg.title_dim, max_chars=cfg.max_chars),
        "content": hash_texts(contents, cfg.text_dim, max_chars=cfg.max_chars),
    }
    return blocks, imputed


def load_notes(files: QilinFiles, needed: np.ndarray) -> Notes:
    """Feature blocks of the `needed` notes, streamed over the notes table."""
    cfg, notes_files = files.cfg, files.notes
    n_rows = count_rows(notes_files)
    explicit = index_of(notes_files, "note_idx", n_rows)
    top = explicit.max() if explicit is not None and len(explicit) else n_rows
    size = int(max(needed.max() if len(needed) else 0, top)) + 1
    row_of = np.full(size, -1, np.int64)
    blocks: dict[str, list[np.ndarray]] = {k: [] for k in _BLOCKS}
    want = np.zeros(size, bool)
    want[needed] = True
    start, kept, imputed = 0, 0, 0
    bar = tqdm(total=n_rows, desc="notes", unit="note", leave=False, disable=None)
    for b in batches(notes_files, list(NOTE_COLUMNS), 8192):
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
        block, n_imputed = _note_blocks(b.take(pa.array(sel)), notes_files[0].parent, cfg)
        imputed += n_imputed
        for k in _BLOCKS:
            blocks[k].append(block[k])
        row_of[ids[sel]] = kept + np.arange(len(sel))
        kept += len(sel)
    bar.close()
    cat = {k: (np.concatenate(v) if v else None) for k, v in blocks.items()}
    return Notes(
        row_of=row_of,
        note_type=cat["type"] if kept else np.zeros(0, np.int64),
        common=cat["common"] if kept else np.zeros((0, len(COMMON_NAMES))),
        image=cat["image"] if kept else np.zeros((0, 1)),
        video=cat["video"] if kept else np.zeros((0, len(VIDEO_NAMES))),
        title=cat["title"] if kept else np.zeros((0, cfg.title_dim), np.float32),
        content=cat["content"] if kept else np.zeros((0, cfg.text_dim), np.float32),
        imputed=imputed,
    )


@dataclass
class Users:
    """The users table as features: `row_of` user_idx -> row of `features` (NaN where null)."""

    row_of: np.ndarray
    features: np.ndarray
    names: list[str]
    imputed: int = 0


def load_users(files: QilinFiles) -> Users:
    """Hashed categorical codes, log-scaled follower counts and the dense features of every user."""
    cfg = files.cfg
    names_in = files.user_schema.names
    dense = sorted(
        (c for c in names_in if re.fullmatch(r"dense_feat\d+", c)),
        key=lambda c: int(c[len("dense_feat") :]),
    )
    cats = [*USER_CATEGORICAL] + (["location"] if "location" in names_in else [])
    table = pa.Table.from_batches(
        list(batches(files.users, [*cats, "fans_num", "follows_num", *dense], 65536))
    )
    file = files.users[0].parent
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
    imputed = 0
    if cfg.impute_missing:
        bad = ~np.isfinite(feats)
        imputed = int(bad.sum())
        feats[bad] = 0.0
    explicit = index_of(files.users, "user_idx", table.num_rows)
    ids = explicit if explicit is not None else np.arange(table.num_rows)
    row_of = np.full(int(ids.max()) + 1 if len(ids) else 1, -1, np.int64)
    row_of[ids] = np.arange(len(ids))
    return Users(row_of, feats, names, imputed)


def note_rows(note_idx: np.ndarray, where: str, notes: Notes) -> np.ndarray:
    """Rows of `notes` holding `note_idx`; a note not in the notes table is an error naming `where`."""
    inside = (note_idx >= 0) & (note_idx < len(notes.row_of))
    rows = np.full(len(note_idx), -1, np.int64)
    rows[inside] = notes.row_of[note_idx[inside]]
    if (rows < 0).any():
        raise SourceFormatError(f"{where}: note_idx {int(note_idx[rows < 0][0])} is not in the notes table")
    return rows


def load_answers(files: QilinFiles, notes: Notes) -> dict[int, tuple[np.ndarray, int]]:
    """search_idx -> (rows of referenced notes, clicked 0/1) for requests that showed an answer."""
    out: dict[int, tuple[np.ndarray, int]] = {}
    if not files.dqa:
        return out
    cols = ["search_idx", "ref_note_idx_list", *ANSWER_CLICKS]
    for b in files.limited(files.dqa, cols):
        sidx = b.column("search_idx").to_pylist()
        refs = b.column("ref_note_idx_list").to_pylist()
        flags = {c: b.column(c).to_pylist() for c in ANSWER_CLICKS}
        for i, s in enumerate(sidx):
            if flags["is_like_clk"][i] is None:  # no answer was shown
                continue
            ref = np.asarray([r for r in (refs[i] or []) if r is not None], np.int64)
            rows = note_rows(ref, f"{files.dqa[0].parent}: search {s}, column 'ref_note_idx_list'", notes)
            clicked = any((flags[c][i] or 0) > 0 for c in ANSWER_CLICKS)  # NaN > 0 is False
            out[int(s)] = (rows, int(clicked))
    return out
