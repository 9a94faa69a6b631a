"""One batch of Qilin search requests -> pages: the shown notes in shown order, their upstream scores,
the query and user features, the note and answer items, labels from clicks and dwell (see
pretrain.importers.qilin for the mapping)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from envs.pages import MODALITY_ID, Pages
from pretrain.importers.common import SourceFormatError, check_finite, item_index, kept_pages, scalar_column
from pretrain.importers.config import QilinConfig
from pretrain.importers.qilin_notes import (
    ANSWER_NAMES,
    COMMON_NAMES,
    IMPUTE_HINT,
    Notes,
    Users,
    feature_names,
    note_rows,
)
from pretrain.importers.text import categorical_onehot, normalise_text, query_hashes
from pretrain.page import PageValidationError


def dwell_grades(click: np.ndarray, dwell: np.ndarray, cuts: tuple[float, float]) -> np.ndarray:
    """SMAR's Qilin ordering as grades 0-4 (see pretrain.importers.qilin)."""
    has_dwell = np.nan_to_num(dwell, nan=0.0) > 0
    g = np.where(click > 0, 1, 0)
    g = np.where((click > 0) & has_dwell, 2 + np.digitize(np.nan_to_num(dwell), cuts), g)
    return g.astype(np.int8)


def _first_bad(bad: np.ndarray) -> int | None:
    return int(np.nonzero(bad)[0][0]) if bad.any() else None


@dataclass
class Shown:
    """A batch's requests and their shown notes, one entry per note in (page, position) order."""

    search_idx: np.ndarray  # per request
    page_ids: np.ndarray
    has_answer: np.ndarray
    keep: np.ndarray  # a page is written when it shows a note or an answer
    page_of: np.ndarray  # per note: its request
    note_idx: np.ndarray
    click: np.ndarray
    dwell: np.ndarray
    rows: np.ndarray  # rows in Notes
    ntype: np.ndarray


