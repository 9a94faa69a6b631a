"""One batch of CrossRank searches -> pages: the impressions in shown order, labels and upstream scores
checked, modality from the corpus's `modal` code, query and item features (see
pretrain.importers.crossrank for the mapping)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from envs.pages import MAX_GRADE, MODALITIES, MODALITY_ID, Pages
from pretrain.importers.common import check_finite, item_index, kept_pages, numeric_matrix, scalar_column
from pretrain.importers.config import CrossRankConfig
from pretrain.importers.crossrank_corpus import Corpus, CorpusSource
from pretrain.importers.crossrank_files import IMPRESSION_FEATS
from pretrain.importers.text import normalise_text, query_hashes
from pretrain.page import PageValidationError

IMPUTE_HINT = " (null or NaN in the source; pass --import.impute_missing true to fill with 0)"


@dataclass
class CrossRankLayout:
    """The feature layout: corpus numerics, per-impression features, intent, lengths, sims, text hashes."""

    cfg: CrossRankConfig
    corpus_numeric_names: list[str]
    impression_width: dict[str, int]

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
        return [
            *(f"query_hash{i}" for i in range(self.cfg.query_text_dim)),
            "log1p_query_chars",
            *(self.corpus_numeric_names[i] for i in self.query_numeric_columns),
        ]

    @property
    def feature_dims(self) -> dict[str, int]:
        d = len(self.feature_names)
        used = set(self.cfg.modal_map.values())
        return {m: (d if m in used else 0) for m in MODALITIES}


@dataclass
class Impressions:
    """A batch's searches and their candidates, one entry per candidate in (page, position) order."""

    sizes: np.ndarray  # per search
    keep: np.ndarray
    page_ids: np.ndarray
    page_of: np.ndarray  # per candidate
    cand: np.ndarray
    label: np.ndarray
    score: np.ndarray
    imp: np.ndarray  # per-impression features
    item_ids: np.ndarray


