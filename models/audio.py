"""Audio classifier: log-mel spectrogram, 1-D convolutions over time, pooling."""

from __future__ import annotations

import torch
from torch import nn

from models.spectrogram import LogMelSpectrogram


class AudioEncoder(nn.Module):
    """Classify raw waveforms (e.g. auscultation or call-centre audio).

    Mel bands are the channels of 1-D convolutions over time, which is cheap on CPU
    and yields one vector per time step; the multimodal model uses those as tokens.

    Parameters
    ----------
    num_classes
        Number of output logits; 0 builds a feature extractor without a classifier.
    sample_rate, n_fft, hop_length, n_mels
        Spectrogram settings.
    width
        Channels of the convolutional layers (and the token size).
    dropout
        Dropout before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 2,
        sample_rate: int = 8000,
        n_fft: int = 256,
        hop_length: int = 128,
        n_mels: int = 32,
        width: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.spectrogram = LogMelSpectrogram(sample_rate, n_fft, hop_length, n_mels)
        # Normalises each mel band with statistics learned across sites, so that loud
        # and quiet recordings reach the convolutions on the same scale.
        self.input_norm = nn.BatchNorm1d(n_mels)
        self.conv = nn.Sequential(
            nn.Conv1d(n_mels, width, 3, padding=1),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes) if num_classes else None
        self.out_channels = width

    def tokens(self, audio: torch.Tensor) -> torch.Tensor:
        """One vector per (downsampled) time step: ``[B, frames, width]``."""
        features = self.input_norm(self.spectrogram(audio))
        return self.conv(features).transpose(1, 2)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Return logits ``[B, num_classes]`` for waveforms ``audio [B, T]``."""
        if self.classifier is None:
            raise ValueError("this AudioEncoder was built with num_classes=0 (features only)")
        return self.classifier(self.dropout(self.tokens(audio).mean(dim=1)))
