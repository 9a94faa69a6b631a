"""Importers on small files written in exactly the published schemas (list-of-struct columns)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.cli import main
from envs.pages import MODALITIES
from pretrain.importers import CrossRankConfig, QilinConfig, SourceFormatError, import_crossrank, import_qilin
from pretrain.importers.qilin import COMMON_NAMES, dwell_grades
from pretrain.importers.text import categorical_onehot, hash_texts
from pretrain.page import PageValidationError, read_pages

# --------------------------------------------------------------------------- Qilin fixture
# The published schemas are spelled out here, not taken from pretrain.export: they pin the layout the
# importers must read, independently of the exporter that imitates it.
QILIN_DETAIL = pa.struct(
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
PAIRS = pa.list_(pa.list_(pa.float64()))
SEARCH_FIELDS = [
    ("query", pa.string()),
    ("query_from_type", pa.int64()),
    ("recent_clicked_note_idxs", pa.list_(pa.int64())),
    ("search_idx", pa.int64()),
    ("session_idx", pa.int64()),
    ("user_idx", pa.int64()),
    ("dpr_results", PAIRS),
    ("search_result_details_with_idx", pa.list_(QILIN_DETAIL)),
]
SEARCH_SCHEMA = pa.schema(SEARCH_FIELDS)
SEARCH_TEST_SCHEMA = pa.schema(
    [*SEARCH_FIELDS, ("bm25_results", PAIRS), ("search_results", pa.list_(pa.int64()))]
)
DQA_SCHEMA = pa.schema(
    [
        *SEARCH_FIELDS,
        ("is_like_clk", pa.float64()),
        ("is_onebox_trace_clk", pa.float64()),
        ("is_content_clk", pa.float64()),
        ("is_experience_clk", pa.float64()),
        ("ref_note_idx_list", pa.list_(pa.int64())),
    ]
)
NOTE_INTS = ("image_num", "content_length", "commercial_flag", "imp_num", "click_num", "like_num")
NOTE_INTS += ("collect_num", "comment_num", "share_num", "valid_view_times", "full_view_times")
NOTES_SCHEMA = pa.schema(
    [
        ("note_title", pa.string()),
        ("note_content", pa.string()),
        ("note_type", pa.int64()),
        ("image_num", pa.int64()),
        ("content_length", pa.int64()),
        ("video_duration", pa.float64()),
        ("video_height", pa.float64()),
        ("video_width", pa.float64()),
        ("commercial_flag", pa.int64()),
        ("taxonomy1_id", pa.string()),
        ("taxonomy2_id", pa.string()),
        ("taxonomy3_id", pa.string()),
        ("imp_num", pa.int64()),
        ("click_num", pa.int64()),
        ("like_num", pa.int64()),
        ("collect_num", pa.int64()),
        ("comment_num", pa.int64()),
        ("share_num", pa.int64()),
        ("view_time", pa.float64()),
        ("valid_view_times", pa.int64()),
        ("full_view_times", pa.int64()),
        ("image_path", pa.list_(pa.string())),
    ]
)
USER_SCHEMA = pa.schema(
    [
        ("gender", pa.int64()),
        ("platform", pa.int64()),
        ("age", pa.int64()),
        ("fans_num", pa.int64()),
        ("follows_num", pa.int64()),
        *((f"dense_feat{i}", pa.float64()) for i in range(1, 41)),
        ("location", pa.string()),
    ]
)
NAN = float("nan")


def _detail(note, pos, click, page_time):
    return {
        "note_idx": note,
        "position": pos,
        "click": click,
        "like": 0.0,
        "collect": 0.0,
        "comment": 0.0,
        "share": 0.0,
        "page_time": page_time,
        "search_timestamp": 1700000000 + pos,
    }


def _dqa_row(search_row, clicks, refs):
    """A DQA request: a search row with the answer's four interaction flags (None: no answer shown)."""
    names = ("is_like_clk", "is_onebox_trace_clk", "is_content_clk", "is_experience_clk")
    return {**search_row, **dict(zip(names, clicks, strict=True)), "ref_note_idx_list": refs}


