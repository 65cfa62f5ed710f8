"""GradAttn: a transformer encoder over five depths of a skip-free ResNet-18, and its control.

    image -> skip-free backbone -> 5 taps -> GAP -> Linear(c_i, dim) each -> tokens (B, 5, dim)
          -> positional encoding (none | learnable | rope) -> encoder x depth -> mean -> head

The encoder layers are the notebooks': torch's `nn.TransformerEncoderLayer` for no PE and
learnable PE, and for RoPE their own layer (separate bias-free q/k/v projections, queries and
keys rotated inside the attention), module for module, so that the notebooks' gradient
analyser hooks the same modules in ours as in theirs (docs/deviations.md rows 2, 20).
`TapsMean` is the same model with the encoder replaced by a plain mean (no attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradattn.core.settings import check_attention_shape
from gradattn.models.resnet import TAP_CHANNELS, SkipFreeBackbone, pool_taps
from gradattn.models.rope import RotaryEmbedding

NUM_TAPS = len(TAP_CHANNELS)


class RopeSelfAttention(nn.Module):
    """The notebooks' RoPE attention (`MultiHeadAttentionWithRoPE`, CIFAR-10 cell 10): plain
    nn.Linear projections `w_q`, `w_k`, `w_v` without bias and `w_o` with bias (default
    init), queries and keys rotated by token position, dropout on the attention weights."""

    def __init__(self, *, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        check_attention_shape(dim=dim, heads=heads, pe="rope")
        self.heads = heads
        self.dropout = dropout
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.w_o = nn.Linear(dim, dim)
        self.rope = RotaryEmbedding(head_dim=dim // heads)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, dim) -> rotated q, rotated k and v, each (B, H, T, hd)."""
        B, T, D = x.shape
        q, k, v = (w(x).view(B, T, self.heads, D // self.heads).transpose(1, 2)
                   for w in (self.w_q, self.w_k, self.w_v))
        return self.rope(q), self.rope(k), v

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, dim) -> (B, T, dim)."""
        B, T, D = x.shape
        q, k, v = self._heads(x)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, T, hd)
        return self.w_o(out.transpose(1, 2).reshape(B, T, D))  # heads concatenated

    @torch.no_grad()
    def weights(self, x: Tensor) -> Tensor:
        """Softmax attention weights averaged over heads (B, T, T), before dropout."""
        q, k, _ = self._heads(x)
        return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1).mean(dim=1)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, dropout={self.dropout}"


class RopeEncoderLayer(nn.Module):
    """The notebooks' `TransformerEncoderLayerWithRoPE` (CIFAR-10 cell 10): torch's layer
    (post-norm by default, ReLU feed-forward) with RopeSelfAttention, module for module,
    including its in-place ReLU on linear1's output (which silences a legacy backward hook
    on linear1, as in theirs: docs/deviations.md row 20). Not an nn.TransformerEncoderLayer,
    as theirs is not."""

    def __init__(self, *, dim: int, heads: int, ff_dim: int, dropout: float = 0.1,
                 norm_first: bool = False) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = RopeSelfAttention(dim=dim, heads=heads, dropout=dropout)
        self.linear1 = nn.Linear(dim, ff_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = nn.ReLU(inplace=True)

    def _ff_block(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, dim) -> (B, T, dim)."""
        if self.norm_first:  # pre-norm
            x = x + self.dropout1(self.self_attn(self.norm1(x)))
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self.dropout1(self.self_attn(x)))  # post-norm: the notebooks'
        return self.norm2(x + self._ff_block(x))

    def extra_repr(self) -> str:
        return f"norm_first={self.norm_first}"


def attention_weights(layer: nn.Module, x: Tensor) -> Tensor:
    """A layer's softmax attention weights for its input x (B, T, dim), averaged over heads:
    (B, T, T), before dropout."""
    h = layer.norm1(x) if layer.norm_first else x
    if isinstance(layer, RopeEncoderLayer):
        return layer.self_attn.weights(h)
    was_training = layer.self_attn.training
    layer.self_attn.eval()  # weights before dropout
    try:
        with torch.no_grad():
            return layer.self_attn(h, h, h, need_weights=True, average_attn_weights=True)[1]
    finally:
        layer.self_attn.train(was_training)


