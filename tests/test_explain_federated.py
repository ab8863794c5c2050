"""Merging site attributions by row count, and flagging a site whose ranking departs."""

from __future__ import annotations

import pytest

from explain.federated import compare_sites, merge_summaries
from explain.summary import AttributionSummary

FEATURES = ["age", "income", "debt", "tenure", "region"]


def _site(name: str, mean_abs: list[float], rows: int, **overrides: object) -> AttributionSummary:
    fields: dict[str, object] = {
        "site": name,
        "kind": "tabular",
        "feature_names": FEATURES[: len(mean_abs)],
        "class_names": ["no", "yes"],
        "mean_abs": mean_abs,
        "mean_signed": {"no": [-v for v in mean_abs], "yes": list(mean_abs)},
        "row_count": rows,
        "base_value": [0.5, 0.5],
        "explainer": "test",
    }
    fields.update(overrides)
    return AttributionSummary(**fields)  # type: ignore[arg-type]


def test_merge_weights_each_site_by_its_row_count() -> None:
    a = _site("a", [1.0, 0.0], rows=100, base_value=[0.2, 0.8])
    b = _site("b", [0.0, 1.0], rows=300, base_value=[0.6, 0.4])

    merged = merge_summaries([a, b])

    # (100 * 1 + 300 * 0) / 400 = 0.25; (100 * 0 + 300 * 1) / 400 = 0.75
    assert merged.mean_abs == pytest.approx([0.25, 0.75])
    assert merged.mean_signed["no"] == pytest.approx([-0.25, -0.75])
    assert merged.base_value == pytest.approx([0.5, 0.5])
    assert merged.row_count == 400
    assert merged.sites == ["a", "b"]
    assert merged.ranking() == ["income", "age"]


def test_merge_refuses_different_feature_names() -> None:
    a = _site("a", [1.0, 0.5], rows=10)
    b = _site("b", [1.0, 0.5], rows=10, feature_names=["age", "postcode"])

    with pytest.raises(ValueError, match="reports features"):
        merge_summaries([a, b])


def test_merge_refuses_a_site_reported_twice() -> None:
    a = _site("a", [1.0, 0.5], rows=10)

    with pytest.raises(ValueError, match="more than one summary"):
        merge_summaries([a, a])


def test_merge_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no attribution summaries"):
        merge_summaries([])


def test_site_with_reversed_ranking_is_flagged_and_others_are_not() -> None:
    profile = [0.5, 0.4, 0.3, 0.2, 0.1]
    sites = [
        _site("a", profile, rows=100),
        _site("b", [0.52, 0.38, 0.31, 0.19, 0.1], rows=80),
        _site("c", [0.48, 0.41, 0.28, 0.21, 0.09], rows=120),
        _site("reversed", profile[::-1], rows=90),
    ]

    comparisons = {c.site: c for c in compare_sites(sites, threshold=0.5)}

    assert comparisons["reversed"].flagged
    assert comparisons["reversed"].rank_correlation == pytest.approx(-1.0)
    assert [comparisons[s].flagged for s in "abc"] == [False, False, False]
    assert all(comparisons[s].rank_correlation > 0.9 for s in "abc")  # type: ignore[operator]
    top = comparisons["reversed"].top_shifts[0]
    assert top.feature in {"age", "region"}
    assert top.shift == pytest.approx(top.site_value - top.rest_value)


def test_single_site_has_nothing_to_compare() -> None:
    assert compare_sites([_site("a", [0.3, 0.2, 0.1], rows=5)]) == []


def test_threshold_outside_correlation_range_is_rejected() -> None:
    sites = [_site("a", [0.3, 0.2, 0.1], rows=5), _site("b", [0.3, 0.2, 0.1], rows=5)]

    with pytest.raises(ValueError, match="threshold"):
        compare_sites(sites, threshold=2.0)
