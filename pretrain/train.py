"""SMAR pretraining end to end, and the `smar pretrain` command.

Pipeline (arXiv 2510.16803): (1) single-modal rankers on each modality's own labels; (2) their
scores fill every whole page; the `merge` calibration is fitted on single-modal data; (3) the pool is
annotated under budget p through the oracle (bands + iso-label anchors); (4) the whole-page reranker
(`pretrain.reranker.WholePageReranker`, the one network) is trained on the annotated pool with the
SMAR objective (`pretrain.losses`), or with page labels alone for SFT. Model selection by default
uses only the method's own annotations (a held-out part of its annotated pages), so a budget of p
really means p: no dev-set labels sneak in (see `RerankerTrainConfig.selection`).

`run_pretrain(world, out, config)` writes the run folder described in `pretrain.run`.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.pages import MODALITIES, Pages
from envs.world import Split, World, WorldConfig, generate_world
from pretrain.annotation import Annotation, AnnotatorOracle, annotate, annotate_all
from pretrain.checkpoint import make_version, save_checkpoint
from pretrain.config import PretrainConfig
from pretrain.data import DataConfig, ImportedData, load_data
from pretrain.evaluate import evaluate_scores, format_table
from pretrain.merge import MergeCalibration, MergeScorer, fit_merge
from pretrain.reranker_fit import train_reranker
from pretrain.run import MERGE_JSON, RANKERS_DIR, RERANKER_DIR, PretrainRun, write_run_json, write_scored
from pretrain.single_modal import SingleModalRankers, train_rankers, within_modality_ndcg
from pretrain.world_io import load_world, save_world


# ----------------------------------------------------------------------------- stage 1-2
@dataclass
class ScoredData:
    """Single-modal rankers, the merge calibration and every whole-page split scored by the rankers."""

    world: World | ImportedData
    rankers: SingleModalRankers | None  # None: the data's own upstream scores are the single-modal scores
    ranker_metrics: dict
    merge: MergeCalibration
    scored: dict[str, Split]  # pool/valid/test/traffic with single_modal_score filled (pool labels hidden)


def prepare(world: World | ImportedData, cfg: PretrainConfig, progress: bool = True) -> ScoredData:
    """Train the single-modal rankers, score every whole page, fit the merge calibration.

    Data without a single-modal part (an `ImportedData` with no `single_modal`) keeps its own upstream
    scores as the single-modal scores (no rankers: `ScoredData.rankers` is None) and fits the merge
    calibration on the pool's upstream scores (no labels).
    """
    single = {m: s.pages for m, s in world.single_modal.items()}
    if single:
        rankers, metrics = train_rankers(single, cfg.single_modal, progress)
        scored = {
            name: Split(rankers.fill(split.pages), split.truth)
            for name, split in world.whole_page_splits().items()
        }
        merge = fit_merge(rankers, single, cfg.merge)
    else:
        rankers, metrics = None, {}
        scored = dict(world.whole_page_splits())
        for name, split in scored.items():
            if np.isnan(split.pages.single_modal_score).any():
                raise ValueError(
                    f"split {name!r}: field 'single_modal_score' is missing and no rankers exist"
                )
        pool = scored["pool"].pages
        merge = MergeCalibration.fit(
            {
                m: pool.single_modal_score[pool.modality == mid]
                for mid, m in enumerate(MODALITIES)
                if (pool.modality == mid).sum() >= 2
            },
            cfg.merge,
        )
    test = scored["test"]
    for m, v in within_modality_ndcg(test.pages.single_modal_score, test.pages, test.truth.relevance).items():
        metrics.setdefault(m, {})["test_within_modality_ndcg@10"] = v
    return ScoredData(world, rankers, metrics, merge, scored)


def consistency_pages(prep: ScoredData, cfg: PretrainConfig) -> Pages | None:
    """A seeded subsample of each modality's single-modal pages, scored by its ranker, labels removed."""
    n = cfg.train.sm_pages_per_modality
    if n <= 0 or cfg.train.sm_batch_pages <= 0:
        return None
    rng = np.random.default_rng([cfg.seed, 31])
    parts = []
    for split in prep.world.single_modal.values():
        pages = split.pages
        pick = np.sort(rng.permutation(len(pages))[: min(n, len(pages))])
        sub = pages.select(pick)
        parts.append(prep.rankers.fill(sub).with_items(relevance=np.full(sub.n_items, -1, np.int8)))
    return Pages.concat(parts) if parts else None


def annotate_pool(pool: Split, cfg: PretrainConfig) -> Annotation:
    """Stage 3: the only place pool truth is used, handed to the oracle and read by nothing else."""
    if cfg.method == "sft":
        return annotate_all(pool.pages, AnnotatorOracle(pool, 1.0))
    return annotate(pool.pages, AnnotatorOracle(pool, cfg.annotation.budget), cfg.annotation)


# ----------------------------------------------------------------------------- run folder
def _as_world(world: World | ImportedData | str | Path | None, out: Path) -> tuple[World, Path]:
    if isinstance(world, ImportedData):
        return world, world.root
    if isinstance(world, World):
        world_dir = out / "world"
        save_world(world, world_dir)
        return world, world_dir
    if world is None:
        w = generate_world(WorldConfig())
        world_dir = out / "world"
        save_world(w, world_dir)
        return w, world_dir
    return load_world(world), Path(world)


