"""A world in CrossRank's published schema (what pretrain.importers.crossrank reads).

Layout written (see /work/shared/REFERENCES.md):
  Multimodal_Train.parquet   the pool pages, then the valid pages (so `--data_split.valid_fraction`, 1/3
                             by default, of the default world's train rows gives back exactly its valid
                             split, the last ones)
  Multimodal_Test.parquet    the test pages
  MultiModalCorpus.parquet   one row per (page, item), row index = candidate_idx
  SingleModal_Train.parquet  the world's single-modal pages, search_idx above 24009 (the authors' code
                             treats those as single-modal annotations)
  SingleModalCorpus_part1..3.parquet  their corpus, row index = candidate_idx, split in three parts
Traffic pages are not exported (CrossRank has no unlabelled traffic).

Mapping (what each published column carries):
  * `label` = the item's cross-modal grade (simulator truth; the dataset publishes page labels for
    every split), or, on single-modal rows, the within-modality label;
  * `upstream_label` = the page's `single_modal_score` where known (null otherwise);
  * `modal` = the modality code (`MODAL_CODES`: '0' doc, '1' video as the importer's default map,
    '2' image, '3' answer; import with `--import.modal_map` `MODAL_MAP_ARG`);
  * `candidate_feat_1` = the item's features (zero-padded to the widest modality, a list per cell as
    the importer accepts), `query_feat_1` = the page's query features, `query_feat_2` = its user
    features (CrossRank has no user table), the other numeric columns 0;
  * `query` = a token standing for the world's query id, the same form for every split
    (`QueryTokens`: "q" + 12 digits of a fixed hash of a running number). CrossRank's `query` is the
    query text, which the importer both groups pages by and hashes into query features; the world has
    no text, and its ids differ in form by split ("sm-doc-q…" vs "pool-q…" vs "test-q…"), so writing
    them raw would hand every model a feature that tells single-modal from whole-page and train from
    test queries. `real_title` / `abs_basic` / `title_highlight_basic` are empty (the world
    has no text), `query_intent` empty.
Written in batches of pages (ParquetWriter), so memory stays bounded by the world itself.
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
from pretrain.importers.crossrank import DETAIL_FIELDS, SINGLE_MODAL_MIN_SEARCH_IDX
from pretrain.importers.text import splitmix64

MODAL_CODES: dict[str, str] = {"doc": "0", "video": "1", "image": "2", "answer": "3"}
MODAL_MAP: dict[str, str] = {c: m for m, c in MODAL_CODES.items()}  # what `--import.modal_map` takes
MODAL_MAP_ARG = json.dumps(MODAL_MAP)


class QueryTokens:
    """World query id -> an opaque token of one fixed form (see the module docstring)."""

    def __init__(self) -> None:
        self.of: dict[str, str] = {}
        self.used: set[str] = set()

    def __call__(self, query_ids: np.ndarray) -> list[str]:
        out = []
        for q in query_ids:
            tok = self.of.get(q)
            if tok is None:
                k = len(self.of)
                while True:  # a hash collision (never seen at 1e12) takes the next number
                    tok = f"q{int(splitmix64(np.array([k], np.uint64))[0]) % 10**12:012d}"
                    if tok not in self.used:
                        break
                    k += 1 << 40
                self.of[q], tok = tok, tok
                self.used.add(tok)
            out.append(tok)
        return out


class CrossRankWriter:
    """Streams pages into one search file and its corpus (or corpus parts), candidate ids running on."""

    def __init__(
        self, search_path: Path, corpus_paths: list[Path], corpus_rows: int, width: int, tokens: QueryTokens
    ) -> None:
        self.tokens = tokens
        self.search_path = search_path
        self.corpus_paths = corpus_paths
        self.part_rows = -(-max(corpus_rows, 1) // len(corpus_paths))  # ceil
        self.width = width
        self.search_writer: pq.ParquetWriter | None = None
        self.corpus_writer: pq.ParquetWriter | None = None
        self.part = -1
        self.part_left = 0
        self.next_candidate = 0
        self.rows = 0

    def _write_corpus(self, table: pa.Table) -> None:
        start = 0
        while start < table.num_rows:
            if self.part_left == 0:
                if self.corpus_writer is not None:
                    self.corpus_writer.close()
                self.part += 1
                self.corpus_writer = pq.ParquetWriter(
                    self.corpus_paths[self.part], table.schema, compression="zstd"
                )
                self.part_left = self.part_rows
            take = min(self.part_left, table.num_rows - start)
            self.corpus_writer.write_table(table.slice(start, take))
            self.part_left -= take
            start += take

    def _search_table(self, pages: Pages, labels: np.ndarray, cand: np.ndarray, first: int) -> pa.Table:
        """One row per page: the query token, search_idx and the impressions' details."""
        n, t = len(pages), pages.n_items
        pos = np.arange(t) - np.repeat(pages.offsets[:-1], pages.sizes) + 1
        score = pages.single_modal_score.astype(np.float64)
        lab = np.asarray(labels, np.int64)
        zeros = pa.array(np.zeros(t, np.float64))
        details = pa.StructArray.from_arrays(
            [
                pa.array(cand),
                pa.array(lab, pa.int64(), mask=lab < 0),
                pa.array(pos.astype(np.int64)),
                pa.array(score, pa.float64(), mask=np.isnan(score)),
                zeros,
                zeros,
            ],
            names=list(DETAIL_FIELDS),
        )
        return pa.table(
            {
                "query": pa.array(self.tokens(pages.query_id)),
                "search_idx": pa.array(np.arange(first, first + n, dtype=np.int64)),
                "search_result_details_with_idx": pa.ListArray.from_arrays(
                    pa.array(pages.offsets.astype(np.int32)), details
                ),
            }
        )

    def _corpus_table(self, pages: Pages) -> pa.Table:
        """One row per item: modal code, the item, query and user features as numeric lists."""
        t = pages.n_items
        score = pages.single_modal_score.astype(np.float64)
        feats = np.zeros((t, self.width), np.float32)
        w = min(self.width, pages.features.shape[1])
        feats[:, :w] = pages.features[:, :w]
        zeros = pa.array(np.zeros(t, np.float64))
        page_of = pages.page_of_item
        empty = pa.array([""] * t)
        return pa.table(
            {
                "modal": pa.array(np.array([MODAL_CODES[m] for m in MODALITIES], object)[pages.modality]),
                "query_intent": empty,
                "real_title": empty,
                "abs_basic": empty,
                "title_highlight_basic": empty,
                "query_feat_1": list_column(pages.query_features[page_of]),
                "query_feat_2": list_column(pages.user_features[page_of]),
                **{f"query_feat_{i}": zeros for i in (3, 4, 5)},
                "candidate_feat_1": list_column(feats),
                **{f"candidate_feat_{i}": zeros for i in (2, 3, 4, 5)},
                "upstream_label": pa.array(score, pa.float64(), mask=np.isnan(score)),
            }
        )

    def write(self, pages: Pages, labels: np.ndarray, first_search_idx: int) -> None:
        n, t = len(pages), pages.n_items
        if n == 0:
            return
        cand = np.arange(self.next_candidate, self.next_candidate + t, dtype=np.int64)
        self.next_candidate += t
        search = self._search_table(pages, labels, cand, first_search_idx)
        corpus = self._corpus_table(pages)
        if self.search_writer is None:
            self.search_writer = pq.ParquetWriter(self.search_path, search.schema, compression="zstd")
        self.search_writer.write_table(search)
        self._write_corpus(corpus)
        self.rows += n

    def close(self) -> None:
        for w in (self.search_writer, self.corpus_writer):
            if w is not None:
                w.close()


