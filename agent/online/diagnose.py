"""What the off-policy update can learn from logged data, without HTTP: propensities, a known answer, drift.

    python -m agent.online.diagnose [--run DIR] [--policy CKPT] [--impressions N] [--out FILE]

The loop's update (agent.offpolicy.offpolicy_update) is run on logs the simulator writes directly
(`simulated_batch`: the same Plackett-Luce propensities, observed reward and LoggedBatch the serve logs
give), so each figure isolates the update from the traffic:

  propensities   the serving model's own log-probabilities of the logged rankings at the logged
                 temperature minus the logged ones: 0 means the update's importance ratio starts at 1;
  known answer   a synthetic reward whose best ranking is known (reward = examination x [item is of
                 modality M]); the candidate's exact expected synthetic reward under PL (Monte Carlo over
                 rankings) must rise above the serving policy's, and the gate's DR estimate must agree;
  drift          rounds of simulated traffic on the drifted world (the loop's default drift), one update
                 per round from the previous candidate, held-out reward on the drifted test sessions;
                 settings compared: the loop's update, a larger step (lr), a wider trust region (clip,
                 KL) and more exploration (temperature), and the oracle "demote video by d" probe
                 (how much any update could recover by only moving the video offset).
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from agent.offpolicy import LoggedBatch, UpdateConfig, observed_reward, offpolicy_update
from envs.atomic_io import write_json_atomic
from envs.pages import MODALITIES
from envs.reward import RewardConfig
from envs.world import Split
from pretrain import plackett_luce as pl
from pretrain.page import collate
from serving.settings import SERVING_TEMPERATURE


def simulated_batch(
    model, split: Split, temperature: float, sessions: int, seed: int, reward: RewardConfig, k: int = 10
) -> LoggedBatch:
    """`sessions` simulated sessions served by PL(model scores / temperature) on `split`, as the
    LoggedBatch the loop builds from serve logs (observed reward from click, dwell and answer viewport,
    query 0)."""
    from agent.simulate import score_policy
    from envs.simulation import SimulationConfig, simulate

    log = simulate(
        score_policy("diag", model.score_pages, temperature),
        split.pages,
        split.truth,
        SimulationConfig(sessions=sessions, slate_size=k, seed=seed, reward=reward),
    )
    fb = log.feedback
    index = {pid: i for i, pid in enumerate(split.pages.page_id.astype(str))}
    event = np.asarray(fb["session_id"].to_pylist(), object).astype(str)
    qidx = np.asarray(fb["query_index"].to_numpy(), np.int64)
    pos = np.asarray(fb["position"].to_numpy(), np.int64) - 1
    keys = np.char.add(np.char.add(event, "|"), qidx.astype(str))
    uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    n = len(uniq)
    ranking = np.zeros((n, k), np.int64)
    logp = np.zeros((n, k))
    click = np.zeros((n, k))
    dwell = np.zeros((n, k))
    viewport = np.zeros((n, k))
    ranking[inv, pos] = fb["action"].to_numpy()
    logp[inv, pos] = np.log(np.clip(fb["pscore"].to_numpy(), 1e-300, 1.0))
    click[inv, pos] = fb["click"].to_numpy()
    dwell[inv, pos] = fb["dwell"].to_numpy()
    viewport[inv, pos] = fb["viewport"].to_numpy()
    page_ids = np.asarray(fb["page_id"].to_pylist(), object)[first]
    pidx = np.array([index[str(p)] for p in page_ids], np.int64)
    pages = split.pages.select(pidx)
    modality = pages.modality[pages.offsets[:-1, None] + ranking].astype(np.int64)
    return LoggedBatch(
        pages=pages,
        ranking=ranking,
        logged_logp=logp,
        reward=observed_reward(click, dwell, modality, reward, viewport=viewport),
        temperature=np.full(n, temperature),
        event_id=uniq.astype(object),
        model_version=np.full(n, "diag", object),
        ts_ms=np.zeros(n, np.int64),
    )


@torch.no_grad()
def logged_logp_under(model, batch: LoggedBatch) -> np.ndarray:
    """log pi(a_k | a_<k) of the logged rankings under `model` at the logged temperatures [n, K]."""
    pb = collate(batch.pages)
    logits = (
        pl.masked_logits(model.score_batch(pb), pb.mask)
        / torch.from_numpy(batch.temperature).float()[:, None]
    )
    return pl.stepwise_log_probs(logits, torch.from_numpy(batch.ranking)).double().numpy()


def propensity_check(model, batch: LoggedBatch) -> dict:
    d = logged_logp_under(model, batch) - batch.logged_logp
    return {"max_abs_logp_diff": float(np.abs(d).max()), "mean_ratio": float(np.exp(d.sum(1)).mean())}


@torch.no_grad()
def pl_value(
    model, pages, temperature: float, value: np.ndarray, k: int, samples: int = 64, seed: int = 0
) -> float:
    """Monte Carlo E_{ranking ~ PL(scores/T)} sum_k exam_k value(a_k), mean over pages; value: per item."""
    pb = collate(pages)
    logits = pl.masked_logits(model.score_batch(pb), pb.mask) / temperature
    n_max = pb.mask.shape[1]
    v = np.zeros((len(pages), n_max))
    for p in range(len(pages)):
        sl = pages.item_slice(p)
        v[p, : sl.stop - sl.start] = value[sl]
    exam = 1.0 / np.log2(np.arange(2, k + 2))
    g = torch.Generator().manual_seed(seed)
    tot = 0.0
    for _ in range(samples):
        r = pl.sample_topk(logits, k, generator=g).numpy()
        tot += float((np.take_along_axis(v, r, 1) * exam).sum(1).mean())
    return tot / samples


def known_answer(
    model,
    split: Split,
    cfg: UpdateConfig,
    temperature: float,
    sessions: int,
    target: float,
    modality: str = "answer",
    seed: int = 0,
) -> dict:
    """Synthetic reward exam_k x [a_k is `modality`] on logged rankings: does the update move toward the
    known better ranking (that modality on top), and does the gate's DR estimate see it?"""
    from agent.gate import candidate_terms
    from agent.ope import PositionModalityRewardModel, per_impression

    batch = simulated_batch(model, split, temperature, sessions, seed, RewardConfig())
    k = batch.ranking.shape[1]
    mid = MODALITIES.index(modality)
    exam = 1.0 / np.log2(np.arange(2, k + 2))
    shown = batch.pages.modality[batch.pages.offsets[:-1, None] + batch.ranking]
    batch = replace(batch, reward=(shown == mid) * exam)
    rng = np.random.default_rng(seed)
    held = rng.random(len(batch)) < 0.3
    train, gate = batch.subset(np.flatnonzero(~held)), batch.subset(np.flatnonzero(held))
    cand, stats = offpolicy_update(model, train, target, cfg)
    pages = gate.pages
    value = (pages.modality == mid).astype(np.float64)  # per item of the gate's pages
    before = pl_value(model, pages, temperature, value, k)
    after = pl_value(cand, pages, temperature, value, k)
    q = PositionModalityRewardModel.fit(
        train.pages.modality[train.pages.offsets[:-1, None] + train.ranking], train.reward
    )
    dr = per_impression(candidate_terms(cand, gate, q), 100.0)["dr"].mean()
    return {
        "modality": modality,
        "true_serving": before,
        "true_candidate": after,
        "dr_candidate": float(dr),
        "logged_serving": float(gate.reward.sum(1).mean()),
        "update": stats,
    }