class CrossRankPages:
    """Builds the pages of search batches against a corpus."""

    def __init__(self, layout: CrossRankLayout, stats: dict) -> None:
        self.layout, self.cfg, self.stats = layout, layout.cfg, stats

    def pages(self, b: pa.RecordBatch, split: str, source: str, corpus: CorpusSource) -> Pages:
        s = self.impressions(b, split, source)
        relevance = self.relevance(s, source)
        c = corpus.lookup(s.cand, source, s.page_ids, s.page_of)
        modality = self.modality(s, c, source)
        queries = b.column("query").to_pylist()
        q_title, q_abs, query_features = self.query_features(queries, s, c, b.num_rows)
        features = self.item_features(s, c, q_title, q_abs, source)
        return kept_pages(
            s.keep,
            s.page_ids,
            queries,
            s.sizes,
            query_features,
            np.zeros((b.num_rows, 0), np.float32),
            item_id=s.item_ids,
            modality=modality,
            features=features,
            feature_dims=self.layout.feature_dims,
            single_modal_score=s.score,
            relevance=relevance,
        )

    def impressions(self, b: pa.RecordBatch, split: str, source: str) -> Impressions:
        """The candidates of each search, sorted by position."""
        details = b.column("search_result_details_with_idx")
        sizes = np.asarray(details.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), np.int64)
        keep = sizes > 0
        self.stats["skipped_empty_pages"] += int((~keep).sum())
        flat = details.flatten()
        page_of = np.repeat(np.arange(b.num_rows), sizes)
        page_ids = np.array([f"{split}-{s}" for s in b.column("search_idx").to_pylist()], dtype=object)
        cand = item_index(flat, "candidate_idx", source, page_ids, page_of)
        position = scalar_column(flat.field("position"), source, "position")
        label = scalar_column(flat.field("label"), source, "label")
        score = scalar_column(flat.field("upstream_label"), source, "upstream_label")
        imp = [
            numeric_matrix(flat.field(c), source, c, width=self.layout.impression_width[c])[0]
            for c in IMPRESSION_FEATS
        ]
        order = np.lexsort((np.nan_to_num(position, nan=np.inf), page_of))
        cand = cand[order]
        return Impressions(
            sizes=sizes,
            keep=keep,
            page_ids=page_ids,
            page_of=page_of[order],
            cand=cand,
            label=label[order],
            score=score[order],
            imp=np.concatenate(imp, axis=1)[order] if imp else np.zeros((len(order), 0)),
            item_ids=np.array([f"c{c}" for c in cand], dtype=object),
        )

    def relevance(self, s: Impressions, source: str) -> np.ndarray:
        """Labels as grades (-1 unannotated); a label off the 0-4 scale or an infinite score is an error."""
        label, known = s.label, ~np.isnan(s.label)
        bad = known & ((label != np.round(label)) | (label < 0) | (label > MAX_GRADE))
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise PageValidationError(
                f"{source}: page {s.page_ids[s.page_of[i]]!r}, field 'relevance': candidate {s.cand[i]} has label {label[i]:g}, expected an integer 0-{MAX_GRADE}"
            )
        self.stats["unlabelled_items"] += int((~known).sum())
        if np.isinf(s.score).any():
            i = int(np.nonzero(np.isinf(s.score))[0][0])
            raise PageValidationError(
                f"{source}: page {s.page_ids[s.page_of[i]]!r}, field 'single_modal_score': candidate {s.cand[i]} has upstream_label {s.score[i]}"
            )
        return np.where(known, label, -1).astype(np.int8)

    def modality(self, s: Impressions, c: Corpus, source: str) -> np.ndarray:
        modal, modal_map = c.modal, self.cfg.modal_map
        unknown = ~np.isin(modal, list(modal_map))
        if unknown.any():
            i = int(np.nonzero(unknown)[0][0])
            raise PageValidationError(
                f"{source}: page {s.page_ids[s.page_of[i]]!r}, field 'modality': candidate {s.cand[i]} has modal {modal[i]!r}, expected one of {sorted(modal_map)}"
            )
        return np.array([MODALITY_ID[modal_map[m]] for m in modal], np.int8)

    def query_features(
        self, queries: list, s: Impressions, c: Corpus, n_pages: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query title hash, query abstract hash, query features) per search."""
        cfg = self.cfg
        texts = queries if cfg.query_text else [""] * len(queries)  # the pages' grouping stays `query`
        q_title, q_abs, q_hash = query_hashes(texts, cfg)
        q_len = np.log1p([len(normalise_text(q, 10**9)) for q in texts])[:, None]
        # The corpus's query_feat_* describe the query, repeated on each of its candidates' rows: they
        # also become the page's query features (their mean over the page's candidates; pages whose
        # candidates disagree are counted), where the rankers' and the reranker's context reads them.
        qnum = c.numeric[:, self.layout.query_numeric_columns]
        n_items = np.bincount(s.page_of, minlength=n_pages).astype(np.float64)
        q_mean = np.zeros((n_pages, qnum.shape[1]))
        for j in range(qnum.shape[1]):
            q_mean[:, j] = np.bincount(s.page_of, weights=qnum[:, j], minlength=n_pages)
        q_mean /= np.maximum(n_items, 1.0)[:, None]
        varies = np.zeros(n_pages, bool)
        np.logical_or.at(varies, s.page_of, np.abs(qnum - q_mean[s.page_of]).max(axis=1, initial=0.0) > 1e-6)
        self.stats["pages_with_varying_query_feat"] += int((varies & s.keep).sum())
        return q_title, q_abs, np.concatenate([q_hash, q_len, q_mean], axis=1)

    def item_features(
        self, s: Impressions, c: Corpus, q_title: np.ndarray, q_abs: np.ndarray, source: str
    ) -> np.ndarray:
        """Corpus numerics, impression features, intent, lengths, query-text sims, text hashes."""
        imp = s.imp
        if self.cfg.impute_missing:
            bad = ~np.isfinite(imp)
            self.stats["imputed_values"] += int(bad.sum())
            imp[bad] = 0.0
        sims = np.column_stack(
            [
                np.einsum("ij,ij->i", q_title[s.page_of], c.title),
                np.einsum("ij,ij->i", q_abs[s.page_of], c.abstract),
                np.einsum("ij,ij->i", q_title[s.page_of], c.highlight),
            ]
        )
        features = np.concatenate([c.numeric, imp, c.intent, c.lengths, sims, c.title, c.abstract], axis=1)
        n_num = c.numeric.shape[1] + imp.shape[1]
        check_finite(
            features[:, :n_num],
            self.layout.feature_names,
            source,
            s.page_ids,
            s.page_of,
            s.item_ids,
            "features",
            IMPUTE_HINT,
        )
        return features
