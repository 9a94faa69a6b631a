"""CrossRank (Baidu's whole-page set, released with SMAR, CC BY-NC 4.0) -> the page contract.

Source files (found in SRC or any subfolder): `Multimodal_Train.parquet` and/or
`Multimodal_Test.parquet` (one row per search: `query`, `search_idx`, and the list-of-struct column
`search_result_details_with_idx` with `candidate_idx`, `label`, `position`, `upstream_label`,
`candidate_feat_4`, `candidate_feat_5`) and `MultiModalCorpus.parquet` (row index = `candidate_idx`,
or an explicit `candidate_idx` column: `modal`, `query_intent`, `real_title`, `abs_basic`,
`title_highlight_basic`, `query_feat_1..5`, `candidate_feat_1..5`).

Output: DIR/train.parquet, DIR/test.parquet, DIR/import.json.

Mapping:
  * `modal` '0' -> doc, '1' -> video by default (`--modal-map 0=doc,1=image` etc. changes it). The
    release does not say which result type each code is, so this default is an assumption: SMAR's
    whole pages mix web documents with rich-media results, and we read '0' as the documents and '1'
    as the visual type. Only the modality names change with the map, not the features (both codes
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

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from envs.pages import MAX_GRADE, MODALITIES, MODALITY_ID, Pages
from pretrain.importers.common import (
    PageFileWriter,
    SourceFormatError,
    batches,
    check_finite,
    count_rows,
    find_file,
    numeric_matrix,
    require_columns,
    require_struct_fields,
    write_summary,
)
from pretrain.importers.text import categorical_onehot, hash_texts, normalise_text
from pretrain.page import PageValidationError

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


@dataclass
class _Corpus:
    """Per-candidate feature blocks of some corpus rows (a row group, or the rows a batch needs)."""

    file: str
    numeric: np.ndarray
    numeric_names: list[str]
    intent: np.ndarray
    lengths: np.ndarray
    title: np.ndarray
    highlight: np.ndarray
    abstract: np.ndarray
    modal: np.ndarray


class _CorpusSource:
    """A corpus (one file, or parts whose concatenated rows are indexed by candidate_idx) read one
    Parquet row group at a time, on demand, with a few groups cached: memory stays bounded by the
    row groups a batch of searches touches, not by the corpus (an export writes candidates in page
    order, so consecutive batches touch consecutive groups)."""

    CACHE_GROUPS = 4

    def __init__(self, importer: CrossRankImporter, files: list[Path]) -> None:
        self.importer = importer
        self.files = files
        self.file = str(files[0]) if len(files) == 1 else ", ".join(str(x) for x in files)
        self.parquet = [pq.ParquetFile(f) for f in files]
        has_idx = {"candidate_idx" in pf.schema_arrow.names for pf in self.parquet}
        if len(has_idx) > 1:
            raise SourceFormatError(f"{files}: some corpus parts have a 'candidate_idx' column, others not")
        self.groups = [(fi, g) for fi, pf in enumerate(self.parquet) for g in range(pf.num_row_groups)]
        sizes = [self.parquet[fi].metadata.row_group(g).num_rows for fi, g in self.groups]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_rows = int(self.starts[-1])
        self.row_of: np.ndarray | None = None  # candidate_idx -> corpus row; None: row index = candidate_idx
        if has_idx == {True}:
            ids = np.concatenate(
                [
                    np.asarray(b.column(0).to_numpy(zero_copy_only=False), np.int64)
                    for b in batches(files, ["candidate_idx"], 65536)
                ]
            )
            self.row_of = np.full(int(ids.max()) + 1 if len(ids) else 1, -1, np.int64)
            self.row_of[ids] = np.arange(len(ids))
        self.cache: dict[int, _Corpus] = {}
        self.seen: set[int] = set()  # groups read once (imputation is counted on the first read only)
        self.widths: dict[str, int] | None = None
        self.numeric_names: list[str] = []
        if self.groups:
            first = self._group(0)
            self.numeric_names = first.numeric_names

    def _group(self, g: int) -> _Corpus:
        if g in self.cache:
            self.cache[g] = self.cache.pop(g)  # most recently used last
            return self.cache[g]
        fi, rg = self.groups[g]
        t = self.parquet[fi].read_row_group(rg, columns=list(CORPUS_COLUMNS))
        imputed = self.importer.stats["imputed_values"]
        block = self.importer._corpus_block(t, str(self.files[fi]), self.widths)
        if g in self.seen:
            self.importer.stats["imputed_values"] = imputed
        self.seen.add(g)
        if self.widths is None:
            self.widths = {c: int(n) for c, n in zip(CORPUS_NUMERIC, self._widths_of(block.numeric_names))}
        self.cache[g] = block
        while len(self.cache) > self.CACHE_GROUPS:
            self.cache.pop(next(iter(self.cache)))
        return block

    @staticmethod
    def _widths_of(names: list[str]) -> list[int]:
        return [sum(1 for n in names if n == c or n.startswith(f"{c}[")) for c in CORPUS_NUMERIC]

    def lookup(self, cand: np.ndarray, source: str, page_ids: np.ndarray, page_of: np.ndarray) -> _Corpus:
        """The corpus blocks of `cand` (candidate_idx per item), row-aligned with `cand`."""
        if self.row_of is None:
            rows = np.where((cand >= 0) & (cand < self.n_rows), cand, -1)
        else:
            inside = (cand >= 0) & (cand < len(self.row_of))
            rows = np.full(len(cand), -1, np.int64)
            rows[inside] = self.row_of[cand[inside]]
        if (rows < 0).any():
            i = int(np.nonzero(rows < 0)[0][0])
            raise SourceFormatError(
                f"{source}: page {page_ids[page_of[i]]!r}: candidate_idx {cand[i]} is not in {self.file}"
            )
        group = np.searchsorted(self.starts, rows, side="right") - 1
        n, width = len(cand), len(self.numeric_names)
        cfg = self.importer.cfg
        out = _Corpus(
            file=self.file,
            numeric=np.zeros((n, width)),
            numeric_names=self.numeric_names,
            intent=np.zeros((n, cfg.cat_buckets), np.float32),
            lengths=np.zeros((n, 2)),
            title=np.zeros((n, cfg.title_dim), np.float32),
            highlight=np.zeros((n, cfg.title_dim), np.float32),
            abstract=np.zeros((n, cfg.text_dim), np.float32),
            modal=np.empty(n, dtype=object),
        )
        for g in np.unique(group):
            sel = np.nonzero(group == g)[0]
            block, local = self._group(int(g)), rows[sel] - self.starts[g]
            for name in ("numeric", "intent", "lengths", "title", "highlight", "abstract", "modal"):
                getattr(out, name)[sel] = getattr(block, name)[local]
        return out


@dataclass(frozen=True)
class CrossRankConfig:
    modal_map: dict[str, str] = field(default_factory=lambda: {"0": "doc", "1": "video"})
    text_dim: int = 32  # hashed abstract (titles use text_dim // 2)
    query_text_dim: int = 32
    cat_buckets: int = 8
    batch_rows: int = 1024
    impute_missing: bool = False
    limit: int | None = None
    max_chars: int = 512
    # False: `query` is an identifier, not text (as in `smar export`'s copies): it still groups the
    # pages but is not hashed into query features, where it would only be noise.
    query_text: bool = True

    def __post_init__(self) -> None:
        bad = [m for m in self.modal_map.values() if m not in MODALITIES]
        if bad:
            raise ValueError(f"modal_map targets must be among {MODALITIES}, got {bad}")

    @property
    def title_dim(self) -> int:
        return max(self.text_dim // 2, 1)


def _scalar_column(arr: pa.Array, source: str, name: str) -> np.ndarray:
    return numeric_matrix(arr, source, name, width=1)[0][:, 0]


class CrossRankImporter:
    """Converts CrossRank files into page files. See the module docstring for the mapping."""

    def __init__(self, src: str | Path, cfg: CrossRankConfig | None = None) -> None:
        self.src = Path(src)
        self.cfg = cfg or CrossRankConfig()
        if not self.src.is_dir():
            raise SourceFormatError(f"{self.src}: not a folder (expected the CrossRank Parquet files)")
        self.search = {split: find_file(self.src, name, required=False) for name, split in FILES}
        self.search = {s: f for s, f in self.search.items() if f is not None}
        if not self.search:
            raise SourceFormatError(
                f"{self.src}: neither Multimodal_Train.parquet nor Multimodal_Test.parquet found"
            )
        self.corpus_file = find_file(self.src, CORPUS_FILE)
        for f in self.search.values():
            schema = require_columns([f], SEARCH_COLUMNS)
            require_struct_fields(f, schema, "search_result_details_with_idx", DETAIL_FIELDS)
        require_columns([self.corpus_file], CORPUS_COLUMNS)
        self.stats = {
            "skipped_empty_pages": 0,
            "imputed_values": 0,
            "unlabelled_items": 0,
            "pages_with_varying_query_feat": 0,
        }
        self.corpus = _CorpusSource(self, [self.corpus_file])
        self.corpus_numeric_names = self.corpus.numeric_names
        # The single-modal part (optional): SingleModal_Train.parquet with its own corpus in parts.
        self.single_file = find_file(self.src, SINGLE_FILE, required=False)
        self.single_corpus = None
        if self.single_file is not None:
            schema = require_columns([self.single_file], SEARCH_COLUMNS)
            require_struct_fields(self.single_file, schema, "search_result_details_with_idx", DETAIL_FIELDS)
            parts = [find_file(self.src, name, required=False) for name in SINGLE_CORPUS_FILES]
            parts = [x for x in parts if x is not None]
            if not parts:
                raise SourceFormatError(
                    f"{self.src}: {SINGLE_FILE} is present but none of {list(SINGLE_CORPUS_FILES)}"
                )
            require_columns(parts, CORPUS_COLUMNS)
            self.single_corpus = _CorpusSource(self, parts)
            if self.single_corpus.numeric_names != self.corpus_numeric_names:
                raise SourceFormatError(
                    f"{self.single_corpus.file}: numeric column widths {self.single_corpus.numeric_names} "
                    f"differ from {self.corpus_file}'s {self.corpus_numeric_names}"
                )
        self.impression_width = self._impression_widths()

    def _impression_widths(self) -> dict[str, int]:
        """Widths of the per-impression features, from the first non-null value in the logs."""
        width = {}
        for c in IMPRESSION_FEATS:
            for f in self.search.values():
                for b in batches([f], ["search_result_details_with_idx"], self.cfg.batch_rows):
                    vals = b.column(0).flatten().field(c).drop_null()
                    if len(vals):
                        width[c] = numeric_matrix(vals.slice(0, 1), f, c)[1]
                        break
                if c in width:
                    break
            width.setdefault(c, 1)
        return width

    # ------------------------------------------------------------------ corpus
    def _corpus_block(self, t: pa.Table, f: str, widths: dict[str, int] | None) -> _Corpus:
        """Feature blocks of corpus rows `t` (numeric cell widths fixed by `widths` once known)."""
        cfg = self.cfg
        numeric, names = [], []
        for c in CORPUS_NUMERIC:
            mat, k = numeric_matrix(t.column(c), f, c, width=None if widths is None else widths[c])
            numeric.append(mat)
            names += [c] if k == 1 else [f"{c}[{j}]" for j in range(k)]
        titles = t.column("real_title").to_pylist()
        abstracts = t.column("abs_basic").to_pylist()
        lengths = np.column_stack(
            [
                np.log1p([len(normalise_text(x, 10**9)) for x in titles]),
                np.log1p([len(normalise_text(x, 10**9)) for x in abstracts]),
            ]
        ).reshape(t.num_rows, 2)
        corpus = _Corpus(
            file=f,
            numeric=np.concatenate(numeric, axis=1) if numeric else np.zeros((t.num_rows, 0)),
            numeric_names=names,
            intent=categorical_onehot(t.column("query_intent").to_pylist(), cfg.cat_buckets),
            lengths=lengths,
            title=hash_texts(titles, cfg.title_dim, max_chars=cfg.max_chars),
            highlight=hash_texts(
                t.column("title_highlight_basic").to_pylist(), cfg.title_dim, max_chars=cfg.max_chars
            ),
            abstract=hash_texts(abstracts, cfg.text_dim, max_chars=cfg.max_chars),
            modal=np.array(
                ["" if v is None else str(v).strip() for v in t.column("modal").to_pylist()], dtype=object
            ),
        )
        if cfg.impute_missing:
            bad = ~np.isfinite(corpus.numeric)
            self.stats["imputed_values"] += int(bad.sum())
            corpus.numeric[bad] = 0.0
        return corpus

    # ------------------------------------------------------------------ layout
    @property
    def feature_names(self) -> list[str]:
        c = self.cfg
        imp = []
        for name in IMPRESSION_FEATS:
            k = self.impression_width[name]
            imp += [f"impression_{name}"] if k == 1 else [f"impression_{name}[{j}]" for j in range(k)]
        return [
            *self.corpus_numeric_names,
            *imp,
            *(f"query_intent_bucket{i}" for i in range(c.cat_buckets)),
            "log1p_title_chars",
            "log1p_abstract_chars",
            "query_title_sim",
            "query_abstract_sim",
            "query_highlight_sim",
            *(f"title_hash{i}" for i in range(c.title_dim)),
            *(f"abstract_hash{i}" for i in range(c.text_dim)),
        ]

    @property
    def query_numeric_columns(self) -> list[int]:
        """Positions of the corpus's query_feat_* values among the numeric item features."""
        return [i for i, n in enumerate(self.corpus_numeric_names) if n.startswith("query_feat_")]

    @property
    def query_feature_names(self) -> list[str]:
        c = self.cfg
        return [
            *(f"query_hash{i}" for i in range(c.query_text_dim)),
            "log1p_query_chars",
            *(self.corpus_numeric_names[i] for i in self.query_numeric_columns),
        ]

    @property
    def feature_dims(self) -> dict[str, int]:
        d = len(self.feature_names)
        used = set(self.cfg.modal_map.values())
        return {m: (d if m in used else 0) for m in MODALITIES}

    # ------------------------------------------------------------------ pages
    def _pages(
        self, b: pa.RecordBatch, split: str, source: str, corpus: _CorpusSource | None = None
    ) -> Pages:
        cfg, c = self.cfg, corpus or self.corpus
        details = b.column("search_result_details_with_idx")
        sizes = np.asarray(details.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), np.int64)
        keep = sizes > 0
        self.stats["skipped_empty_pages"] += int((~keep).sum())
        flat = details.flatten()
        page_of = np.repeat(np.arange(b.num_rows), sizes)
        search_idx = b.column("search_idx").to_pylist()
        page_ids = np.array([f"{split}-{s}" for s in search_idx], dtype=object)
        cand = flat.field("candidate_idx")
        if cand.null_count:
            i = int(np.nonzero(np.asarray(cand.is_null().to_numpy(zero_copy_only=False)))[0][0])
            raise PageValidationError(
                f"{source}: page {page_ids[page_of[i]]!r}, field 'item_id': null candidate_idx"
            )
        cand = np.asarray(cand.cast(pa.int64()).to_numpy(zero_copy_only=False), np.int64)
        position = _scalar_column(flat.field("position"), source, "position")
        label = _scalar_column(flat.field("label"), source, "label")
        score = _scalar_column(flat.field("upstream_label"), source, "upstream_label")
        imp = [
            numeric_matrix(flat.field(c), source, c, width=self.impression_width[c])[0]
            for c in IMPRESSION_FEATS
        ]
        order = np.lexsort((np.nan_to_num(position, nan=np.inf), page_of))
        cand, label, score, page_of = cand[order], label[order], score[order], page_of[order]
        imp = np.concatenate(imp, axis=1)[order] if imp else np.zeros((len(order), 0))
        item_ids = np.array([f"c{c}" for c in cand], dtype=object)

        known = ~np.isnan(label)
        bad = known & ((label != np.round(label)) | (label < 0) | (label > MAX_GRADE))
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise PageValidationError(
                f"{source}: page {page_ids[page_of[i]]!r}, field 'relevance': candidate {cand[i]} has label {label[i]:g}, expected an integer 0-{MAX_GRADE}"
            )
        relevance = np.where(known, label, -1).astype(np.int8)
        self.stats["unlabelled_items"] += int((~known).sum())
        if np.isinf(score).any():
            i = int(np.nonzero(np.isinf(score))[0][0])
            raise PageValidationError(
                f"{source}: page {page_ids[page_of[i]]!r}, field 'single_modal_score': candidate {cand[i]} has upstream_label {score[i]}"
            )

        c = c.lookup(cand, source, page_ids, page_of)
        rows = np.arange(len(cand))
        modal = c.modal[rows]
        unknown = ~np.isin(modal, list(cfg.modal_map))
        if unknown.any():
            i = int(np.nonzero(unknown)[0][0])
            raise PageValidationError(
                f"{source}: page {page_ids[page_of[i]]!r}, field 'modality': candidate {cand[i]} has modal {modal[i]!r}, expected one of {sorted(cfg.modal_map)}"
            )
        modality = np.array([MODALITY_ID[cfg.modal_map[m]] for m in modal], np.int8)

        queries = b.column("query").to_pylist()
        texts = queries if cfg.query_text else [""] * len(queries)  # the pages' grouping stays `query`
        q_title = hash_texts(texts, cfg.title_dim, max_chars=cfg.max_chars)
        q_abs = hash_texts(texts, cfg.text_dim, max_chars=cfg.max_chars)
        q_hash = (
            q_abs
            if cfg.query_text_dim == cfg.text_dim
            else hash_texts(texts, cfg.query_text_dim, max_chars=cfg.max_chars)
        )
        q_len = np.log1p([len(normalise_text(q, 10**9)) for q in texts])[:, None]
        # The corpus's query_feat_* describe the query, repeated on each of its candidates' rows: they
        # also become the page's query features (their mean over the page's candidates; pages whose
        # candidates disagree are counted), where the rankers' and the reranker's context reads them.
        qcols = self.query_numeric_columns
        qnum = c.numeric[rows][:, qcols]
        n_items = np.bincount(page_of, minlength=b.num_rows).astype(np.float64)
        q_mean = np.zeros((b.num_rows, len(qcols)))
        for j in range(len(qcols)):
            q_mean[:, j] = np.bincount(page_of, weights=qnum[:, j], minlength=b.num_rows)
        q_mean /= np.maximum(n_items, 1.0)[:, None]
        varies = np.zeros(b.num_rows, bool)
        np.logical_or.at(varies, page_of, np.abs(qnum - q_mean[page_of]).max(axis=1, initial=0.0) > 1e-6)
        self.stats["pages_with_varying_query_feat"] += int((varies & keep).sum())
        query_features = np.concatenate([q_hash, q_len, q_mean], axis=1)

        if cfg.impute_missing:
            bad = ~np.isfinite(imp)
            self.stats["imputed_values"] += int(bad.sum())
            imp[bad] = 0.0
        sims = np.column_stack(
            [
                np.einsum("ij,ij->i", q_title[page_of], c.title[rows]),
                np.einsum("ij,ij->i", q_abs[page_of], c.abstract[rows]),
                np.einsum("ij,ij->i", q_title[page_of], c.highlight[rows]),
            ]
        )
        features = np.concatenate(
            [
                c.numeric[rows],
                imp,
                c.intent[rows],
                c.lengths[rows],
                sims,
                c.title[rows],
                c.abstract[rows],
            ],
            axis=1,
        )
        n_num = c.numeric.shape[1] + imp.shape[1]
        check_finite(
            features[:, :n_num],
            self.feature_names,
            source,
            page_ids,
            page_of,
            item_ids,
            "features",
            " (null or NaN in the source; pass --impute-missing to fill with 0)",
        )
        kept = np.nonzero(keep)[0]
        return Pages(
            page_id=page_ids[kept],
            query_id=np.array(
                [queries[p] if queries[p] is not None else page_ids[p] for p in kept], dtype=object
            ),
            query_features=query_features[kept],
            user_features=np.zeros((len(kept), 0), np.float32),
            offsets=np.concatenate([[0], np.cumsum(sizes[kept])]),
            item_id=item_ids,
            modality=modality,
            features=features,
            feature_dims=self.feature_dims,
            single_modal_score=score,
            relevance=relevance,
        )

    # ------------------------------------------------------------------ run
    def _run_single(self, out: Path) -> dict | None:
        """SingleModal_Train rows with search_idx > SINGLE_MODAL_MIN_SEARCH_IDX -> single_modal.parquet."""
        f = self.single_file
        writer = PageFileWriter(out / "single_modal.parquet", self.feature_dims)
        left = count_rows([f]) if self.cfg.limit is None else self.cfg.limit
        try:
            for b in batches([f], list(SEARCH_COLUMNS), self.cfg.batch_rows):
                idx = _scalar_column(b.column("search_idx"), str(f), "search_idx")
                b = b.filter(pa.array(idx > SINGLE_MODAL_MIN_SEARCH_IDX))
                if left <= 0:
                    break
                b = b.slice(0, left)
                left -= b.num_rows
                if b.num_rows:
                    writer.write(self._pages(b, "single", str(f), self.single_corpus), str(f))
        except BaseException:
            writer.abort()
            raise
        return writer.close()

    def run(self, out: str | Path) -> dict:
        t0 = time.perf_counter()
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        outputs = {}
        for split, f in self.search.items():
            writer = PageFileWriter(out / f"{split}.parquet", self.feature_dims)
            n = count_rows([f])
            total = n if self.cfg.limit is None else min(n, self.cfg.limit)
            left = total
            bar = tqdm(total=total, desc=f"crossrank {split}", unit="page", leave=False, disable=None)
            try:
                for b in batches([f], list(SEARCH_COLUMNS), self.cfg.batch_rows):
                    if left <= 0:
                        break
                    b = b.slice(0, left)
                    left -= b.num_rows
                    bar.update(b.num_rows)
                    writer.write(self._pages(b, split, str(f)), str(f))
            except BaseException:
                writer.abort()
                raise
            finally:
                bar.close()
            outputs[split] = writer.close()
        if self.single_file is not None:
            outputs["single_modal"] = self._run_single(out)
        return write_summary(
            out,
            {
                "format": "crossrank",
                "source": str(self.src),
                "config": asdict(self.cfg),
                "outputs": {k: v for k, v in outputs.items() if v},
                "feature_dims": self.feature_dims,
                "feature_names": {m: (self.feature_names if d else []) for m, d in self.feature_dims.items()},
                "query_dim": len(self.query_feature_names),
                "query_feature_names": self.query_feature_names,
                "user_dim": 0,
                "labels": "label (0-4 page-level grade) -> relevance; null/NaN -> unannotated",
                "single_modal": (
                    f"{SINGLE_FILE} rows with search_idx > {SINGLE_MODAL_MIN_SEARCH_IDX} -> single_modal.parquet"
                    if self.single_file is not None
                    else "none (no SingleModal_Train.parquet): single-modal scores are upstream_label"
                ),
                "modalities": {f"modal {k!r}": v for k, v in self.cfg.modal_map.items()},
                **self.stats,
                "seconds": round(time.perf_counter() - t0, 2),
            },
        )


def import_crossrank(src: str | Path, out: str | Path, cfg: CrossRankConfig | None = None) -> dict:
    """Convert CrossRank files into page files under `out`; returns the summary written to import.json."""
    return CrossRankImporter(src, cfg).run(out)


__all__ = ["CrossRankConfig", "CrossRankImporter", "import_crossrank"]
