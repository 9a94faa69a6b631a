"""The real-data path end to end: `smar export` -> `smar import` -> `smar pretrain|bench pretrain --data`."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from agent.cli import main
from envs.pages import MODALITIES
from envs.world import Split
from pretrain.data import load_data
from pretrain.export import MODAL_MAP_ARG, export_crossrank
from pretrain.importers import SourceFormatError
from pretrain.page import read_pages
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


@pytest.fixture(scope="module")
def exported(tiny_world, tmp_path_factory):
    import copy

    world = _scored(copy.deepcopy(tiny_world))
    root = tmp_path_factory.mktemp("realdata")
    export_crossrank(world, root / "cr")
    code = main(
        ["import", "--format", "crossrank", str(root / "cr"), "--out", str(root / "imp")]
        + ["--modal-map", MODAL_MAP_ARG]
    )
    assert code == 0
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
        np.testing.assert_array_equal(got.query_id, np.concatenate([p.query_id for p in want]))
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


def test_pretrain_and_bench_on_data(exported, capsys):
    _, root = exported
    code = main(
        ["pretrain", "--data", str(root / "imp"), "--out", str(root / "run")]
        + ["--pretrain.annotation.budget", "0.3", "--pretrain.train.epochs", "2", "--quiet"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "single-modal rankers trained on the dataset's single-modal part" in out
    run = PretrainRun.open(root / "run")
    assert run.is_data and "mrr@1" in run.metrics["test"]["smar"]
    split = run.split("test")
    assert (split.truth.relevance >= 0).all() and len(split.pages) == len(load_data(root / "imp").test.pages)
    code = main(
        ["bench", "pretrain", "--data", str(root / "imp"), "--seeds", "1", "--workers", "1"]
        + ["--methods", "lgbm_full", "--out", str(root / "bench"), "--quiet"]
    )
    assert code == 0
    report = json.loads((root / "bench" / "report.json").read_text())
    assert set(report["methods"]) == {"merge", "lgbm_full"}
    assert report["methods"]["lgbm_full"]["annotation_fraction"] == pytest.approx(1.0)
    assert 0.0 <= report["methods"]["lgbm_full"]["mrr@1"]["mean"] <= 1.0
    assert report["meta"]["runs"][0]["lgbm"]["seconds"] > 0


def test_without_single_modal_part_uses_upstream_scores(exported, tmp_path, capsys):
    world, _ = exported
    export_crossrank(world, tmp_path / "cr", single_modal=False)
    assert (
        main(
            [
                "import",
                "--format",
                "crossrank",
                str(tmp_path / "cr"),
                "--out",
                str(tmp_path / "imp"),
                "--modal-map",
                MODAL_MAP_ARG,
            ]
        )
        == 0
    )
    data = load_data(tmp_path / "imp")
    assert data.single_modal == {} and "upstream" in data.single_modal_source
    code = main(
        [
            "pretrain",
            "--data",
            str(tmp_path / "imp"),
            "--out",
            str(tmp_path / "run"),
            "--pretrain.train.epochs",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
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
    from pretrain.importers import CrossRankConfig, import_crossrank

    return import_crossrank(
        src, out, CrossRankConfig(modal_map=dict(p.split("=") for p in MODAL_MAP_ARG.split(",")))
    )