def run_pretrain(
    world: World | ImportedData | str | Path | None,
    out: str | Path,
    config: PretrainConfig | None = None,
    progress: bool = True,
) -> PretrainRun:
    """Train everything and write the run folder `out` (see pretrain.run). `world`: a World, a world
    folder, or None for the default world (written into out/world). Returns the opened run."""
    cfg = config or PretrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    w, world_dir = _as_world(world, out)
    prep = prepare(w, cfg, progress)
    if prep.rankers is not None:
        prep.rankers.save(out / RANKERS_DIR, prep.ranker_metrics)
    prep.merge.save(out / MERGE_JSON)
    for name, split in prep.scored.items():
        write_scored(out, name, split.pages)
    annotation = annotate_pool(prep.scored["pool"], cfg)
    model, train_info = train_reranker(
        annotation,
        prep.scored["valid"].pages,
        cfg,
        progress,
        desc=cfg.method,
        single_modal=consistency_pages(prep, cfg),
    )
    test = prep.scored["test"]
    rows = {
        "merge": {
            "annotation_fraction": 0.0,
            **evaluate_scores(MergeScorer(prep.merge).score(test.pages), test.pages, test.truth.relevance),
        },
        cfg.method: {
            "annotation_fraction": annotation.ledger.fraction,
            **evaluate_scores(model.score_pages(test.pages), test.pages, test.truth.relevance),
        },
    }
    metrics = {
        "single_modal": prep.ranker_metrics,
        "annotation": annotation.summary(),
        "reranker": {k: v for k, v in train_info.items() if k != "history"},
        "history": [loss_labels(h) for h in train_info["history"]],
        "test": rows,
    }
    version = make_version(f"reranker-{cfg.method}")
    if (out / RERANKER_DIR).exists():
        shutil.rmtree(out / RERANKER_DIR)
    save_checkpoint(
        model,
        out / RERANKER_DIR,
        version=version,
        extra={
            "pretrain_config": cfg.to_json(),
            "metrics": {"test": rows, "annotation": annotation.summary()},
        },
    )
    if isinstance(w, ImportedData):
        metrics["data"] = w.describe()
    write_run_json(out, world_dir, cfg.to_json(), version, metrics, data=isinstance(w, ImportedData))
    return PretrainRun.open(out)


def loss_labels(epoch: dict) -> dict:
    """An epoch of the reranker's training history with its loss terms named as losses where the bare
    term name is also a metric's (`consistency`: the SMAR consistency loss, not the top-K metric)."""
    return {("consistency_loss" if k == "consistency" else k): v for k, v in epoch.items()}


def run_table(run: PretrainRun) -> str:
    """The benchmark-style table of one run (test split): merge vs the trained reranker."""
    sm = run.metrics["single_modal"]
    lines = [format_table(run.metrics["test"], title=f"pretrain run {run.root} (test split, one seed)")]
    lines.append(
        "single-modal rankers, within-modality NDCG@10 on test pages: "
        + ", ".join(
            f"{m} {sm[m].get('test_within_modality_ndcg@10', float('nan')):.4f}"
            for m in MODALITIES
            if m in sm
        )
    )
    if "data" in run.metrics:
        d = run.metrics["data"]
        lines.append(
            f"data {d['data']} ({d['format']}): pages {d['pages']}; single-modal scores: {d['single_modal_source']}"
        )
    a = run.metrics["annotation"]
    lines.append(
        f"annotation: {a['judgements']} judgements = {a['fraction']:.1%} of {a['total_items']} pool items "
        f"({a['by_kind']}), {a['anchor_pairs']} anchor pairs"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--world", default=None, help="world folder (default: generate the default world into OUT/world)"
    )
    p.add_argument(
        "--data", default=None, help="`smar import` output folder: run the whole pipeline on real data"
    )
    p.add_class_arguments(DataConfig, "data_split", help="--data: how the imported train pages are split")
    p.add_argument("--out", required=True, help="run folder to write")
    # Every pretraining setting: --pretrain.method, --pretrain.annotation.budget, --pretrain.loss.*, ...
    p.add_class_arguments(PretrainConfig, "pretrain")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def seeded(cfg: PretrainConfig) -> PretrainConfig:
    """`pretrain.seed` seeds every stage; a stage seed set to something else is a conflict, not ignored."""
    out = cfg.with_seed(cfg.seed)
    default = PretrainConfig()
    for stage in ("single_modal", "annotation"):
        have = getattr(cfg, stage).seed
        if have not in (getattr(default, stage).seed, cfg.seed):
            raise SystemExit(
                f"smar pretrain: pretrain.{stage}.seed={have} conflicts with pretrain.seed={cfg.seed}; "
                "set pretrain.seed only (it seeds every stage)"
            )
    return out


def run(args: argparse.Namespace) -> int:
    cfg = seeded(args.pretrain)
    if args.data is not None and args.world is not None:
        raise SystemExit("smar pretrain: give --world or --data, not both")
    source = args.world
    if args.data is not None:
        source = load_data(args.data, args.data_split)
        print(f"single-modal scores: {source.single_modal_source}")
    r = run_pretrain(source, args.out, cfg, progress=not args.quiet)
    print(run_table(r))
    print(f"wrote {r.root} (reranker {r.reranker_version})")
    return 0
