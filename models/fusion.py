"""Tanh-gated cross-attention (Flamingo): text tokens read from image/audio/tabular tokens."""

from __future__ import annotations

import torch
from torch import nn

from models.attention import FeedForward, MultiHeadAttention


class TanhGate(nn.Module):
    """Scale a residual branch by ``tanh(alpha)``, ``alpha`` starting at 0.

    A module rather than a bare parameter so that LoRA can keep gates trainable and
    exchanged (peft ``modules_to_save`` works on modules).
    """

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.alpha) * x


class GatedCrossAttentionBlock(nn.Module):
    """Cross-attention and feed-forward sublayers, each scaled by a :class:`TanhGate`.

    The gates start at 0 (Alayrac et al., Flamingo, 2022): at initialisation the block
    is the identity, so the text pathway behaves exactly as without fusion and the other
    modalities are blended in only as fast as training finds them useful. With
    ``gated=False`` the sublayers are added at full strength from the first step, the
    usual ungated baseline.

    Parameters
    ----------
    dim, heads, ff_dim, dropout
        Shape of the attention and feed-forward sublayers.
    gated
        Whether to scale the residual branches by learned ``tanh`` gates.
    """

    def __init__(
        self, dim: int, heads: int, ff_dim: int, dropout: float = 0.0, gated: bool = True
    ) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, heads, dropout)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, ff_dim, dropout)
        self.attn_gate: nn.Module = TanhGate() if gated else nn.Identity()
        self.ff_gate: nn.Module = TanhGate() if gated else nn.Identity()

    def forward(
        self, text: torch.Tensor, media: torch.Tensor, media_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return updated ``text [B, L, D]`` after attending to ``media [B, M, D]``."""
        attended = self.cross_attn(self.norm_q(text), self.norm_kv(media), media_mask)
        text = text + self.attn_gate(attended)
        return text + self.ff_gate(self.ff(self.norm_ff(text)))
