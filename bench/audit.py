"""Benchmark a site's SHAP audit: seconds, bytes released and attribution error, per model.

Tabular: the MLP on a generated 30-feature set, audited on 1,000 held-out rows two ways
side by side: the old audit (PermutationExplainer on every row) and the new one (the same
explainer on a seeded sample of 100 rows, with the 95% interval of its means). The
attribution error of each candidate explainer (the audit's permutations, shap's
DeepExplainer and GradientExplainer) is measured per value on 50 rows against a
reference PermutationExplainer run with ten times the evaluations (30 features are too
many for ExactExplainer's 2^30 coalitions; the reference's own noise is printed, from a
second seed). Then the image CNN and the multimodal model, audited on a sample of their
held-out rows with GradientExplainer. Prints tables; the last line is one JSON object.

The old every-row audit costs the same per row, so by default it explains 200 of the
rows and its time is scaled to all of them (marked "*"; ``--old-rows 1000`` runs it whole,
which takes many minutes on two cores).

    python bench/audit.py [--rows 1000] [--nsamples 32] [--old-rows 200] [--subset 50]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import shap
import torch
from sklearn.datasets import load_digits, make_classification
from sklearn.preprocessing import StandardScaler
from torch import nn

from explain.site_audit import audit_tabular, audit_torch, permutation_values
from explain.summary import AttributionSummary
from models import DictDataset, TabularDataset, build_model, predict_proba, train
from models.clinic import make_clinic_multimodal

CPU = torch.device("cpu")
FEATURES = 30
SUBSET = 50


def _tabular_model() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    x, y = make_classification(
        n_samples=3000, n_features=FEATURES, n_informative=12, n_redundant=6, random_state=0
    )
    x = StandardScaler().fit_transform(x).astype(np.float32)
    torch.manual_seed(0)
    model = build_model("tabular_mlp", in_features=FEATURES, num_classes=2)
    train(model, TabularDataset(x[:2000], y[:2000]), epochs=10, lr=1e-2, device=CPU)
    return model.eval(), x[:2000], x[2000:]


def _error(values: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute error per value, relative to the reference's mean absolute value."""
    return float(np.abs(values - reference).mean() / np.abs(reference).mean())