def _drop_column(path: Path, column: str) -> None:
    """Rewrite the Parquet file at `path` without `column`."""
    pq.write_table(pq.read_table(path).drop_columns([column]), path)


def _search_row(sidx, session, user, query, details, recent=(1,)):
    return {
        "query": query,
        "query_from_type": 1 + sidx % 3,
        "recent_clicked_note_idxs": list(recent),
        "search_idx": sidx,
        "session_idx": session,
        "user_idx": user,
        # the last shown note is not in the retrieval list; note 99 is listed but not shown
        "dpr_results": [[float(d["note_idx"]), 0.1 * d["note_idx"] + 0.001 * sidx] for d in details[:-1]]
        + [[99.0, 9.0]],
        "search_result_details_with_idx": details,
    }


def _note(i):
    video = i % 2 == 1
    return {
        "note_title": f"标题 note {i} 火锅",
        "note_content": f"内容 {i} 推荐 火锅 好吃" * (1 + i % 3),
        "note_type": 2 if video else 1,
        "image_num": 0 if video else 1 + i % 4,
        "content_length": 20 + i,
        "video_duration": 30.0 + i if video else None,
        "video_height": 1280.0 if video else None,
        "video_width": 720.0 if video else None,
        "commercial_flag": i % 2,
        "taxonomy1_id": "t1",
        "taxonomy2_id": "t2",
        "taxonomy3_id": "t3",
        "imp_num": 1000 + 10 * i,
        "click_num": 100 + i,
        "like_num": 10 + i,
        "collect_num": 5,
        "comment_num": 2,
        "share_num": 1,
        "view_time": 500.0 + i,
        "valid_view_times": 80,
        "full_view_times": 40,
        "image_path": [f"img/{i}.jpg"],
    }


