"""`smar export --format crossrank|qilin WORLD --out DIR`: a synthetic world as files in a real dataset's
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
  * `query` = a token standing for the world's query id, the same form for every split
    (`QueryTokens`: "q" + 12 digits of a fixed hash of a running number). CrossRank's `query` is the
    query text, which the importer both groups pages by and hashes into query features; the world has
    no text, and its ids differ in form by split ("sm-doc-q…" vs "pool-q…" vs "test-q…"), so writing
    them raw would hand every model a feature that tells single-modal from whole-page and train from
    test queries. `real_title` / `abs_basic` / `title_highlight_basic` are empty (the world
    has no text), `query_intent` empty.
Written in batches of pages (ParquetWriter), so memory stays bounded by the world itself.

Qilin layout written (see pretrain.importers.qilin; one folder per config, Hugging Face style):
  search_train/  the pool pages, then the valid pages     search_test/  the test pages
  notes/         one note per (page, item), row index = note_idx
  user_feat/     one user per page, row index = user_idx
Mapping:
  * label: grade g -> `click` / `page_time` decoded back to g by the importer's dwell grades (0 unclicked;
    1 clicked, page_time -1 (absent); 2/3/4 clicked with a dwell inside the cut band);
  * modality: `note_type` 1 image, 2 video (the published codes), 3 doc, 4 answer (`QILIN_NOTE_TYPES`;
    import with `--note-types 1=image,2=video,3=doc,4=answer`, printed by the exporter). Qilin's own
    answers (DQA) hold one answer per request, the world 10 per page, so answers travel as notes;
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

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from envs.atomic_io import write_json_atomic
from envs.pages import MODALITIES, Pages
from pretrain.importers.crossrank import DETAIL_FIELDS, SINGLE_MODAL_MIN_SEARCH_IDX
from pretrain.importers.qilin import NOTE_COUNTS, NOTE_TYPE_MODALITY, QilinConfig
from pretrain.importers.text import splitmix64

MODAL_CODES: dict[str, str] = {"doc": "0", "video": "1", "image": "2", "answer": "3"}
MODAL_MAP_ARG = ",".join(f"{c}={m}" for m, c in MODAL_CODES.items())
FORMATS = ("crossrank", "qilin")


def _list_col(mat: np.ndarray) -> pa.ListArray:
    n, k = mat.shape
    return pa.ListArray.from_arrays(
        pa.array(np.arange(n + 1, dtype=np.int32) * k), pa.array(mat.ravel(), pa.float32())
    )


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


class _CrossRankWriter:
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
                "query": pa.array(self.tokens(pages.query_id)),
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


def export_crossrank(
    world,
    out: str | Path,
    single_modal: bool = True,
    batch_pages: int = 2048,
    scores: dict[str, np.ndarray] | None = None,
) -> dict:
    """Write `world` (an envs.world.World) in CrossRank's schema under `out`; returns a summary."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    width = max(world.pool.pages.feature_dims.values())
    counts: dict[str, int] = {}
    corpus_rows = sum(getattr(world, n).pages.n_items for n in ("pool", "valid", "test"))
    tokens = QueryTokens()
    corpus = _CrossRankWriter(
        out / "Multimodal_Train.parquet", [out / "MultiModalCorpus.parquet"], corpus_rows, width, tokens
    )
    search_idx = 0
    # one corpus for train and test: candidate ids run on across both search files
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
            tokens,
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


# ----------------------------------------------------------------------------- Qilin
QILIN_NOTE_TYPES: dict[str, int] = {
    **{m: t for t, m in NOTE_TYPE_MODALITY.items()},
    "doc": 3,
    "answer": 4,
}
NOTE_TYPES_ARG = ",".join(f"{t}={m}" for m, t in sorted(QILIN_NOTE_TYPES.items(), key=lambda kv: kv[1]))
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


