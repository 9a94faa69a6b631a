"""`smar export --format crossrank WORLD --out DIR`: a synthetic world as files in a real dataset's
published schema, the same schema `smar import` reads (pretrain.importers).

It makes the real-data path testable end to end, and measurable at any size, without the datasets.

CrossRank layout written (see pretrain.importers.crossrank and /work/shared/REFERENCES.md):
  Multimodal_Train.parquet   the pool pages, then the valid pages (so `--valid-fraction 1/3` of the
                             default world's train rows gives back exactly its valid split, the last ones)
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
    '2' image, '3' answer; import with `--modal-map 0=doc,1=video,2=image,3=answer`);
  * `candidate_feat_1` = the item's features (zero-padded to the widest modality, a list per cell as
    the importer accepts), `query_feat_1` = the page's query features, `query_feat_2` = its user
    features (CrossRank has no user table), the other numeric columns 0;
  * `query` = the query id; `real_title` / `abs_basic` / `title_highlight_basic` are empty (the world
    has no text), `query_intent` empty.
Written in batches of pages (ParquetWriter), so memory stays bounded by the world itself.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from envs.atomic_io import write_json_atomic
from envs.pages import MODALITIES, Pages
from pretrain.importers.crossrank import DETAIL_FIELDS, SINGLE_MODAL_MIN_SEARCH_IDX

MODAL_CODES: dict[str, str] = {"doc": "0", "video": "1", "image": "2", "answer": "3"}
MODAL_MAP_ARG = ",".join(f"{c}={m}" for m, c in MODAL_CODES.items())
FORMATS = ("crossrank",)


def _list_col(mat: np.ndarray) -> pa.ListArray:
    n, k = mat.shape
    return pa.ListArray.from_arrays(
        pa.array(np.arange(n + 1, dtype=np.int32) * k), pa.array(mat.ravel(), pa.float32())
    )


class _CrossRankWriter:
    """Streams pages into one search file and its corpus (or corpus parts), candidate ids running on."""

    def __init__(self, search_path: Path, corpus_paths: list[Path], corpus_rows: int, width: int) -> None:
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

    def write(self, pages: Pages, labels: np.ndarray, first_search_idx: int) -> None:
        n, t = len(pages), pages.n_items
        if n == 0:
            return
        cand = np.arange(self.next_candidate, self.next_candidate + t, dtype=np.int64)
        self.next_candidate += t
        pos = np.arange(t) - np.repeat(pages.offsets[:-1], pages.sizes) + 1
        score = pages.single_modal_score.astype(np.float64)
        lab = np.asarray(labels, np.int64)
        feats = np.zeros((t, self.width), np.float32)
        w = min(self.width, pages.features.shape[1])
        feats[:, :w] = pages.features[:, :w]
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
        search = pa.table(
            {
                "query": pa.array(pages.query_id.astype(str)),
                "search_idx": pa.array(np.arange(first_search_idx, first_search_idx + n, dtype=np.int64)),
                "search_result_details_with_idx": pa.ListArray.from_arrays(
                    pa.array(pages.offsets.astype(np.int32)), details
                ),
            }
        )
        page_of = pages.page_of_item
        empty = pa.array([""] * t)
        corpus = pa.table(
            {
                "modal": pa.array(np.array([MODAL_CODES[m] for m in MODALITIES], object)[pages.modality]),
                "query_intent": empty,
                "real_title": empty,
                "abs_basic": empty,
                "title_highlight_basic": empty,
                "query_feat_1": _list_col(pages.query_features[page_of]),
                "query_feat_2": _list_col(pages.user_features[page_of]),
                **{f"query_feat_{i}": zeros for i in (3, 4, 5)},
                "candidate_feat_1": _list_col(feats),
                **{f"candidate_feat_{i}": zeros for i in (2, 3, 4, 5)},
                "upstream_label": pa.array(score, pa.float64(), mask=np.isnan(score)),
            }
        )
        if self.search_writer is None:
            self.search_writer = pq.ParquetWriter(self.search_path, search.schema, compression="zstd")
        self.search_writer.write_table(search)
        self._write_corpus(corpus)
        self.rows += n

    def close(self) -> None:
        for w in (self.search_writer, self.corpus_writer):
            if w is not None:
                w.close()


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield np.arange(s, min(n, s + size))


def export_crossrank(world, out: str | Path, single_modal: bool = True, batch_pages: int = 2048) -> dict:
    """Write `world` (an envs.world.World) in CrossRank's schema under `out`; returns a summary."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    width = max(world.pool.pages.feature_dims.values())
    counts: dict[str, int] = {}
    train = [world.pool, world.valid]
    corpus_rows = sum(s.pages.n_items for s in (*train, world.test))
    corpus = _CrossRankWriter(
        out / "Multimodal_Train.parquet", [out / "MultiModalCorpus.parquet"], corpus_rows, width
    )
    search_idx = 0
    # one corpus for train and test: candidate ids run on across both search files
    for name, splits in (("Multimodal_Train.parquet", train), ("Multimodal_Test.parquet", [world.test])):
        corpus.search_path, corpus.search_writer, corpus.rows = out / name, None, 0
        for split in splits:
            labelled = split.pages.with_items(relevance=split.truth.relevance)
            for idx in _chunks(len(labelled), batch_pages):
                sub = labelled.select(idx)
                corpus.write(sub, sub.relevance, search_idx)
                search_idx += len(idx)
        if corpus.search_writer is not None:
            corpus.search_writer.close()
        counts[name] = corpus.rows
        corpus.search_writer = None
    corpus.close()
    if single_modal:
        sm_rows = sum(s.pages.n_items for s in world.single_modal.values())
        sw = _CrossRankWriter(
            out / "SingleModal_Train.parquet",
            [out / f"SingleModalCorpus_part{i}.parquet" for i in (1, 2, 3)],
            sm_rows,
            width,
        )
        idx0 = max(SINGLE_MODAL_MIN_SEARCH_IDX + 1, search_idx)
        for m in MODALITIES:
            if m not in world.single_modal:
                continue
            pages = world.single_modal[m].pages
            for idx in _chunks(len(pages), batch_pages):
                sub = pages.select(idx)
                sw.write(sub, sub.relevance, idx0)
                idx0 += len(idx)
        sw.close()
        counts["SingleModal_Train.parquet"] = sw.rows
    summary = {
        "format": "crossrank",
        "rows": counts,
        "modal_map": MODAL_MAP_ARG,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(out / "export.json", summary)
    return summary


# ----------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", required=True, choices=FORMATS, help="target dataset schema")
    p.add_argument("world", help="world folder (`smar world --out WORLD`)")
    p.add_argument("--out", required=True, help="output folder for the dataset files")
    p.add_argument("--no-single-modal", action="store_true", help="omit the single-modal files")
    p.add_argument("--batch-pages", type=int, default=2048)


def run(args: argparse.Namespace) -> int:
    from pretrain.world_io import load_world

    world = load_world(args.world)
    s = export_crossrank(world, args.out, single_modal=not args.no_single_modal, batch_pages=args.batch_pages)
    rows = ", ".join(f"{k} {v}" for k, v in s["rows"].items())
    print(f"wrote {args.out}: {rows} search rows in {s['seconds']} s")
    print(f"import with: smar import --format crossrank {args.out} --out DIR --modal-map {s['modal_map']}")
    return 0