def drift_rounds(
    model,
    world: Split,
    heldout: Split,
    cfg: UpdateConfig,
    temperature: float,
    sessions: int,
    rounds: int,
    target: float,
    heldout_eval,
    seed: int = 0,
) -> list[float]:
    """Held-out reward after each of `rounds` updates, each on fresh simulated traffic of the current policy."""
    out = []
    cur = model
    for r in range(rounds):
        batch = simulated_batch(
            cur, world, temperature, sessions, seed * 100 + r, RewardConfig(name="success")
        )
        cur, _ = offpolicy_update(cur, batch, target, replace(cfg, seed=r))
        out.append(heldout_eval(cur))
    return out


def plot_diagnosis(res: dict, path: str | Path) -> Path:
    """Held-out recovery by round under each update setting, beside the oracle video-offset probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, d in res.get("drift", {}).items():
        ax[0].plot(range(1, len(d["recovered"]) + 1), d["recovered"], "o-", label=name)
    ax[0].axhline(0.5, color="tab:red", ls=":", label="goal (half of the loss)")
    ax[0].axhline(0.0, color="grey", lw=0.8)
    ax[0].set_xlabel("rounds after the change")
    ax[0].set_ylabel("recovered fraction of the frozen loss")
    ax[0].set_title("update settings on simulated drifted logs")
    ax[0].legend(fontsize=7)
    probe = res.get("oracle_video_offset", {})
    ax[1].plot([float(k) for k in probe], [v["recovered"] for v in probe.values()], "s-", label="greedy")
    ax[1].axhline(0.5, color="tab:red", ls=":")
    ax[1].set_xlabel("video scores lowered by d (initial policy)")
    ax[1].set_ylabel("recovered fraction")
    ax[1].set_title("oracle: demote video only")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/pretrain")
    p.add_argument("--policy", default=None, help="initial policy (default: the run's SMAR reranker)")
    p.add_argument(
        "--sessions", type=int, default=2400, help="simulated sessions per round (~7,000 impressions)"
    )
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--temperature", type=float, default=SERVING_TEMPERATURE)
    p.add_argument("--settings", default="loop,lr,trust,explore", help="drift settings to compare")
    p.add_argument("--checks-only", action="store_true", help="propensities and the known answer only")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def drift_settings(base: UpdateConfig, temperature: float) -> dict[str, tuple[UpdateConfig, float]]:
    """The update settings the drift comparison can run (`--settings`), each with its temperature."""
    offsets = dict(body_lr_scale=0.0, offset_lr_scale=10.0)
    bias_open = dict(offsets, offset_params="bias", clip=1.0, kl_coeff=0.0)
    return {
        "loop": (base, temperature),
        "lr": (replace(base, lr=1e-2), temperature),
        "trust": (replace(base, clip=1.0, kl_coeff=0.0), temperature),
        "lr+trust": (replace(base, lr=1e-2, clip=1.0, kl_coeff=0.0), temperature),
        "explore": (base, 1.0),
        "epochs": (replace(base, epochs=8), temperature),
        "offsets": (replace(base, **offsets), temperature),
        "offsets+trust": (replace(base, **offsets, clip=0.5, kl_coeff=0.01), temperature),
        "offsets-fast": (replace(base, body_lr_scale=0.0, offset_lr_scale=30.0), temperature),
        "offsets+open": (replace(base, **offsets, clip=1.0, kl_coeff=0.0), temperature),
        "offsets+wide": (
            replace(base, body_lr_scale=0.0, offset_lr_scale=30.0, clip=3.0, kl_coeff=0.0, epochs=5),
            temperature,
        ),
        "bias+open": (replace(base, **bias_open), temperature),
        "bias+fast": (replace(base, **{**bias_open, "offset_lr_scale": 30.0}), temperature),
        "bias+immediate": (replace(base, **bias_open, advantage="immediate"), temperature),
        "bias+explore": (replace(base, **bias_open), 1.0),
        "mixed": (replace(base, lr=1e-3, offset_lr_scale=30.0), temperature),
        "dr": (replace(base, **bias_open, objective="dr"), temperature),
        "dr+plain": (replace(base, **bias_open, objective="dr", pessimism=0.0), temperature),
        "dr+head": (replace(base, **{**bias_open, "offset_params": "head"}, objective="dr"), temperature),
    }


def _checks(model, traffic: Split, base: UpdateConfig, a: argparse.Namespace, target: float) -> dict:
    """Propensities and the known answer, for the previous whole-network update and the loop's."""
    from agent.online.config import OnlineConfig

    b = simulated_batch(model, traffic, a.temperature, 300, 1, RewardConfig(name="success"))
    res: dict = {"propensities": propensity_check(model, b)}
    print(f"propensities: {res['propensities']}", flush=True)
    loop_update = replace(OnlineConfig().update, margin=base.margin)
    res["known_answer"] = {}
    for name, cfg in (
        ("previous loop update (whole network)", base),
        ("loop default (offset head)", loop_update),
    ):
        ka = res["known_answer"][name] = known_answer(model, traffic, cfg, a.temperature, a.sessions, target)
        print(
            f"known answer ({ka['modality']} on top), {name}: true serving {ka['true_serving']:.4f} -> "
            f"candidate {ka['true_candidate']:.4f}; DR of candidate {ka['dr_candidate']:.4f} "
            f"(logged serving {ka['logged_serving']:.4f})",
            flush=True,
        )
    return res


