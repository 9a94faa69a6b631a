"""The whole-page reranker f(u, q, i): the one network pretraining, the RL policy and Serve share.

Per-modality input adapters map each modality's own features (own dimension and scale) into a common
space; a modality embedding and the query/user context are fused per item; list-level self-attention
lets every item see the rest of the page; a head gives one score per item. Padding is masked
throughout. Feature normalisation (signed log, then per-modality standardisation fitted on training
pages) lives inside the module as buffers, so a checkpoint scores raw features wherever it is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from envs.config_io import JsonConfig
from envs.pages import MODALITIES, Pages
from pretrain.page import PageBatch

PAD_SCORE = -1e9  # score of padded slots: exp(PAD_SCORE) == 0, argsort puts them last


@dataclass(frozen=True)
class RerankerConfig(JsonConfig):
    """Shape of the reranker. Saved in every checkpoint's manifest and enough to rebuild the module."""

    feature_dims: dict[str, int] = field(default_factory=lambda: {m: 1 for m in MODALITIES})
    query_dim: int = 8
    user_dim: int = 6
    hidden: int = 64
    heads: int = 4
    layers: int = 2
    dropout: float = 0.0
    # A per-modality offset read from the query/user context, added to every item's score: the
    # cross-modal placement (how much this query wants each modality) as its own low-capacity path,
    # so the few page labels that teach it need not be spread through the whole network.
    modality_offsets: bool = False

    @staticmethod
    def for_pages(pages: Pages, **kw) -> RerankerConfig:
        return RerankerConfig(
            feature_dims=dict(pages.feature_dims), query_dim=pages.query_dim, user_dim=pages.user_dim, **kw
        )