class QilinPages:
    """Builds the pages of search-log batches against the loaded notes and users."""

    def __init__(
        self, cfg: QilinConfig, upstream: str | None, notes: Notes, users: Users, stats: dict
    ) -> None:
        self.cfg, self.upstream, self.notes, self.users, self.stats = cfg, upstream, notes, users, stats
        self.names = feature_names(cfg)
        self.dims = {m: len(v) for m, v in self.names.items()}

    def pages(
        self, b: pa.RecordBatch, split: str, source: str, answers: dict[int, tuple[np.ndarray, int]]
    ) -> Pages:
        """The pages of requests `b` (`answers`: search_idx -> the DQA answer shown with it)."""
        shown = self.shown_notes(b, split, source, answers)
        score = self.upstream_scores(b, source, shown.page_ids, shown.page_of, shown.note_idx)
        self._check_note_types(source, shown)
        q_title, q_content, query_features = self.query_features(b)
        user_features = self.user_features(b, source, shown)
        note_feats, note_mod = self.note_items(shown, q_title, q_content, source)
        a_pages, a_feats, a_click = self.answer_items(shown, q_title, answers, source)
        self.stats["answers_attached"] += len(a_pages)
        return self.assemble(
            b,
            shown,
            score,
            query_features,
            user_features,
            (note_feats, note_mod),
            (a_pages, a_feats, a_click),
        )

    # ------------------------------------------------------------------ shown notes
    def shown_notes(self, b: pa.RecordBatch, split: str, source: str, answers: dict) -> Shown:
        """The shown notes sorted by position within each request, clicks and dwell checked (note types:
        `_check_note_types`)."""
        details = b.column("search_result_details_with_idx")
        sizes = np.asarray(details.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), np.int64)
        search_idx = np.asarray(b.column("search_idx").to_numpy(zero_copy_only=False), np.int64)
        has_answer = np.array([int(s) in answers for s in search_idx], bool)
        keep = (sizes > 0) | has_answer
        self.stats["skipped_empty_pages"] += int((~keep).sum())
        flat = details.flatten()  # skips null lists, honours slicing offsets
        page_of = np.repeat(np.arange(b.num_rows), sizes)
        page_ids = np.array([f"{split}-{s}" for s in search_idx], dtype=object)
        note_idx = item_index(flat, "note_idx", source, page_ids, page_of)
        position = scalar_column(flat.field("position"), source, "position")
        click_raw = scalar_column(flat.field("click"), source, "click")
        dwell = scalar_column(flat.field("page_time"), source, "page_time").astype(np.float64)
        dwell = self._checked_click_dwell(source, page_ids, page_of, note_idx, click_raw, dwell)
        order = np.lexsort((np.nan_to_num(position, nan=np.inf), page_of))
        note_idx, page_of = note_idx[order], page_of[order]
        rows = note_rows(note_idx, f"{source}: column 'search_result_details_with_idx'", self.notes)
        shown = Shown(
            search_idx=search_idx,
            page_ids=page_ids,
            has_answer=has_answer,
            keep=keep,
            page_of=page_of,
            note_idx=note_idx,
            click=click_raw[order].astype(np.int8),
            dwell=dwell[order],
            rows=rows,
            ntype=self.notes.note_type[rows],
        )
        return shown

    @staticmethod
    def _checked_click_dwell(source, page_ids, page_of, note_idx, click, dwell) -> np.ndarray:
        """Clicks must be 0/1, dwell absent (NaN or -1, returned as NaN) or a finite non-negative time."""
        i = _first_bad(~np.isin(click, (0.0, 1.0)))
        if i is not None:
            raise PageValidationError(
                f"{source}: page {page_ids[page_of[i]]!r}, field 'click': note {note_idx[i]} has click {click[i]}, expected 0 or 1"
            )
        dwell = np.where(dwell == -1, np.nan, dwell)
        i = _first_bad((dwell < 0) | np.isinf(dwell))
        if i is not None:
            raise PageValidationError(
                f"{source}: page {page_ids[page_of[i]]!r}, field 'dwell': note {note_idx[i]} has page_time {dwell[i]}"
            )
        return dwell

    def _check_note_types(self, source: str, s: Shown) -> None:
        i = _first_bad(~np.isin(s.ntype, list(self.cfg.note_types)))
        if i is not None:
            known = ", ".join(f"{t} ({m})" for t, m in self.cfg.note_types.items())
            raise PageValidationError(
                f"{source}: page {s.page_ids[s.page_of[i]]!r}, field 'modality': note {s.note_idx[i]} has note_type {s.ntype[i]}, expected one of {known}"
            )

    def upstream_scores(
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
        i = _first_bad(plen != 2)
        if i is not None:
            raise SourceFormatError(
                f"{source}: page {page_ids[ppage[i]]!r}, column {col_name!r}: an entry of length {plen[i]}, "
                "expected a [note_idx, score] pair"
            )
        vals = scalar_column(pairs.flatten(), source, col_name).reshape(-1, 2)
        i = _first_bad(~np.isfinite(vals).all(axis=1) | (vals[:, 0] != np.round(vals[:, 0])))
        if i is not None:
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

    # ------------------------------------------------------------------ context
    def query_features(self, b: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query title hash, query content hash, query features) per request."""
        cfg = self.cfg
        queries = b.column("query").to_pylist()
        q_title, q_content, q_hash = query_hashes(queries, cfg)
        recent = b.column("recent_clicked_note_idxs")
        n_recent = np.asarray(recent.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), np.float64)
        q_chars = np.array([len(normalise_text(q, 10**9)) for q in queries], np.float64)
        features = np.concatenate(
            [
                q_hash,
                categorical_onehot(b.column("query_from_type").to_pylist(), cfg.cat_buckets),
                np.log1p(q_chars)[:, None],
                np.log1p(n_recent)[:, None],
            ],
            axis=1,
        )
        return q_title, q_content, features

    def user_features(self, b: pa.RecordBatch, source: str, s: Shown) -> np.ndarray:
        """The request's user's features (zeros, with user_known 0, for a user not in the table)."""
        u = self.users
        uidx = np.asarray(
            b.column("user_idx").cast(pa.float64()).fill_null(-1).to_numpy(zero_copy_only=False), np.int64
        )
        known = (uidx >= 0) & (uidx < len(u.row_of))
        urow = np.full(len(uidx), -1, np.int64)
        urow[known] = u.row_of[uidx[known]]
        out = np.zeros((len(uidx), u.features.shape[1]))
        out[urow >= 0] = u.features[urow[urow >= 0]]
        self.stats["unknown_users"] += int(((urow < 0) & s.keep).sum())
        user_ids = np.array([f"user {x}" for x in uidx], dtype=object)
        check_finite(
            out,
            u.names,
            source,
            s.page_ids,
            np.arange(len(s.page_ids)),
            user_ids,
            "user_features",
            IMPUTE_HINT,
        )
        return out

    # ------------------------------------------------------------------ items
    def note_items(
        self, s: Shown, q_title: np.ndarray, q_content: np.ndarray, source: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(features padded to the widest modality, modality id) of every shown note."""
        notes, rows = self.notes, s.rows
        n_common = len(COMMON_NAMES)
        sims = np.column_stack(
            [
                np.einsum("ij,ij->i", q_title[s.page_of], notes.title[rows]),
                np.einsum("ij,ij->i", q_content[s.page_of], notes.content[rows]),
            ]
        )
        feats = np.zeros((len(rows), max(self.dims.values())), np.float64)
        mod = np.empty(len(rows), np.int8)
        for t, m in self.cfg.note_types.items():
            sel = s.ntype == t
            if m == "image":
                extra = notes.image[rows[sel]]
            elif m == "video":
                extra = notes.video[rows[sel]]
            else:
                extra = np.zeros((int(sel.sum()), 0))
            r = rows[sel]
            block = np.concatenate(
                [notes.common[r], sims[sel], extra, notes.title[r], notes.content[r]], axis=1
            )
            feats[sel, : block.shape[1]] = block
            mod[sel] = MODALITY_ID[m]
            check_finite(
                block[:, : n_common + 2 + extra.shape[1]],
                self.names[m],
                source,
                s.page_ids,
                s.page_of[sel],
                np.array([f"note{n}" for n in s.note_idx[sel]], dtype=object),
                "features",
                IMPUTE_HINT,
            )
        return feats, mod

    def _answer_stats(self, ref_rows: np.ndarray, page_rows: np.ndarray, q_title: np.ndarray) -> np.ndarray:
        """ANSWER_NAMES then the referenced notes' mean title hash, for one answer."""
        notes = self.notes
        if not len(ref_rows):
            return np.concatenate([[0.0] * len(ANSWER_NAMES), np.zeros(self.cfg.title_dim, np.float32)])
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
            float(q_title @ ref_title),
        ]
        return np.concatenate([stats, ref_title])

    def answer_items(
        self, s: Shown, q_title: np.ndarray, answers: dict[int, tuple[np.ndarray, int]], source: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pages with an answer, answer features, answer clicks) for the kept pages that showed one."""
        a_pages = np.nonzero(s.has_answer & s.keep)[0]
        a_feats = np.zeros((len(a_pages), max(self.dims.values())), np.float64)
        a_click = np.zeros(len(a_pages), np.int8)
        for k, p in enumerate(a_pages):
            ref_rows, clicked = answers[int(s.search_idx[p])]
            a_click[k] = clicked
            a_feats[k, : self.dims["answer"]] = self._answer_stats(
                ref_rows, s.rows[s.page_of == p], q_title[p]
            )
        check_finite(
            a_feats[:, : len(ANSWER_NAMES)],
            self.names["answer"],
            source,
            s.page_ids,
            a_pages,
            np.array([f"dqa{s.search_idx[p]}" for p in a_pages], dtype=object),
            "features",
            IMPUTE_HINT,
        )
        return a_pages, a_feats, a_click

    # ------------------------------------------------------------------ pages
    def assemble(self, b, s: Shown, score, query_features, user_features, notes, answers) -> Pages:
        """The kept pages: the answer first, then the notes in shown order."""
        note_feats, note_mod = notes
        a_pages, a_feats, a_click = answers
        all_page = np.concatenate([a_pages, s.page_of])
        slot = np.concatenate([np.full(len(a_pages), -1), np.arange(len(s.rows))])
        final = np.lexsort((slot, all_page))
        all_ids = np.concatenate(
            [
                np.array([f"dqa{s.search_idx[p]}" for p in a_pages], dtype=object),
                np.array([f"note{n}" for n in s.note_idx], dtype=object),
            ]
        )
        all_click = np.concatenate([a_click, s.click])[final]
        all_dwell = np.concatenate([np.full(len(a_pages), np.nan), s.dwell])[final]
        sessions = b.column("session_idx").to_pylist()
        return kept_pages(
            s.keep,
            s.page_ids,
            [f"session{x}" if x is not None else None for x in sessions],
            np.bincount(all_page, minlength=b.num_rows),
            query_features,
            user_features,
            item_id=all_ids[final],
            modality=np.concatenate([np.full(len(a_pages), MODALITY_ID["answer"], np.int8), note_mod])[final],
            features=np.concatenate([a_feats, note_feats])[final],
            feature_dims=self.dims,
            single_modal_score=np.concatenate([np.full(len(a_pages), np.nan), score])[final],
            relevance=dwell_grades(all_click, all_dwell, self.cfg.dwell_cuts),
            click=all_click,
            dwell=all_dwell,
        )
