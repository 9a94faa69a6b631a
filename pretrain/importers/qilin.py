"""Qilin (Xiaohongshu search logs, arXiv 2503.00501) -> the page contract.

Modules: source files and their checks `qilin_files`, notes / users / answers `qilin_notes`, a batch
of requests -> pages `qilin_pages`; this one runs them over the splits and writes the files.

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

Modality: `note_types` (`--import.note_types '{1: image, 2: video}'`, the published codes, by default)
maps a note_type to a modality; `smar export --export.format qilin` writes a world's documents and
answers as note types 3 and 4, imported with `--import.note_types '{1: image, 2: video, 3: doc, 4: answer}'`
(an answer then comes from the notes, so DQA files are refused). Single-modal (upstream) score: a shown
note's score in the request's `dpr_results` list of [note_idx, score] pairs (`--import.upstream`; NaN
where the note is not listed, and for DQA answers).

Labels (SMAR's Qilin ordering: clicked items by dwell first, then clicked without dwell, then
unclicked), as grades: unclicked 0; clicked without a positive dwell 1; clicked with dwell t seconds
2 (t < cut1), 3 (cut1 <= t < cut2), 4 (t >= cut2), default cuts 30 s and 120 s (30 s is the usual
satisfied-click threshold). The answer has no dwell: any answer interaction (like / onebox trace /
content / experience click) is a click without dwell (grade 1). Raw `click` and `dwell`
(`page_time`; NaN or -1 = absent) are kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from envs.pages import Pages
from pretrain.importers.common import Importer, count_rows, write_page_file
from pretrain.importers.config import NOTE_TYPE_MODALITY, QilinConfig
from pretrain.importers.qilin_files import NOTE_COUNTS, QilinFiles, search_idx_of
from pretrain.importers.qilin_notes import (
    COMMON_NAMES,
    feature_names,
    load_answers,
    load_notes,
    load_users,
)
from pretrain.importers.qilin_pages import QilinPages, dwell_grades


class QilinImporter(Importer):
    """Streams Qilin search logs into page files. See the module docstring for the mapping."""

    format = "qilin"

    def __init__(self, src: str | Path, cfg: QilinConfig | None = None) -> None:
        counters = ("skipped_empty_pages", "unknown_users", "answers_attached", "imputed_values")
        super().__init__(src, cfg or QilinConfig(), counters)
        self.files = QilinFiles(self.src, self.cfg)  # checks every file before anything is read

    @property
    def feature_names(self) -> dict[str, list[str]]:
        return feature_names(self.cfg)

    @property
    def feature_dims(self) -> dict[str, int]:
        return {m: len(v) for m, v in self.feature_names.items()}

    def write(self, out: Path) -> tuple[dict[str, dict | None], dict]:
        """Load the referenced notes, the users and the answers, then write each split's pages."""
        notes = load_notes(self.files, self.files.needed_notes())
        self.stats["imputed_values"] += notes.imputed
        users = load_users(self.files)
        self.stats["imputed_values"] += users.imputed
        answers = load_answers(self.files, notes)
        pages = QilinPages(self.cfg, self.files.upstream, notes, users, self.stats)
        matched: set[int] = set()
        outputs = {}
        for split, files in self.files.search.items():
            outputs[split] = self._write_split(out, split, files, pages, answers, matched)
        if self.files.dqa:
            rest = {s: a for s, a in answers.items() if s not in matched}
            outputs["dqa"] = self._write_split(out, "dqa", self.files.dqa, pages, rest, matched, skip=True)
        return outputs, self._details(users.names, len(notes.note_type))

    def _details(self, user_names: list[str], notes_loaded: int) -> dict:
        cfg, upstream = self.cfg, self.files.upstream
        return {
            "feature_names": self.feature_names,
            "query_dim": cfg.query_text_dim + cfg.cat_buckets + 2,
            "user_feature_names": user_names,
            "labels": (
                "grade 0 unclicked; 1 clicked without positive dwell (answers: any interaction); "
                f"2/3/4 clicked with dwell < {cfg.dwell_cuts[0]} s / < {cfg.dwell_cuts[1]} s / longer"
            ),
            "modalities": {
                **{f"note_type {t}": m for t, m in cfg.note_types.items()},
                **({"dqa answer": "answer"} if self.files.dqa else {}),
            },
            "single_modal": (
                f"single_modal_score = the note's score in {upstream} (NaN where absent)"
                if upstream
                else "none (no upstream retrieval list read): single_modal_score unknown"
            ),
            "notes_loaded": int(notes_loaded),
        }

    def _write_split(self, out, split, files, pages: QilinPages, answers, matched, skip=False) -> dict | None:
        """One split's pages to OUT/{split}.parquet. `skip`: leave out the DQA requests in `matched`
        (already attached to a search-log page); otherwise record the requests that had an answer."""
        total = count_rows(files) if self.cfg.limit is None else min(self.cfg.limit, count_rows(files))
        source = str(files[0].parent)

        def build(b: pa.RecordBatch) -> Pages | None:
            sidx = search_idx_of(b)
            if skip:
                keep = ~np.isin(sidx, np.fromiter(matched, np.int64, len(matched)))
                if not keep.all():
                    b = b.filter(pa.array(keep))
                if not b.num_rows:
                    return None
            else:
                matched.update(int(s) for s in sidx if int(s) in answers)
            return pages.pages(b, split, source, answers)

        return write_page_file(
            out / f"{split}.parquet",
            self.feature_dims,
            self.files.limited(files, self.files.search_columns(files)),
            build,
            source,
            progress=(f"qilin {split}", total),
        )


def import_qilin(src: str | Path, out: str | Path, cfg: QilinConfig | None = None) -> dict:
    """Convert a Qilin folder into page files under `out`; returns the summary written to import.json."""
    return QilinImporter(src, cfg).run(out)


__all__ = [
    "COMMON_NAMES",
    "NOTE_COUNTS",
    "NOTE_TYPE_MODALITY",
    "QilinConfig",
    "QilinImporter",
    "dwell_grades",
    "import_qilin",
]
