"""Transformer encoder classifier over token ids from :mod:`models.tokenizer`."""

from __future__ import annotations

import torch
from torch import nn

from models.attention import EncoderBlock, masked_mean


class TextEncoder(nn.Module):
    """Token + position embeddings followed by pre-norm encoder blocks.

    Returns one vector per token so that the multimodal model can let text tokens
    attend to image tokens between the blocks.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
        ff_dim: int | None = None,
        max_len: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.token_embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, heads, ff_dim or 4 * dim, dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings ``[B, L, D]``."""
        if input_ids.shape[1] > self.max_len:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds max_len {self.max_len}")
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.dropout(self.token_embedding(input_ids) + self.position_embedding(positions))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Contextual token vectors ``[B, L, D]``."""
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, attention_mask)
        return self.norm(x)


class TextTransformer(nn.Module):
    """Encoder, masked mean pooling, linear classifier.

    Parameters
    ----------
    vocab_size
        Rows of the embedding table (``WordTokenizer.vocab_size``).
    num_classes
        Number of output logits.
    dim, heads, layers, ff_dim, max_len, dropout
        Encoder shape; ``ff_dim`` defaults to ``4 * dim``.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
        ff_dim: int | None = None,
        max_len: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = TextEncoder(vocab_size, dim, heads, layers, ff_dim, max_len, dropout)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return logits ``[B, num_classes]`` for ``input_ids [B, L]``."""
        tokens = self.encoder(input_ids, attention_mask)
        return self.classifier(masked_mean(tokens, attention_mask))
