"""The attribution summary a site may release: aggregate SHAP statistics, never rows."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

KINDS = ("tabular", "image", "text", "multimodal")

_FIELDS = (
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
)
# Optional: older sites send summaries without it.
_OPTIONAL = ("holdout_metrics",)
MAX_HOLDOUT_METRICS = 32


@dataclass(frozen=True)
class AttributionSummary:
    """What one site tells the federation about how the final model uses its data.

    Only statistics over all explained rows leave the site: no row, no per-row attribution
    and no prediction. Construction validates every field, so a summary that exists is a
    summary that can be merged.

    Attributes
    ----------
    site
        Name of the institution that ran the audit.
    kind
        ``"tabular"``, ``"image"``, ``"text"`` or ``"multimodal"``.
    feature_names
        What each attribution refers to: a column, an image region (``region_r_c``), a
        token position bucket (``tokens_a_b``) or a modality.
    class_names
        The model outputs that were explained, in output order.
    mean_abs
        Per feature, the mean over rows and classes of ``|SHAP value|``: the global
        importance. Units are class probability.
    mean_signed
        Per class, per feature, the mean SHAP value over rows: the direction of the effect.
    row_count
        Number of explained rows; the weight of this site when summaries are merged.
    base_value
        Per class, the expected model output over the background data.
    noise_scale
        Standard deviation of the Gaussian noise added to every released statistic
        (0 when none). Recorded so a reader knows how far to trust small differences.
    explainer
        The SHAP algorithm and its settings, for provenance.
    """

    site: str
    kind: str
    feature_names: list[str]
    class_names: list[str]
    mean_abs: list[float]
    mean_signed: dict[str, list[float]]
    row_count: int
    base_value: list[float]
    noise_scale: float = 0.0
    explainer: str = field(default="")
    # The final model scored on the same held-out rows (accuracy, loss, …): the site's own
    # view of how well the federated model serves it. Aggregates only, like the rest.
    holdout_metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready plain dict (lists copied, so callers may mutate it)."""
        return {
            "site": self.site,
            "kind": self.kind,
            "feature_names": list(self.feature_names),
            "class_names": list(self.class_names),
            "mean_abs": list(self.mean_abs),
            "mean_signed": {name: list(values) for name, values in self.mean_signed.items()},
            "row_count": self.row_count,
            "base_value": list(self.base_value),
            "noise_scale": self.noise_scale,
            "explainer": self.explainer,
            # Only when measured: a summary without them releases nothing more than before.
            **({"holdout_metrics": dict(self.holdout_metrics)} if self.holdout_metrics else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttributionSummary:
        """Parse a summary received from a site.

        Raises
        ------
        ValueError
            When a field is missing, unknown, of the wrong type or inconsistent with the
            others. A summary comes from outside the coordinator, so every problem with its
            content is reported as bad input rather than as a programming error.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"attribution summary must be an object, got {type(data).__name__}")
        missing = [name for name in _FIELDS if name not in data]
        unknown = sorted(set(data) - set(_FIELDS) - set(_OPTIONAL))
        if missing or unknown:
            raise ValueError(f"attribution summary: missing fields {missing}, unknown {unknown}")
        signed = data["mean_signed"]
        if not isinstance(signed, Mapping):
            raise ValueError("attribution summary: mean_signed must be an object of lists")
        return cls(
            site=_str(data["site"], "site"),
            kind=_str(data["kind"], "kind"),
            feature_names=_str_list(data["feature_names"], "feature_names"),
            class_names=_str_list(data["class_names"], "class_names"),
            mean_abs=_float_list(data["mean_abs"], "mean_abs"),
            mean_signed={
                _str(k, "mean_signed key"): _float_list(v, f"mean_signed[{k!r}]")
                for k, v in signed.items()
            },
            row_count=data["row_count"],  # checked in __post_init__
            base_value=_float_list(data["base_value"], "base_value"),
            noise_scale=_float(data["noise_scale"], "noise_scale"),
            explainer=_str(data["explainer"], "explainer"),
            holdout_metrics=_metrics(data.get("holdout_metrics", {})),
        )

    def to_json(self) -> str:
        """Serialise compactly: this is the payload that leaves the site."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> AttributionSummary:
        """Parse :meth:`to_json` output; ``ValueError`` on malformed JSON or content."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"attribution summary is not valid JSON: {err}") from err
        return cls.from_dict(data)

    @property
    def shares(self) -> list[float]:
        """``mean_abs`` normalised to sum to 1: each feature's share of the attribution.

        This is the natural reading for multimodal audits (how much of the decision rests
        on the image, the text, ...). Negative noisy values count as zero here.
        """
        clipped = np.clip(np.asarray(self.mean_abs, dtype=float), 0.0, None)
        total = float(clipped.sum())
        if total == 0.0:
            return [0.0] * len(self.mean_abs)
        return (clipped / total).tolist()


def add_noise(summary: AttributionSummary, scale: float, seed: int) -> AttributionSummary:
    """Return a copy with Gaussian noise of standard deviation ``scale`` on every statistic.

    ``mean_abs``, every ``mean_signed`` vector and ``base_value`` are perturbed
    independently; ``row_count`` is not (it is already public round metadata). The noise
    blurs what a single site's summary says about its population; it is a stated,
    reproducible perturbation and not, by itself, a calibrated differential-privacy
    guarantee. Noisy ``mean_abs`` values may fall slightly below zero: they are left so,
    because clipping would bias the merged means.

    Raises
    ------
    ValueError
        When ``scale`` is negative or not finite.
    """
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"noise scale must be a finite number >= 0, got {scale}")
    if scale == 0:
        return summary
    rng = np.random.default_rng(seed)

    def noisy(values: Sequence[float]) -> list[float]:
        return (np.asarray(values, dtype=float) + rng.normal(0.0, scale, len(values))).tolist()

    return replace(
        summary,
        mean_abs=noisy(summary.mean_abs),
        mean_signed={name: noisy(v) for name, v in summary.mean_signed.items()},
        base_value=noisy(summary.base_value),
        # Independent noises add in variance.
        noise_scale=math.hypot(summary.noise_scale, scale),
    )


# A row's released attribution vector (its mean |phi| per feature, then phi per class and
# feature, in class-probability units) is clipped to this L2 norm before averaging. Fixed
# before any data is seen; a row's exact Shapley values for one class sum to
# f(x) - f(baseline), at most 1 in absolute value, so typical rows are not clipped.
ATTRIBUTION_CLIP = 1.0


def private_statistics(
    values: np.ndarray,
    class_names: Sequence[str],
    noise_multiplier: float,
    rng: np.random.Generator,
    clip: float = ATTRIBUTION_CLIP,
) -> tuple[list[float], dict[str, list[float]], float]:
    """``mean_abs`` and ``mean_signed`` of ``[N, F, C]`` attributions with the Gaussian mechanism.

    Each row's vector ``r = (mean_c |phi_c|, phi_1, ..., phi_C)`` (``F + C F`` values) is
    clipped to L2 norm ``clip``; the released statistics are the mean of the clipped
    vectors plus Gaussian noise of standard deviation ``sigma = noise_multiplier * 2 *
    clip / N`` on every value. Replacing one explained row moves the mean by at most
    ``2 clip / N`` in L2 (``N``, the number of explained rows, is public: the summary's
    ``row_count``), so this is the Gaussian mechanism (Dwork & Roth, "The Algorithmic
    Foundations of Differential Privacy", 2014, Thm. A.1) at that sensitivity, accounted
    by RDP (Mironov, CSF 2017) in the site's ledger as a ``gaussian`` event of
    ``noise_multiplier``. The attributions must depend on the explained rows alone (a
    public baseline, never a background of other private rows: client/dp_audit.py).

    Returns the noisy ``mean_abs``, ``mean_signed`` and ``sigma``.
    """
    if values.ndim != 3 or values.shape[2] != len(class_names) or not len(values):
        raise ValueError(f"attributions must be [N, F, {len(class_names)}], got {values.shape}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0 and clip > 0):
        raise ValueError("the noise multiplier and clip must be positive")
    rows, features, classes = values.shape
    vectors = np.concatenate(
        [np.abs(values).mean(axis=2), values.transpose(0, 2, 1).reshape(rows, -1)], axis=1
    )
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    clipped = vectors * np.minimum(1.0, clip / np.maximum(norms, 1e-300))
    sigma = noise_multiplier * 2.0 * clip / rows
    noisy = clipped.mean(axis=0) + rng.normal(0.0, sigma, clipped.shape[1])
    signed = noisy[features:].reshape(classes, features)
    return (
        noisy[:features].tolist(),
        {name: signed[i].tolist() for i, name in enumerate(class_names)},
        float(sigma),
    )


def _validate(s: AttributionSummary) -> None:
    if not isinstance(s.site, str) or not s.site:
        raise ValueError("attribution summary: site must be a non-empty string")
    if s.kind not in KINDS:
        raise ValueError(f"attribution summary: kind must be one of {KINDS}, got {s.kind!r}")
    n_features = len(s.feature_names)
    if n_features == 0:
        raise ValueError("attribution summary: feature_names is empty")
    if len(set(s.feature_names)) != n_features:
        raise ValueError("attribution summary: feature_names has duplicates")
    if not s.class_names or len(set(s.class_names)) != len(s.class_names):
        raise ValueError("attribution summary: class_names must be non-empty and unique")
    _check_vector(s.mean_abs, n_features, "mean_abs")
    if list(s.mean_signed) != list(s.class_names):
        raise ValueError(
            f"attribution summary: mean_signed keys {list(s.mean_signed)} "
            f"must be the class names {s.class_names} in order"
        )
    for name, values in s.mean_signed.items():
        _check_vector(values, n_features, f"mean_signed[{name!r}]")
    _check_vector(s.base_value, len(s.class_names), "base_value")
    if isinstance(s.row_count, bool) or not isinstance(s.row_count, int) or s.row_count < 1:
        raise ValueError(
            f"attribution summary: row_count must be an integer >= 1, got {s.row_count!r}"
        )
    if not isinstance(s.noise_scale, int | float) or not math.isfinite(s.noise_scale):
        raise ValueError(f"attribution summary: noise_scale must be finite, got {s.noise_scale!r}")
    if s.noise_scale < 0:
        raise ValueError(f"attribution summary: noise_scale must be >= 0, got {s.noise_scale}")
    if not isinstance(s.explainer, str):
        raise ValueError("attribution summary: explainer must be a string")
    _metrics(s.holdout_metrics)


def _metrics(value: object) -> dict[str, float]:
    """Held-out metrics as sent: at most a few, short names, finite numbers."""
    if not isinstance(value, Mapping):
        raise ValueError("attribution summary: holdout_metrics must be an object of numbers")
    if len(value) > MAX_HOLDOUT_METRICS:
        raise ValueError(
            f"attribution summary: holdout_metrics has {len(value)} entries, "
            f"at most {MAX_HOLDOUT_METRICS}"
        )
    metrics: dict[str, float] = {}
    for name, number in value.items():
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise ValueError(f"attribution summary: holdout metric name {name!r} is not a name")
        checked = _float(number, f"holdout_metrics[{name!r}]")
        if not math.isfinite(checked):
            raise ValueError(f"attribution summary: holdout_metrics[{name!r}] is not finite")
        metrics[name] = checked
    return metrics


def _check_vector(values: Sequence[float], length: int, name: str) -> None:
    if len(values) != length:
        raise ValueError(f"attribution summary: {name} has {len(values)} values, expected {length}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"attribution summary: {name} holds a non-finite or non-number {v!r}")


def _str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"attribution summary: {name} must be a string, got {value!r}")
    return value


def _float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"attribution summary: {name} must be a number, got {value!r}")
    return float(value)


def _str_list(value: object, name: str) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"attribution summary: {name} must be a list")
    return [_str(v, name) for v in value]


def _float_list(value: object, name: str) -> list[float]:
    if not isinstance(value, list):
        raise ValueError(f"attribution summary: {name} must be a list")
    return [_float(v, name) for v in value]