class _QilinWriter:
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
        n, t = len(pages), pages.n_items
        if n == 0:
            return
        note = np.arange(self.next_note, self.next_note + t, dtype=np.int64)
        user = np.arange(self.next_user, self.next_user + n, dtype=np.int64)
        search = np.arange(self.next_search, self.next_search + n, dtype=np.int64)
        self.next_note, self.next_user, self.next_search = note[-1] + 1, user[-1] + 1, search[-1] + 1
        click, dwell = qilin_click_dwell(grades, self.cuts)
        pos = np.arange(t) - np.repeat(pages.offsets[:-1], pages.sizes) + 1
        zeros = pa.array(np.zeros(t))
        details = pa.StructArray.from_arrays(
            [pa.array(note), pa.array(pos.astype(np.int64)), pa.array(click), zeros, zeros, zeros, zeros]
            + [pa.array(dwell), pa.array(np.zeros(t, np.int64))],
            fields=list(_QILIN_DETAIL),
        )
        offsets = pa.array(pages.offsets.astype(np.int32))
        known = np.isfinite(scores)
        pair_vals = np.column_stack([note[known].astype(np.float64), scores[known].astype(np.float64)])
        pair_counts = np.add.reduceat(known.astype(np.int64), pages.offsets[:-1]) if t else np.zeros(n)
        pair_counts = np.where(pages.sizes > 0, pair_counts, 0)
        pairs = pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(pair_counts)]).astype(np.int32)),
            _list_col(pair_vals) if len(pair_vals) else pa.array([], pa.list_(pa.float64())),
        ).cast(_PAIRS)
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
        self._write(config, pa.table(columns))
        # notes: world item features in the numeric note columns (raw; see the module docstring)
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
        self._write(
            "notes",
            pa.table(
                {
                    **{c: empty for c in _NOTE_STRINGS},
                    "note_type": pa.array(note_type),
                    **{c: pa.array(v) for c, v in numeric.items()},
                    "image_path": pa.array([[]] * t, pa.list_(pa.string())),
                }
            ),
        )
        dense = np.concatenate([pages.query_features, pages.user_features], axis=1).astype(np.float64)
        zero_n = pa.array(np.zeros(n, np.int64))
        self._write(
            "user_feat",
            pa.table(
                {
                    "gender": zero_n,
                    "platform": zero_n,
                    "age": zero_n,
                    "fans_num": zero_n,
                    "follows_num": zero_n,
                    **{f"dense_feat{k + 1}": pa.array(dense[:, k]) for k in range(dense.shape[1])},
                    "location": pa.array([""] * n),
                }
            ),
        )

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def upstream_scores(world, seed: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
    """The world's single-modal rankers' scores on every whole-page item (what `smar pretrain` trains)."""
    from pretrain.config import PretrainConfig
    from pretrain.train import prepare

    prep = prepare(world, PretrainConfig(seed=seed), progress)
    return {name: prep.scored[name].pages.single_modal_score for name in ("pool", "valid", "test")}


def export_qilin(
    world,
    out: str | Path,
    scores: dict[str, np.ndarray] | None = None,
    batch_pages: int = 2048,
    dwell_cuts: tuple[float, float] = QilinConfig().dwell_cuts,
) -> dict:
    """Write `world` in Qilin's schema under `out`. `scores`: split -> (T,) upstream score per item
    (NaN = not in `dpr_results`); default the pages' own `single_modal_score`."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    w = _QilinWriter(out, dwell_cuts)
    counts: dict[str, int] = {}
    try:
        for config, names in (("search_train", ("pool", "valid")), ("search_test", ("test",))):
            start = w.next_search
            for name in names:
                split = getattr(world, name)
                sc = split.pages.single_modal_score if scores is None else np.asarray(scores[name])
                for idx in _chunks(len(split.pages), batch_pages):
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
        "note_types": NOTE_TYPES_ARG,
        "dropped_features": w.dropped,
        "upstream": "given scores" if scores is not None else "the pages' single_modal_score",
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
    p.add_argument(
        "--upstream",
        choices=("auto", "rankers", "none"),
        default="auto",
        help="upstream (single-modal) scores written: the world's single-modal rankers' (qilin's default) "
        "or the pages' own (none; crossrank's default, whose single-modal part carries the labels)",
    )
    p.add_argument(
        "--upstream-seed", type=int, default=0, help="seed of the rankers behind --upstream rankers"
    )


def run(args: argparse.Namespace) -> int:
    from pretrain.world_io import load_world

    world = load_world(args.world)
    upstream = args.upstream
    if upstream == "auto":  # qilin has no single-modal part: its upstream scores must be there
        upstream = "rankers" if args.format == "qilin" else "none"
    scores = upstream_scores(world, args.upstream_seed) if upstream == "rankers" else None
    if args.format == "qilin":
        s = export_qilin(world, args.out, scores, batch_pages=args.batch_pages)
        hint = f"smar import --format qilin {args.out} --out DIR --note-types {s['note_types']}"
    else:
        s = export_crossrank(
            world,
            args.out,
            single_modal=not args.no_single_modal,
            batch_pages=args.batch_pages,
            scores=scores,
        )
        hint = f"smar import --format crossrank {args.out} --out DIR --modal-map {s['modal_map']} --no-query-text"
    rows = ", ".join(f"{k} {v}" for k, v in s["rows"].items())
    print(f"wrote {args.out}: {rows} search rows in {s['seconds']} s")
    if s.get("dropped_features"):
        print(
            f"item features beyond the schema's numeric columns dropped per modality: {s['dropped_features']}"
        )
    print(f"import with: {hint}")
    return 0
