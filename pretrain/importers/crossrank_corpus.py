"""CrossRank's corpus: per-candidate feature blocks (numerics, intent, lengths, hashed texts, modal code),
read one Parquet row group at a time, on demand, and looked up by candidate_idx."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pretrain.importers.common import SourceFormatError, batches, numeric_matrix
from pretrain.importers.config import CrossRankConfig
from pretrain.importers.crossrank_files import CORPUS_COLUMNS, CORPUS_NUMERIC
from pretrain.importers.text import categorical_onehot, hash_texts, normalise_text

BLOCKS = ("numeric", "intent", "lengths", "title", "highlight", "abstract", "modal")


@dataclass
class Corpus:
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


def corpus_block(
    t: pa.Table, f: str, widths: dict[str, int] | None, cfg: CrossRankConfig
) -> tuple[Corpus, int]:
    """Feature blocks of corpus rows `t` (numeric cell widths fixed by `widths` once known), and how many
    numeric values were imputed."""
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
    corpus = Corpus(
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
    imputed = 0
    if cfg.impute_missing:
        bad = ~np.isfinite(corpus.numeric)
        imputed = int(bad.sum())
        corpus.numeric[bad] = 0.0
    return corpus, imputed


def _widths_of(names: list[str]) -> list[int]:
    return [sum(1 for n in names if n == c or n.startswith(f"{c}[")) for c in CORPUS_NUMERIC]


class CorpusSource:
    """A corpus (one file, or parts whose concatenated rows are indexed by candidate_idx) read one
    Parquet row group at a time, on demand, with a few groups cached: memory stays bounded by the
    row groups a batch of searches touches, not by the corpus (an export writes candidates in page
    order, so consecutive batches touch consecutive groups). Imputed values are added to
    `stats["imputed_values"]` on a group's first read only."""

    CACHE_GROUPS = 4

    def __init__(self, files: list[Path], cfg: CrossRankConfig, stats: dict) -> None:
        self.files, self.cfg, self.stats = files, cfg, stats
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
        self.cache: dict[int, Corpus] = {}
        self.seen: set[int] = set()  # groups read once (imputation is counted on the first read only)
        self.widths: dict[str, int] | None = None
        self.numeric_names: list[str] = []
        if self.groups:
            self.numeric_names = self._group(0).numeric_names

    def _group(self, g: int) -> Corpus:
        if g in self.cache:
            self.cache[g] = self.cache.pop(g)  # most recently used last
            return self.cache[g]
        fi, rg = self.groups[g]
        t = self.parquet[fi].read_row_group(rg, columns=list(CORPUS_COLUMNS))
        block, imputed = corpus_block(t, str(self.files[fi]), self.widths, self.cfg)
        if g not in self.seen:
            self.stats["imputed_values"] += imputed
        self.seen.add(g)
        if self.widths is None:
            self.widths = {c: int(n) for c, n in zip(CORPUS_NUMERIC, _widths_of(block.numeric_names))}
        self.cache[g] = block
        while len(self.cache) > self.CACHE_GROUPS:
            self.cache.pop(next(iter(self.cache)))
        return block

    def _rows(self, cand: np.ndarray, source: str, page_ids: np.ndarray, page_of: np.ndarray) -> np.ndarray:
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
        return rows

    def lookup(self, cand: np.ndarray, source: str, page_ids: np.ndarray, page_of: np.ndarray) -> Corpus:
        """The corpus blocks of `cand` (candidate_idx per item), row-aligned with `cand`."""
        rows = self._rows(cand, source, page_ids, page_of)
        group = np.searchsorted(self.starts, rows, side="right") - 1
        n, cfg = len(cand), self.cfg
        out = Corpus(
            file=self.file,
            numeric=np.zeros((n, len(self.numeric_names))),
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
            for name in BLOCKS:
                getattr(out, name)[sel] = getattr(block, name)[local]
        return out
