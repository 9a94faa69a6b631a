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
import copy
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from envs.config_io import JsonConfig
from envs.pages import MODALITIES, Pages
from envs.world import Split, World, WorldConfig, generate_world
from pretrain.annotation import Annotation, AnnotationConfig, AnnotatorOracle, annotate, annotate_all
from pretrain.checkpoint import make_version, save_checkpoint
from pretrain.data import DataConfig, ImportedData, load_data
from pretrain.evaluate import evaluate_scores, format_table
from pretrain.losses import LossConfig, smar_loss
from pretrain.merge import MergeCalibration, MergeScorer, fit_merge
from pretrain.page import PageBatch, collate
from pretrain.reranker import RerankerConfig, WholePageReranker
from pretrain.run import MERGE_JSON, RANKERS_DIR, RERANKER_DIR, PretrainRun, write_run_json, write_scored
from pretrain.runtime import torch_threads
from pretrain.single_modal import SingleModalConfig, SingleModalRankers, train_rankers, within_modality_ndcg
from pretrain.world_io import load_world, save_world

METHODS = ("smar", "sft")


@dataclass(frozen=True)
class RerankerTrainConfig:
    """Shape of the reranker and its optimisation."""

    # The match is a query-item interaction (envs.world), which a narrower network under-fits.
    hidden: int = 64
    heads: int = 2
    layers: int = 2
    dropout: float = 0.0
    # RerankerConfig.modality_offsets: a per-modality offset read from the query/user context.
    modality_offsets: bool = True
    # With a 10% budget the holdout NDCG rests on a few judged items per page and is noisy, so the
    # patience is long enough not to stop a run on noise.
    epochs: int = 40
    patience: int = 10
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_pages: int = 32
    grad_clip: float = 1.0  # authors' code clips at norm 1
    # Exponential moving average of the weights (decay per step; 0 = off): the averaged weights are
    # the ones evaluated for model selection and returned. Bias-corrected (step t weighs the average
    # of steps 1..t only), so a short run is not pulled back to its random initialisation.
    # 0.98 averages over about 50 steps.
    ema: float = 0.98
    # Model selection. "holdout": early stopping on NDCG@10 (over annotated items) of a held-out part
    # of the method's OWN annotated pages, so no label beyond the budget is used. "valid": on the fully
    # labelled valid split (extra labels, identical for every method).
    selection: str = "holdout"
    # Consistency on single-modal pages too: per step, a batch of this many single-modal pages (scored
    # by g^m, labels unused) adds the consistency term, so the reranker inherits g^m's within-modality
    # order over the abundant single-modal queries rather than only over the pool's few queries. On the
    # default world, where within-modality relevance is a query-item topical match, this is what lets
    # SMAR's within-modality order exceed what the pool teaches (0 = whole pages only).
    sm_batch_pages: int = 32
    sm_pages_per_modality: int = 4000  # subsample of each modality's single-modal pages (default: all)
    holdout: float = 0.2
    threads: int = 1  # torch intra-op threads (1 is fastest for page-sized tensors on a shared CPU)

    def __post_init__(self) -> None:
        if self.selection not in ("holdout", "valid"):
            raise ValueError(f"selection must be 'holdout' or 'valid', got {self.selection!r}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")

    def reranker_config(self, pages: Pages) -> RerankerConfig:
        return RerankerConfig.for_pages(
            pages,
            hidden=self.hidden,
            heads=self.heads,
            layers=self.layers,
            dropout=self.dropout,
            modality_offsets=self.modality_offsets,
        )


