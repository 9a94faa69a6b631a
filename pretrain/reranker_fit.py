"""Stage 4 of SMAR pretraining: fit the whole-page reranker on the annotated pool.

The SMAR objective (`pretrain.losses.smar_loss`) on page batches, plus the consistency term on a stream of
single-modal pages; AdamW with a bias-corrected EMA of the weights; early stopping on NDCG@10 of the
selection pages (`RerankerTrainConfig.selection`).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
from tqdm.auto import tqdm

from envs.pages import Pages
from pretrain.annotation import Annotation
from pretrain.config import PretrainConfig, RerankerTrainConfig
from pretrain.losses import LossConfig, smar_loss
from pretrain.page import PageBatch, collate
from pretrain.reranker import WholePageReranker
from pretrain.runtime import BestWeights, torch_threads


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
        useful = _useful_pages(data, pair_mask, loss_cfg)
        vb, vmask = _selection_pages(data, valid, useful, tc, cfg.seed)
        train_idx = torch.nonzero(useful).squeeze(1)
        if len(train_idx) == 0:
            raise ValueError("no training page has >= 2 annotated items, single-modal scores or anchor pairs")
        step = _Step(
            model, tc, loss_cfg, pairs, pair_mask, gen, _single_modal_stream(single_modal, loss_cfg, tc, gen)
        )
        best, history = BestWeights(tc.patience, keep_ties=True), []  # a tie keeps the later weights
        bar = tqdm(range(tc.epochs), desc=desc, disable=None if progress else True, leave=False)
        for epoch in bar:
            model.train()
            perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
            tot = {"loss": 0.0, "page": 0.0, "pointwise": 0.0, "consistency": 0.0, "anchor": 0.0}
            nb = 0
            for start in range(0, len(perm), tc.batch_pages):
                idx = perm[start : start + tc.batch_pages]
                terms = step(_take(data, idx), idx)
                for k in tot:
                    tot[k] += float(terms[k].detach())
                nb += 1
            scorer = step.scorer()
            scorer.eval()
            with torch.no_grad():
                v = mean_page_ndcg(scorer.score_batch(vb), vb.relevance, vmask)
            history.append(
                {"epoch": epoch, "valid_ndcg@10": v, **{k: x / max(nb, 1) for k, x in tot.items()}}
            )
            bar.set_postfix(loss=f"{tot['loss'] / max(nb, 1):.3f}", valid=f"{v:.4f}")
            if best.update(v, epoch, scorer):
                break
        best.restore(model)
    return model, {
        "best_epoch": best.epoch,
        "valid_ndcg@10": best.best,
        "epochs_run": len(history),
        "train_pages": len(train_idx),
        "history": history,
    }


def _useful_pages(data: PageBatch, pair_mask: torch.Tensor, loss_cfg: LossConfig) -> torch.Tensor:
    """Pages with something to learn from under this objective (the others are dropped from the epoch)."""
    useful = (data.relevance >= 0).sum(1) >= 2
    if loss_cfg.consistency_weight > 0:
        useful |= data.has_score.sum(1) >= 2
    if loss_cfg.anchor_weight > 0:
        useful |= pair_mask.any(1)
    return useful


def _selection_pages(
    data: PageBatch, valid: Pages, useful: torch.Tensor, tc: RerankerTrainConfig, seed: int
) -> tuple[PageBatch, torch.Tensor]:
    """The pages (and judged items) model selection scores each epoch; "holdout" takes them out of
    `useful` (in place), so no label beyond the budget is used."""
    if tc.selection != "holdout":
        if (valid.relevance < 0).any():
            raise ValueError("valid pages need a grade for every item (field 'relevance' has -1)")
        vb = collate(valid)
        return vb, vb.mask
    cand = torch.nonzero((data.relevance >= 0).sum(1) >= 2).squeeze(1)
    if len(cand) < 2:
        raise ValueError("holdout selection needs >= 2 pages with >= 2 annotated items")
    rng = np.random.default_rng([seed, 23])
    n_hold = max(1, int(round(tc.holdout * len(cand))))
    hold = cand[torch.from_numpy(np.sort(rng.permutation(len(cand))[:n_hold]))]
    useful[hold] = False
    vb = _take(data, hold)
    return vb, vb.mask & (vb.relevance >= 0)


class _SingleModalStream:
    """Endless shuffled batches of single-modal pages for the consistency term on every step."""

    def __init__(self, data: PageBatch, batch: int, gen: torch.Generator) -> None:
        self.data, self.batch, self.gen = data, batch, gen
        self.perm, self.pos = torch.randperm(len(data), generator=gen), 0

    def next(self) -> PageBatch:
        if self.pos + self.batch > len(self.perm):
            self.perm, self.pos = torch.randperm(len(self.data), generator=self.gen), 0
        sb = _take(self.data, self.perm[self.pos : self.pos + self.batch])
        self.pos += self.batch
        return sb


def _single_modal_stream(
    single_modal: Pages | None, loss_cfg: LossConfig, tc: RerankerTrainConfig, gen: torch.Generator
) -> _SingleModalStream | None:
    if (
        single_modal is None
        or not len(single_modal)
        or loss_cfg.consistency_weight <= 0
        or tc.sm_batch_pages <= 0
    ):
        return None
    if np.isnan(single_modal.single_modal_score).any():
        raise ValueError("single-modal consistency pages lack 'single_modal_score'")
    data = collate(single_modal.with_items(relevance=np.full(single_modal.n_items, -1, np.int8)))
    return _SingleModalStream(data, tc.sm_batch_pages, gen)


class _Step:
    """One optimiser step of the SMAR objective (page batch + single-modal batch), with the weight EMA."""

    def __init__(
        self,
        model: WholePageReranker,
        tc: RerankerTrainConfig,
        loss_cfg: LossConfig,
        pairs: torch.Tensor,
        pair_mask: torch.Tensor,
        gen: torch.Generator,
        single_modal: _SingleModalStream | None,
    ) -> None:
        self.model, self.tc, self.loss_cfg, self.gen = model, tc, loss_cfg, gen
        self.pairs, self.pair_mask, self.single_modal = pairs, pair_mask, single_modal
        self.sm_cfg = replace(loss_cfg, page_weight=0.0, pointwise_weight=0.0, anchor_weight=0.0)
        self.opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.ema = copy.deepcopy(model) if tc.ema > 0 else None
        self.ema_steps = 0

    def scorer(self) -> WholePageReranker:
        """The weights model selection evaluates: the EMA when on."""
        return self.ema if self.ema is not None else self.model

    def _loss(
        self,
        b: PageBatch,
        cfg: LossConfig,
        pairs: torch.Tensor | None = None,
        pair_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """smar_loss of the model's scores on batch `b` (page and single-modal batches alike)."""
        return smar_loss(
            self.model.score_batch(b),
            b.relevance,
            b.single_modal_score,
            b.has_score,
            b.modality,
            b.mask,
            cfg,
            pairs,
            pair_mask,
            generator,
        )

    def __call__(self, b: PageBatch, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = self._loss(b, self.loss_cfg, self.pairs[idx], self.pair_mask[idx], self.gen)
        loss = terms["loss"]
        if self.single_modal is not None:
            sm_terms = self._loss(self.single_modal.next(), self.sm_cfg)
            loss = loss + sm_terms["loss"]
            terms["consistency"] = terms["consistency"] + sm_terms["consistency"]
        self.opt.zero_grad()
        loss.backward()
        if self.tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.opt.step()
        if self.ema is not None:  # bias-corrected: the init weights' share does not linger
            self.ema_steps += 1
            w = (1.0 - self.tc.ema) / (1.0 - self.tc.ema**self.ema_steps)
            with torch.no_grad():
                for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                    pe.lerp_(pm, w)
        terms["loss"] = loss
        return terms
