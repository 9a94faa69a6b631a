"""The typed configuration of SMAR pretraining: what `smar pretrain` does, saved in run.json and in the
reranker's manifest (`--pretrain.*` on the command line, `pretrain:` in a config file)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from envs.config_io import JsonConfig
from envs.pages import Pages
from pretrain.annotation import AnnotationConfig
from pretrain.losses import LossConfig
from pretrain.reranker import RerankerConfig
from pretrain.single_modal import SingleModalConfig

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
    threads: int = 1  # torch intra-op threads (more only contend for page-sized tensors on a shared CPU)

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
