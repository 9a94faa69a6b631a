"""The continual-update loop against a real Serve app: resume after a kill, and a harmful candidate gated."""

from __future__ import annotations

import copy

import pytest
import torch

from agent.evaluation import session_page_lists
from agent.gate import GateConfig, gate, reward_model_for
from agent.offpolicy import UpdateConfig, logged_batch
from agent.online import OnlineConfig, OnlineLoop
from agent.online.drift import DriftConfig
from agent.online.heldout import HeldoutConfig
from agent.traffic import run_traffic
from envs.config_io import ConfigError
from serving.client import RerankerClient, page_request
from serving.feedback_log import read_logs
from serving.registry import Registry


def _reversed(model):
    """A deliberately harmful candidate: the same network with its score negated (every order reversed)."""
    bad = copy.deepcopy(model)
    last = bad.head[-1]
    with torch.no_grad():
        last.weight.neg_()
        last.bias.neg_()
    return bad


def test_online_loop_resumes_and_gate_rejects_harmful_candidate(ray_session, tiny_run, tmp_path) -> None:
    base = dict(
        out=str(tmp_path / "online"),
        run=str(tiny_run.root),
        policy=str(tiny_run.reranker_path),
        impressions_per_round=60,
        concurrency=2,
        num_cpus=0.5,
        update=UpdateConfig(epochs=2, minibatch=32),
        gate=GateConfig(n_boot=100),
        heldout=HeldoutConfig(repeats=1, served_samples=1),
        drift=DriftConfig(at_round=1, modality="video", relevance_shift=-2),
    )
    first = OnlineLoop(OnlineConfig(rounds=1, **base))
    r0 = first.run_all()["rounds"][0]
    assert r0["failed_requests"] == 0
    assert r0["logged_impressions"] == r0["impressions"] >= 60
    assert set(r0["ope"]) >= {"ips", "snips", "dr", "serving_value", "publish", "reasons", "difference"}
    # Out-of-sample figures: the serving version and the frozen initial one on held-out sessions.
    assert r0["world"] == "base" and r0["version"] == first.initial_version()
    h = r0["heldout_reward"]
    assert h["lo"] <= h["mean"] <= h["hi"] and h["sessions"] == len(
        session_page_lists(first.heldout_split.pages)
    )
    assert r0["frozen_heldout"] == r0["heldout_reward"]  # round 0 serves the initial version
    assert set(r0["seconds"]) >= {"traffic", "read_logs", "update", "gate", "publish", "round"}

    # Restart: a new loop reads state.json and continues at round 1.
    second = OnlineLoop(OnlineConfig(rounds=2, **base))
    assert second.state["round"] == 1 and second.state["cursor_ms"] > 0
    second.start()
    try:
        # A round killed after its traffic but before its update: its logs lie after the cursor ...
        killed = run_traffic(second.url, second.split, 30, seed=99, concurrency=2)
        assert killed.failed_requests == 0
        # ... and the process that served them is gone (the app, like a remote --url app, lives on).
        del second
        third = OnlineLoop(OnlineConfig(rounds=2, **base))
        assert third.state["round"] == 1
        third.url = _live_url()
        r1 = third.round(1)
        # Nothing lost, nothing re-read: exactly the killed round's, this round's and the swap probe's.
        assert r1["logged_impressions"] == killed.impressions + r1["impressions"] + r0["swap_probe_requests"]
        assert r1["failed_requests"] == 0
        # From round 1 the world is drifted: traffic and held-out sessions use the drifted truth.
        assert r1["world"] == "drifted"
        summary = third.summary()
        assert summary["drift"]["frozen_before"] == r0["frozen_heldout"]["mean"]
        assert summary["drift"]["frozen_after"] == r1["frozen_heldout"]["mean"]
        assert summary["failed_requests"] == 0

        # The gate rejects a candidate that reverses every single-modal order; the old version keeps serving.
        model, version = third.serving_model()
        logs = read_logs(third.log_dir)
        batch = logged_batch(logs, model.config.feature_dims, 10)
        train, holdout = batch.split_holdout(0.4, seed=0)
        decision = gate(_reversed(model), holdout, reward_model_for(train), third.state["consistency_target"])
        assert not decision.publish
        assert any("consistency" in r for r in decision.reasons)
        assert decision.consistency < 0.5 < third.state["consistency_target"]
        assert Registry(third.registry_dir).current().version == version
        with RerankerClient(third.url) as client:
            assert client.version()["model_version"] == version
            res = client.rank(page_request(third.split.pages, 0, explore=True))
            assert res["model_version"] == version and len(res["ranking"]) > 0
    finally:
        from serving import deploy

        deploy.shutdown()


def _live_url() -> str:
    """The URL of the running app (read back from Serve's live config)."""
    from serving import deploy

    return deploy.base_url(deploy.current_config())


def test_a_config_an_older_run_saved_loads_typed() -> None:
    """Older states hold the nested settings as partial dicts of overrides: they load strictly, a missing
    key taking its default (as the overrides did), and the typed config saves and loads back unchanged."""
    old = {
        "rounds": 5,
        "update": {"epochs": 2, "body_lr_scale": 0.0, "offset_lr_scale": 10.0, "offset_params": "bias"},
        "gate": {},
        "heldout": {"repeats": 1},
        "drift": {"at_round": 2, "modality": "video", "relevance_shift": -2, "attractiveness_scale": 1.0},
    }
    cfg = OnlineConfig.from_json(old)
    assert cfg.update == UpdateConfig(epochs=2, body_lr_scale=0.0, offset_lr_scale=10.0, offset_params="bias")
    assert cfg.gate == GateConfig() and cfg.heldout == HeldoutConfig(repeats=1)
    assert cfg.drift == DriftConfig(at_round=2) and cfg.rounds == 5
    assert OnlineConfig.from_json(cfg.to_json()) == cfg
    assert OnlineConfig.from_json({"drift": None}).drift is None
    with pytest.raises(ConfigError, match="'lrr'"):
        OnlineConfig.from_json({"update": {"lrr": 1.0}})
