"""`smar simulate`: Plackett-Luce logging policy propensities and the command on a tiny world."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from agent.cli import main
from agent.simulate import PlackettLucePolicy
from envs.pages import pad_items
from pretrain.plackett_luce import log_prob, masked_logits


@pytest.fixture(scope="module")
def world_dir(tiny_world, tmp_path_factory):
    from pretrain.world_io import save_world

    return save_world(tiny_world, tmp_path_factory.mktemp("world") / "w")


@pytest.fixture(scope="module")
def checkpoint_dir(tiny_world, tmp_path_factory):
    from pretrain.checkpoint import save_checkpoint
    from pretrain.reranker import RerankerConfig, WholePageReranker

    torch.manual_seed(0)
    model = WholePageReranker(RerankerConfig.for_pages(tiny_world.valid.pages, hidden=16, layers=1))
    model.fit_normalizer(tiny_world.valid.pages)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "c", version="tiny-test").path


def test_pl_propensities_are_exact(tiny_world):
    pages = tiny_world.traffic.pages.select(np.arange(12))
    scores = np.random.default_rng(0).normal(0, 2, pages.n_items)
    pol = PlackettLucePolicy("pl", lambda p: scores, temperature=0.7)
    s = pol.rank(pages, 5, np.random.default_rng(1))
    # product of per-position pscores = exp(slate log-prob) = the PL log-prob computed independently
    np.testing.assert_allclose(np.log(s.pscore).sum(axis=1), s.slate_logprob, rtol=1e-12)
    padded = pad_items(pages, scores, 16)
    logits = masked_logits(torch.from_numpy(padded), torch.ones(12, 16, dtype=torch.bool), 0.7)
    np.testing.assert_allclose(
        s.slate_logprob, log_prob(logits, torch.from_numpy(s.ranking)).numpy(), rtol=1e-10
    )
    # first-position pscore is the softmax of score / T
    p0 = np.exp(padded / 0.7) / np.exp(padded / 0.7).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(s.pscore[:, 0], p0[np.arange(12), s.ranking[:, 0]], rtol=1e-10)


def test_pl_sampling_matches_its_propensities(tiny_world):
    """Monte-Carlo: the logged first-position pscore is the frequency the sampler actually shows."""
    pages = tiny_world.traffic.pages.select(np.zeros(4000, np.int64))  # one page, many times
    base = np.linspace(-1, 1, 16)
    pol = PlackettLucePolicy("pl", lambda p: np.tile(base, len(p)), temperature=0.5)
    s = pol.rank(pages, 3, np.random.default_rng(2))
    freq = np.bincount(s.ranking[:, 0], minlength=16) / 4000
    p = np.exp(base / 0.5) / np.exp(base / 0.5).sum()
    assert np.abs(freq - p).max() < 0.03
    np.testing.assert_allclose(s.pscore[:, 0], p[s.ranking[:, 0]], rtol=1e-10)


def test_smar_simulate_random_on_world(world_dir, tmp_path, capsys):
    out = tmp_path / "r"
    code = main(
        [
            "simulate",
            "--policy",
            "random",
            "--world",
            str(world_dir),
            "--simulation.sessions",
            "300",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "CTR falls with position: yes" in text and "answers satisfying without a click" in text
    fb = pq.read_table(out / "feedback.parquet").to_pandas()
    assert set(fb.model_version) == {"random"} and fb.session_id.nunique() == 300
    assert (out / "ctr_by_position.png").exists() and (out / "dwell_by_grade.png").exists()


@pytest.mark.parametrize("temperature", ["1.0", "0"])
def test_smar_simulate_checkpoint_on_world(world_dir, checkpoint_dir, tmp_path, temperature):
    out = tmp_path / f"c{temperature}"
    argv = ["simulate", "--policy", f"checkpoint:{checkpoint_dir}", "--world", str(world_dir)]
    argv += [
        "--simulation.sessions",
        "200",
        "--out",
        str(out),
        "--temperature",
        temperature,
        "--no-plots",
        "--simulation.seed",
        "4",
    ]
    assert main(argv) == 0
    fb = pq.read_table(out / "feedback.parquet").to_pandas()
    assert set(fb.model_version) == {"tiny-test"}
    if temperature == "0":
        assert (fb.pscore == 1).all()
        for _, g in fb.groupby(["session_id", "query_index"]):
            assert (np.diff(g.sort_values("position").score.values) <= 0).all()
    else:
        assert (fb.pscore < 1).all()
        g = fb.groupby(["session_id", "query_index"])
        np.testing.assert_allclose(
            g.pscore.apply(lambda p: np.log(p).sum()), g.slate_logprob.first(), rtol=1e-9
        )


def test_smar_simulate_rejects_bad_policy(world_dir, tmp_path):
    with pytest.raises(SystemExit, match="unknown --policy"):
        main(["simulate", "--policy", "nope", "--world", str(world_dir), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="needs --run"):
        main(["simulate", "--policy", "merge", "--world", str(world_dir), "--out", str(tmp_path)])


@pytest.mark.parametrize("temperature", ["0", "2.0"])
def test_smar_simulate_merge_and_reranker_on_a_pretrain_run(tiny_run, tmp_path, temperature, capsys):
    """Pages, truth, merge and the SMAR reranker from a real (tiny) pretrain run; consistency is known."""
    run_dir = str(tiny_run.root)
    out_m, out_r = tmp_path / "merge", tmp_path / "smar"
    common = [
        "--run",
        run_dir,
        "--simulation.sessions",
        "150",
        "--temperature",
        temperature,
        "--no-plots",
        "--json",
    ]
    assert main(["simulate", "--policy", "merge", "--out", str(out_m), *common]) == 0
    assert (
        main(["simulate", "--policy", f"checkpoint:{tiny_run.reranker_path}", "--out", str(out_r), *common])
        == 0
    )
    capsys.readouterr()
    m = pq.read_table(out_m / "feedback.parquet").to_pandas()
    r = pq.read_table(out_r / "feedback.parquet").to_pandas()
    assert set(m.model_version) == {"merge"} and set(r.model_version) == {tiny_run.reranker_version}
    pages = pq.read_table(out_m / "pages.parquet").to_pandas()
    assert pages.consistency.between(0, 1).all()  # scored pages: single-modal scores are known
    if temperature == "0":
        assert (pages.consistency == 1.0).all()  # greedy merge keeps every single-modal order
