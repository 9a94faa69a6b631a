"""`smar simulate`: run a logging policy through the simulated user and write logged feedback.

Policies:
  random           uniformly random rankings (pscore exactly 1 / (N - k + 1))
  merge            the pretrain run's merge baseline (calibrated single-modal scores)
  checkpoint:PATH  a reranker checkpoint (pretrain.checkpoint format)
Score-based policies sample Plackett-Luce rankings at `--temperature` (exact propensities from
pretrain.plackett_luce, the one PL implementation; default: the endpoint's exploration temperature,
serving.settings.SERVING_TEMPERATURE, so a simulated log looks like a served one) or rank greedily
with `--temperature 0` (propensity 1). Pages and simulator truth come from a pretrain run (`--run`, scored pages) or a world
folder (`--world`; single-modal scores then unknown, so consistency is NaN).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from envs.feedback_summary import format_side_by_side
from envs.pages import Pages, pad_items
from envs.simulation import (
    GreedyPolicy,
    RandomPolicy,
    SimulationConfig,
    Slates,
    simulate,
)
from envs.world import WHOLE_PAGE_SPLITS, Split, WorldConfig, generate_world
from pretrain.plackett_luce import masked_logits, sample_topk, stepwise_log_probs
from serving.settings import SERVING_TEMPERATURE

log = logging.getLogger(__name__)


class PlackettLucePolicy:
    """Samples top-K rankings from PL(scores / temperature); logs exact per-position propensities."""

    def __init__(self, name: str, scorer, temperature: float) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for Plackett-Luce sampling, got {temperature}")
        self.name = name
        self.scorer = scorer  # callable Pages -> (T,) scores
        self.temperature = float(temperature)

    def rank(self, pages: Pages, k: int, rng: np.random.Generator) -> Slates:
        scores = np.asarray(self.scorer(pages), np.float64)
        n_max = int(pages.sizes.max())
        padded = pad_items(pages, scores, n_max, fill=0.0)
        mask = pad_items(pages, np.ones(pages.n_items, bool), n_max, fill=False)
        # float64 so propensities of unlikely items stay exact to many digits.
        logits = masked_logits(torch.from_numpy(padded), torch.from_numpy(mask), self.temperature)
        kk = min(k, n_max)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        ranking = sample_topk(logits, kk, generator=gen)
        step_logp = stepwise_log_probs(logits, ranking).numpy()
        ranking = ranking.numpy().astype(np.int64)
        if kk < k:
            ranking = np.pad(ranking, ((0, 0), (0, k - kk)))
            step_logp = np.pad(step_logp, ((0, 0), (0, k - kk)))
        valid = np.arange(k) < np.minimum(pages.sizes, k)[:, None]
        ranking = np.where(valid, ranking, -1)
        shown = np.where(valid, np.take_along_axis(padded, np.maximum(ranking, 0), axis=1), np.nan)
        pscore = np.where(valid, np.exp(step_logp), np.nan)
        return Slates(ranking, shown, pscore, np.where(valid, step_logp, 0.0).sum(axis=1))


def score_policy(name: str, scorer, temperature: float):
    return GreedyPolicy(name, scorer) if temperature == 0 else PlackettLucePolicy(name, scorer, temperature)


def load_split(args: argparse.Namespace) -> Split:
    if args.run:
        from pretrain.run import PretrainRun

        return PretrainRun.open(args.run).split(args.split)
    if args.world:
        from pretrain.world_io import load_world

        return getattr(load_world(args.world), args.split)
    log.info("no --run or --world: generating the default world in memory (single-modal scores unknown)")
    return getattr(generate_world(WorldConfig(seed=args.simulation.seed)), args.split)


def make_policy(args: argparse.Namespace):
    spec = args.policy
    if spec == "random":
        return RandomPolicy()
    if spec == "merge":
        if not args.run:
            raise SystemExit(
                "smar simulate: --policy merge needs --run RUN (the merge calibration lives there)"
            )
        from pretrain.run import PretrainRun

        merge = PretrainRun.open(args.run).merge()
        return score_policy("merge", merge.score, args.temperature)
    if spec.startswith("checkpoint:"):
        from pretrain.checkpoint import load_checkpoint

        model, ckpt = load_checkpoint(spec.split(":", 1)[1])
        return score_policy(ckpt.version, model.score_pages, args.temperature)
    raise SystemExit(f"smar simulate: unknown --policy {spec!r}; expected random, merge or checkpoint:PATH")


def property_checks(summary: dict) -> list[str]:
    """The user-model properties the default config must show (issue 4's acceptance)."""
    ctr = summary["ctr_by_position"]
    std = summary["ctr_standardised_to_doc"]
    falls = len(ctr) > 1 and ctr[0] > ctr[-1] and all(b <= a + 0.02 for a, b in zip(ctr, ctr[1:]))
    visual = std["image"] > std["doc"] and std["video"] > std["doc"]
    answers = summary["answer_satisfactions_without_click"]
    yes = {True: "yes", False: "NO"}
    return [
        f"CTR falls with position: {yes[falls]} ({ctr[0]:.3f} at 1 -> {ctr[-1]:.3f} at {len(ctr)})",
        f"image/video CTR above doc at equal relevance and position: {yes[visual]} "
        f"(doc {std['doc']:.3f}, image {std['image']:.3f}, video {std['video']:.3f})",
        f"answers satisfying without a click: {yes[answers > 0]} ({answers}, "
        f"good abandonment on {summary['good_abandonment_rate']:.1%} of pages)",
    ]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help="random | merge | checkpoint:PATH")
    p.add_argument("--out", required=True, help="output folder (feedback.parquet, pages.parquet, plots)")
    p.add_argument("--run", help="pretrain run folder (scored pages, merge, truth)")
    p.add_argument("--world", help="world folder (when no pretrain run is available)")
    p.add_argument("--split", default="traffic", choices=WHOLE_PAGE_SPLITS)
    p.add_argument(
        "--temperature",
        type=float,
        default=SERVING_TEMPERATURE,
        help="PL temperature (default: the endpoint's exploration temperature); 0 = greedy",
    )
    # sessions, seed, slate size, the user model (--simulation.user.*) and the reward (--simulation.reward.*)
    p.add_class_arguments(SimulationConfig, "simulation")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    if args.temperature < 0:
        raise SystemExit(f"smar simulate: --temperature must be >= 0, got {args.temperature}")
    split = load_split(args)
    policy = make_policy(args)
    cfg = args.simulation
    log = simulate(policy, split.pages, split.truth, cfg, progress=True)
    paths = log.write(args.out, plots=not args.no_plots)
    summary = log.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_side_by_side({policy.name: summary}))
        print("\n".join(property_checks(summary)))
    for name, path in paths.items():  # on stderr with --json, so stdout stays parseable
        print(f"{name}: {Path(path)}", file=sys.stderr if args.json else sys.stdout)
    return 0