@dataclass(frozen=True)
class PretrainConfig(JsonConfig):
    """Everything `smar pretrain` does, typed. Saved in run.json and in the reranker's manifest."""

    method: str = "smar"  # "smar" (budgeted annotation + consistency + anchors) or "sft" (all labels)
    seed: int = 0
    single_modal: SingleModalConfig = field(default_factory=SingleModalConfig)
    annotation: AnnotationConfig = field(default_factory=AnnotationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: RerankerTrainConfig = field(default_factory=RerankerTrainConfig)
    merge: str = "quantile"  # merge baseline calibration: "quantile" or "zscore"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")

    def with_seed(self, seed: int) -> PretrainConfig:
        """The same config with every seed set from one number."""
        return replace(
            self,
            seed=seed,
            single_modal=replace(self.single_modal, seed=seed),
            annotation=replace(self.annotation, seed=seed),
        )


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


# ----------------------------------------------------------------------------- stage 4
def _pad_pairs(pairs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max((len(p) for p in pairs), default=0)
    out = np.zeros((len(pairs), n, 2), np.int64)
    mask = np.zeros((len(pairs), n), bool)
    for i, p in enumerate(pairs):
        out[i, : len(p)] = p
        mask[i, : len(p)] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


def _take(batch: PageBatch, idx: torch.Tensor) -> PageBatch:
    return PageBatch(**{k: v[idx] for k, v in batch.__dict__.items()})


def mean_page_ndcg(scores: torch.Tensor, relevance: torch.Tensor, mask: torch.Tensor, k: int = 10) -> float:
    """Vectorised mean NDCG@k over padded pages (exp gains, log2 discounts as in envs.metrics)."""
    rel = relevance.clamp_min(0).double()
    gains = torch.where(mask, 2.0**rel - 1.0, torch.zeros_like(rel))
    n = scores.shape[1]
    disc = 1.0 / torch.log2(torch.arange(2, n + 2, dtype=torch.float64))
    disc[k:] = 0.0
    order = torch.where(mask, scores.double(), torch.full_like(rel, -np.inf)).argsort(
        dim=1, descending=True, stable=True
    )
    dcg = (gains.gather(1, order) * disc).sum(1)
    ideal = (gains.sort(1, descending=True).values * disc).sum(1)
    ndcg = torch.where(ideal > 0, dcg / ideal.clamp_min(1e-12), torch.ones_like(dcg))
    return float(ndcg.mean())


def train_reranker(
    annotation: Annotation,
    valid: Pages,
    cfg: PretrainConfig,
    progress: bool = True,
    desc: str = "reranker",
    single_modal: Pages | None = None,
) -> tuple[WholePageReranker, dict]:
    """Train the whole-page reranker on annotated pages; early stopping per `cfg.train.selection`.

    `single_modal`: unlabelled single-modal pages with single-modal scores (relevance ignored); when
    given and consistency is on, every step adds the consistency term on a batch of them too.
    """
    pages = annotation.pages
    if np.isnan(pages.single_modal_score).any() and cfg.loss.consistency_weight > 0:
        raise ValueError(
            "training pages lack 'single_modal_score'; consistency needs the single-modal rankers"
        )
    loss_cfg = cfg.loss
    if cfg.method == "sft":  # SFT = page labels only
        loss_cfg = replace(loss_cfg, consistency_weight=0.0, anchor_weight=0.0)
    tc = cfg.train
    with torch_threads(tc.threads):
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        model = WholePageReranker(tc.reranker_config(pages))
        model.fit_normalizer(pages)
        data = collate(pages)
        pairs, pair_mask = _pad_pairs(annotation.pairs)
        # Pages with nothing to learn from under this objective are dropped from the epoch.
        useful = (data.relevance >= 0).sum(1) >= 2
        if loss_cfg.consistency_weight > 0:
            useful |= data.has_score.sum(1) >= 2
        if loss_cfg.anchor_weight > 0:
            useful |= pair_mask.any(1)
        labelled = (data.relevance >= 0).sum(1) >= 2
        if tc.selection == "holdout":
            cand = torch.nonzero(labelled).squeeze(1)
            if len(cand) < 2:
                raise ValueError("holdout selection needs >= 2 pages with >= 2 annotated items")
            rng = np.random.default_rng([cfg.seed, 23])
            n_hold = max(1, int(round(tc.holdout * len(cand))))
            hold = cand[torch.from_numpy(np.sort(rng.permutation(len(cand))[:n_hold]))]
            useful[hold] = False
            vb = _take(data, hold)
            vmask = vb.mask & (vb.relevance >= 0)
        else:
            if (valid.relevance < 0).any():
                raise ValueError("valid pages need a grade for every item (field 'relevance' has -1)")
            vb = collate(valid)
            vmask = vb.mask
        train_idx = torch.nonzero(useful).squeeze(1)
        if len(train_idx) == 0:
            raise ValueError("no training page has >= 2 annotated items, single-modal scores or anchor pairs")
        sm_data = None
        if (
            single_modal is not None
            and len(single_modal)
            and loss_cfg.consistency_weight > 0
            and tc.sm_batch_pages > 0
        ):
            if np.isnan(single_modal.single_modal_score).any():
                raise ValueError("single-modal consistency pages lack 'single_modal_score'")
            sm_data = collate(single_modal.with_items(relevance=np.full(single_modal.n_items, -1, np.int8)))
            sm_cfg = replace(loss_cfg, page_weight=0.0, pointwise_weight=0.0, anchor_weight=0.0)
            sm_perm, sm_pos = torch.randperm(len(sm_data), generator=gen), 0
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        ema_model, ema_steps = (copy.deepcopy(model) if tc.ema > 0 else None), 0
        best, best_state, best_epoch, bad, history = -1.0, None, -1, 0, []
        bar = tqdm(range(tc.epochs), desc=desc, disable=None if progress else True, leave=False)
        for epoch in bar:
            model.train()
            perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
            tot = {"loss": 0.0, "page": 0.0, "pointwise": 0.0, "consistency": 0.0, "anchor": 0.0}
            nb = 0
            for start in range(0, len(perm), tc.batch_pages):
                idx = perm[start : start + tc.batch_pages]
                b = _take(data, idx)
                scores = model.score_batch(b)
                terms = smar_loss(
                    scores,
                    b.relevance,
                    b.single_modal_score,
                    b.has_score,
                    b.modality,
                    b.mask,
                    loss_cfg,
                    pairs[idx],
                    pair_mask[idx],
                    gen,
                )
                loss = terms["loss"]
                if sm_data is not None:
                    if sm_pos + tc.sm_batch_pages > len(sm_perm):
                        sm_perm, sm_pos = torch.randperm(len(sm_data), generator=gen), 0
                    sb = _take(sm_data, sm_perm[sm_pos : sm_pos + tc.sm_batch_pages])
                    sm_pos += tc.sm_batch_pages
                    sm_terms = smar_loss(
                        model.score_batch(sb),
                        sb.relevance,
                        sb.single_modal_score,
                        sb.has_score,
                        sb.modality,
                        sb.mask,
                        sm_cfg,
                    )
                    loss = loss + sm_terms["loss"]
                    terms["consistency"] = terms["consistency"] + sm_terms["consistency"]
                opt.zero_grad()
                loss.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                opt.step()
                if ema_model is not None:  # bias-corrected: the init weights' share does not linger
                    ema_steps += 1
                    w = (1.0 - tc.ema) / (1.0 - tc.ema**ema_steps)
                    with torch.no_grad():
                        for pe, pm in zip(ema_model.parameters(), model.parameters()):
                            pe.lerp_(pm, w)
                terms["loss"] = loss
                for k in tot:
                    tot[k] += float(terms[k].detach())
                nb += 1
            scorer = ema_model if ema_model is not None else model
            scorer.eval()
            with torch.no_grad():
                v = mean_page_ndcg(scorer.score_batch(vb), vb.relevance, vmask)
            history.append(
                {"epoch": epoch, "valid_ndcg@10": v, **{k: x / max(nb, 1) for k, x in tot.items()}}
            )
            bar.set_postfix(loss=f"{tot['loss'] / max(nb, 1):.3f}", valid=f"{v:.4f}")
            if v >= best:  # a tie keeps the later (longer-trained) weights
                best, best_epoch, bad = v, epoch, 0
                best_state = {k: t.clone() for k, t in scorer.state_dict().items()}
            else:
                bad += 1
                if bad >= tc.patience:
                    break
        model.load_state_dict(best_state)
        model.eval()
    return model, {
        "best_epoch": best_epoch,
        "valid_ndcg@10": best,
        "epochs_run": len(history),
        "train_pages": len(train_idx),
        "history": history,
    }


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
        "history": train_info["history"],
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
