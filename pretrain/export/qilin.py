"""A world in Qilin's published layout (what pretrain.importers.qilin reads; one folder per config,
Hugging Face style):
  search_train/  the pool pages, then the valid pages     search_test/  the test pages
  notes/         one note per (page, item), row index = note_idx
  user_feat/     one user per page, row index = user_idx
Mapping:
  * label: grade g -> `click` / `page_time` decoded back to g by the importer's dwell grades (0 unclicked;
    1 clicked, page_time -1 (absent); 2/3/4 clicked with a dwell inside the cut band);
  * modality: `note_type` 1 image, 2 video (the published codes), 3 doc, 4 answer (`QILIN_NOTE_TYPES`;
    import with `--import.note_types` `NOTE_TYPES_ARG`, printed by the exporter). Qilin's own answers
    (DQA) hold one answer per request, the world 10 per page, so answers travel as notes;
  * single-modal score: `dpr_results` = [note_idx, score] pairs of the page's notes whose score is known
    (`upstream`: the world's single-modal rankers' scores, as `smar pretrain` trains them, by default);
  * item features: the numeric note columns the importer reads, in `qilin_slots(m)` order (the nine
    engagement counts, content_length, commercial_flag, then image_num or video_duration / height /
    width), raw (the importer log-scales them; commercial_flag it keeps as is). Qilin's notes carry
    11 numbers (12 for images, 14 for videos) and the world's items 24 / 16 / 20 / 12 (doc / image /
    video / answer): the first ones that fit travel, the rest are dropped (`dropped_features` in
    export.json);
  * query and user features: `dense_feat1..K` of the page's user (query features then user features);
    `query` is empty (the world has no text; the session is `session_idx`, one per world query id).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from envs.atomic_io import write_json_atomic
from envs.pages import MODALITIES, Pages
from pretrain.export.common import chunks, list_column
from pretrain.export.config import ExportConfig
from pretrain.importers.qilin import NOTE_COUNTS, NOTE_TYPE_MODALITY, QilinConfig

QILIN_NOTE_TYPES: dict[str, int] = {
    **{m: t for t, m in NOTE_TYPE_MODALITY.items()},
    "doc": 3,
    "answer": 4,
}
# what `--import.note_types` takes
NOTE_TYPES: dict[int, str] = {t: m for m, t in sorted(QILIN_NOTE_TYPES.items(), key=lambda kv: kv[1])}
NOTE_TYPES_ARG = json.dumps(NOTE_TYPES)
_QILIN_DETAIL = pa.struct(
    [
        ("note_idx", pa.int64()),
        ("position", pa.int64()),
        ("click", pa.float64()),
        ("like", pa.float64()),
        ("collect", pa.float64()),
        ("comment", pa.float64()),
        ("share", pa.float64()),
        ("page_time", pa.float64()),
        ("search_timestamp", pa.int64()),
    ]
)
_PAIRS = pa.list_(pa.list_(pa.float64()))
_NOTE_STRINGS = ("note_title", "note_content", "taxonomy1_id", "taxonomy2_id", "taxonomy3_id")


def qilin_slots(modality: str) -> tuple[str, ...]:
    """The numeric note columns a world item's features travel in, in feature order."""
    extra = {"image": ("image_num",), "video": ("video_duration", "video_height", "video_width")}
    return (*NOTE_COUNTS, "content_length", "commercial_flag", *extra.get(modality, ()))


