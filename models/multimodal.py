"""Multimodal classifier: a text encoder whose tokens cross-attend to image, audio, tabular."""

from __future__ import annotations

import torch
from torch import nn

from models.attention import masked_mean
from models.audio import AudioEncoder
from models.fusion import GatedCrossAttentionBlock
from models.image import ImageCNN
from models.text import TextEncoder


class MultimodalClassifier(nn.Module):
    """Fuse a clinical note with an image (and optionally audio and tabular features).

    Text is the query stream, as in Flamingo: before each text encoder block a gated
    cross-attention block lets the note's tokens read the other modalities' tokens
    (image patches of a CNN feature map, audio frames, one token for the tabular row).
    The pooled text tokens feed the classifier.

    Parameters
    ----------
    vocab_size
        Rows of the token embedding table.
    num_classes
        Number of output logits.
    dim, heads, layers, ff_dim, max_len, dropout
        Shape of the text encoder (and of the fusion blocks, one per text block).
    image_channels
        Channels of the input image; 0 disables the image branch.
    image_widths
        Residual stage widths of the image CNN.
    audio
        Whether to build an audio branch (``audio [B, T]`` waveforms at 8 kHz).
    tabular_features
        Width of an optional tabular input ``tabular [B, F]``; 0 disables it.
    gated
        ``True`` for tanh gates starting at 0 (Flamingo), ``False`` for ungated fusion.
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
        image_channels: int = 1,
        image_widths: tuple[int, ...] = (32, 64),
        audio: bool = False,
        tabular_features: int = 0,
        gated: bool = True,
    ) -> None:
        super().__init__()
        ff_dim = ff_dim or 4 * dim
        self.text = TextEncoder(vocab_size, dim, heads, layers, ff_dim, max_len, dropout)
        self.fusion = nn.ModuleList(
            GatedCrossAttentionBlock(dim, heads, ff_dim, dropout, gated) for _ in range(layers)
        )
        self.image: ImageCNN | None = None
        self.audio: AudioEncoder | None = None
        self.tabular: nn.Module | None = None
        if image_channels:
            self.image = ImageCNN(image_channels, 0, image_widths, dropout)
            self.image_proj = nn.Linear(self.image.out_channels, dim)
            self.image_position = nn.Parameter(torch.zeros(1, 64, dim))
        if audio:
            self.audio = AudioEncoder(0, width=dim, dropout=dropout)
            self.audio_proj = nn.Linear(dim, dim)
        if tabular_features:
            self.tabular = nn.Sequential(nn.Linear(tabular_features, dim), nn.GELU())
        self.classifier = nn.Linear(dim, num_classes)

    def media_tokens(
        self,
        image: torch.Tensor | None,
        audio: torch.Tensor | None,
        tabular: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """Concatenate the non-text modalities' tokens ``[B, M, D]`` (None if none given)."""
        parts = []
        if image is not None:
            if self.image is None:
                raise ValueError("image given but the model was built with image_channels=0")
            grid = self.image.features(image).flatten(2).transpose(1, 2)
            if grid.shape[1] > self.image_position.shape[1]:
                raise ValueError(f"image gives {grid.shape[1]} patches; at most 64 supported")
            parts.append(self.image_proj(grid) + self.image_position[:, : grid.shape[1]])
        if audio is not None:
            if self.audio is None:
                raise ValueError("audio given but the model was built with audio=False")
            parts.append(self.audio_proj(self.audio.tokens(audio)))
        if tabular is not None:
            if self.tabular is None:
                raise ValueError("tabular given but the model was built with tabular_features=0")
            parts.append(self.tabular(tabular).unsqueeze(1))
        return torch.cat(parts, dim=1) if parts else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        tabular: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return logits ``[B, num_classes]``; missing modalities are simply skipped."""
        media = self.media_tokens(image, audio, tabular)
        x = self.text.embed(input_ids)
        for fusion, block in zip(self.fusion, self.text.blocks, strict=True):
            if media is not None:
                x = fusion(x, media)
            x = block(x, attention_mask)
        tokens = self.text.norm(x)
        return self.classifier(masked_mean(tokens, attention_mask))
