"""Smoke tests of `smar pretrain` on a tiny world: the run folder is complete, loadable and honest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.cli import main
from pretrain.checkpoint import verify_checkpoint
from pretrain.run import PretrainRun
from pretrain.world_io import save_world


@pytest.fixture(scope="module")
def tiny_run(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    save_world(tiny_world, root / "world")
    code = main(
        ["pretrain", "--world", str(root / "world"), "--out", str(root / "run")]
        + ["--pretrain.annotation.budget", "0.3", "--pretrain.train.epochs", "2", "--pretrain.seed", "1"]
        + ["--quiet"]
    )
    assert code == 0
    return root / "run"


def test_run_folder_opens_and_verifies(tiny_run):
    run = PretrainRun.open(tiny_run)
    ckpt = verify_checkpoint(run.reranker_path)
    assert ckpt.version == run.reranker_version
    model, ck = run.reranker()
    assert ck.sha256 == ckpt.sha256
    info = json.loads((tiny_run / "run.json").read_text())
    assert info["config"]["annotation"]["budget"] == 0.3 and info["config"]["seed"] == 1
    test = run.split("test")
    s = model.score_pages(test.pages)
    assert s.shape == (test.pages.n_items,) and np.isfinite(s).all()
    assert len(test.truth.relevance) == test.pages.n_items


def test_scored_splits_and_scorers(tiny_run):
    run = PretrainRun.open(tiny_run)
    for name in ("pool", "valid", "test", "traffic"):
        pages = run.scored_pages(name)
        assert not np.isnan(pages.single_modal_score).any()
    pool = run.split("pool")
    assert (pool.pages.relevance == -1).all()  # pool labels stay hidden in the run folder
    pages = pool.pages
    assert np.allclose(run.rankers().score(pages), pages.single_modal_score, atol=1e-5)
    unscored = pages.with_items(single_modal_score=np.full(pages.n_items, np.nan, np.float32))
    assert np.allclose(run.merge().score(unscored), run.merge().score(pages), atol=1e-5)


def test_annotation_cost_is_within_budget(tiny_run):
    m = PretrainRun.open(tiny_run).metrics
    a = m["annotation"]
    assert a["judgements"] <= a["budget"] and a["fraction"] <= 0.3 + 1e-9
    assert a["labelled_items"] == a["unique_items"] == a["judgements"]
    assert set(m["test"]) == {"merge", "smar"}


def test_incomplete_run_names_what_is_missing(tiny_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="run.json"):
        PretrainRun.open(tmp_path)
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken, ignore=shutil.ignore_patterns("merge.json", "world"))
    info = json.loads((tiny_run / "run.json").read_text())
    info["world"] = str((tiny_run / "world").resolve()) if (tiny_run / "world").exists() else info["world"]
    (broken / "run.json").write_text(json.dumps(info))
    with pytest.raises(FileNotFoundError, match="merge.json"):
        PretrainRun.open(broken)


def test_resolved_config_reproduces_the_run(tiny_run, tmp_path):
    """`smar pretrain --config RUN/resolved.yaml` retrains the same model: same config, same metrics."""
    again = tmp_path / "again"
    assert main(["pretrain", "--config", str(tiny_run / "resolved.yaml"), "--out", str(again)]) == 0
    a, b = (json.loads((d / "run.json").read_text()) for d in (tiny_run, again))
    assert a["config"] == b["config"] and a["config"]["single_modal"]["seed"] == 1
    assert a["metrics"]["test"] == b["metrics"]["test"]


def test_a_stage_seed_that_contradicts_the_run_seed_is_refused(tiny_world, tmp_path):
    with pytest.raises(SystemExit, match="conflicts with pretrain.seed"):
        main(
            [
                "pretrain",
                "--out",
                str(tmp_path / "r"),
                "--pretrain.seed",
                "2",
                "--pretrain.annotation.seed",
                "5",
            ]
        )
