"""`smar bench pretrain`: merge vs SFT on all page labels vs SMAR at 10% / 30% budgets, plus ablations.

Protocol (default world, test split): the single-modal rankers and the merge calibration are trained
once (they stand for the production rankers every method starts from; `merge` is then deterministic
and its std is 0). Each seed re-draws what varies with the method: which pages are annotated, the
reranker's initialisation and batch order. Every reranker method selects its epoch on a held-out part
of its own annotations (no labels beyond its budget). Jobs run in `--bench.workers` spawned processes,
each single-threaded (faster than intra-op threads on 2 shared cores).
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from envs.atomic_io import write_json_atomic
from envs.config_io import JsonConfig
from envs.pages import MODALITIES
from envs.world import WorldConfig, generate_world
from pretrain.config import PretrainConfig
from pretrain.data import DataConfig, load_data
from pretrain.evaluate import RANKING_METRICS, evaluate_scores, format_table
from pretrain.lgbm import LGBMConfig, train_lgbm
from pretrain.merge import MergeScorer
from pretrain.reranker_fit import train_reranker
from pretrain.single_modal import within_modality_ndcg
from pretrain.train import ScoredData, annotate_pool, consistency_pages, prepare

RERANKER_METHODS = ("sft_full", "smar_p10", "smar_p30", "smar_p10_no_consistency", "smar_p10_no_anchors")
TRAINED_METHODS = ("lgbm_full", *RERANKER_METHODS)  # lgbm_full: LightGBM LambdaMART, 100% of page labels
ALL_METHODS = ("merge", *TRAINED_METHODS)


def method_config(name: str, base: PretrainConfig) -> PretrainConfig:
    """The PretrainConfig of a benchmark method (every method shares `base` otherwise)."""
    a, loss = base.annotation, base.loss
    table = {
        "sft_full": replace(base, method="sft"),
        "smar_p10": replace(base, annotation=replace(a, budget=0.1)),
        "smar_p30": replace(base, annotation=replace(a, budget=0.3)),
        "smar_p10_no_consistency": replace(
            base, annotation=replace(a, budget=0.1), loss=replace(loss, consistency_weight=0.0)
        ),
        "smar_p10_no_anchors": replace(base, annotation=replace(a, budget=0.1, anchors=False)),
    }
    if name not in table:
        raise ValueError(f"unknown method {name!r}; expected one of {RERANKER_METHODS}")
    return table[name]


_PREP: ScoredData | None = None


def _init_worker(prep_path: str) -> None:
    global _PREP
    import torch

    torch.set_num_threads(1)
    with open(prep_path, "rb") as f:
        _PREP = pickle.load(f)


def run_job(name: str, seed: int, base: PretrainConfig, prep: ScoredData | None = None) -> dict:
    """Train and evaluate one (method, seed) on the test split."""
    prep = prep or _PREP
    if name == "lgbm_full":
        return _run_lgbm(seed, base, prep)
    cfg = method_config(name, base).with_seed(seed)
    t0 = time.perf_counter()
    annotation = annotate_pool(prep.scored["pool"], cfg)
    model, info = train_reranker(
        annotation,
        prep.scored["valid"].pages,
        cfg,
        progress=False,
        desc=name,
        single_modal=consistency_pages(prep, cfg),
    )
    test = prep.scored["test"]
    scores = model.score_pages(test.pages)
    metrics = evaluate_scores(scores, test.pages, test.truth.relevance)
    return {
        "method": name,
        "seed": seed,
        "annotation_fraction": annotation.ledger.fraction,
        "annotation": annotation.summary(),
        "best_epoch": info["best_epoch"],
        "seconds": time.perf_counter() - t0,
        "within_modality_ndcg@10": within_modality_ndcg(scores, test.pages, test.truth.relevance),
        **metrics,
    }


def _run_lgbm(seed: int, base: PretrainConfig, prep: ScoredData) -> dict:
    """lgbm_full: every pool label through the oracle (ledger at 100%), LambdaMART tuned on valid."""
    cfg = replace(base, method="sft").with_seed(seed)
    t0 = time.perf_counter()
    annotation = annotate_pool(prep.scored["pool"], cfg)
    valid = prep.scored["valid"]
    model, info = train_lgbm(
        annotation.pages,
        annotation.pages.relevance,
        valid.pages,
        valid.truth.relevance,
        LGBMConfig(seed=seed),
    )
    test = prep.scored["test"]
    scores = model.score_pages(test.pages)
    return {
        "method": "lgbm_full",
        "seed": seed,
        "annotation_fraction": annotation.ledger.fraction,
        "annotation": annotation.summary(),
        "lgbm": info,
        "seconds": time.perf_counter() - t0,
        "within_modality_ndcg@10": within_modality_ndcg(scores, test.pages, test.truth.relevance),
        **evaluate_scores(scores, test.pages, test.truth.relevance),
    }


def _aggregate(results: list[dict], merge_metrics: dict) -> dict:
    methods: dict[str, dict] = {
        "merge": {
            "annotation_fraction": 0.0,
            **{m: {"mean": merge_metrics[m], "std": 0.0} for m in RANKING_METRICS},
        }
    }
    for name in TRAINED_METHODS:
        rows = [r for r in results if r["method"] == name]
        if not rows:
            continue
        methods[name] = {
            "annotation_fraction": float(np.mean([r["annotation_fraction"] for r in rows])),
            "seconds": float(np.mean([r["seconds"] for r in rows])),
        }
        for m in RANKING_METRICS:
            v = np.array([r[m] for r in rows], np.float64)
            methods[name][m] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
        methods[name]["within_modality_ndcg@10"] = {
            mod: float(np.mean([r["within_modality_ndcg@10"][mod] for r in rows]))
            for mod in rows[0].get("within_modality_ndcg@10", {})
        }
    return methods


def plot(methods: dict, path: Path) -> Path:
    """NDCG@10 against annotation fraction: SMAR budgets as a line, ablations, SFT and merge lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    smar = [n for n in ("smar_p10", "smar_p30") if n in methods]
    if smar:
        ax.errorbar(
            [methods[n]["annotation_fraction"] for n in smar],
            [methods[n]["ndcg@10"]["mean"] for n in smar],
            yerr=[methods[n]["ndcg@10"]["std"] for n in smar],
            marker="o",
            capsize=4,
            label="SMAR",
        )
    for n, mk, dx in (("smar_p10_no_consistency", "s", -0.008), ("smar_p10_no_anchors", "^", 0.008)):
        if n in methods:
            ax.errorbar(
                methods[n]["annotation_fraction"] + dx,
                methods[n]["ndcg@10"]["mean"],
                yerr=methods[n]["ndcg@10"]["std"],
                marker=mk,
                capsize=4,
                linestyle="none",
                label=n.replace("smar_p10_", "SMAR 10%, "),
            )
    if "sft_full" in methods:
        m, s = methods["sft_full"]["ndcg@10"]["mean"], methods["sft_full"]["ndcg@10"]["std"]
        ax.axhline(m, color="k", linestyle="--", label="SFT, 100% of page labels")
        ax.axhspan(m - s, m + s, color="k", alpha=0.1)
        ax.errorbar(
            [methods["sft_full"]["annotation_fraction"]], [m], yerr=[s], color="k", marker="D", capsize=4
        )
    if "merge" in methods:
        ax.axhline(
            methods["merge"]["ndcg@10"]["mean"], color="gray", linestyle=":", label="merge (no page labels)"
        )
    ax.set_xscale("log")
    ax.set_xlabel("annotation fraction of pool items (log)")
    ax.set_ylabel("test NDCG@10")
    ax.set_title("Whole-page reranking vs annotation budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class PretrainBenchConfig(JsonConfig):
    """Every setting of `smar bench pretrain` (`--bench.FIELD`; the output folder is `--out`)."""

    out: str = "results/pretrain"
    seeds: int = 3
    ranker_seed: int = 0  # the single-modal rankers' seed (trained once per bench; seeds do not redraw them)
    workers: int = 2  # parallel training processes
    quiet: bool = False  # no progress bar
    data: str | None = None  # a `smar import` output folder to run on (default: the synthetic world)
    data_split: DataConfig = field(default_factory=DataConfig)  # with data: how its train pages are split
    methods: tuple[str, ...] = TRAINED_METHODS  # a subset of TRAINED_METHODS (merge always runs)

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        unknown = [m for m in self.methods if m not in TRAINED_METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; expected among {TRAINED_METHODS}")


def bench(
    cfg: PretrainBenchConfig, world_config: WorldConfig | None = None, base: PretrainConfig | None = None
) -> dict:
    """Run the benchmark, write report.json and ndcg_vs_budget.png into `cfg.out`, return the report.
    Steps: the data (the synthetic world of `world_config`, or `cfg.data`), the shared single-modal
    stage (`prepare`, once), every (method, seed) job (`_run_jobs`), the report (`_report`)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    base = base or PretrainConfig()
    # the single-modal rankers are trained once, with their own seed (the seeds below do not redraw them)
    base = replace(base, single_modal=replace(base.single_modal, seed=cfg.ranker_seed))
    t0 = time.perf_counter()
    if cfg.data is not None:
        world = load_data(cfg.data, cfg.data_split)
        source = world.describe()
    else:
        world = generate_world(world_config or WorldConfig())
        source = {"world": world.config.to_json()}
    t_prep = time.perf_counter()
    prep = prepare(world, base, not cfg.quiet)
    prep_seconds = time.perf_counter() - t_prep
    test = prep.scored["test"]
    merge_metrics = evaluate_scores(
        MergeScorer(prep.merge).score(test.pages), test.pages, test.truth.relevance
    )
    jobs = [(name, seed) for seed in range(cfg.seeds) for name in TRAINED_METHODS if name in cfg.methods]
    results = _run_jobs(jobs, base, prep, cfg)
    methods = _aggregate(results, merge_metrics)
    meta = {"seeds": cfg.seeds, **source, "single_modal_source": _single_modal_source(world, cfg)}
    meta.update(prepare_seconds=prep_seconds, ranker_seed=cfg.ranker_seed, config=base.to_json())
    report = _report(methods, meta, prep, results, t0)
    write_json_atomic(out / "report.json", report)
    plot(methods, out / "ndcg_vs_budget.png")
    return report


def _run_jobs(
    jobs: list[tuple[str, int]], base: PretrainConfig, prep: ScoredData, cfg: PretrainBenchConfig
) -> list[dict]:
    """Every (method, seed) job, in this process (`workers <= 1`) or in spawned single-threaded
    workers that load the shared stage from one pickle; results in job order."""
    results: list[dict] = []
    bar = tqdm(total=len(jobs), desc="bench pretrain", disable=True if cfg.quiet else None)
    if cfg.workers <= 1:
        for name, seed in jobs:
            results.append(run_job(name, seed, base, prep))
            bar.update()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            prep_path = os.path.join(tmp, "prep.pkl")
            with open(prep_path, "wb") as f:
                pickle.dump(prep, f)
            import multiprocessing as mp

            with ProcessPoolExecutor(cfg.workers, mp.get_context("spawn"), _init_worker, (prep_path,)) as ex:
                futures = [ex.submit(run_job, name, seed, base) for name, seed in jobs]
                for fut in futures:
                    results.append(fut.result())
                    bar.update()
    bar.close()
    return results


def _single_modal_source(world, cfg: PretrainBenchConfig) -> str:
    if cfg.data is not None:
        return world.single_modal_source
    return "single-modal rankers on the world's single-modal pages"


def _report(methods: dict, meta: dict, prep: ScoredData, results: list[dict], t0: float) -> dict:
    sm = {
        m: prep.ranker_metrics[m]["test_within_modality_ndcg@10"]
        for m in MODALITIES
        if m in prep.ranker_metrics
    }
    meta = {
        **meta,
        "single_modal_test_within_modality_ndcg@10": sm,
        "runs": results,
        "seconds": time.perf_counter() - t0,
    }
    return {"methods": methods, "meta": meta}


def format_report(report: dict) -> str:
    meta = report["meta"]
    lines = [
        format_table(
            report["methods"],
            title=f"pretrain benchmark: test split, mean ± std over {meta['seeds']} seed(s)",
        )
    ]
    if "data" in meta:
        lines.append(f"data {meta['data']} ({meta['format']}), pages {meta['pages']}")
    lines.append(f"single-modal scores: {meta['single_modal_source']}")
    lines.append(
        "seconds per run (mean over seeds): "
        + ", ".join(f"{n} {r['seconds']:.0f}" for n, r in report["methods"].items() if "seconds" in r)
        + f"; shared single-modal stage {meta['prepare_seconds']:.0f}"
    )
    sm = meta["single_modal_test_within_modality_ndcg@10"]
    lines.append("within-modality NDCG@10 on test pages (mean over seeds):")
    lines.append(f"  {'single-modal rankers':<26}" + "  ".join(f"{m} {v:.4f}" for m, v in sm.items()))
    for name, row in report["methods"].items():
        wm = row.get("within_modality_ndcg@10")
        if wm:
            lines.append(f"  {name:<26}" + "  ".join(f"{m} {v:.4f}" for m, v in wm.items()))
    lines.append(f"total {meta['seconds']:.0f} s")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=PretrainBenchConfig.out, help="folder for report.json and the plot")
    p.add_class_arguments(PretrainBenchConfig, "bench", skip={"out"})


def run(args: argparse.Namespace) -> int:
    cfg = replace(args.bench, out=args.out)
    report = bench(cfg)
    print(format_report(report))
    print(f"wrote {Path(cfg.out) / 'report.json'} and {Path(cfg.out) / 'ndcg_vs_budget.png'}")
    return 0
