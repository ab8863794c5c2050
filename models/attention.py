"""Attention and transformer blocks with separate q/k/v/out projections (LoRA can target them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention from ``queries`` to ``context``.

    ``nn.MultiheadAttention`` packs q, k and v into one weight, which peft cannot adapt
    separately; here each projection is its own ``nn.Linear`` named ``q_proj``,
    ``k_proj``, ``v_proj``, ``out_proj``, the names LoRA configurations expect.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self, queries: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend from ``queries [B, Nq, D]`` to ``context [B, Nk, D]``.

        ``key_mask [B, Nk]`` is true (or 1) for real tokens; padding gets no attention.
        """
        q = self._split(self.q_proj(queries))
        k = self._split(self.k_proj(context))
        v = self._split(self.v_proj(context))
        attn_mask = None
        if key_mask is not None:
            valid = key_mask.bool()
            # An all-padding row would softmax over nothing (NaN); let it attend to all.
            valid = valid | ~valid.any(dim=1, keepdim=True)
            attn_mask = valid[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    """Position-wise MLP of a transformer block."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(x))))


class EncoderBlock(nn.Module):
    """Pre-norm self-attention block (pre-norm trains stably without warm-up)."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, hidden, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.dropout(self.attn(h, h, mask))
        return x + self.ff(self.norm2(x))


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``tokens [B, N, D]`` over real positions (``mask [B, N]``)."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
