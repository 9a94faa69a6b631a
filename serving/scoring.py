"""The served policy: a loaded reranker checkpoint turned into rankings with exact propensities.

`Scorer` wraps one `WholePageReranker` (loaded and verified by `pretrain.checkpoint.load_checkpoint`)
and ranks a batch of validated pages in one forward pass. Exploration uses the project's single
Plackett-Luce implementation (`pretrain.plackett_luce`): Gumbel top-k sampling at a temperature, with
the exact per-position conditional propensities and the slate log-probability logged for off-policy
learning. The greedy policy is deterministic, so its logged propensities are 1.

The Serve app, the plain-FastAPI peer and the benchmark's model floor all call this class, so they
compare frameworks, not code paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from envs.pages import MODALITY_ID
from pretrain import plackett_luce as pl
from pretrain.checkpoint import Checkpoint, load_checkpoint
from pretrain.reranker import WholePageReranker
from serving.schemas import RankRequest
from serving.settings import SERVING_TEMPERATURE
from serving.stages import CLOCK, thread_time


@dataclass
class Prepared:
    """One validated page as arrays (candidate order as sent)."""

    features: np.ndarray  # (n, dmax) float32, zero-padded past each modality's dim
    modality: np.ndarray  # (n,) int64
    lengths: np.ndarray  # (n,) int64 each candidate's true feature length (before padding)
    query: np.ndarray  # (Dq,) float32
    user: np.ndarray  # (Du,) float32
    explore: bool

    @property
    def n(self) -> int:
        return len(self.modality)


@dataclass
class Ranked:
    """A page's shown ranking: candidate indices in shown order and what the logger needs."""

    order: np.ndarray  # (n,) int64 candidate index at positions 1..n
    scores: np.ndarray  # (n,) float32 model score of the item shown at each position
    pscore: np.ndarray  # (n,) float64 P(item at position k | items above), 1.0 when greedy
    slate_log_prob: float  # log P(shown ranking), 0.0 when greedy
    explored: bool
    policy: str
    temperature: float


class Scorer:
    """A verified, eval-mode reranker plus its input contract."""

    def __init__(self, model: WholePageReranker, ckpt: Checkpoint) -> None:
        self.model = model.eval()
        self.ckpt = ckpt
        self.version = ckpt.version
        cfg = model.config
        self.feature_dims = dict(cfg.feature_dims)
        self.query_dim = cfg.query_dim
        self.user_dim = cfg.user_dim
        self.dmax = model.dmax

    @staticmethod
    def load(path: str | Path) -> Scorer:
        """Load and verify (SHA-256) a checkpoint folder; raises CheckpointError when it is bad."""
        model, ckpt = load_checkpoint(path)
        return Scorer(model, ckpt)

    def prepare(self, req: RankRequest) -> Prepared:
        """Arrays for a request already checked by `schemas.check_rank`."""
        cands = req.candidates
        n = len(cands)
        lengths = np.fromiter((len(c.features) for c in cands), np.int64, n)
        # one pass over all the page's floats, then one masked store (row-major, as concatenated)
        flat = np.fromiter(chain.from_iterable(c.features for c in cands), np.float32, int(lengths.sum()))
        feats = np.zeros((n, self.dmax), np.float32)
        feats[np.arange(self.dmax)[None, :] < lengths[:, None]] = flat
        mod = np.fromiter((MODALITY_ID[c.modality] for c in cands), np.int64, n)
        return Prepared(
            features=feats,
            modality=mod,
            lengths=lengths,
            query=np.asarray(req.query.features, np.float32),
            user=np.asarray(req.user.features, np.float32),
            explore=req.explore,
        )

    @torch.no_grad()
    def scores(self, pages: list[Prepared]) -> tuple[torch.Tensor, torch.Tensor]:
        """One padded forward pass over a batch: (scores [B, N], mask [B, N])."""
        t0 = thread_time()
        b = len(pages)
        n = max(p.n for p in pages)
        feats = np.zeros((b, n, self.dmax), np.float32)
        mod = np.zeros((b, n), np.int64)
        mask = np.zeros((b, n), bool)
        for i, p in enumerate(pages):
            feats[i, : p.n] = p.features
            mod[i, : p.n] = p.modality
            mask[i, : p.n] = True
        q = torch.from_numpy(np.stack([p.query for p in pages]))
        u = torch.from_numpy(np.stack([p.user for p in pages]))
        m = torch.from_numpy(mask)
        t1 = thread_time()
        s = self.model(torch.from_numpy(feats), torch.from_numpy(mod), m, q, u)
        CLOCK.add("batch_build", t1 - t0)
        CLOCK.add("model_forward", thread_time() - t1)
        return s, m

    @torch.no_grad()
    def rank(
        self,
        pages: list[Prepared],
        exploration: str = "plackett_luce",
        temperature: float = SERVING_TEMPERATURE,
        generator: torch.Generator | None = None,
    ) -> list[Ranked]:
        """Score and rank a batch; pages with explore=True are sampled when exploration is PL."""
        s, mask = self.scores(pages)
        t0 = thread_time()
        n = s.shape[1]
        greedy = pl.greedy_topk(pl.masked_logits(s, mask), n)
        explore = torch.tensor([p.explore and exploration == "plackett_luce" for p in pages])
        order = greedy
        pscore = torch.ones(s.shape, dtype=torch.float64)
        logp = torch.zeros(len(pages), dtype=torch.float64)
        if bool(explore.any()):
            logits = pl.masked_logits(s[explore].double(), mask[explore], temperature)
            sampled = pl.sample_topk(logits, n, generator=generator)
            step = pl.stepwise_log_probs(logits, sampled)  # [E, n]; padded positions sliced off below
            sizes = mask[explore].sum(1)
            real = torch.arange(n)[None, :] < sizes[:, None]
            order = greedy.clone()
            order[explore] = sampled
            pscore[explore] = step.exp()
            logp[explore] = (step * real).sum(1)
        out = []
        s_np = s.numpy()
        for i, p in enumerate(pages):
            o = order[i, : p.n].numpy().astype(np.int64)
            exp_i = bool(explore[i])
            out.append(
                Ranked(
                    order=o,
                    scores=s_np[i, o].astype(np.float32),
                    pscore=pscore[i, : p.n].numpy().astype(np.float64),
                    slate_log_prob=float(logp[i]),
                    explored=exp_i,
                    policy="plackett_luce" if exp_i else "greedy",
                    temperature=float(temperature) if exp_i else 0.0,
                )
            )
        CLOCK.add("propensities", thread_time() - t0)
        return out