def _write(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def write_qilin(root: Path, *, train=None, notes=None, users=None, dqa=None) -> Path:
    """A tiny Qilin in the Hugging Face layout: one folder of shards per config."""
    train = train or [
        # session 7, two reformulations; user 0
        _search_row(
            100,
            7,
            0,
            "火锅 推荐",
            [
                _detail(3, 2, 1.0, 45.0),  # clicked, 45 s -> grade 3
                _detail(0, 1, 1.0, 10.0),  # clicked, 10 s -> grade 2
                _detail(1, 3, 1.0, -1.0),  # clicked, no dwell -> grade 1
                _detail(2, 4, 0.0, NAN),  # unclicked -> grade 0
            ],
        ),
        _search_row(101, 7, 0, "火锅 好吃", [_detail(4, 1, 1.0, 300.0), _detail(5, 2, 0.0, NAN)]),
        _search_row(102, 8, 1, "empty", []),  # no results -> skipped and counted
    ]
    test = [_search_row(200, 9, 2, "火锅", [_detail(1, 1, 0.0, NAN), _detail(2, 2, 1.0, 5.0)])]
    dqa = dqa or [
        # an answer shown on a search-log request (attached to train page 100) and clicked
        _dqa_row(
            _search_row(100, 7, 0, "火锅 推荐", [_detail(0, 1, 1.0, 10.0)]), (0.0, 1.0, 0.0, NAN), [0, 3, 5]
        ),
        # a DQA-only request: its own page in dqa.parquet, answer not clicked
        _dqa_row(_search_row(300, 10, 1, "怎么做 火锅", [_detail(5, 1, 0.0, NAN)]), (0.0,) * 4, [5]),
        # no answer shown (is_like_clk missing): notes only
        _dqa_row(_search_row(301, 11, 2, "无答案", [_detail(4, 1, 1.0, 20.0)]), (None,) * 4, None),
    ]
    notes = notes or [_note(i) for i in range(6)]
    users = users or [
        {
            "gender": u % 2,
            "platform": u,
            "age": 20 + u,
            "fans_num": 10**u,
            "follows_num": 5,
            **{f"dense_feat{i}": 0.01 * i * (u + 1) for i in range(1, 41)},
            "location": f"city{u}",
        }
        for u in range(3)
    ]
    _write(root / "search_train" / "train-00000-of-00001.parquet", train, SEARCH_SCHEMA)
    test_rows = [{**r, "bm25_results": r["dpr_results"], "search_results": [1, 2]} for r in test]
    _write(root / "search_test" / "train-00000-of-00001.parquet", test_rows, SEARCH_TEST_SCHEMA)
    # notes in two shards: row index across shards in name order is note_idx
    _write(root / "notes" / "train-00000-of-00002.parquet", notes[:3], NOTES_SCHEMA)
    _write(root / "notes" / "train-00001-of-00002.parquet", notes[3:], NOTES_SCHEMA)
    _write(root / "user_feat" / "train-00000-of-00001.parquet", users, USER_SCHEMA)
    _write(root / "dqa" / "train-00000-of-00001.parquet", dqa, DQA_SCHEMA)
    return root


def test_dwell_grades_follow_smar_order():
    click = np.array([0, 1, 1, 1, 1, 1, 0], np.int8)
    dwell = np.array([np.nan, np.nan, 0.0, 10.0, 45.0, 500.0, 99.0])
    assert dwell_grades(click, dwell, (30.0, 120.0)).tolist() == [0, 1, 1, 2, 3, 4, 0]


def test_qilin_import(tmp_path):
    src = write_qilin(tmp_path / "qilin")
    summary = import_qilin(src, tmp_path / "out", QilinConfig(text_dim=8, query_text_dim=8, batch_rows=2))
    assert json.loads((tmp_path / "out" / "import.json").read_text())["outputs"] == summary["outputs"]
    assert summary["skipped_empty_pages"] == 1 and summary["answers_attached"] == 2

    train = read_pages(tmp_path / "out" / "train.parquet")
    assert train.page_id.tolist() == ["train-100", "train-101"]
    assert train.query_id.tolist() == ["session7", "session7"]  # a session's reformulations
    p0 = train.item_slice(0)
    # answer first, then notes in shown position order
    assert train.item_id[p0].tolist() == ["dqa100", "note0", "note3", "note1", "note2"]
    assert [MODALITIES[m] for m in train.modality[p0]] == ["answer", "image", "video", "video", "image"]
    assert train.relevance[p0].tolist() == [1, 2, 3, 1, 0]
    assert train.click[p0].tolist() == [1, 1, 1, 1, 0]
    assert np.isnan(train.dwell[p0][[0, 3, 4]]).all() and train.dwell[p0][[1, 2]].tolist() == [10.0, 45.0]
    assert train.relevance[train.item_slice(1)].tolist() == [4, 0]
    # upstream score = the note's dpr_results score; the answer and the unlisted note 2 have none
    np.testing.assert_allclose(train.single_modal_score[p0], [NAN, 0.1, 0.4, 0.2, NAN], rtol=1e-5)
    assert summary["single_modal"].startswith("single_modal_score = the note's score in dpr_results")

    dims = summary["feature_dims"]
    assert dims["doc"] == 0 and dims["image"] == train.feature_dims["image"]
    assert dims["video"] == dims["image"] + 4  # video has 5 extra statistics, image 1
    # note 0 (image): log1p-scaled counts, then ratios; the hashed text block is unit-norm
    f = train.features[p0][1]
    assert f[COMMON_NAMES.index("log1p_imp_num")] == pytest.approx(math.log1p(1000), rel=1e-5)
    assert f[COMMON_NAMES.index("ctr")] == pytest.approx(100 / 1000, rel=1e-5)
    names = summary["feature_names"]["image"]
    assert f[names.index("log1p_image_num")] == pytest.approx(math.log1p(1), rel=1e-5)
    content = f[names.index("content_hash0") : dims["image"]]
    assert np.linalg.norm(content) == pytest.approx(1.0, rel=1e-5)
    assert f[names.index("query_title_sim")] > 0  # the query shares "火锅" with the title
    v = train.features[p0][2]  # note 3 (video)
    vn = summary["feature_names"]["video"]
    assert v[vn.index("log1p_video_duration")] == pytest.approx(math.log1p(33.0), rel=1e-5)
    a = train.features[p0][0]  # the answer: 3 referenced notes, 2 of them on the page, 2 of 3 videos
    an = summary["feature_names"]["answer"]
    assert a[an.index("log1p_ref_notes")] == pytest.approx(math.log1p(3), rel=1e-5)
    assert a[an.index("ref_on_page_frac")] == pytest.approx(2 / 3, rel=1e-5)
    assert a[an.index("ref_video_frac")] == pytest.approx(2 / 3, rel=1e-5)
    # query and user features
    assert train.query_dim == summary["query_dim"]
    un = summary["user_feature_names"]
    assert train.user_features[0, un.index("log1p_fans_num")] == pytest.approx(math.log1p(1), rel=1e-5)
    assert train.user_features[0, un.index("dense_feat40")] == pytest.approx(0.4, rel=1e-5)
    assert train.user_features[0, un.index("user_known")] == 1.0

    test = read_pages(tmp_path / "out" / "test.parquet")
    assert test.page_id.tolist() == ["test-200"] and test.relevance.tolist() == [0, 2]
    dqa = read_pages(tmp_path / "out" / "dqa.parquet")  # request 100 went to train, not here
    assert dqa.page_id.tolist() == ["dqa-300", "dqa-301"]
    assert dqa.item_id.tolist() == ["dqa300", "note5", "note4"]
    assert dqa.relevance.tolist() == [0, 0, 2]


def test_qilin_missing_column_names_file_and_column(tmp_path):
    src = write_qilin(tmp_path / "qilin")
    _drop_column(src / "notes" / "train-00001-of-00002.parquet", "click_num")
    with pytest.raises(SourceFormatError, match=r"train-00001-of-00002\.parquet.*click_num"):
        import_qilin(src, tmp_path / "out")


def test_qilin_bad_click_names_page_and_field(tmp_path):
    row = _search_row(100, 7, 0, "q", [_detail(0, 1, 2.0, 5.0)])
    src = write_qilin(tmp_path / "qilin", train=[row])
    with pytest.raises(PageValidationError, match=r"page 'train-100', field 'click'"):
        import_qilin(src, tmp_path / "out")
    assert not (tmp_path / "out" / "train.parquet").exists()  # nothing half-written


def test_qilin_nan_statistic_fails_unless_imputed(tmp_path):
    notes = [_note(i) for i in range(6)]
    notes[3]["like_num"] = None  # note 3 is on page train-100
    src = write_qilin(tmp_path / "qilin", notes=notes)
    with pytest.raises(PageValidationError, match=r"page 'train-100', field 'features'.*log1p_like_num"):
        import_qilin(src, tmp_path / "out")
    summary = import_qilin(src, tmp_path / "out2", QilinConfig(text_dim=8, impute_missing=True))
    assert summary["imputed_values"] >= 1


# --------------------------------------------------------------------------- CrossRank fixture
CR_DETAIL = pa.struct(
    [
        ("candidate_idx", pa.int64()),
        ("label", pa.int64()),
        ("position", pa.int64()),
        ("upstream_label", pa.float64()),
        ("candidate_feat_4", pa.float64()),
        ("candidate_feat_5", pa.list_(pa.float64())),
    ]
)
CR_SEARCH_SCHEMA = pa.schema(
    [
        ("query", pa.string()),
        ("search_idx", pa.int64()),
        ("search_result_details_with_idx", pa.list_(CR_DETAIL)),
    ]
)
CORPUS_SCHEMA = pa.schema(
    [
        ("modal", pa.string()),
        ("query_intent", pa.string()),
        ("real_title", pa.string()),
        ("abs_basic", pa.string()),
        ("title_highlight_basic", pa.string()),
        *((f"query_feat_{i}", pa.string()) for i in range(1, 6)),
        *((f"candidate_feat_{i}", pa.string()) for i in range(1, 6)),
        ("upstream_label", pa.float64()),
    ]
)


def _cand(c, label, pos, up):
    return {
        "candidate_idx": c,
        "label": label,
        "position": pos,
        "upstream_label": up,
        "candidate_feat_4": 0.1 * c,
        "candidate_feat_5": [float(c), 1.0],
    }


def _corpus_row(i):
    return {
        "modal": str(i % 2),
        "query_intent": "video" if i % 2 else "web",
        "real_title": f"天气 预报 {i}",
        "abs_basic": f"今天 天气 晴 {i}",
        "title_highlight_basic": f"<em>天气</em> 预报 {i}",
        **{f"query_feat_{j}": str(0.5 * j) for j in range(1, 6)},
        "candidate_feat_1": f"[{i}, {i + 1}]",  # a string holding a list
        "candidate_feat_2": f"{i} {2 * i} {3 * i}",  # space separated
        "candidate_feat_3": str(i),
        "candidate_feat_4": "0.25",
        "candidate_feat_5": "1e-3",
        "upstream_label": 0.5,
    }


def write_crossrank(root: Path, *, train=None, corpus=None) -> Path:
    train = train or [
        {
            "query": "天气",
            "search_idx": 1,
            "search_result_details_with_idx": [_cand(0, 3, 2, 0.9), _cand(1, 4, 1, 0.2)],
        },
        {
            "query": "天气 预报",
            "search_idx": 2,
            "search_result_details_with_idx": [_cand(2, 0, 1, 0.1), _cand(3, None, 2, 0.7)],
        },
    ]
    test = [{"query": "预报", "search_idx": 3, "search_result_details_with_idx": [_cand(1, 2, 1, 0.4)]}]
    corpus = corpus or [_corpus_row(i) for i in range(4)]
    _write(root / "Multimodal_Train.parquet", train, CR_SEARCH_SCHEMA)
    _write(root / "Multimodal_Test.parquet", test, CR_SEARCH_SCHEMA)
    _write(root / "MultiModalCorpus.parquet", corpus, CORPUS_SCHEMA)
    return root


def test_crossrank_import(tmp_path):
    corpus = [_corpus_row(i) for i in range(4)]
    corpus[3]["query_feat_1"] = "1.5"  # page train-2's two candidates disagree on a query feature
    src = write_crossrank(tmp_path / "cr", corpus=corpus)
    summary = import_crossrank(src, tmp_path / "out", CrossRankConfig(text_dim=8, query_text_dim=8))
    train = read_pages(tmp_path / "out" / "train.parquet")
    assert train.page_id.tolist() == ["train-1", "train-2"]
    assert train.item_id.tolist() == ["c1", "c0", "c2", "c3"]  # by position
    assert [MODALITIES[m] for m in train.modality] == ["video", "doc", "doc", "video"]
    assert train.relevance.tolist() == [4, 3, 0, -1]  # null label = unannotated
    assert train.single_modal_score.tolist() == pytest.approx([0.2, 0.9, 0.1, 0.7])
    # query features: hashed text (8) + its length, then the corpus's query_feat_1..5 (page means)
    assert train.user_dim == 0 and train.query_dim == 9 + 5 == summary["query_dim"]
    qn = summary["query_feature_names"]
    assert train.query_features[0, qn.index("query_feat_3")] == pytest.approx(1.5)
    assert train.query_features[:, qn.index("query_feat_1")].tolist() == pytest.approx([0.5, 1.0])
    assert summary["pages_with_varying_query_feat"] == 1
    names = summary["feature_names"]["doc"]
    assert summary["feature_dims"] == {"doc": len(names), "image": 0, "video": len(names), "answer": 0}
    f = train.features[1]  # candidate 0
    assert f[names.index("candidate_feat_1[1]")] == 1.0
    assert f[names.index("candidate_feat_2[2]")] == 0.0
    g = train.features[0]  # candidate 1
    assert g[names.index("candidate_feat_2[2]")] == 3.0 and g[
        names.index("candidate_feat_5")
    ] == pytest.approx(1e-3)
    assert g[names.index("impression_candidate_feat_4")] == pytest.approx(0.1)
    assert g[names.index("impression_candidate_feat_5[0]")] == 1.0
    assert g[names.index("query_title_sim")] > 0
    assert read_pages(tmp_path / "out" / "test.parquet").relevance.tolist() == [2]


def test_crossrank_label_out_of_range(tmp_path):
    train = [{"query": "q", "search_idx": 5, "search_result_details_with_idx": [_cand(0, 7, 1, 0.5)]}]
    src = write_crossrank(tmp_path / "cr", train=train)
    with pytest.raises(PageValidationError, match=r"page 'train-5', field 'relevance'.*label 7"):
        import_crossrank(src, tmp_path / "out")


def test_crossrank_nan_feature_and_unknown_modal(tmp_path):
    corpus = [_corpus_row(i) for i in range(4)]
    corpus[1]["candidate_feat_3"] = "nan"
    src = write_crossrank(tmp_path / "cr", corpus=corpus)
    with pytest.raises(PageValidationError, match=r"page 'train-1', field 'features'.*candidate_feat_3"):
        import_crossrank(src, tmp_path / "out")
    corpus[1]["candidate_feat_3"] = "1"
    corpus[2]["modal"] = "2"
    src = write_crossrank(tmp_path / "cr2", corpus=corpus)
    with pytest.raises(PageValidationError, match=r"page 'train-2', field 'modality'.*'2'"):
        import_crossrank(src, tmp_path / "out")


def test_crossrank_missing_corpus_column(tmp_path):
    src = write_crossrank(tmp_path / "cr")
    _drop_column(src / "MultiModalCorpus.parquet", "abs_basic")
    with pytest.raises(SourceFormatError, match=r"MultiModalCorpus\.parquet.*abs_basic"):
        import_crossrank(src, tmp_path / "out")


def test_smar_import_command(tmp_path, capsys):
    src = write_crossrank(tmp_path / "cr")
    out = tmp_path / "out"
    assert (
        main(
            ["import", str(src), "--out", str(out), "--import.format", "crossrank"]
            + ["--import.modal_map", '{"0": "doc", "1": "image"}']
        )
        == 0
    )
    assert "train" in capsys.readouterr().out
    assert json.loads((out / "import.json").read_text())["feature_dims"]["image"] > 0
    assert set(read_pages(out / "train.parquet").modality.tolist()) == {0, 1}
    _drop_column(src / "MultiModalCorpus.parquet", "modal")
    assert main(["import", str(src), "--out", str(out), "--import.format", "crossrank"]) == 1
    assert "modal" in capsys.readouterr().err


# --------------------------------------------------------------------------- text hashing
def test_hash_texts_stable_normalised_and_lexical():
    v = hash_texts(["Hot Pot  recipe", "hot pot recipe", "weather today", "", None], dim=64)
    assert v.shape == (5, 64) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v[:3], axis=1), 1.0)
    assert np.array_equal(v[0], v[1])  # case and whitespace are normalised
    assert not v[3].any() and not v[4].any()  # empty text -> zero vector
    assert v[0] @ v[1] > 0.99 and abs(v[0] @ v[2]) < 0.5
    # golden: "a" with max_n=1 is one unigram -> exactly one bucket of magnitude 1
    one = hash_texts(["a"], dim=16, max_n=1)[0]
    assert np.count_nonzero(one) == 1 and abs(one).max() == 1.0
    assert np.array_equal(one, hash_texts(["A"], dim=16, max_n=1)[0])
    # batch-independence: hashing a text alone equals hashing it inside a batch
    assert np.array_equal(hash_texts(["weather today"], dim=64)[0], v[2])


def test_categorical_onehot_is_stable_and_type_tolerant():
    a = categorical_onehot([1, 1.0, "1", None, float("nan")], 8)
    assert (a[:3].sum(axis=1) == 1).all() and np.array_equal(a[0], a[1]) and np.array_equal(a[0], a[2])
    assert not a[3:].any()