class _DriftedHeldout:
    """Mean deterministic held-out reward on the drifted test sessions (or another split)."""

    def __init__(self, test: Split, drift) -> None:
        from agent.online.drift import drift_split
        from agent.online.heldout import HeldoutConfig
        from envs.serp_env import SerpConfig

        self.test, self.drifted = test, drift_split(test, drift)
        self.serp = SerpConfig(reward=RewardConfig(name="success"), slate_size=10)
        self.cfg = HeldoutConfig()

    def __call__(self, m, split: Split | None = None) -> float:
        from agent.online.heldout import deterministic_returns

        split = self.drifted if split is None else split
        return float(deterministic_returns(m, split, self.cfg, self.serp).mean())

    def served(self, m, temperature: float) -> float:
        """The same sessions served as the endpoint explores (PL at `temperature`)."""
        from agent.online.heldout import served_returns

        return float(served_returns(m, self.drifted, temperature, self.cfg, self.serp).mean())


def _frozen_and_oracle(model, ev: _DriftedHeldout, drift, temperature: float) -> dict:
    """The frozen policy's loss from the drift, and the oracle "demote video by d" probe: its greedy
    held-out reward (what the criterion measures) and as served at `temperature` (what the logs, the
    update and the gate see)."""
    test = ev.test
    before, after = ev(model, test), ev(model)
    res: dict = {"frozen": {"before": before, "after": after, "lost": before - after}}
    print(f"frozen: before drift {before:.4f}, after {after:.4f}, lost {before - after:.4f}", flush=True)
    scores = model.score_pages(test.pages)
    vid = test.pages.modality == MODALITIES.index(drift.modality)
    probe, served = {}, {}
    for d in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0):
        s = scores - d * vid
        probe[d] = ev(lambda pages, s=s: s)
        served[d] = ev.served(lambda pages, s=s: s, temperature)
    res["oracle_video_offset"] = {
        str(d): {"heldout": v, "recovered": (v - after) / (before - after), "served": served[d]}
        for d, v in probe.items()
    }
    print(
        "oracle video offset: "
        + ", ".join(
            f"-{d}: {v:.4f} ({(v - after) / (before - after):.0%}; served {served[d]:.4f})"
            for d, v in probe.items()
        ),
        flush=True,
    )
    return res


