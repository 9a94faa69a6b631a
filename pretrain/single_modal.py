"""Single-modal rankers g^m: one small network per modality, trained only on that modality's own labels.

Step 1 of SMAR. Each modality's labels are comparable only within the modality (own cut points), so
each ranker learns a within-modality order and its score scale means nothing across modalities: that
is the gap the whole-page reranker and the `merge` baseline must bridge.

The ranker scores an item from its own features (signed log, then standardisation) and the query's
features (standardised), both fitted on the modality's training pages, then an MLP over both. Within-modality relevance is
mostly a query-item topical match (see `envs.world`): no property of an item alone says whether it
matches, so an item-only ranker could learn quality but not match. User features are left out: in
the world they carry the user's modality affinity, which moves the cross-modal grade but not the
within-modality order these rankers learn; the whole-page reranker is where that context enters.

Training: ListMLE per single-modal page (random tie-breaking), Adam, early stopping on NDCG@10 of a
held-out fraction of the single-modal pages. Checkpoints are folders (weights.pt + manifest.json with
SHA-256), written atomically like `pretrain.checkpoint`, whose hashing helpers they reuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from envs.config_io import JsonConfig
from envs.metrics import ndcg_of_scores
from envs.pages import MODALITIES, MODALITY_ID, Pages, pad_items
from pretrain.checkpoint import load_weights, make_version, read_verified_manifest, write_model_folder
from pretrain.losses import listmle
from pretrain.reranker import fit_std, signed_log
from pretrain.runtime import BestWeights, torch_threads

FORMAT = "smar-single-modal/1"


@dataclass(frozen=True)
class SingleModalConfig(JsonConfig):
    """Shape and training of the single-modal rankers (shared by all modalities)."""

    hidden: int = 64
    epochs: int = 40
    patience: int = 5
    lr: float = 3e-3
    weight_decay: float = 1e-5
    batch_pages: int = 128
    holdout: float = 0.1  # fraction of single-modal pages held out for early stopping
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")
        if self.epochs < 1 or self.hidden < 1 or self.batch_pages < 1:
            raise ValueError("epochs, hidden and batch_pages must be >= 1")


class SingleModalRanker(nn.Module):
    """g^m: item features of one modality and the query's features -> a score.

    The score's scale is meaningful within the modality only. `query_dim` 0 gives an item-only ranker
    (for data without query features).
    """

    def __init__(self, modality: str, feature_dim: int, hidden: int = 64, query_dim: int = 0) -> None:
        super().__init__()
        if modality not in MODALITY_ID:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        self.modality = modality
        self.feature_dim = int(feature_dim)
        self.query_dim = int(query_dim)
        self.hidden = int(hidden)
        self.register_buffer("mean", torch.zeros(self.feature_dim))
        self.register_buffer("std", torch.ones(self.feature_dim))
        self.register_buffer("query_mean", torch.zeros(self.query_dim))
        self.register_buffer("query_std", torch.ones(self.query_dim))
        self.net = nn.Sequential(
            nn.Linear(self.feature_dim + self.query_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 1),
        )

    @torch.no_grad()
    def fit_normalizer(self, features: np.ndarray, query: np.ndarray | None = None) -> None:
        """Standardisation of signed-log item features, and of raw query features (one row per query),
        as the whole-page reranker standardises its context."""
        x = signed_log(torch.from_numpy(np.asarray(features, np.float32)[:, : self.feature_dim]))
        self.mean.copy_(x.mean(0))
        self.std.copy_(fit_std(x))
        if self.query_dim:
            if query is None:
                raise ValueError(f"single-modal {self.modality}: a query-aware ranker needs query features")
            q = torch.from_numpy(np.asarray(query, np.float32)[:, : self.query_dim])
            self.query_mean.copy_(q.mean(0))
            self.query_std.copy_(fit_std(q))

    def forward(self, features: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """features [..., >= feature_dim] (zero-padded width allowed), query [..., query_dim] with the
        same leading shape or one fewer (one query per page, broadcast over its items) -> scores [...]."""
        x = (signed_log(features[..., : self.feature_dim]) - self.mean) / self.std
        if self.query_dim:
            if query is None:
                raise ValueError(f"single-modal {self.modality}: this ranker needs query features")
            q = (query[..., : self.query_dim] - self.query_mean) / self.query_std
            if q.dim() == x.dim() - 1:
                q = q.unsqueeze(-2).expand(*x.shape[:-1], self.query_dim)
            x = torch.cat([x, q], dim=-1)
        return self.net(x).squeeze(-1)

    def model_config(self) -> dict:
        return {
            "modality": self.modality,
            "feature_dim": self.feature_dim,
            "hidden": self.hidden,
            "query_dim": self.query_dim,
        }


# ----------------------------------------------------------------------------- checkpoints
def save_ranker(ranker: SingleModalRanker, path: str | Path, extra: dict | None = None) -> Path:
    """Write a ranker folder atomically (temp sibling, then rename); replaces an existing one."""
    manifest = {
        "version": make_version(f"single-modal-{ranker.modality}"),
        "model_config": ranker.model_config(),
        **(extra or {}),
    }
    write_model_folder(ranker.state_dict(), path, manifest, fmt=FORMAT, overwrite=True)
    return Path(path)


def load_ranker(path: str | Path) -> tuple[SingleModalRanker, dict]:
    """Verify the SHA-256 and load a ranker folder; returns (ranker in eval mode, manifest)."""
    manifest = read_verified_manifest(path, fmt=FORMAT)
    cfg = manifest["model_config"]
    ranker = SingleModalRanker(cfg["modality"], cfg["feature_dim"], cfg["hidden"], cfg.get("query_dim", 0))
    load_weights(ranker, path)
    ranker.eval()
    return ranker, manifest


# ----------------------------------------------------------------------------- the set of rankers
class SingleModalRankers:
    """The per-modality rankers as one scorer: `.score(pages)` fills a (T,) single-modal score."""

    def __init__(self, rankers: dict[str, SingleModalRanker]) -> None:
        self.rankers = dict(rankers)

    @torch.no_grad()
    def score(self, pages: Pages, batch_items: int = 65536) -> np.ndarray:
        out = np.full(pages.n_items, np.nan, np.float32)
        page_of = pages.page_of_item
        for m, ranker in self.rankers.items():
            idx = np.nonzero(pages.modality == MODALITY_ID[m])[0]
            ranker.eval()
            for start in range(0, len(idx), batch_items):  # in chunks: memory stays flat at scale
                sel = idx[start : start + batch_items]
                query = torch.from_numpy(pages.query_features[page_of[sel]].astype(np.float32))
                out[sel] = ranker(torch.from_numpy(pages.features[sel]), query).numpy()
        missing = sorted({MODALITIES[i] for i in np.unique(pages.modality[np.isnan(out)])})
        if missing:
            raise ValueError(f"pages hold modality {missing} but no single-modal ranker was trained for it")
        return out

    def fill(self, pages: Pages) -> Pages:
        """A copy of `pages` with `single_modal_score` set for every item."""
        return pages.with_items(single_modal_score=self.score(pages))

    def save(self, root: str | Path, metrics: dict | None = None) -> Path:
        root = Path(root)
        for m, r in self.rankers.items():
            save_ranker(r, root / m, extra={"metrics": (metrics or {}).get(m, {})})
        return root

    @staticmethod
    def load(root: str | Path) -> SingleModalRankers:
        root = Path(root)
        found = {m: load_ranker(root / m)[0] for m in MODALITIES if (root / m).exists()}
        if not found:
            raise FileNotFoundError(f"{root}: no single-modal ranker folders ({', '.join(MODALITIES)})")
        return SingleModalRankers(found)


# ----------------------------------------------------------------------------- training
def _page_tensors(pages: Pages, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n = int(pages.sizes.max())
    x = torch.from_numpy(pad_items(pages, pages.features[:, :dim], n))
    y = torch.from_numpy(pad_items(pages, pages.relevance.astype(np.float32), n, fill=-1.0))
    mask = torch.from_numpy(pad_items(pages, np.ones(pages.n_items, bool), n, fill=False))
    q = torch.from_numpy(pages.query_features.astype(np.float32))
    return x, q, y, mask & (y >= 0)


def mean_ndcg(scores: np.ndarray, pages: Pages, relevance: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over pages of ranking each page by `scores` against `relevance` (both (T,))."""
    vals = [
        ndcg_of_scores(scores[pages.item_slice(p)], relevance[pages.item_slice(p)], k)
        for p in range(len(pages))
    ]
    return float(np.mean(vals)) if vals else float("nan")


