"""CrossRank's source files: the published columns, finding and checking the files (the whole-page part,
its corpus, the optional single-modal part and its corpus in parts), and the widths of the per-impression
features."""

from __future__ import annotations

from pathlib import Path

from pretrain.importers.common import (
    SourceFormatError,
    batches,
    find_file,
    numeric_matrix,
    require_columns,
    require_search_columns,
)

SEARCH_COLUMNS = ("query", "search_idx", "search_result_details_with_idx")
DETAIL_FIELDS = (
    "candidate_idx",
    "label",
    "position",
    "upstream_label",
    "candidate_feat_4",
    "candidate_feat_5",
)
IMPRESSION_FEATS = ("candidate_feat_4", "candidate_feat_5")
CORPUS_NUMERIC = tuple(f"query_feat_{i}" for i in range(1, 6)) + tuple(
    f"candidate_feat_{i}" for i in range(1, 6)
)
CORPUS_COLUMNS = (
    "modal",
    "query_intent",
    "real_title",
    "abs_basic",
    "title_highlight_basic",
    *CORPUS_NUMERIC,
)
FILES = (("Multimodal_Train.parquet", "train"), ("Multimodal_Test.parquet", "test"))
CORPUS_FILE = "MultiModalCorpus.parquet"
# The single-modal part. In the authors' code, queries with search_idx above this are single-modal
# annotations (labels comparable within a modality only); rows at or below it are skipped.
SINGLE_FILE = "SingleModal_Train.parquet"
SINGLE_CORPUS_FILES = tuple(f"SingleModalCorpus_part{i}.parquet" for i in (1, 2, 3))
SINGLE_MODAL_MIN_SEARCH_IDX = 24009


def _check_search(f: Path) -> None:
    require_search_columns([f], SEARCH_COLUMNS, DETAIL_FIELDS)


class CrossRankFiles:
    """The files of one CrossRank dataset folder, checked before anything is read in bulk."""

    def __init__(self, src: Path) -> None:
        self.src = src
        if not src.is_dir():
            raise SourceFormatError(f"{src}: not a folder (expected the CrossRank Parquet files)")
        search = {split: find_file(src, name, required=False) for name, split in FILES}
        self.search: dict[str, Path] = {s: f for s, f in search.items() if f is not None}
        if not self.search:
            raise SourceFormatError(
                f"{src}: neither Multimodal_Train.parquet nor Multimodal_Test.parquet found"
            )
        self.corpus = find_file(src, CORPUS_FILE)
        for f in self.search.values():
            _check_search(f)
        require_columns([self.corpus], CORPUS_COLUMNS)
        self.single = find_file(src, SINGLE_FILE, required=False)
        self.single_corpus: list[Path] = []

    def check_single(self) -> None:
        """The single-modal part, when present (checked after the whole-page corpus has been opened)."""
        if self.single is None:
            return
        _check_search(self.single)
        parts = [find_file(self.src, name, required=False) for name in SINGLE_CORPUS_FILES]
        self.single_corpus = [x for x in parts if x is not None]
        if not self.single_corpus:
            raise SourceFormatError(
                f"{self.src}: {SINGLE_FILE} is present but none of {list(SINGLE_CORPUS_FILES)}"
            )
        require_columns(self.single_corpus, CORPUS_COLUMNS)

    def impression_widths(self, batch_rows: int) -> dict[str, int]:
        """Widths of the per-impression features, from the first non-null value in the logs."""
        width = {}
        for c in IMPRESSION_FEATS:
            for f in self.search.values():
                for b in batches([f], ["search_result_details_with_idx"], batch_rows):
                    vals = b.column(0).flatten().field(c).drop_null()
                    if len(vals):
                        width[c] = numeric_matrix(vals.slice(0, 1), f, c)[1]
                        break
                if c in width:
                    break
            width.setdefault(c, 1)
        return width
