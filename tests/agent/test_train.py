"""End to end on the tiny world: a few PPO iterations from a tiny SMAR checkpoint, resume, and the exported
policy loads in a fresh process with identical scores; the same seed reproduces a run exactly."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.evaluation import evaluate_policy, random_scorer, session_page_lists
from agent.ppo_config import lr_schedule, pretrain_margin
from agent.train import TrainConfig, train_policy
from agent.train_log import Selection
from pretrain.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _cfg(run, out, **kw) -> TrainConfig:
    base = dict(
        out=str(out),
        run=str(run.root),
        iterations=2,
        train_batch=128,
        minibatch=64,
        epochs=1,
        envs_per_runner=4,
        serp={"slate_size": 5},
        eval_repeats=1,
        final_eval_repeats=1,
        checkpoint_every=1,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tiny_run, ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo")
    return train_policy(_cfg(tiny_run, out, iterations=2, select_every=1)), out


def test_ppo_smoke_from_tiny_smar_checkpoint(trained, tiny_run):
    res, out = trained
    assert res.env_steps >= 2 * 128
    assert TrainConfig().layout_noise > 0  # so this run samples layouts through RLlib (the default)
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert [int(float(r["iteration"])) for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        for key in (
            "train_consistency",
            "multiplier",
            "target",
            "hinge",
            "clip_fraction",
            "ppo_kl",
            "vf_explained_var",
            "eval_reward",
            "eval_consistency",
        ):
            assert np.isfinite(float(r[key])), key
        assert 0.0 <= float(r["train_consistency"]) <= 1.0 and float(r["multiplier"]) >= 0.0
        assert 0.0 <= float(r["clip_fraction"]) <= 1.0
        assert float(r["ppo_kl"]) >= 0.0  # the approximate KL to the sampling policy, really measured
    assert (out / "learning_curves.png").stat().st_size > 0
    assert any((out / "tb").iterdir())
    manifest = json.loads((res.policy_path / "manifest.json").read_text())
    assert manifest["kind"] == "ppo" and manifest["init"]["version"] == tiny_run.reranker_version
    assert manifest["train_config"]["constraint"] is True and "final_eval" in manifest["metrics"]
    # the constraint's hinge asks for the margin SMAR itself was pretrained with
    _, smar_ckpt = tiny_run.reranker()
    margin = smar_ckpt.manifest["pretrain_config"]["loss"]["margin"]
    assert manifest["consistency_margin"] == pretrain_margin(smar_ckpt) == margin
    # best-iterate selection ran at the start and after every iteration, and exported its choice
    assert all(np.isfinite(float(r["select_reward"])) for r in rows)
    best = json.loads((out / "best" / "manifest.json").read_text())["selection"]
    assert manifest["selected_iteration"] == best["iteration"] in (0, 1, 2)
    chosen = rows[best["iteration"]]
    assert float(chosen["select_reward"]) == best["select_reward"]
    assert float(chosen["select_consistency"]) == best["select_consistency"]
    # The exported network is the selected iterate: SMAR's own weights only if iteration 0 won.
    net, _ = load_checkpoint(res.policy_path)
    smar, _ = tiny_run.reranker()
    diffs = [
        (a - b).abs().max().item() for a, b in zip(net.state_dict().values(), smar.state_dict().values())
    ]
    assert (max(diffs) > 0) == (best["iteration"] > 0)


def test_position_ratio_without_bootstrap_rows_trains(tiny_run, ray_session, tmp_path):
    """ratio "position" (per-position advantages from the env's position rewards; the connector checks
    they sum to each row's reward) with the bootstrap rows dropped: a PPO iteration runs and logs."""
    res = train_policy(
        _cfg(tiny_run, tmp_path, iterations=1, ratio="position", drop_bootstrap_rows=True, checkpoint_every=0)
    )
    row = res.history[-1]
    for key in ("clip_fraction", "slate_clip_fraction", "ppo_kl", "cpu_s", "eval_reward"):
        assert np.isfinite(float(row[key])), key
    assert 0.0 <= row["clip_fraction"] <= 1.0 and row["cpu_s"] > 0


@pytest.mark.parametrize("vector_env", [True, False])
def test_ppo_config_env_path(tiny_run, vector_env):
    """The batched SerpVectorEnv through RLlib's vector entry point by default; gymnasium's
    SyncVectorEnv of SerpEnvs with vector_env False. Either way the pages ride in an env config
    that RLlib's per-iteration deep copy of the config shares instead of copying."""
    import copy

    from agent.ppo_config import RLlibSerpEnv, RLlibSerpVectorEnv, build_ppo_config
    from agent.train import serp_config_for

    split = tiny_run.split("traffic")
    cfg = _cfg(tiny_run, "unused", vector_env=vector_env)
    serp = serp_config_for([split.pages], cfg.serp)
    ppo = build_ppo_config(cfg, split, {"checkpoint": str(tiny_run.reranker_path)}, serp, 0.5)
    assert ppo.env is (RLlibSerpVectorEnv if vector_env else RLlibSerpEnv)
    assert ppo.gym_env_vectorize_mode == ("vector_entry_point" if vector_env else "sync")
    assert copy.deepcopy(ppo.env_config)["pages"] is split.pages
    env = ppo.env(ppo.env_config | {"num_envs": 3}) if vector_env else None
    if env is not None:
        assert env.num_envs == 3 and env.single_action_space.shape == (5,)


def test_sync_vector_env_path_trains(tiny_run, ray_session, tmp_path):
    """vector_env False (the previous path, kept measurable) still trains."""
    res = train_policy(_cfg(tiny_run, tmp_path, iterations=1, vector_env=False, checkpoint_every=0))
    assert res.env_steps >= 128 and np.isfinite(float(res.history[-1]["train_return"]))


def test_same_seed_gives_the_same_run(trained, tiny_run, tmp_path):
    """Seed everything: a second run with the same config reproduces every metric and weight."""
    res, out = trained
    again = train_policy(_cfg(tiny_run, tmp_path / "again", iterations=2, checkpoint_every=0, select_every=1))
    cols = (
        "env_steps",
        "train_return",
        "train_consistency",
        "multiplier",
        "hinge",
        "eval_reward",
        "policy_loss",
    )
    first = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))[:3]
    second = list(csv.DictReader((tmp_path / "again" / "metrics.csv").read_text().splitlines()))
    assert [[r[c] for c in cols] for r in first] == [[r[c] for c in cols] for r in second]
    # evaluating and selecting iterates never changes the training run itself
    plain = train_policy(_cfg(tiny_run, tmp_path / "plain", iterations=2, checkpoint_every=0, eval_every=0))
    third = list(csv.DictReader((tmp_path / "plain" / "metrics.csv").read_text().splitlines()))
    cols = ("env_steps", "train_return", "train_consistency", "multiplier", "hinge", "policy_loss")
    assert [[r[c] for c in cols] for r in first] == [[r[c] for c in cols] for r in third]
    assert plain.env_steps == res.env_steps
    a, _ = load_checkpoint(res.policy_path)
    b, _ = load_checkpoint(again.policy_path)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_resume_continues_from_the_latest_checkpoint(trained, tiny_run):
    res, out = trained
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["iteration"] == 2
    more = train_policy(_cfg(tiny_run, out, iterations=3, resume=True))
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert [int(float(r["iteration"])) for r in rows] == [0, 1, 2, 3]
    assert more.env_steps > res.env_steps
    assert rows[0]["iteration"] == "0"  # integers stay integers across the rewrite