def encoder_layer(*, dim: int, heads: int, ff_dim: int, dropout: float, norm_first: bool,
                  rope: bool) -> nn.Module:
    """One encoder layer as the notebooks build it: torch's nn.TransformerEncoderLayer for
    no PE and learnable PE (CIFAR-10 cells 6, 8), their RoPE layer for RoPE (cell 10)."""
    if rope:
        return RopeEncoderLayer(dim=dim, heads=heads, ff_dim=ff_dim, dropout=dropout,
                                norm_first=norm_first)
    return nn.TransformerEncoderLayer(dim, heads, ff_dim, dropout=dropout, batch_first=True,
                                      norm_first=norm_first)


class Encoder(nn.Module):
    """A stack of encoder layers (no final norm, as nn.TransformerEncoder's default), each
    drawn independently (nn.TransformerEncoder would deep-copy one: docs/deviations.md
    row 4)."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        heads: int,
        ff_dim: int,
        dropout: float,
        norm_first: bool,
        rope: bool,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            encoder_layer(dim=dim, heads=heads, ff_dim=ff_dim, dropout=dropout,
                          norm_first=norm_first, rope=rope)
            for _ in range(depth)
        )

    def forward(self, x: Tensor, *, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (B, T, dim) -> (B, T, dim), and weights (depth, B, T, T) if asked, else None."""
        all_weights = []
        for layer in self.layers:
            if return_attention:
                all_weights.append(attention_weights(layer, x))
            x = layer(x)
        return x, torch.stack(all_weights) if return_attention else None


class _TapTokens(SkipFreeBackbone):
    """Skip-free backbone whose five taps become five dim-sized tokens."""

    def __init__(self, *, dim: int, in_channels: int, stem: str) -> None:
        super().__init__(in_channels=in_channels, stem=stem)
        # One projection per tap: the taps have different widths (TAP_CHANNELS).
        self.proj = nn.ModuleList(nn.Linear(c, dim) for c in TAP_CHANNELS)

    def tokens(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> tokens (B, 5, dim), in tap order, before any encoding."""
        pooled = pool_taps(self.taps(x))  # 5 x (B, c_i)
        projected = [proj(p) for proj, p in zip(self.proj, pooled, strict=True)]  # 5 x (B, dim)
        return torch.stack(projected, dim=1)  # (B, 5, dim)


class GradAttn(_TapTokens):
    """The paper's model: taps -> tokens -> positional encoding -> encoder -> mean -> head."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        stem: str,
        pe: str,
        dim: int,
        depth: int,
        heads: int,
        ff_dim: int,
        dropout: float,
        norm_first: bool,
    ) -> None:
        # No defaults and no checks: build_model checks every option first
        # (core.settings.check_model_options, their one home).
        super().__init__(dim=dim, in_channels=in_channels, stem=stem)
        self.pe = pe
        # Learnable PE as in the notebooks: one standard-normal vector per tap position.
        self.pos = nn.Parameter(torch.randn(1, NUM_TAPS, dim)) if pe == "learnable" else None
        self.encoder = Encoder(
            dim=dim,
            depth=depth,
            heads=heads,
            ff_dim=ff_dim,
            dropout=dropout,
            norm_first=norm_first,
            rope=pe == "rope",
        )
        self.head = nn.Linear(dim, num_classes)

    def classify_tokens(
        self, tokens: Tensor, *, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Tokens (B, 5, dim) -> logits (B, num_classes) [, attention (depth, B, 5, 5)]."""
        x = tokens + self.pos if self.pos is not None else tokens  # (B, 5, dim)
        x, attn = self.encoder(x, return_attention=return_attention)  # (B, 5, dim)
        logits = self.head(x.mean(dim=1))  # (B, num_classes)
        return (logits, attn) if return_attention else logits

    def forward(
        self, x: Tensor, *, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Images (B, C, H, W) -> logits; with return_attention, also the per-layer,
        head-averaged attention weights (depth, B, 5, 5) (computed without SDPA; the
        logits are the same)."""
        return self.classify_tokens(self.tokens(x), return_attention=return_attention)

    def extra_repr(self) -> str:
        return f"pe={self.pe!r}"


class TapsMean(_TapTokens):
    """Control `taps_mean`: GradAttn's taps and projections, averaged; no attention, no PE."""

    def __init__(
        self, *, num_classes: int, in_channels: int, stem: str, dim: int
    ) -> None:
        super().__init__(dim=dim, in_channels=in_channels, stem=stem)
        self.head = nn.Linear(dim, num_classes)

    def classify_tokens(self, tokens: Tensor) -> Tensor:
        """Tokens (B, 5, dim) -> logits (B, num_classes)."""
        return self.head(tokens.mean(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify_tokens(self.tokens(x))