def _compare_drift(model, dworld: Split, ev: _DriftedHeldout, settings, a, target, frozen, t0) -> dict:
    """Each chosen setting's held-out reward and recovered share over `a.rounds` drifted rounds."""
    before, after = frozen["before"], frozen["after"]
    out = {}
    for name in a.settings.split(","):
        cfg, temp = settings[name]
        curve = drift_rounds(
            copy.deepcopy(model), dworld, ev.drifted, cfg, temp, a.sessions, a.rounds, target, ev
        )
        rec = [(v - after) / (before - after) for v in curve]
        out[name] = {"update": cfg.to_json(), "temperature": temp, "heldout": curve, "recovered": rec}
        print(
            f"drift [{name}]: held-out by round {np.round(curve, 4).tolist()} recovered {np.round(rec, 2).tolist()} ({time.time() - t0:.0f} s)",
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """The checks, then (unless --checks-only) the frozen loss, the oracle probe and the settings."""
    a = _parse(argv)
    torch.set_num_threads(1)

    from agent.constraint import checkpoint_margin
    from agent.learner import topk_consistency
    from agent.online.drift import DriftConfig, drift_split
    from pretrain.checkpoint import load_checkpoint
    from pretrain.run import PretrainRun

    run = PretrainRun.open(a.run)
    smar, smar_ckpt = run.reranker()
    model, _ = load_checkpoint(a.policy) if a.policy else (smar, None)
    traffic, test = run.split("traffic"), run.split("test")
    target = 0.95 * topk_consistency(smar, traffic.pages, 10)
    base = UpdateConfig(margin=checkpoint_margin(smar_ckpt.manifest), epochs=3)
    res: dict = {"config": vars(a), "consistency_target": target}
    t0 = time.time()
    res.update(_checks(model, traffic, base, a, target))
    if a.checks_only:
        if a.out:
            write_json_atomic(a.out, res)
        return 0
    drift = DriftConfig()
    ev = _DriftedHeldout(test, drift)
    res.update(_frozen_and_oracle(model, ev, drift, a.temperature))
    settings = drift_settings(base, a.temperature)
    res["drift"] = _compare_drift(
        model, drift_split(traffic, drift), ev, settings, a, target, res["frozen"], t0
    )
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(a.out, res)
        print(f"plot: {plot_diagnosis(res, Path(a.out).with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
