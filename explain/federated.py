"""Federation-wide view of site attributions: a weighted merge and a site-vs-rest comparison."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from explain.summary import AttributionSummary


@dataclass(frozen=True)
class GlobalAttribution:
    """Row-count-weighted mean of the site summaries: what the model relies on overall.

    Each site counts in proportion to the rows it explained, so the result equals the
    summary a single audit over all sites' rows would give (up to sampling noise), without
    any row leaving its site.
    """

    kind: str
    feature_names: list[str]
    class_names: list[str]
    mean_abs: list[float]
    mean_signed: dict[str, list[float]]
    base_value: list[float]
    row_count: int
    sites: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def ranking(self) -> list[str]:
        """Feature names, most important first."""
        order = np.argsort(-np.asarray(self.mean_abs), kind="stable")
        return [self.feature_names[i] for i in order]


@dataclass(frozen=True)
class FeatureShift:
    """One feature whose importance at a site differs from the rest of the federation."""

    feature: str
    site_value: float
    rest_value: float

    @property
    def shift(self) -> float:
        return self.site_value - self.rest_value


@dataclass(frozen=True)
class SiteComparison:
    """How one site's importance profile compares with the row-weighted rest.

    ``rank_correlation`` is Spearman's rho between the site's ``mean_abs`` and the rest's;
    ``None`` when undefined (fewer than three features, or a constant profile). A site is
    ``flagged`` when rho is below the threshold: its model explanations rank features
    differently, which points at a different population, a data-pipeline fault or a
    label shift at that site, and deserves a look before the model is relied on there.
    """

    site: str
    rank_correlation: float | None
    top_shifts: list[FeatureShift]
    flagged: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "rank_correlation": self.rank_correlation,
            "top_shifts": [
                {
                    "feature": s.feature,
                    "site_value": s.site_value,
                    "rest_value": s.rest_value,
                    "shift": s.shift,
                }
                for s in self.top_shifts
            ],
            "flagged": self.flagged,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class RejectedSummary:
    """A site's audit summary left out of the report, and why (shown in the report)."""

    site: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"site": self.site, "reason": self.reason}


def compatible_summaries(
    summaries: Sequence[AttributionSummary],
) -> tuple[list[AttributionSummary], list[RejectedSummary]]:
    """Split summaries into ones that can be merged and ones that cannot, with reasons.

    A site's second summary is rejected (it would count double). Of the rest, the largest
    group that agrees on kind, feature names and class names is kept (ties: the group of
    the earliest summary); every other summary is rejected naming how it differs. So a
    single site cannot make the federation's report fail by sending other features.
    """
    kept_once: list[AttributionSummary] = []
    rejected: list[RejectedSummary] = []
    seen: set[str] = set()
    for summary in summaries:
        if summary.site in seen:
            rejected.append(RejectedSummary(summary.site, "a second summary from this site"))
            continue
        seen.add(summary.site)
        kept_once.append(summary)
    groups: dict[tuple[Any, ...], list[AttributionSummary]] = {}
    for summary in kept_once:
        key = (summary.kind, tuple(summary.feature_names), tuple(summary.class_names))
        groups.setdefault(key, []).append(summary)
    if not groups:
        return [], rejected
    best = max(groups.values(), key=len)  # max keeps the first of equal-sized groups
    reference = best[0]
    for summary in kept_once:
        if summary in best:
            continue
        if summary.kind != reference.kind:
            why = f"a {summary.kind} audit; the others ran {reference.kind}"
        elif summary.feature_names != reference.feature_names:
            why = (
                f"reports {len(summary.feature_names)} features that differ from the "
                f"{len(reference.feature_names)} the other sites report"
            )
        else:
            why = f"reports classes {summary.class_names}; the others {reference.class_names}"
        rejected.append(RejectedSummary(summary.site, why))
    return list(best), rejected


