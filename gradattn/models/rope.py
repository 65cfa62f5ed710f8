"""Rotary position embedding (RoPE), rotate-half form (Su et al., 2021; as in GPT-NeoX/LLaMA).

A vector at position m is split into two halves (x1, x2); pair i = (x1[i], x2[i]) is rotated by
the angle m * base^(-2i / head_dim). Because rotations compose, the dot product of a query
rotated to position m and a key rotated to position n depends only on (m - n): attention sees
relative order, and nothing is added to the tokens themselves.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradattn.core.errors import ConfigError


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the last dimension: a 90° turn of every pair (x1[i], x2[i])."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotates queries/keys of shape (..., T, head_dim) by their position along T."""

    def __init__(self, *, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim < 2 or head_dim % 2:
            raise ConfigError(
                f"rope needs an even head size (dim / heads), got {head_dim}; "
                "choose dim and heads so that dim / heads is even"
            )
        self.head_dim = head_dim
        self.base = base
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        # Not persistent: fully determined by head_dim and base, so it stays out of state_dict.
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (head_dim/2,)

    def cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin of every pair's angle, each (T, head_dim), for integer positions (T,)."""
        angles = positions.to(self.inv_freq.dtype)[:, None] * self.inv_freq  # (T, head_dim/2)
        angles = torch.cat((angles, angles), dim=-1)  # (T, head_dim): both halves of a pair
        return angles.cos(), angles.sin()

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """x: (..., T, head_dim); positions: (T,) integers, default 0..T-1. Same shape out."""
        if positions is None:
            positions = torch.arange(x.shape[-2], device=x.device)
        cos, sin = self.cos_sin(positions)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        return x * cos + rotate_half(x) * sin

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base:g}"
