"""A site's input standardisation under record-level DP: Gaussian-mechanism mean and variance.

Why: DP-SGD keeps a frozen BatchNorm normaliser in eval mode (batch statistics mix
examples and its running statistics would leave the site un-noised), so under DP the
tabular model used to train on its initial statistics (mean 0, variance 1), i.e. on the
raw log-scaled features (means up to ~6.6, spreads down to ~0.002): bench/dp.py then
predicted the majority class at every ε. With the true statistics the same DP-SGD run
scores 0.965 (ε = 8); with statistics released by this module it trains again.

How: two releases of the Gaussian mechanism (Dwork & Roth, "The Algorithmic Foundations
of Differential Privacy", 2014, Thm. A.1; RDP: Mironov, "Rényi Differential Privacy",
CSF 2017, Prop. 7), the clip-then-noise recipe of Ponomareva et al., "How to DP-fy ML"
(JAIR 2023, sec. 5.4 on private feature statistics):

1. each row clipped to L2 norm ``ROW_BOUND``; the noisy sum over rows, divided by the
   site's row count, is the mean (L2 sensitivity ``ROW_BOUND`` under add/remove);
2. each row's squared deviations from that released mean, clipped to L2 norm
   ``SQUARE_BOUND``; the noisy sum over the row count is the variance, floored at
   ``MIN_VARIANCE`` (the release can be negative for a near-constant feature).

Both bounds are fixed constants for ``log``-scaled features (``sign·log1p|x|``: a
value of 10^6 maps to 13.8), chosen before seeing any site's data. The row count itself
is not noised: it divides here, at the site, and is not sent (a DP run's update withholds
it, client/tasks.py ``withheld``); the DP sample rate in the ledger tells it to a batch.
Each release has sensitivity 1 in units of its noise (``noise_multiplier · bound``),
so the pair is the ledger's ``{"kind": "gaussian", "count": 2}`` event and the Opacus
accountant's ``(noise_multiplier, 1.0, 2)`` history entry (sample rate 1: no subsampling).
The FedAvg of the sites' released statistics (each site weight 1 under DP) becomes the
federation's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ROW_BOUND = 20.0
SQUARE_BOUND = 4.0
MIN_VARIANCE = 1e-2
RELEASES = 2
STATS_SHARE = 0.3
"""Part of a run's ε the statistics may cost (0.3 beat 0.15 and 0.5 in bench/dp.py at ε = 8)."""


def stats_event(noise_multiplier: float) -> dict[str, Any]:
    """The ledger event of one site's two statistics releases."""
    return {"kind": "gaussian", "noise_multiplier": noise_multiplier, "count": RELEASES}


def stats_history(noise_multiplier: float) -> tuple[float, float, int]:
    """The same releases as an Opacus accountant history entry."""
    return (noise_multiplier, 1.0, RELEASES)


def _clip_rows(rows: np.ndarray, bound: float) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows * np.minimum(1.0, bound / np.maximum(norms, 1e-12))


def private_standardiser(
    x: np.ndarray, noise_multiplier: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (mean, variance) of ``x`` under the Gaussian mechanism (module docstring).

    Raises
    ------
    ValueError
        On an empty ``x`` or a non-positive ``noise_multiplier`` (no un-noised release).
    """
    if x.ndim != 2 or len(x) == 0:
        raise ValueError("the private standardiser needs a non-empty 2-D array of rows")
    if not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier must be positive, got {noise_multiplier}")
    rows = np.asarray(x, dtype=np.float64)
    n, width = rows.shape
    total = _clip_rows(rows, ROW_BOUND).sum(axis=0)
    mean = (total + rng.normal(0.0, noise_multiplier * ROW_BOUND, width)) / n
    squares = _clip_rows((rows - mean) ** 2, SQUARE_BOUND).sum(axis=0)
    variance = (squares + rng.normal(0.0, noise_multiplier * SQUARE_BOUND, width)) / n
    return mean.astype(np.float32), np.maximum(variance, MIN_VARIANCE).astype(np.float32)
