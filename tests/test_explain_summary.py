"""AttributionSummary: validation, JSON round trip and noise with the stated scale."""

from __future__ import annotations

import json

import numpy as np
import pytest

from explain.summary import AttributionSummary, add_noise


def _summary(n_features: int = 3, **overrides: object) -> AttributionSummary:
    fields: dict[str, object] = {
        "site": "st-marys",
        "kind": "tabular",
        "feature_names": [f"f{i}" for i in range(n_features)],
        "class_names": ["no", "yes"],
        "mean_abs": [0.1 * (i + 1) for i in range(n_features)],
        "mean_signed": {"no": [-0.05] * n_features, "yes": [0.05] * n_features},
        "row_count": 40,
        "base_value": [0.3, 0.7],
        "noise_scale": 0.0,
        "explainer": "test",
    }
    fields.update(overrides)
    return AttributionSummary(**fields)  # type: ignore[arg-type]


def test_summary_round_trips_through_json() -> None:
    summary = _summary()

    restored = AttributionSummary.from_json(summary.to_json())

    assert restored == summary


def test_summary_json_holds_no_more_than_the_declared_fields() -> None:
    payload = json.loads(_summary().to_json())

    assert set(payload) == {
        "site",
        "kind",
        "feature_names",
        "class_names",
        "mean_abs",
        "mean_signed",
        "row_count",
        "base_value",
        "noise_scale",
        "explainer",
    }


def test_held_out_metrics_are_the_only_optional_field_a_summary_may_add() -> None:
    from dataclasses import replace

    payload = json.loads(replace(_summary(), holdout_metrics={"accuracy": 0.9}).to_json())

    assert set(payload) - {"holdout_metrics"} == set(json.loads(_summary().to_json()))
    assert payload["holdout_metrics"] == {"accuracy": 0.9}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mean_abs": [0.1, 0.2]}, "mean_abs has 2 values"),
        ({"mean_signed": {"yes": [0.0] * 3}}, "mean_signed keys"),
        ({"row_count": 0}, "row_count"),
        ({"row_count": True}, "row_count"),
        ({"kind": "video"}, "kind"),
        ({"mean_abs": [0.1, float("nan"), 0.2]}, "non-finite"),
        ({"noise_scale": -1.0}, "noise_scale"),
        ({"feature_names": ["a", "a", "b"]}, "duplicates"),
        ({"site": ""}, "site"),
    ],
    ids=["short", "classes", "zero-rows", "bool-rows", "kind", "nan", "noise", "dupes", "site"],
)
def test_inconsistent_summary_is_rejected(change: dict[str, object], message: str) -> None:
    payload = {**_summary().to_dict(), **change}

    with pytest.raises(ValueError, match=message):
        AttributionSummary.from_dict(payload)


def test_from_dict_rejects_missing_and_unknown_fields() -> None:
    payload = _summary().to_dict()
    del payload["explainer"]
    payload["rows"] = [[1.0, 2.0, 3.0]]

    with pytest.raises(ValueError, match=r"missing fields \['explainer'\], unknown \['rows'\]"):
        AttributionSummary.from_dict(payload)


def test_malformed_json_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        AttributionSummary.from_json("{not json")


def test_noise_has_the_stated_scale_and_is_seeded() -> None:
    clean = _summary(n_features=4000)

    noisy = add_noise(clean, 0.05, seed=7)

    diff = np.asarray(noisy.mean_abs) - np.asarray(clean.mean_abs)
    assert noisy.noise_scale == pytest.approx(0.05)
    assert abs(diff.mean()) < 0.005
    assert diff.std() == pytest.approx(0.05, rel=0.05)
    signed = np.asarray(noisy.mean_signed["yes"]) - np.asarray(clean.mean_signed["yes"])
    assert signed.std() == pytest.approx(0.05, rel=0.05)
    assert noisy == add_noise(clean, 0.05, seed=7)
    assert noisy != add_noise(clean, 0.05, seed=8)


def test_zero_noise_leaves_the_summary_unchanged() -> None:
    clean = _summary()

    assert add_noise(clean, 0.0, seed=1) is clean


def test_negative_noise_scale_is_rejected() -> None:
    with pytest.raises(ValueError, match="noise scale"):
        add_noise(_summary(), -0.1, seed=0)


def test_shares_sum_to_one() -> None:
    shares = _summary().shares

    assert sum(shares) == pytest.approx(1.0)
    assert shares == pytest.approx([1 / 6, 2 / 6, 3 / 6])
