"""Explain a seeded sample of a site's held-out rows and state the confidence interval it buys.

Exact-enough SHAP values cost a fixed number of model evaluations per explained row
(PermutationExplainer: ``max_evals x background``), so an audit of every held-out row
grows without bound. The released statistics are *means over rows* (``mean_abs``,
``mean_signed``), and a mean over a simple random sample is an unbiased estimate of the
mean over all rows, with a standard error the sample itself measures. So the audit
explains a stated sample and says how close its means are to the all-rows means (a
Student-t interval with the finite-population correction, Cochran, *Sampling
Techniques*, 3rd ed., 1977, ch. 2): cost bounded by the sample size, accuracy stated.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def sample_index(population: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a simple random sample of ``min(size, population)`` rows."""
    if size < 1:
        raise ValueError(f"the explained sample must be >= 1 rows, got {size}")
    if population < 1:
        raise ValueError("no rows to audit")
    if size >= population:
        return np.arange(population)
    return np.sort(rng.choice(population, size=size, replace=False))


def mean_abs_halfwidth(
    values: np.ndarray, population: int, level: float = CONFIDENCE
) -> np.ndarray:
    """Half-width, per feature, of the ``level`` interval of ``mean_abs`` over ``population``.

    ``values`` are the sample's attributions ``[n, F, C]``; each row contributes
    ``mean_c |phi|`` to a feature's ``mean_abs``, so the interval is that of a sample mean.
    It is 0 when every row was explained (nothing was estimated) and ``inf`` for a
    sample of one row (no spread to measure).
    """
    if values.ndim != 3:
        raise ValueError(f"attributions must be [N, F, C], got shape {values.shape}")
    n = values.shape[0]
    if n > population:
        raise ValueError(f"a sample of {n} rows from a population of {population}")
    if n == population:
        return np.zeros(values.shape[1])
    if n < 2:
        return np.full(values.shape[1], np.inf)
    per_row = np.abs(values).mean(axis=2)
    fpc = np.sqrt((population - n) / (population - 1))
    t = float(stats.t.ppf(0.5 + level / 2, df=n - 1))
    return np.asarray(t * per_row.std(axis=0, ddof=1) / np.sqrt(n) * fpc)


def describe_sample(sampled: int, population: int, halfwidth: np.ndarray) -> str:
    """The sentence a report prints about which rows were explained and how exact it is."""
    if sampled >= population:
        return f"all {population} held-out rows explained"
    return (
        f"seeded sample of {sampled} of {population} held-out rows; "
        f"{100 * CONFIDENCE:.0f}% CI of each feature's mean |SHAP| within "
        f"±{float(np.max(halfwidth)):.2g}"
    )