def signed_log(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log1p(|x|): tames count-like heavy tails, keeps small values nearly linear."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


# A column constant on the data a normaliser is fitted on carries no information. It is divided by
# this (it standardises to ~0 whatever value it takes later) instead of the 1e-3 floor, which would
# turn a value never seen in fitting (an imported query's length, say) into hundreds of standard
# deviations. Finite, because normalisers also travel as plain lists (agent.rl_module).
CONSTANT_COLUMN_STD = 1e6


def fit_std(x: torch.Tensor) -> torch.Tensor:
    """Per-column standard deviation of `x` [n, d] for standardisation (see CONSTANT_COLUMN_STD)."""
    std = x.std(0)
    constant = std <= 1e-6 * (1.0 + x.mean(0).abs())
    return torch.where(constant, torch.full_like(std, CONSTANT_COLUMN_STD), std.clamp_min(1e-3))


class WholePageReranker(nn.Module):
    """Scores every candidate of a page in the context of the whole page. Output [B, N]."""

    def __init__(self, config: RerankerConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.modalities = tuple(MODALITIES)
        self.dmax = max(config.feature_dims.values())
        n_mod = len(self.modalities)
        # Normalisation buffers per modality over the padded feature width (identity until fitted).
        self.register_buffer("feat_mean", torch.zeros(n_mod, self.dmax))
        self.register_buffer("feat_std", torch.ones(n_mod, self.dmax))
        self.register_buffer("ctx_mean", torch.zeros(config.query_dim + config.user_dim))
        self.register_buffer("ctx_std", torch.ones(config.query_dim + config.user_dim))
        self.adapters = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(max(config.feature_dims[m], 1), h), nn.GELU(), nn.Linear(h, h))
                for m in self.modalities
            ]
        )
        self.modality_embedding = nn.Embedding(n_mod, h)
        self.context = nn.Sequential(nn.Linear(config.query_dim + config.user_dim, h), nn.GELU())
        self.fuse = nn.Sequential(nn.Linear(2 * h, h), nn.GELU(), nn.LayerNorm(h))
        layer = nn.TransformerEncoderLayer(
            d_model=h,
            nhead=config.heads,
            dim_feedforward=2 * h,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=config.layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(2 * h, h), nn.GELU(), nn.Linear(h, 1))
        self.offset_head = nn.Linear(h, n_mod) if config.modality_offsets else None
        # The lean form (a runtime switch, not part of the model or its checkpoint): the same scores
        # with less work on big batches, gradients equal up to float summation order. Each adapter
        # runs only on its own modality's items (`_adapt`; the standard form runs every adapter on
        # every slot and gathers), and the encoder layers are written out (`_encode_lean`; with or
        # without gradient, so the RL policy samples and trains with one computation). Pretraining
        # and serving run the standard form, the RL policy the lean one.
        self.lean = False

    # ------------------------------------------------------------------ normalisation
    @torch.no_grad()
    def fit_normalizer(self, pages: Pages) -> None:
        """Fit per-modality feature and context standardisation on training pages."""
        feats = signed_log(torch.from_numpy(pages.features))
        mod = torch.from_numpy(pages.modality.astype(np.int64))
        for mid in range(len(self.modalities)):
            sel = feats[mod == mid]
            if len(sel) > 1:
                self.feat_mean[mid] = sel.mean(0)
                self.feat_std[mid] = fit_std(sel)
        ctx = torch.from_numpy(np.concatenate([pages.query_features, pages.user_features], axis=1))
        if len(ctx) > 1:
            self.ctx_mean.copy_(ctx.mean(0))
            self.ctx_std.copy_(fit_std(ctx))

    # ------------------------------------------------------------------ forward
    def encode_items(
        self, features: torch.Tensor, modality: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """Per-item embeddings before attention, [B, N, H]; `context` is `context_embedding`'s [B, H]."""
        x = (signed_log(features) - self.feat_mean[modality]) / self.feat_std[modality]
        b, n, d = x.shape
        if self.lean:
            h = self._adapt(x.reshape(b * n, d), modality.reshape(b * n)).reshape(b, n, self.config.hidden)
        else:
            # Every adapter runs on every slot and the item's own modality is gathered: dense and
            # branch-free.
            outs = [
                adapter(x[..., : max(self.config.feature_dims[m], 1)])
                for m, adapter in zip(self.modalities, self.adapters)
            ]
            idx = modality[..., None, None].expand(b, n, 1, self.config.hidden)
            h = torch.stack(outs, dim=-2).gather(-2, idx).squeeze(-2)
        h = h + self.modality_embedding(modality)
        c = context[:, None, :].expand(b, n, -1)
        return self.fuse(torch.cat([h, c], dim=-1))

    def _adapt(self, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Each item [T, D] through its own modality's adapter, [T, H] (the lean form): the items
        grouped by modality (a stable sort), one call per adapter on its group, then back in slot
        order. Every adapter is called, on an empty group too, so each gets a gradient (zeros when its
        modality is absent), as in the dense form."""
        order = torch.argsort(modality, stable=True)
        counts = torch.bincount(modality, minlength=len(self.modalities)).tolist()
        grouped = x.index_select(0, order)
        parts, lo = [], 0
        for m, adapter, count in zip(self.modalities, self.adapters, counts):
            parts.append(adapter(grouped[lo : lo + count, : max(self.config.feature_dims[m], 1)]))
            lo += count
        slot_order = torch.empty_like(order)
        slot_order[order] = torch.arange(len(order), device=order.device)
        return torch.cat(parts).index_select(0, slot_order)

    def _encode_lean(self, x: torch.Tensor, key_pad: torch.Tensor) -> torch.Tensor:
        """`self.encoder` (pre-norm layers) written out for training: the self-attention's packed
        projection is split by a view instead of torch's per-projection selects, whose backward
        fills a zero gradient of the whole projection for each of the three. The same operations on
        the same values otherwise."""
        b, n, e = x.shape
        mask = None  # no padded slot: the kernel's all-zero additive mask adds nothing (same values)
        if bool(key_pad.any()):
            mask = torch.zeros(key_pad.shape, dtype=x.dtype, device=x.device).masked_fill(
                key_pad, float("-inf")
            )
            mask = mask[:, None, None, :]  # [B, 1, 1, N], as MultiheadAttention hands it to the kernel
        for layer in self.encoder.layers:
            attn = layer.self_attn
            heads = attn.num_heads
            qkv = nn.functional.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias)
            q, k, v = qkv.view(b, n, 3, heads, e // heads).permute(2, 0, 3, 1, 4).unbind(0)
            drop = attn.dropout if self.training else 0.0
            a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
            x = x + layer.dropout1(attn.out_proj(a.transpose(1, 2).reshape(b, n, e)))
            ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(x)))))
            x = x + layer.dropout2(ff)
        return x if self.encoder.norm is None else self.encoder.norm(x)

    def context_embedding(self, query: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """The page's query/user context, [B, H]."""
        ctx = (torch.cat([query, user], dim=-1) - self.ctx_mean) / self.ctx_std
        return self.context(ctx)

    def layout_offsets(self, query: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """The per-modality offsets the page's context adds to every item's score, [B, M] (zeros
        without an offset head): the page layout, separately from the within-modality order."""
        if self.offset_head is None:
            return query.new_zeros(query.shape[0], len(self.modalities))
        return self.offset_head(self.context_embedding(query.float(), user.float()))

    def forward(
        self,
        features: torch.Tensor,
        modality: torch.Tensor,
        mask: torch.Tensor,
        query: torch.Tensor,
        user: torch.Tensor,
    ) -> torch.Tensor:
        """Scores [B, N]; padded slots get PAD_SCORE."""
        modality = modality.long().clamp(0, len(self.modalities) - 1)
        mask = mask.bool()
        context = self.context_embedding(query.float(), user.float())  # once: items and offsets share it
        h0 = self.encode_items(features.float(), modality, context)
        # A page with no real item would make attention NaN: let such rows attend to slot 0.
        key_pad = ~mask
        empty = ~mask.any(dim=1)
        if empty.any():
            key_pad = key_pad.clone()
            key_pad[empty, 0] = False
        # the lean form samples (without gradient) with training's computation too
        h = self._encode_lean(h0, key_pad) if self.lean else self.encoder(h0, src_key_padding_mask=key_pad)
        scores = self.head(torch.cat([h0, h], dim=-1)).squeeze(-1)
        if self.offset_head is not None:
            offsets = self.offset_head(context)  # [B, M]
            scores = scores + offsets.gather(1, modality)
        return scores.masked_fill(~mask, PAD_SCORE)

    def score_batch(self, batch: PageBatch) -> torch.Tensor:
        return self(batch.features, batch.modality, batch.mask, batch.query, batch.user)

    @torch.no_grad()
    def score_pages(self, pages: Pages, batch_pages: int = 256) -> np.ndarray:
        """Per-item scores (T,) for a Pages batch, in eval mode."""
        from pretrain.page import collate

        was_training = self.training
        self.eval()
        out = np.zeros(pages.n_items, np.float32)
        for start in range(0, len(pages), batch_pages):
            part = pages.select(slice(start, start + batch_pages))
            batch = collate(part)
            s = self.score_batch(batch)
            lo = int(pages.offsets[start])
            out[lo : lo + part.n_items] = s[batch.mask].numpy()
        self.train(was_training)
        return out