def qilin_click_dwell(grades: np.ndarray, cuts: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Grades 0-4 -> (click, page_time) that `pretrain.importers.qilin.dwell_grades` maps back."""
    g = np.asarray(grades)
    if (g < 0).any() or (g > 4).any():
        raise ValueError("qilin export: every item needs a grade 0-4")
    dwell_of = np.array([np.nan, -1.0, cuts[0] / 2, (cuts[0] + cuts[1]) / 2, 2 * cuts[1]])
    return (g > 0).astype(np.float64), dwell_of[g]


class QilinWriter:
    """Streams pages into the search, notes and user_feat configs, note/user/search ids running on."""

    def __init__(self, out: Path, cuts: tuple[float, float]) -> None:
        self.out, self.cuts = out, cuts
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.next_note = self.next_user = self.next_search = 0
        self.sessions: dict[str, int] = {}
        self.dropped: dict[str, int] = {}

    def _write(self, config: str, table: pa.Table) -> None:
        if config not in self.writers:
            path = self.out / config / "train-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writers[config] = pq.ParquetWriter(path, table.schema, compression="zstd")
        self.writers[config].write_table(table)

    def write(self, config: str, pages: Pages, grades: np.ndarray, scores: np.ndarray) -> None:
        """One batch of pages: its search rows, one note per item, one user per page."""
        n, t = len(pages), pages.n_items
        if n == 0:
            return
        note = np.arange(self.next_note, self.next_note + t, dtype=np.int64)
        user = np.arange(self.next_user, self.next_user + n, dtype=np.int64)
        search = np.arange(self.next_search, self.next_search + n, dtype=np.int64)
        self.next_note, self.next_user, self.next_search = note[-1] + 1, user[-1] + 1, search[-1] + 1
        self._write(config, self._search_table(config, pages, grades, scores, note, user, search))
        self._write("notes", self._notes_table(pages))
        self._write("user_feat", self._users_table(pages))

    def _upstream_pairs(self, pages: Pages, scores: np.ndarray, note: np.ndarray) -> pa.ListArray:
        """Per page, the [note_idx, score] pairs of its notes whose score is known (`dpr_results`)."""
        n, t = len(pages), pages.n_items
        known = np.isfinite(scores)
        pair_vals = np.column_stack([note[known].astype(np.float64), scores[known].astype(np.float64)])
        pair_counts = np.add.reduceat(known.astype(np.int64), pages.offsets[:-1]) if t else np.zeros(n)
        pair_counts = np.where(pages.sizes > 0, pair_counts, 0)
        return pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(pair_counts)]).astype(np.int32)),
            list_column(pair_vals) if len(pair_vals) else pa.array([], pa.list_(pa.float64())),
        ).cast(_PAIRS)

    def _search_table(self, config, pages: Pages, grades, scores, note, user, search) -> pa.Table:
        """One request per page: shown notes with click / page_time, session, user, upstream pairs."""
        n, t = len(pages), pages.n_items
        click, dwell = qilin_click_dwell(grades, self.cuts)
        pos = np.arange(t) - np.repeat(pages.offsets[:-1], pages.sizes) + 1
        zeros = pa.array(np.zeros(t))
        details = pa.StructArray.from_arrays(
            [pa.array(note), pa.array(pos.astype(np.int64)), pa.array(click), zeros, zeros, zeros, zeros]
            + [pa.array(dwell), pa.array(np.zeros(t, np.int64))],
            fields=list(_QILIN_DETAIL),
        )
        offsets = pa.array(pages.offsets.astype(np.int32))
        pairs = self._upstream_pairs(pages, scores, note)
        session = np.array(
            [self.sessions.setdefault(q, len(self.sessions)) for q in pages.query_id], np.int64
        )
        columns = {
            "query": pa.array([""] * n),
            "query_from_type": pa.array(np.zeros(n, np.int64)),
            "recent_clicked_note_idxs": pa.array([[]] * n, pa.list_(pa.int64())),
            "search_idx": pa.array(search),
            "session_idx": pa.array(session),
            "user_idx": pa.array(user),
            "dpr_results": pairs,
            "search_result_details_with_idx": pa.ListArray.from_arrays(offsets, details),
        }
        if config == "search_test":  # the published test config adds these two
            columns["bm25_results"] = pairs
            columns["search_results"] = pa.ListArray.from_arrays(offsets, pa.array(note))
        return pa.table(columns)

    def _notes_table(self, pages: Pages) -> pa.Table:
        """World item features in the numeric note columns (raw; see the module docstring)."""
        t = pages.n_items
        numeric = {c: np.zeros(t) for m in MODALITIES for c in qilin_slots(m)}
        note_type = np.zeros(t, np.int64)
        for mid, m in enumerate(MODALITIES):
            sel = pages.modality == mid
            if not sel.any():
                continue
            note_type[sel] = QILIN_NOTE_TYPES[m]
            d = pages.feature_dims[m]
            slots = qilin_slots(m)
            for j, c in enumerate(slots[:d]):
                numeric[c][sel] = pages.features[sel, j]
            self.dropped[m] = max(d - len(slots), 0)
        empty = pa.array([""] * t)
        return pa.table(
            {
                **{c: empty for c in _NOTE_STRINGS},
                "note_type": pa.array(note_type),
                **{c: pa.array(v) for c, v in numeric.items()},
                "image_path": pa.array([[]] * t, pa.list_(pa.string())),
            }
        )

    @staticmethod
    def _users_table(pages: Pages) -> pa.Table:
        """One user per page: its query then user features as dense_feat1..K."""
        n = len(pages)
        dense = np.concatenate([pages.query_features, pages.user_features], axis=1).astype(np.float64)
        zero_n = pa.array(np.zeros(n, np.int64))
        return pa.table(
            {
                "gender": zero_n,
                "platform": zero_n,
                "age": zero_n,
                "fans_num": zero_n,
                "follows_num": zero_n,
                **{f"dense_feat{k + 1}": pa.array(dense[:, k]) for k in range(dense.shape[1])},
                "location": pa.array([""] * n),
            }
        )

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def export_qilin(
    world,
    out: str | Path,
    scores: dict[str, np.ndarray] | None = None,
    batch_pages: int = ExportConfig.batch_pages,
    dwell_cuts: tuple[float, float] = QilinConfig.dwell_cuts,
) -> dict:
    """Write `world` in Qilin's schema under `out`. `scores`: split -> (T,) upstream score per item
    (NaN = not in `dpr_results`); default the pages' own `single_modal_score`."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    w = QilinWriter(out, dwell_cuts)
    counts: dict[str, int] = {}
    try:
        for config, names in (("search_train", ("pool", "valid")), ("search_test", ("test",))):
            start = w.next_search
            for name in names:
                split = getattr(world, name)
                sc = split.pages.single_modal_score if scores is None else np.asarray(scores[name])
                for idx in chunks(len(split.pages), batch_pages):
                    sub = split.pages.select(idx)
                    lo, hi = split.pages.offsets[idx[0]], split.pages.offsets[idx[-1] + 1]
                    w.write(config, sub, split.truth.relevance[lo:hi], sc[lo:hi])
            counts[config] = int(w.next_search - start)
    finally:
        w.close()
    summary = {
        "format": "qilin",
        "rows": counts,
        "notes": int(w.next_note),
        "note_types": NOTE_TYPES,
        "dropped_features": w.dropped,
        "upstream": "given scores" if scores is not None else "the pages' single_modal_score",
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(out / "export.json", summary)
    return summary


__all__ = [
    "NOTE_TYPES",
    "NOTE_TYPES_ARG",
    "QILIN_NOTE_TYPES",
    "QilinWriter",
    "export_qilin",
    "qilin_click_dwell",
    "qilin_slots",
]