class _Probabilities(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.softmax(self.model(x))


def bench_tabular(rows: int, old_rows: int, subset_rows: int) -> dict[str, object]:
    """Old vs new audit of ``rows`` rows, and each explainer's error on a subset.

    The old audit explains every row, at the same cost per row; with ``old_rows`` below
    ``rows`` it explains the first ``old_rows`` and its seconds are scaled by
    ``rows / old_rows`` (stated in the output as extrapolated).
    """
    model, train_x, test_x = _tabular_model()
    names = [f"x{i}" for i in range(FEATURES)]

    def proba(batch: np.ndarray) -> np.ndarray:
        # One forward pass per shap call: the default 1024-row chunks cost more than the model.
        x_batch = {"x": torch.as_tensor(batch, dtype=torch.float32)}
        return predict_proba(model, x_batch, CPU, batch_size=len(batch))

    held_out = test_x[:rows]
    old_rows = min(old_rows, len(held_out))
    scale = len(held_out) / old_rows
    timed: dict[str, tuple[AttributionSummary, float, float]] = {}
    for label, data, explain_rows in (
        ("old: every row", held_out[:old_rows], old_rows),
        ("new: sample", held_out, 100),
    ):
        start, cpu = time.perf_counter(), time.process_time()
        summary = audit_tabular(
            proba, train_x, data, names, max_rows=rows, explain_rows=explain_rows
        )
        timed[label] = (summary, time.perf_counter() - start, time.process_time() - cpu)
    (old, old_s, old_cpu), (new, new_s, new_cpu) = timed.values()
    old_s, old_cpu = old_s * scale, old_cpu * scale
    stated = float(new.explainer.rsplit("±", 1)[1])
    ci_miss = float(np.max(np.abs(np.subtract(new.mean_abs, old.mean_abs))))

    # Per-value error on a subset, against a ten-times-longer permutation run.
    rng = np.random.default_rng(0)
    background = train_x[np.sort(rng.choice(len(train_x), 100, replace=False))].astype(float)
    subset = held_out[:subset_rows].astype(float)
    evals = 10 * (2 * FEATURES + 1)
    start = time.perf_counter()
    reference, _ = permutation_values(proba, background, subset, 10 * evals, seed=100)
    reference_s = time.perf_counter() - start
    second, _ = permutation_values(proba, background, subset, 10 * evals, seed=101)
    errors: dict[str, dict[str, float]] = {
        "reference, 2nd seed": {"error": _error(second, reference)}
    }
    start = time.perf_counter()
    values, _ = permutation_values(proba, background, subset, evals, seed=0)
    errors["PermutationExplainer (audit)"] = {
        "error": _error(values, reference),
        "seconds": time.perf_counter() - start,
    }
    wrapped = _Probabilities(model).eval()
    bg_t, rows_t = torch.as_tensor(background).float(), torch.as_tensor(subset).float()
    start = time.perf_counter()
    deep = shap.DeepExplainer(wrapped, bg_t).shap_values(rows_t, check_additivity=False)
    errors["DeepExplainer"] = {
        "error": _error(np.asarray(deep), reference),
        "seconds": time.perf_counter() - start,
    }
    start = time.perf_counter()
    grad = shap.GradientExplainer(wrapped, bg_t).shap_values(rows_t, nsamples=200, rseed=0)
    errors["GradientExplainer (nsamples=200)"] = {
        "error": _error(np.asarray(grad), reference),
        "seconds": time.perf_counter() - start,
    }
    return {
        "rows": len(held_out),
        "old_rows_explained": old_rows,
        "old_extrapolated": old_rows < len(held_out),
        "subset_rows": len(subset),
        "features": FEATURES,
        "old_seconds": old_s,
        "new_seconds": new_s,
        "old_over_new": old_s / new_s,
        "old_cpu_seconds": old_cpu,
        "new_cpu_seconds": new_cpu,
        "new_explainer": new.explainer,
        "stated_ci_halfwidth": stated,
        "max_error_vs_every_row": ci_miss,
        "reference_seconds": reference_s,
        "errors": errors,
    }


def bench_image(rows: int, nsamples: int) -> tuple[AttributionSummary, float, str]:
    x, y = load_digits(return_X_y=True)
    images = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    model = build_model("image_cnn", in_channels=1, num_classes=10, widths=(8, 16))
    split = len(images) // 2
    train(model, DictDataset({"image": images[:split]}, y[:split]), epochs=5, lr=5e-3, device=CPU)
    start = time.perf_counter()
    summary = audit_torch(
        model,
        {"image": images[split:]},
        {"image": images[:split]},
        "image",
        site="bench",
        max_rows=rows,
        nsamples=nsamples,
    )
    return summary, time.perf_counter() - start, "image_cnn (8,16), digits 8x8, 10 classes"


def bench_multimodal(rows: int, nsamples: int) -> tuple[AttributionSummary, float, str]:
    data = make_clinic_multimodal(800, seed=0, with_vitals=True)
    vocab = len(data.tokenizer.vocab)  # type: ignore[attr-defined]
    model = build_model(
        "multimodal",
        vocab_size=vocab,
        dim=32,
        heads=2,
        layers=1,
        image_widths=(8, 16),
        tabular_features=4,
    )
    train(model, data.subset(np.arange(500)), epochs=3, lr=3e-3, device=CPU)
    held_out = {k: v[500:] for k, v in data.inputs.items()}
    background = {k: v[:500] for k, v in data.inputs.items()}
    start = time.perf_counter()
    summary = audit_torch(
        model, held_out, background, "multimodal", site="bench", max_rows=rows, nsamples=nsamples
    )
    return summary, time.perf_counter() - start, "multimodal (text x image x vitals), clinic"


def warm_up() -> float:
    """Seconds of shap's one-off start-up (numba compiles its masking kernels on first use).

    A site pays this once per process; it is reported apart so the per-audit figures are
    comparable between kinds.
    """
    rows = np.random.default_rng(0).normal(size=(8, 3))
    start = time.perf_counter()
    audit_tabular(lambda b: np.stack([b[:, 0], -b[:, 0]], axis=1), rows, rows[:2], ["a", "b", "c"])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="held-out rows per audit")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument(
        "--old-rows",
        type=int,
        default=200,
        help="rows the old every-row audit explains; its time is scaled to --rows",
    )
    parser.add_argument(
        "--subset", type=int, default=SUBSET, help="rows of the per-value error comparison"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    warm = warm_up()
    print(
        f"SHAP site audit, up to {args.rows} held-out rows, {os.cpu_count()} CPU cores, "
        f"torch threads {torch.get_num_threads()} (shap's one-off start-up, {warm:.1f} s, "
        "is not in the figures)"
    )
    tab = bench_tabular(args.rows, args.old_rows, args.subset)
    print(f"\ntabular_mlp, {tab['rows']} rows x {FEATURES} features (make_classification)")
    print(f"{'audit':<40} {'wall s':>8} {'CPU s':>8}")
    old_label = "old: PermutationExplainer, every row" + ("*" if tab["old_extrapolated"] else "")
    print(f"{old_label:<40} {tab['old_seconds']:>8.2f} {tab['old_cpu_seconds']:>8.2f}")
    print(
        f"{'new: same, seeded sample of 100 rows':<40} {tab['new_seconds']:>8.2f} "
        f"{tab['new_cpu_seconds']:>8.2f}"
    )
    if tab["old_extrapolated"]:
        print(
            f"* measured on {tab['old_rows_explained']} rows and scaled to {tab['rows']} "
            "(the explainer's cost per row does not depend on the other rows); the "
            f"|new - old| line below compares with those {tab['old_rows_explained']} rows"
        )
    print(f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"old / new {tab['old_over_new']:.1f}x; new states: {tab['new_explainer']}")
    print(
        f"largest |new - old| over features of mean |SHAP|: {tab['max_error_vs_every_row']:.4f}"
        f" (stated 95% half-width {tab['stated_ci_halfwidth']:.4f})"
    )
    print(
        f"\nper-value error on {tab['subset_rows']} rows vs PermutationExplainer with 10x evals "
        f"({tab['reference_seconds']:.1f} s); error = mean |phi - ref| / mean |ref|"
    )
    print(f"{'explainer':<34} {'error':>7} {'seconds':>8}")
    errors: dict[str, dict[str, float]] = tab["errors"]  # type: ignore[assignment]
    for name, e in errors.items():
        seconds = f"{e['seconds']:>8.2f}" if "seconds" in e else f"{'':>8}"
        print(f"{name:<34} {e['error']:>7.3f} {seconds}")

    results: dict[str, object] = {"warm_up_seconds": round(warm, 2), "tabular": tab}
    runs: dict[str, Callable[[], tuple[AttributionSummary, float, str]]] = {
        "image": lambda: bench_image(args.rows, args.nsamples),
        "multimodal": lambda: bench_multimodal(args.rows, args.nsamples),
    }
    print(f"\n{'kind':<11} {'model':<44} {'rows':>5} {'features':>8} {'seconds':>8} {'bytes':>6}")
    for kind, run in runs.items():
        summary, seconds, label = run()
        size = len(summary.to_json().encode("utf-8"))
        results[kind] = {
            "seconds": round(seconds, 2),
            "bytes": size,
            "rows": summary.row_count,
            "features": len(summary.feature_names),
            "explainer": summary.explainer,
        }
        print(
            f"{kind:<11} {label:<44} {summary.row_count:>5} {len(summary.feature_names):>8} "
            f"{seconds:>8.2f} {size:>6}"
        )
        print(f"{'':<11} {summary.explainer}")
    line = {
        "bench": "audit",
        "rows": args.rows,
        "audit_seconds_1000_rows": round(float(tab["new_seconds"]), 2),  # type: ignore[arg-type]
        "old_audit_seconds_1000_rows": round(float(tab["old_seconds"]), 2),  # type: ignore[arg-type]
        "old_over_new": round(float(tab["old_over_new"]), 2),  # type: ignore[arg-type]
        "old_rows_explained": tab["old_rows_explained"],
        "old_extrapolated": tab["old_extrapolated"],
        "audit_cpu_seconds_1000_rows": round(float(tab["new_cpu_seconds"]), 2),  # type: ignore[arg-type]
        "load_average": os.getloadavg()[0],
        "attribution_error": {k: round(v["error"], 4) for k, v in errors.items()},
        "ci_halfwidth_stated": tab["stated_ci_halfwidth"],
        "ci_max_error_vs_every_row": tab["max_error_vs_every_row"],
        "targets_met": {"audit_le_10s": float(tab["new_seconds"]) <= 10.0},  # type: ignore[arg-type]
        "results": results,
    }
    print(json.dumps(line, default=float))


if __name__ == "__main__":
    main()