def merge_summaries(summaries: Sequence[AttributionSummary]) -> GlobalAttribution:
    """Weighted mean of every statistic, weights being each site's ``row_count``.

    Raises
    ------
    ValueError
        When there are no summaries, a site appears twice (it would count double), or the
        summaries disagree on kind, feature names or class names (their numbers would not
        refer to the same things).
    """
    if not summaries:
        raise ValueError("no attribution summaries to merge")
    first = summaries[0]
    names = [s.site for s in summaries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"site(s) {duplicates} submitted more than one summary")
    for s in summaries[1:]:
        if s.feature_names != first.feature_names:
            raise ValueError(
                f"site {s.site!r} reports features {s.feature_names}, "
                f"site {first.site!r} reports {first.feature_names}"
            )
        if s.class_names != first.class_names:
            raise ValueError(
                f"site {s.site!r} reports classes {s.class_names}, "
                f"site {first.site!r} reports {first.class_names}"
            )
        if s.kind != first.kind:
            raise ValueError(f"site {s.site!r} ran a {s.kind} audit, {first.site!r} a {first.kind}")
    weights = np.asarray([s.row_count for s in summaries], dtype=float)
    return GlobalAttribution(
        kind=first.kind,
        feature_names=list(first.feature_names),
        class_names=list(first.class_names),
        mean_abs=_weighted([s.mean_abs for s in summaries], weights),
        mean_signed={
            c: _weighted([s.mean_signed[c] for s in summaries], weights) for c in first.class_names
        },
        base_value=_weighted([s.base_value for s in summaries], weights),
        row_count=int(weights.sum()),
        sites=names,
    )


def compare_sites(
    summaries: Sequence[AttributionSummary], *, threshold: float = 0.5, top_k: int = 3
) -> list[SiteComparison]:
    """Compare each site with the row-weighted merge of all the other sites.

    Leave-one-out, rather than site vs global, so that a large site cannot hide its own
    deviation by dominating the reference it is compared against.

    Parameters
    ----------
    summaries
        At least two; with one site there is nothing to compare and ``[]`` is returned.
    threshold
        A site is flagged when Spearman's rho of its ``mean_abs`` against the rest's is
        below this value (rho = 1: same ranking, 0: unrelated, -1: reversed).
    top_k
        How many of the largest absolute shifts in ``mean_abs`` to report per site.

    Raises
    ------
    ValueError
        As :func:`merge_summaries`, or when ``threshold`` is outside ``[-1, 1]``.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a correlation in [-1, 1], got {threshold}")
    if len(summaries) < 2:
        merge_summaries(summaries)  # still validate what was given
        return []
    merge_summaries(summaries)
    comparisons = []
    for i, site in enumerate(summaries):
        rest = merge_summaries([s for j, s in enumerate(summaries) if j != i])
        mine = np.asarray(site.mean_abs)
        theirs = np.asarray(rest.mean_abs)
        rho = _spearman(mine, theirs)
        order = np.argsort(-np.abs(mine - theirs), kind="stable")[:top_k]
        shifts = [
            FeatureShift(site.feature_names[k], float(mine[k]), float(theirs[k])) for k in order
        ]
        if rho is None:
            flagged, reason = False, "rank correlation undefined (too few or constant features)"
        elif rho < threshold:
            flagged, reason = True, f"rank correlation {rho:.2f} < threshold {threshold:.2f}"
        else:
            flagged, reason = False, f"rank correlation {rho:.2f} >= threshold {threshold:.2f}"
        comparisons.append(SiteComparison(site.site, rho, shifts, flagged, reason))
    return comparisons


def _weighted(vectors: Sequence[Sequence[float]], weights: np.ndarray) -> list[float]:
    stacked = np.asarray(vectors, dtype=float)
    return (weights @ stacked / weights.sum()).tolist()


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    rho = float(spearmanr(a, b).statistic)
    # Rounding can put a perfect correlation a hair outside [-1, 1].
    return min(1.0, max(-1.0, rho)) if math.isfinite(rho) else None
