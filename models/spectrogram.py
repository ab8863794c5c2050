"""Log-mel spectrograms in plain torch (``torch.stft`` and a mel filterbank; no torchaudio)."""

from __future__ import annotations

import math

import torch
from torch import nn


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale: roughly linear below 1 kHz, logarithmic above, like pitch perception."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0) -> torch.Tensor:
    """Triangular filters ``[n_mels, n_fft // 2 + 1]`` evenly spaced on the mel scale."""
    f_max = sample_rate / 2.0
    bins = torch.linspace(0.0, f_max, n_fft // 2 + 1)
    mel_points = torch.linspace(
        float(hz_to_mel(torch.tensor(f_min))), float(hz_to_mel(torch.tensor(f_max))), n_mels + 2
    )
    hz_points = mel_to_hz(mel_points)
    lower, centre, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class LogMelSpectrogram(nn.Module):
    """Waveform ``[B, T]`` to log-mel features ``[B, n_mels, frames]``.

    Computed inside the model, on the training device, so that sites exchange raw
    audio-free weights only and every site featurises its audio identically.
    """

    window: torch.Tensor
    filterbank: torch.Tensor

    def __init__(
        self, sample_rate: int = 8000, n_fft: int = 256, hop_length: int = 128, n_mels: int = 32
    ) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer(
            "filterbank", mel_filterbank(n_mels, n_fft, sample_rate), persistent=False
        )

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a waveform of ``num_samples`` (centred STFT)."""
        return 1 + num_samples // self.hop_length

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            waveform.float(),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self.window,
            center=True,
            return_complex=True,
        )
        power = spec.abs() ** 2
        mel = torch.matmul(self.filterbank, power)
        return torch.log(mel + 1e-6) / math.log(10.0)
