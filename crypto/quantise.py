"""Clip and quantise floats to small signed integers with unbiased stochastic rounding."""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "MAX_QUANTISE_BITS",
    "MIN_QUANTISE_BITS",
    "Clip",
    "count_clipped",
    "dequantise",
    "quantise",
    "quantise_step",
]

Clip = float | np.ndarray
"""One bound for every value, or one bound per value (an array the shape of the values)."""

MIN_QUANTISE_BITS = 2
"""With one bit the symmetric range ``[-(2^0 - 1), 2^0 - 1]`` would be ``{0}``."""

MAX_QUANTISE_BITS = 32
"""Keeps offset values and their weighted sums comfortably inside 64-bit integers."""


def quantise_step(clip: Clip, bits: int) -> Clip:
    """Return the value of one quantisation level, ``clip / (2^(bits-1) - 1)``.

    It bounds the error of :func:`quantise` followed by :func:`dequantise` for one value,
    and therefore also of any weighted mean of such values.
    """
    return _check_clip_and_bits(clip, bits) / _max_level(bits)


def quantise(values: np.ndarray, clip: Clip, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Clip ``values`` to ``[-clip, clip]`` and map them to ints in ``[-L, L]``, ``L = 2^(b-1)-1``.

    Rounding is stochastic: ``x`` between levels ``k`` and ``k + 1`` becomes ``k + 1`` with
    probability equal to its fractional distance from ``k``. Hence
    ``E[dequantise(quantise(x))] == clip(x)``: the rounding noise averages out over clients
    and rounds instead of biasing the model towards zero as round-to-nearest of small
    updates would. The range is symmetric (``-2^(bits-1)`` is never used) so that zero is
    exact and the offset used for packing is the same for both signs.

    Parameters
    ----------
    values
        Real values of any shape; must be finite. A NaN or infinity usually means training
        diverged, and is refused rather than silently clipped.
    clip
        Positive clipping bound ``C``: a number, or an array of per-value bounds with the
        shape of ``values`` (per-tensor clipping, expanded by the caller).
    bits
        Width of the signed result, 2 to 32.
    rng
        Source of the rounding randomness (seed it for reproducible tests).

    Returns
    -------
    numpy.ndarray
        ``int64`` array with the shape of ``values``.

    Raises
    ------
    TypeError
        If ``rng`` is not a ``numpy.random.Generator`` or ``values`` is not numeric.
    ValueError
        If ``clip`` or ``bits`` is out of range or ``values`` holds a non-finite number.
    """
    clip = _check_clip_and_bits(clip, bits)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"values must be real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array.ravel()))[0])
        raise ValueError(f"values must be finite; flat index {bad} is {array.ravel()[bad]}")
    _check_shape(clip, array.shape)
    levels = _max_level(bits)
    scaled = np.clip(array, -clip, clip) * (levels / clip)
    floor = np.floor(scaled)
    rounded = floor + (rng.random(scaled.shape) < (scaled - floor))
    # Float error in the scaling may land a hair outside [-L, L]; the true value cannot.
    clipped: np.ndarray = np.clip(rounded, -levels, levels).astype(np.int64)
    return clipped


def dequantise(q: np.ndarray, clip: Clip, bits: int) -> np.ndarray:
    """Map integers from :func:`quantise` back to floats: ``q * clip / (2^(bits-1) - 1)``.

    Also accepts sums of quantised values (they dequantise to sums of floats), which is
    how :class:`crypto.codec.SlotCodec` recovers a weighted sum before dividing by the
    total weight.

    Raises
    ------
    TypeError
        If ``q`` is not an integer array.
    ValueError
        If ``clip`` or ``bits`` is out of range.
    """
    clip = _check_clip_and_bits(clip, bits)
    array = np.asarray(q)
    if array.dtype.kind not in "iu":
        raise TypeError(f"quantised values must be integers, got dtype {array.dtype}")
    _check_shape(clip, array.shape)
    return array.astype(np.float64) * (clip / _max_level(bits))


def count_clipped(values: np.ndarray, clip: Clip) -> int:
    """How many of ``values`` lie outside ``[-clip, clip]``: what :func:`quantise` would cut.

    Reported with each update so an operator sees when bounds are too tight.
    """
    array = np.asarray(values, dtype=np.float64)
    bound = _check_clip(clip)
    _check_shape(bound, array.shape)
    return int(np.count_nonzero(np.abs(array) > bound))


def _max_level(bits: int) -> int:
    return int(2 ** (bits - 1) - 1)


def _check_shape(clip: Clip, shape: tuple[int, ...]) -> None:
    if isinstance(clip, np.ndarray) and clip.shape != shape:
        raise ValueError(f"per-value clip bounds have shape {clip.shape}, the values {shape}")


def _check_clip(clip: Clip) -> Clip:
    """Validate a scalar or per-value bound; arrays come back as float64."""
    if isinstance(clip, np.ndarray):
        if clip.dtype.kind not in "iuf":
            raise TypeError(f"clip bounds must be real numbers, got dtype {clip.dtype}")
        bounds = clip.astype(np.float64, copy=False)
        if bounds.size and not (np.all(np.isfinite(bounds)) and np.all(bounds > 0)):
            raise ValueError("every clip bound must be a positive finite number")
        return bounds
    if not isinstance(clip, int | float | np.floating | np.integer) or isinstance(clip, bool):
        raise TypeError(f"clip must be a real number, got {type(clip).__name__}")
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a positive finite number, got {clip}")
    return clip


def _check_clip_and_bits(clip: Clip, bits: int) -> Clip:
    if not isinstance(bits, int | np.integer) or isinstance(bits, bool):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if not MIN_QUANTISE_BITS <= bits <= MAX_QUANTISE_BITS:
        raise ValueError(
            f"bits must be between {MIN_QUANTISE_BITS} and {MAX_QUANTISE_BITS}, got {bits}"
        )
    return _check_clip(clip)