def _write_whole_pages(world, out: Path, width: int, tokens: QueryTokens, batch_pages: int, scores) -> tuple:
    """Train (pool, valid) and test search files over one corpus: candidate ids run on across both.
    Returns (rows per search file, the next search_idx)."""
    counts: dict[str, int] = {}
    corpus_rows = sum(getattr(world, n).pages.n_items for n in ("pool", "valid", "test"))
    corpus = CrossRankWriter(
        out / "Multimodal_Train.parquet", [out / "MultiModalCorpus.parquet"], corpus_rows, width, tokens
    )
    search_idx = 0
    for name, splits in (
        ("Multimodal_Train.parquet", ("pool", "valid")),
        ("Multimodal_Test.parquet", ("test",)),
    ):
        corpus.search_path, corpus.search_writer, corpus.rows = out / name, None, 0
        for split_name in splits:
            split = getattr(world, split_name)
            labelled = split.pages.with_items(relevance=split.truth.relevance)
            if scores is not None:
                labelled = labelled.with_items(single_modal_score=np.asarray(scores[split_name], np.float32))
            for idx in chunks(len(labelled), batch_pages):
                sub = labelled.select(idx)
                corpus.write(sub, sub.relevance, search_idx)
                search_idx += len(idx)
        if corpus.search_writer is not None:
            corpus.search_writer.close()
        counts[name] = corpus.rows
        corpus.search_writer = None
    corpus.close()
    return counts, search_idx


def _write_single_modal(
    world, out: Path, width: int, tokens: QueryTokens, batch_pages: int, idx0: int
) -> int:
    """The single-modal pages, search_idx from `idx0` on, corpus in three parts; returns the rows."""
    sm_rows = sum(s.pages.n_items for s in world.single_modal.values())
    sw = CrossRankWriter(
        out / "SingleModal_Train.parquet",
        [out / f"SingleModalCorpus_part{i}.parquet" for i in (1, 2, 3)],
        sm_rows,
        width,
        tokens,
    )
    for m in MODALITIES:
        if m not in world.single_modal:
            continue
        pages = world.single_modal[m].pages
        for idx in chunks(len(pages), batch_pages):
            sub = pages.select(idx)
            sw.write(sub, sub.relevance, idx0)
            idx0 += len(idx)
    sw.close()
    return sw.rows


def export_crossrank(
    world,
    out: str | Path,
    single_modal: bool = ExportConfig.single_modal,
    batch_pages: int = ExportConfig.batch_pages,
    scores: dict[str, np.ndarray] | None = None,
) -> dict:
    """Write `world` (an envs.world.World) in CrossRank's schema under `out`; returns a summary.
    `scores`: split -> (T,) upstream score per item (default: the pages' own `single_modal_score`)."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    width = max(world.pool.pages.feature_dims.values())
    tokens = QueryTokens()
    counts, search_idx = _write_whole_pages(world, out, width, tokens, batch_pages, scores)
    if single_modal:
        idx0 = max(SINGLE_MODAL_MIN_SEARCH_IDX + 1, search_idx)
        counts["SingleModal_Train.parquet"] = _write_single_modal(
            world, out, width, tokens, batch_pages, idx0
        )
    summary = {
        "format": "crossrank",
        "rows": counts,
        "modal_map": MODAL_MAP,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(out / "export.json", summary)
    return summary


__all__ = ["MODAL_CODES", "MODAL_MAP", "MODAL_MAP_ARG", "CrossRankWriter", "QueryTokens", "export_crossrank"]
