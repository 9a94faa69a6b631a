"""The real-data path end to end: `smar export` -> `smar import` -> `smar pretrain|bench pretrain --data`."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.cli import main
from envs.pages import MODALITIES
from envs.world import Split
from pretrain.data import load_data
from pretrain.export import MODAL_MAP_ARG, NOTE_TYPES_ARG, export_crossrank, export_qilin, qilin_slots
from pretrain.importers import QilinConfig, SourceFormatError, import_qilin
from pretrain.page import PageValidationError, read_pages
from pretrain.run import PretrainRun


def _scored(world):
    """The world with a single-modal score on every whole-page item (what upstream_label carries)."""
    rng = np.random.default_rng(0)
    for name in ("pool", "valid", "test"):
        s = getattr(world, name)
        setattr(
            world,
            name,
            Split(s.pages.with_items(single_modal_score=rng.normal(size=s.pages.n_items)), s.truth),
        )
    return world


def _import_crossrank(src, out) -> int:
    """`smar import` of a CrossRank export (with the exporter's modality codes)."""
    return main(
        ["import", str(src), "--out", str(out)]
        + ["--import.format", "crossrank", "--import.modal_map", MODAL_MAP_ARG]
    )


def _pretrain(data, out, epochs: int = 1, *extra: str) -> int:
    """`smar pretrain --data` on imported pages (`extra`: more options)."""
    return main(
        ["pretrain", "--data", str(data), "--out", str(out), *extra]
        + ["--pretrain.train.epochs", str(epochs), "--quiet"]
    )


@pytest.fixture(scope="module")
def exported(tiny_world, tmp_path_factory):
    import copy

    world = _scored(copy.deepcopy(tiny_world))
    root = tmp_path_factory.mktemp("realdata")
    export_crossrank(world, root / "cr")
    assert _import_crossrank(root / "cr", root / "imp") == 0
    return world, root


def test_round_trip_keeps_labels_modality_scores(exported):
    world, root = exported
    info = json.loads((root / "imp" / "import.json").read_text())
    names = info["feature_names"]["doc"]
    feat0 = names.index("candidate_feat_1[0]")
    train, test = read_pages(root / "imp" / "train.parquet"), read_pages(root / "imp" / "test.parquet")
    for got, splits in ((train, [world.pool, world.valid]), (test, [world.test])):
        want_rel = np.concatenate([s.truth.relevance for s in splits])
        want = [s.pages for s in splits]
        assert len(got) == sum(len(p) for p in want)
        np.testing.assert_array_equal(got.relevance, want_rel)
        np.testing.assert_array_equal(got.modality, np.concatenate([p.modality for p in want]))
        np.testing.assert_allclose(
            got.single_modal_score, np.concatenate([p.single_modal_score for p in want]), rtol=1e-6
        )
        np.testing.assert_array_equal(got.sizes, np.concatenate([p.sizes for p in want]))
        # the query ids travel as tokens of one form: same token <=> same world query id
        qid = np.concatenate([p.query_id for p in want])
        assert all(len(q) == 13 and q[0] == "q" for q in got.query_id)
        np.testing.assert_array_equal(
            got.query_id[:, None] == got.query_id[None, :], qid[:, None] == qid[None, :]
        )
        feats = np.concatenate([p.features for p in want])
        np.testing.assert_allclose(got.features[:, feat0 : feat0 + feats.shape[1]], feats, rtol=1e-6)
    sm = read_pages(root / "imp" / "single_modal.parquet")
    want = [world.single_modal[m].pages for m in MODALITIES]
    np.testing.assert_array_equal(sm.relevance, np.concatenate([p.relevance for p in want]))
    np.testing.assert_array_equal(sm.modality, np.concatenate([p.modality for p in want]))
    # the --data splits: the exported pool and valid come back as they were, pool labels hidden
    data = load_data(root / "imp")
    assert len(data.pool.pages) == len(world.pool.pages) and len(data.valid.pages) == len(world.valid.pages)
    assert (data.pool.pages.relevance == -1).all()
    np.testing.assert_array_equal(data.pool.truth.relevance, world.pool.truth.relevance)
    assert set(data.single_modal) == set(MODALITIES)
    # constant feature columns (the copy's empty titles, say) are dropped on reading, the rest kept
    dropped = data.dropped_columns
    assert dropped and names.index("title_hash0") in dropped and feat0 not in dropped
    kept = np.setdiff1d(np.arange(train.features.shape[1]), dropped)
    assert data.pool.pages.features.shape[1] == len(kept)
    np.testing.assert_array_equal(data.test.pages.features, test.features[:, kept])
    assert data.test.pages.feature_dims == {m: len(kept) for m in MODALITIES}


def test_pretrain_and_bench_on_data(exported, capsys):
    _, root = exported
    assert _pretrain(root / "imp", root / "run", 2, "--pretrain.annotation.budget", "0.3") == 0
    out = capsys.readouterr().out
    assert "single-modal rankers trained on the dataset's single-modal part" in out
    run = PretrainRun.open(root / "run")
    assert run.is_data and "mrr@1" in run.metrics["test"]["smar"]
    split = run.split("test")
    assert (split.truth.relevance >= 0).all() and len(split.pages) == len(load_data(root / "imp").test.pages)
    code = main(
        ["bench", "pretrain", "--bench.data", str(root / "imp"), "--bench.seeds", "1", "--bench.workers", "1"]
        + ["--bench.methods", "[lgbm_full]", "--out", str(root / "bench"), "--bench.quiet", "true"]
    )
    assert code == 0
    assert "methods:\n  - lgbm_full" in (root / "bench" / "resolved.yaml").read_text()
    report = json.loads((root / "bench" / "report.json").read_text())
    assert set(report["methods"]) == {"merge", "lgbm_full"}
    assert report["methods"]["lgbm_full"]["annotation_fraction"] == pytest.approx(1.0)
    assert 0.0 <= report["methods"]["lgbm_full"]["mrr@1"]["mean"] <= 1.0
    assert report["meta"]["runs"][0]["lgbm"]["seconds"] > 0


def test_without_single_modal_part_uses_upstream_scores(exported, tmp_path, capsys):
    world, _ = exported
    export_crossrank(world, tmp_path / "cr", single_modal=False)
    assert _import_crossrank(tmp_path / "cr", tmp_path / "imp") == 0
    data = load_data(tmp_path / "imp")
    assert data.single_modal == {} and "upstream" in data.single_modal_source
    assert _pretrain(tmp_path / "imp", tmp_path / "run") == 0
    assert "upstream scores" in capsys.readouterr().out
    run = PretrainRun.open(tmp_path / "run")
    np.testing.assert_allclose(
        run.scored_pages("test").single_modal_score, world.test.pages.single_modal_score, rtol=1e-6
    )


def test_malformed_single_modal_files_name_file_and_column(exported, tmp_path):
    world, root = exported
    src = tmp_path / "cr"
    export_crossrank(world, src)
    t = pq.read_table(src / "SingleModalCorpus_part2.parquet").drop_columns(["abs_basic"])
    pq.write_table(t, src / "SingleModalCorpus_part2.parquet")
    with pytest.raises(SourceFormatError, match=r"SingleModalCorpus_part2\.parquet.*abs_basic"):
        _import(src, tmp_path / "o")
    for i in (1, 2, 3):
        (src / f"SingleModalCorpus_part{i}.parquet").unlink()
    with pytest.raises(SourceFormatError, match="SingleModal_Train.parquet is present but none of"):
        _import(src, tmp_path / "o")
    t = pq.read_table(src / "SingleModal_Train.parquet").drop_columns(["query"])
    pq.write_table(t, src / "SingleModal_Train.parquet")
    with pytest.raises(SourceFormatError, match=r"SingleModal_Train\.parquet.*'query'"):
        _import(src, tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="no import.json"):
        load_data(src)


def _import(src, out):
    from pretrain.export import MODAL_MAP
    from pretrain.importers import CrossRankConfig, import_crossrank

    return import_crossrank(src, out, CrossRankConfig(modal_map=MODAL_MAP))


# --------------------------------------------------------------------------- Qilin-format copy
@pytest.fixture(scope="module")
def qilin_exported(exported, tmp_path_factory):
    world, _ = exported
    root = tmp_path_factory.mktemp("qilin")
    summary = export_qilin(world, root / "qi", batch_pages=7)  # several batches per split
    code = main(
        ["import", str(root / "qi"), "--out", str(root / "imp"), "--import.format", "qilin"]
        + ["--import.note_types", NOTE_TYPES_ARG, "--import.text_dim", "8", "--import.query_text_dim", "8"]
    )
    assert code == 0
    return world, root, summary


def test_qilin_round_trip_keeps_labels_modality_scores(qilin_exported):
    world, root, summary = qilin_exported
    info = json.loads((root / "imp" / "import.json").read_text())
    assert summary["dropped_features"] == {
        m: max(world.pool.pages.feature_dims[m] - len(qilin_slots(m)), 0) for m in MODALITIES
    }
    train, test = read_pages(root / "imp" / "train.parquet"), read_pages(root / "imp" / "test.parquet")
    for got, splits in ((train, [world.pool, world.valid]), (test, [world.test])):
        want = [s.pages for s in splits]
        assert len(got) == sum(len(p) for p in want)
        np.testing.assert_array_equal(got.relevance, np.concatenate([s.truth.relevance for s in splits]))
        np.testing.assert_array_equal(got.modality, np.concatenate([p.modality for p in want]))
        np.testing.assert_array_equal(got.sizes, np.concatenate([p.sizes for p in want]))
        np.testing.assert_allclose(
            got.single_modal_score, np.concatenate([p.single_modal_score for p in want]), rtol=1e-6
        )
        # a session per world query: same session <=> same query id
        qid = np.concatenate([p.query_id for p in want])
        np.testing.assert_array_equal(
            got.query_id[:, None] == got.query_id[None, :], qid[:, None] == qid[None, :]
        )
        # query then user features in the user's dense_feat columns, exactly
        un = info["user_feature_names"]
        ctx = np.concatenate([np.concatenate([p.query_features, p.user_features], 1) for p in want])
        first = un.index("dense_feat1")
        np.testing.assert_allclose(got.user_features[:, first : first + ctx.shape[1]], ctx, rtol=1e-6)
        # item features: the numeric note columns carry the first world features (log-scaled counts)
        feats, mods = np.concatenate([p.features for p in want]), np.concatenate([p.modality for p in want])
        for mid, m in enumerate(MODALITIES):
            sel, names = mods == mid, info["feature_names"][m]
            for j, col in enumerate(qilin_slots(m)[: world.pool.pages.feature_dims[m]]):
                x = feats[sel, j].astype(np.float64)
                if col == "commercial_flag":
                    got_col, want_col = got.features[sel, names.index(col)], x
                else:
                    got_col, want_col = (
                        got.features[sel, names.index(f"log1p_{col}")],
                        np.sign(x) * np.log1p(np.abs(x)),
                    )
                np.testing.assert_allclose(got_col, want_col, rtol=1e-5, atol=1e-6)


def test_qilin_copy_end_to_end(qilin_exported, capsys):
    _, root, _ = qilin_exported
    data = load_data(root / "imp")
    assert data.single_modal == {} and "upstream" in data.single_modal_source
    assert _pretrain(root / "imp", root / "run") == 0
    run = PretrainRun.open(root / "run")
    assert run.is_data and 0.0 <= run.metrics["test"]["smar"]["ndcg@10"] <= 1.0


def test_qilin_malformed_files_name_file_and_column(qilin_exported, tmp_path):
    import shutil

    world, root, _ = qilin_exported
    src = tmp_path / "qi"
    shutil.copytree(root / "qi", src)
    out = tmp_path / "o"
    # the world's documents (note_type 3) without --import.note_types: the error names the page and field
    with pytest.raises(PageValidationError, match=r"search_train.*field 'modality'.*note_type 3"):
        import_qilin(src, out)
    cfg = QilinConfig(note_types={1: "image", 2: "video", 3: "doc", 4: "answer"})
    path = src / "search_train" / "train-00000-of-00001.parquet"
    t = pq.read_table(path)
    bad = pa.array([[[1.0, 2.0, 3.0]]] * t.num_rows, pa.list_(pa.list_(pa.float64())))
    pq.write_table(t.set_column(t.schema.get_field_index("dpr_results"), "dpr_results", bad), path)
    with pytest.raises(SourceFormatError, match=r"search_train.*column 'dpr_results'.*length 3"):
        import_qilin(src, out, cfg)
    pq.write_table(t.drop_columns(["session_idx"]), path)
    with pytest.raises(SourceFormatError, match=r"train-00000-of-00001\.parquet.*session_idx"):
        import_qilin(src, out, cfg)
    notes = src / "notes" / "train-00000-of-00001.parquet"
    pq.write_table(pq.read_table(notes).drop_columns(["video_width"]), notes)
    pq.write_table(t, path)
    with pytest.raises(SourceFormatError, match=r"notes.*video_width"):
        import_qilin(src, out, cfg)
    assert not (out / "train.parquet").exists()


def test_no_query_text_keeps_grouping_and_drops_the_hashed_ids(exported, tmp_path):
    _, root = exported
    out = tmp_path / "imp"
    args = [
        "import",
        str(root / "cr"),
        "--out",
        str(out),
        "--import.format",
        "crossrank",
        "--import.modal_map",
        MODAL_MAP_ARG,
    ]
    assert main([*args, "--import.query_text", "false"]) == 0
    info = json.loads((out / "import.json").read_text())
    hashed = [i for i, n in enumerate(info["query_feature_names"]) if not n.startswith("query_feat_")]
    got, ref = read_pages(out / "test.parquet"), read_pages(root / "imp" / "test.parquet")
    assert (got.query_features[:, hashed] == 0).all() and (ref.query_features[:, hashed] != 0).any()
    np.testing.assert_array_equal(got.query_id, ref.query_id)
    rest = [i for i in range(got.query_dim) if i not in hashed]
    np.testing.assert_array_equal(got.query_features[:, rest], ref.query_features[:, rest])
