"""8-bit update compression for plaintext runs, on the same stochastic quantiser as the codec."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crypto.quantise import dequantise, quantise

__all__ = ["compress_update", "decompress_update"]

MIN_QUANTISED_SIZE = 256
"""Tensors smaller than this travel as float32.

They are biases and normaliser statistics: a few hundred bytes at most, and a variance
pushed below zero by one quantisation step would turn a BatchNorm into NaNs.
"""


def compress_update(
    deltas: Sequence[np.ndarray],
    bits: int,
    rng: np.random.Generator,
    min_size: int = MIN_QUANTISED_SIZE,
) -> list[np.ndarray]:
    """Quantise each large tensor to ``bits``-bit signed ints against its own max-abs scale.

    Returns the tensors (int8 for quantised ones, float32 for small ones) followed by one
    float32 vector of per-tensor scales (0 for tensors left in float32). Stochastic
    rounding keeps the update unbiased: the mean of many sites' updates converges to the
    mean of their float updates.
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be 2 to 8 to fit int8, got {bits}")
    out: list[np.ndarray] = []
    scales = np.zeros(len(deltas), dtype=np.float32)
    for index, delta in enumerate(deltas):
        values = np.asarray(delta, dtype=np.float64)
        scale = float(np.max(np.abs(values))) if values.size else 0.0
        if values.size < min_size or scale == 0.0 or not np.isfinite(scale):
            out.append(values.astype(np.float32))
            continue
        scales[index] = scale
        out.append(quantise(values, scale, bits, rng).astype(np.int8))
    return [*out, scales]


def decompress_update(arrays: Sequence[np.ndarray], bits: int) -> list[np.ndarray]:
    """Inverse of :func:`compress_update` (float32 tensors).

    Raises
    ------
    ValueError
        When the scales vector does not match the tensors, or a tensor's dtype does not
        match whether it has a scale.
    """
    if not arrays:
        raise ValueError("a compressed update holds at least its scales vector")
    *tensors, scales = arrays
    if scales.dtype != np.float32 or scales.shape != (len(tensors),):
        raise ValueError(f"expected {len(tensors)} float32 scales, got {scales.shape}")
    out = []
    for tensor, scale in zip(tensors, scales, strict=True):
        if scale > 0:
            if tensor.dtype != np.int8 or not np.isfinite(scale):
                raise ValueError("a scaled tensor must be int8 with a finite scale")
            out.append(dequantise(tensor.astype(np.int64), float(scale), bits).astype(np.float32))
        else:
            if tensor.dtype != np.float32:
                raise ValueError("an unscaled tensor must be float32")
            out.append(tensor)
    return out