def train_ranker(
    modality: str, pages: Pages, cfg: SingleModalConfig, progress: bool = True
) -> tuple[SingleModalRanker, dict]:
    """Train g^m on single-modal pages of `modality` (labels in `pages.relevance`). Returns (ranker, metrics)."""
    mid = MODALITY_ID[modality]
    if len(pages) < 4:
        raise ValueError(f"single-modal {modality}: need >= 4 labelled pages, got {len(pages)}")
    if (pages.modality != mid).any():
        raise ValueError(f"single-modal {modality}: pages contain items of another modality")
    if (pages.relevance < 0).any():
        raise ValueError(f"single-modal {modality}: field 'relevance' has unlabelled items (-1)")
    dim = pages.feature_dims[modality]
    rng = np.random.default_rng([cfg.seed, mid])
    perm = rng.permutation(len(pages))
    n_hold = max(1, int(round(cfg.holdout * len(pages))))
    hold, train = pages.select(np.sort(perm[:n_hold])), pages.select(np.sort(perm[n_hold:]))
    torch.manual_seed(cfg.seed * 1009 + mid)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + mid)
    ranker = SingleModalRanker(modality, dim, cfg.hidden, train.query_dim)
    ranker.fit_normalizer(train.features, train.query_features)
    x, q, y, mask = _page_tensors(train, dim)
    hold_x = torch.from_numpy(hold.features[:, :dim])
    hold_q = torch.from_numpy(hold.query_features[hold.page_of_item].astype(np.float32))
    opt = torch.optim.Adam(ranker.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best = BestWeights(cfg.patience, min_gain=1e-5)
    bar = tqdm(
        range(cfg.epochs), desc=f"single-modal {modality}", disable=None if progress else True, leave=False
    )
    for epoch in bar:
        ranker.train()
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), cfg.batch_pages):
            idx = order[start : start + cfg.batch_pages]
            loss = listmle(ranker(x[idx], q[idx]), y[idx], mask[idx], gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ranker.eval()
        with torch.no_grad():
            s = ranker(hold_x, hold_q).numpy()
        score = mean_ndcg(s, hold, hold.relevance.astype(np.float64))
        bar.set_postfix(ndcg10=f"{score:.4f}")
        if best.update(score, epoch, ranker):
            break
    best.restore(ranker)
    return ranker, {"holdout_ndcg@10": best.best, "best_epoch": best.epoch, "train_pages": len(train)}


def train_rankers(
    single_modal: dict[str, Pages], cfg: SingleModalConfig, progress: bool = True
) -> tuple[SingleModalRankers, dict]:
    """Train one ranker per modality present in `single_modal` (modality -> its labelled pages)."""
    rankers, metrics = {}, {}
    with torch_threads(1):
        for m in MODALITIES:
            if m in single_modal:
                rankers[m], metrics[m] = train_ranker(m, single_modal[m], cfg, progress)
    return SingleModalRankers(rankers), metrics


def within_modality_ndcg(
    scores: np.ndarray, pages: Pages, relevance: np.ndarray, k: int = 10
) -> dict[str, float]:
    """Per-modality NDCG@k on whole pages: each page restricted to one modality's items, vs `relevance`."""
    out = {}
    for mid, m in enumerate(MODALITIES):
        vals = []
        for p in range(len(pages)):
            sl = pages.item_slice(p)
            sel = pages.modality[sl] == mid
            if sel.sum() >= 2:
                vals.append(ndcg_of_scores(scores[sl][sel], relevance[sl][sel], k))
        if vals:
            out[m] = float(np.mean(vals))
    return out
