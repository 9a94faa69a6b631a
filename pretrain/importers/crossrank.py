"""CrossRank (Baidu's whole-page set, released with SMAR, CC BY-NC 4.0) -> the page contract.

Modules: source files and their checks `crossrank_files`, the corpus `crossrank_corpus`, a batch of
searches -> pages `crossrank_pages`; this one runs them over the splits and writes the files.

Source files (found in SRC or any subfolder): `Multimodal_Train.parquet` and/or
`Multimodal_Test.parquet` (one row per search: `query`, `search_idx`, and the list-of-struct column
`search_result_details_with_idx` with `candidate_idx`, `label`, `position`, `upstream_label`,
`candidate_feat_4`, `candidate_feat_5`) and `MultiModalCorpus.parquet` (row index = `candidate_idx`,
or an explicit `candidate_idx` column: `modal`, `query_intent`, `real_title`, `abs_basic`,
`title_highlight_basic`, `query_feat_1..5`, `candidate_feat_1..5`).

Output: DIR/train.parquet, DIR/test.parquet, DIR/import.json.

Mapping:
  * `modal` '0' -> doc, '1' -> video by default (`--import.modal_map '{"0": doc, "1": image}'` etc.
    changes it). The release does not say which result type each code is, so this default is an
    assumption: SMAR's whole pages mix web documents with rich-media results, and we read '0' as the
    documents and '1' as the visual type. Only the modality names change with the map, not the features (both codes
    carry the same columns). Any other `modal` value is an error.
  * `label` (0-4 page-level grade) -> relevance; null/NaN = unannotated (-1); a non-integer or a
    value outside 0-4 raises PageValidationError naming the page and field.
  * per-impression `upstream_label` (the single-modal ranker's score) -> single_modal_score.
  * item features: corpus numerics `query_feat_*` and `candidate_feat_*`, the per-impression
    `candidate_feat_4/5`, a hashed one-hot of `query_intent`, title/abstract lengths, the lexical
    overlap of the query with the title, abstract and highlighted title, and hashed bags of the
    title and abstract. Numeric cells may be numbers, strings of numbers ("0.3", "[1, 2]", "1 2") or
    lists of numbers; every cell of a column must have the same length.
  * query features: hashed query text and its length, and the corpus's `query_feat_*` (query-level
    columns repeated on every candidate row: their mean over the page's candidates; they stay among
    the item features too). CrossRank has no user data: user_dim = 0.
Clicks and dwell are not in the data (left unknown).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pretrain.importers.common import (
    Importer,
    SourceFormatError,
    batches,
    count_rows,
    limit_rows,
    scalar_column,
    write_page_file,
)
from pretrain.importers.config import CrossRankConfig
from pretrain.importers.crossrank_corpus import CorpusSource
from pretrain.importers.crossrank_files import (
    DETAIL_FIELDS,
    SEARCH_COLUMNS,
    SINGLE_FILE,
    SINGLE_MODAL_MIN_SEARCH_IDX,
    CrossRankFiles,
)
from pretrain.importers.crossrank_pages import CrossRankLayout, CrossRankPages


class CrossRankImporter(Importer):
    """Converts CrossRank files into page files. See the module docstring for the mapping."""

    format = "crossrank"

    def __init__(self, src: str | Path, cfg: CrossRankConfig | None = None) -> None:
        counters = (
            "skipped_empty_pages",
            "imputed_values",
            "unlabelled_items",
            "pages_with_varying_query_feat",
        )
        super().__init__(src, cfg or CrossRankConfig(), counters)
        self.files = CrossRankFiles(self.src)
        self.corpus = CorpusSource([self.files.corpus], self.cfg, self.stats)
        # The single-modal part (optional): SingleModal_Train.parquet with its own corpus in parts.
        self.files.check_single()
        self.single_corpus = None
        if self.files.single is not None:
            self.single_corpus = CorpusSource(self.files.single_corpus, self.cfg, self.stats)
            if self.single_corpus.numeric_names != self.corpus.numeric_names:
                raise SourceFormatError(
                    f"{self.single_corpus.file}: numeric column widths {self.single_corpus.numeric_names} "
                    f"differ from {self.files.corpus}'s {self.corpus.numeric_names}"
                )
        self.layout = CrossRankLayout(
            self.cfg, self.corpus.numeric_names, self.files.impression_widths(self.cfg.batch_rows)
        )
        self.builder = CrossRankPages(self.layout, self.stats)

    @property
    def feature_names(self) -> list[str]:
        return self.layout.feature_names

    @property
    def query_feature_names(self) -> list[str]:
        return self.layout.query_feature_names

    @property
    def feature_dims(self) -> dict[str, int]:
        return self.layout.feature_dims

    def _write_split(self, out: Path, split: str, f: Path) -> dict | None:
        n = count_rows([f])
        total = n if self.cfg.limit is None else min(n, self.cfg.limit)
        return write_page_file(
            out / f"{split}.parquet",
            self.feature_dims,
            limit_rows(batches([f], list(SEARCH_COLUMNS), self.cfg.batch_rows), self.cfg.limit),
            lambda b: self.builder.pages(b, split, str(f), self.corpus),
            str(f),
            progress=(f"crossrank {split}", total),
        )

    def _run_single(self, out: Path) -> dict | None:
        """SingleModal_Train rows with search_idx > SINGLE_MODAL_MIN_SEARCH_IDX -> single_modal.parquet."""
        f = self.files.single

        def single_modal_rows():
            for b in batches([f], list(SEARCH_COLUMNS), self.cfg.batch_rows):
                idx = scalar_column(b.column("search_idx"), str(f), "search_idx")
                yield b.filter(pa.array(idx > SINGLE_MODAL_MIN_SEARCH_IDX))

        return write_page_file(
            out / "single_modal.parquet",
            self.feature_dims,
            limit_rows(single_modal_rows(), self.cfg.limit),
            lambda b: self.builder.pages(b, "single", str(f), self.single_corpus) if b.num_rows else None,
            str(f),
        )

    def write(self, out: Path) -> tuple[dict[str, dict | None], dict]:
        """Each split's pages, then the single-modal part."""
        outputs = {split: self._write_split(out, split, f) for split, f in self.files.search.items()}
        if self.files.single is not None:
            outputs["single_modal"] = self._run_single(out)
        return outputs, self._details()

    def _details(self) -> dict:
        return {
            "feature_names": {m: (self.feature_names if d else []) for m, d in self.feature_dims.items()},
            "query_dim": len(self.query_feature_names),
            "query_feature_names": self.query_feature_names,
            "user_dim": 0,
            "labels": "label (0-4 page-level grade) -> relevance; null/NaN -> unannotated",
            "single_modal": (
                f"{SINGLE_FILE} rows with search_idx > {SINGLE_MODAL_MIN_SEARCH_IDX} -> single_modal.parquet"
                if self.files.single is not None
                else "none (no SingleModal_Train.parquet): single-modal scores are upstream_label"
            ),
            "modalities": {f"modal {k!r}": v for k, v in self.cfg.modal_map.items()},
        }


def import_crossrank(src: str | Path, out: str | Path, cfg: CrossRankConfig | None = None) -> dict:
    """Convert CrossRank files into page files under `out`; returns the summary written to import.json."""
    return CrossRankImporter(src, cfg).run(out)


__all__ = [
    "DETAIL_FIELDS",
    "SINGLE_MODAL_MIN_SEARCH_IDX",
    "CrossRankConfig",
    "CrossRankImporter",
    "import_crossrank",
]