def test_export_loads_in_a_fresh_process_with_identical_scores(trained, tiny_run, tmp_path):
    res, _ = trained
    pages = tiny_run.scored_pages("test")
    net, _ = load_checkpoint(res.policy_path)
    here = net.score_pages(pages)
    script = (
        "import sys, numpy as np\n"
        "from pretrain.checkpoint import load_checkpoint\n"
        "from pretrain.run import PretrainRun\n"
        "net, _ = load_checkpoint(sys.argv[1])\n"
        "np.save(sys.argv[3], net.score_pages(PretrainRun.open(sys.argv[2]).scored_pages('test')))\n"
    )
    target = tmp_path / "scores.npy"
    subprocess.run(
        [sys.executable, "-c", script, str(res.policy_path), str(tiny_run.root), str(target)],
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    np.testing.assert_array_equal(np.load(target), here)


def test_evaluation_plays_the_env_sessions(tiny_run):
    test = tiny_run.split("test")
    sessions = session_page_lists(test.pages)
    assert sum(len(s) for s in sessions) == len(test.pages)
    a = evaluate_policy(
        random_scorer(0), test.pages, test.truth, seed=3, repeats=2, serp={"n_max": 16, "slate_size": 5}
    )
    b = evaluate_policy(
        random_scorer(0), test.pages, test.truth, seed=3, repeats=2, serp={"n_max": 16, "slate_size": 5}
    )
    assert a == b and a["episodes"] == 2 * len(sessions)
    # The slate's NDCG measures relevance: sorting by the true grade beats chance by far. (The tiny
    # run's SMAR reranker, trained on 8 pool queries, is not reliably better than chance here.)
    oracle = evaluate_policy(
        lambda p: test.truth.relevance.astype(np.float32),
        test.pages,
        test.truth,
        seed=3,
        repeats=2,
        serp={"n_max": 16, "slate_size": 5},
    )
    assert oracle["ndcg@10"] > a["ndcg@10"] + 0.2
    smar, _ = tiny_run.reranker()
    s = evaluate_policy(smar, test.pages, test.truth, seed=3, repeats=2, serp={"n_max": 16, "slate_size": 5})
    assert s["episodes"] == a["episodes"] and 0.0 <= s["ndcg@10"] <= 1.0
    # Single-modal order itself is perfectly consistent by definition.
    sm = evaluate_policy(
        lambda p: p.single_modal_score,
        test.pages,
        test.truth,
        seed=3,
        repeats=1,
        serp={"n_max": 16, "slate_size": 5},
    )
    assert sm["consistency"] == 1.0


def test_lr_schedule_warms_up_and_decays_over_the_budget():
    cfg = TrainConfig(out="x", iterations=8, train_batch=1024, lr=1e-3, lr_end=None)
    assert lr_schedule(cfg) == 1e-3  # constant: RLlib's plain float
    assert lr_schedule(replace(cfg, lr_end=0.0)) == [[0, 1e-3], [8192, 0.0]]
    assert lr_schedule(replace(cfg, lr_end=0.0, lr_warmup=2048)) == [[0, 1e-4], [2048, 1e-3], [8192, 0.0]]
    assert lr_schedule(replace(cfg, lr_warmup=1024)) == [[0, 1e-4], [1024, 1e-3]]


def test_selection_keeps_the_best_feasible_iterate_and_resumes(tiny_run, tmp_path):
    smar, _ = tiny_run.reranker()
    sel = Selection(tmp_path / "best", constraint=True, target=0.8)
    assert sel.offer(smar, 0, reward=1.0, consistency=0.7)  # the first offer is kept, even infeasible
    assert sel.offer(smar, 1, 0.9, 0.75)  # none feasible yet: the more consistent one
    assert not sel.offer(smar, 2, 2.0, 0.74)
    assert sel.offer(smar, 3, 0.5, 0.85)  # feasible beats infeasible, whatever the rewards
    assert not sel.offer(smar, 4, 0.5, 0.9)  # a tie keeps the earlier iterate
    assert not sel.offer(smar, 5, 3.0, 0.79)  # infeasible never replaces a feasible one
    assert sel.offer(smar, 6, 0.6, 0.81)
    again = Selection(tmp_path / "best", True, 0.8)
    again.restore()
    assert (again.iteration, again.key) == (6, (True, 0.6))
    off = Selection(tmp_path / "off", constraint=False, target=0.8)
    assert off.offer(smar, 0, 1.0, 0.9) and off.offer(smar, 1, 1.1, 0.1)  # constraint off: reward only
