"""GradAttn: a transformer encoder over five depths of a skip-free ResNet-18, and its control.

    image -> skip-free backbone -> 5 taps -> GAP -> Linear(c_i, dim) each -> tokens (B, 5, dim)
          -> positional encoding (none | learnable | rope) -> encoder x depth -> mean -> head

The encoder layer is our own, written to match `nn.TransformerEncoderLayer` at its defaults
(post-norm, ReLU, dropout on attention weights and both residual branches) so that RoPE can
rotate queries and keys inside it; tests check it against torch's layer with copied weights.
`TapsMean` is the same model with the encoder replaced by a plain mean (no attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradattn.errors import ConfigError
from gradattn.models.resnet import TAP_CHANNELS, SkipFreeBackbone, pool_taps
from gradattn.models.rope import RotaryEmbedding

PE_CHOICES = ("none", "learnable", "rope")
NUM_TAPS = len(TAP_CHANNELS)


def check_attention_shape(*, dim: int, heads: int, pe: str) -> None:
    """Heads must split dim evenly, and RoPE rotates pairs, so its head size must be even."""
    if pe not in PE_CHOICES:
        raise ConfigError(f"unknown pe {pe!r}; choose one of: {', '.join(PE_CHOICES)}")
    if dim % heads:
        raise ConfigError(
            f"dim {dim} is not divisible by heads {heads}; choose dim as a multiple of heads"
        )
    if pe == "rope" and (dim // heads) % 2:
        raise ConfigError(
            f"pe 'rope' needs an even head size, but dim {dim} / heads {heads} = {dim // heads}; "
            "choose dim / heads even, or pe one of: none, learnable"
        )


class SelfAttention(nn.Module):
    """Multi-head self-attention like nn.MultiheadAttention (packed qkv, biases), plus RoPE.

    With RoPE it is the notebooks' RoPE attention instead: q/k/v projections without bias,
    and every projection with nn.Linear's default init (they are plain nn.Linear there).
    """

    def __init__(self, *, dim: int, heads: int, dropout: float, rope: bool = False) -> None:
        super().__init__()
        check_attention_shape(dim=dim, heads=heads, pe="rope" if rope else "none")
        self.heads = heads
        self.dropout = dropout
        self.in_proj = nn.Linear(dim, 3 * dim, bias=not rope)  # q, k, v packed
        self.out_proj = nn.Linear(dim, dim)
        self.rope = RotaryEmbedding(head_dim=dim // heads) if rope else None
        if not rope:
            # nn.MultiheadAttention's init: xavier in-projection, zero biases.
            nn.init.xavier_uniform_(self.in_proj.weight)
            nn.init.zeros_(self.in_proj.bias)
            nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, *, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (B, T, dim) -> (out (B, T, dim), head-averaged softmax weights (B, T, T) or None)."""
        B, T, D = x.shape
        qkv = self.in_proj(x).view(B, T, 3, self.heads, D // self.heads)  # (B, T, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, hd)
        if self.rope is not None:
            q, k = self.rope(q), self.rope(k)  # rotated by token position along T
        p = self.dropout if self.training else 0.0
        if need_weights:
            # Explicit path, same maths as SDPA, kept only to expose the weights.
            scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, H, T, T)
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, p=p, training=self.training) @ v  # (B, H, T, hd)
            avg_weights = weights.mean(dim=1)  # (B, T, T), before dropout
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, T, hd)
            avg_weights = None
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, T, dim): heads concatenated
        return self.out_proj(out), avg_weights

    def extra_repr(self) -> str:
        return f"heads={self.heads}, dropout={self.dropout}"


class EncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer's maths (batch_first, ReLU), names and parameter count."""

    def __init__(
        self,
        *,
        dim: int,
        heads: int,
        ff_dim: int,
        dropout: float = 0.1,
        norm_first: bool = False,
        rope: bool = False,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = SelfAttention(dim=dim, heads=heads, dropout=dropout, rope=rope)
        self.linear1 = nn.Linear(dim, ff_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def _sa_block(self, x: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        out, weights = self.self_attn(x, need_weights=need_weights)
        return self.dropout1(out), weights

    def _ff_block(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x)))))

    def forward(self, x: Tensor, *, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (B, T, dim) -> (B, T, dim), and the layer's attention weights (B, T, T) or None."""
        if self.norm_first:  # pre-norm
            attn, weights = self._sa_block(self.norm1(x), need_weights)
            x = x + attn
            x = x + self._ff_block(self.norm2(x))
        else:  # post-norm: torch's default and the notebooks'
            attn, weights = self._sa_block(x, need_weights)
            x = self.norm1(x + attn)
            x = self.norm2(x + self._ff_block(x))
        return x, weights

    def extra_repr(self) -> str:
        return f"norm_first={self.norm_first}"


class Encoder(nn.Module):
    """A stack of encoder layers (no final norm, as nn.TransformerEncoder's default)."""

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
            EncoderLayer(
                dim=dim,
                heads=heads,
                ff_dim=ff_dim,
                dropout=dropout,
                norm_first=norm_first,
                rope=rope,
            )
            for _ in range(depth)
        )

    def forward(self, x: Tensor, *, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (B, T, dim) -> (B, T, dim), and weights (depth, B, T, T) if asked, else None."""
        all_weights = []
        for layer in self.layers:
            x, weights = layer(x, need_weights=return_attention)
            all_weights.append(weights)
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
        in_channels: int = 3,
        stem: str = "imagenet",
        pe: str = "learnable",
        dim: int = 256,
        depth: int = 3,
        heads: int = 8,
        ff_dim: int = 512,
        dropout: float = 0.1,
        norm_first: bool = False,
    ) -> None:
        check_attention_shape(dim=dim, heads=heads, pe=pe)
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
        self, *, num_classes: int, in_channels: int = 3, stem: str = "imagenet", dim: int = 256
    ) -> None:
        super().__init__(dim=dim, in_channels=in_channels, stem=stem)
        self.head = nn.Linear(dim, num_classes)

    def classify_tokens(self, tokens: Tensor) -> Tensor:
        """Tokens (B, 5, dim) -> logits (B, num_classes)."""
        return self.head(tokens.mean(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify_tokens(self.tokens(x))
