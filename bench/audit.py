"""Benchmark a site's SHAP audit: seconds, bytes released and attribution error, per model.

Tabular: the MLP on a generated 30-feature set, audited on 1,000 held-out rows (a seeded
sample of 100 explained, with the 95% interval of its means; PermutationExplainer, 610
evaluations over 100 background rows) three ways side by side in one process:

- old: main's configuration, a ``predict_proba`` function on torch's default threads;
- the same function on one torch thread (what client/audit.py's callable gets now);
- new: the torch model itself (batch norm folded, inference mode, one thread).

Every configuration explains the same rows with the same permutations, so the summaries
agree to float rounding (printed). The old one is slow on a shared machine, so it explains
``--old-rows`` of the 100 rows and its time is scaled to 100 (marked "*").

The attribution error (per value, on ``--subset`` rows) is against a PermutationExplainer
run with ten times the evaluations: 30 features are too many for exact SHAP's 2^30
coalitions, and the reference's own noise is printed (a second seed). Next to the audit's
configuration: smaller backgrounds and fewer permutations (the ways to buy time with
accuracy) and shap's DeepExplainer and GradientExplainer. Then the image CNN and the
multimodal model with GradientExplainer, new (one thread) against old (default threads,
``--old-rows`` rows scaled to the sample). Prints tables; the last line is one JSON object.

    python bench/audit.py [--rows 1000] [--nsamples 32] [--old-rows 20] [--subset 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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
from explain.torch_adapter import tabular_predictor, torch_threads
from models import DictDataset, TabularDataset, build_model, predict_proba, train
from models.clinic import make_clinic_multimodal

CPU = torch.device("cpu")
FEATURES = 30
SUBSET = 20
EXPLAINED = 100  # audit_tabular's default sample
TORCH_EXPLAINED = 64  # audit_torch's


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


def _timed(run: Callable[[], AttributionSummary]) -> tuple[AttributionSummary, float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    summary = run()
    return summary, time.perf_counter() - start, time.process_time() - cpu


def bench_tabular(rows: int, old_rows: int, subset_rows: int) -> dict[str, object]:
    """Old vs new audit of ``rows`` rows, and each explainer's error on a subset."""
    model, train_x, test_x = _tabular_model()
    names = [f"x{i}" for i in range(FEATURES)]
    held_out = test_x[:rows]

    def old_proba(batch: np.ndarray) -> np.ndarray:
        # main's bench: one forward pass per shap call, on torch's default threads.
        x_batch = {"x": torch.as_tensor(batch, dtype=torch.float32)}
        return predict_proba(model, x_batch, CPU, batch_size=len(batch))

    def site_proba(batch: np.ndarray) -> np.ndarray:
        # client/trainer.py's predict_proba, which client/audit.py hands to the audit.
        return predict_proba(model, {"x": torch.as_tensor(batch, dtype=torch.float32)}, CPU)

    old_rows = min(old_rows, EXPLAINED)
    runs: dict[str, tuple[AttributionSummary, float, float]] = {}
    loads: dict[str, float] = {}  # 1-minute load average as each run starts
    for label, explained, threads, predict in (
        ("new", EXPLAINED, 1, model),
        ("callable", EXPLAINED, 1, site_proba),
        ("old", old_rows, None, old_proba),
    ):
        loads[label] = os.getloadavg()[0]
        runs[label] = _timed(
            lambda e=explained, t=threads, p=predict: audit_tabular(  # type: ignore[misc]
                p, train_x, held_out, names, max_rows=rows, explain_rows=e, threads=t
            )
        )
    new, new_s, new_cpu = runs["new"]
    callable_summary, callable_s, callable_cpu = runs["callable"]
    scale = EXPLAINED / old_rows
    old_s, old_cpu = runs["old"][1] * scale, runs["old"][2] * scale
    same = float(np.max(np.abs(np.subtract(new.mean_abs, callable_summary.mean_abs))))

    # Per-value error on a subset, against a ten-times-longer permutation run.
    rng = np.random.default_rng(0)
    background = train_x[np.sort(rng.choice(len(train_x), 100, replace=False))].astype(float)
    subset = held_out[:subset_rows].astype(float)
    evals = 10 * (2 * FEATURES + 1)
    fast = tabular_predictor(model, background)
    errors: dict[str, dict[str, float]] = {}
    with torch_threads(1):
        start = time.perf_counter()
        reference, _ = permutation_values(fast, background, subset, 10 * evals, seed=100)
        reference_s = time.perf_counter() - start
        second, _ = permutation_values(fast, background, subset, 10 * evals, seed=101)
        errors["reference, 2nd seed"] = {"error": _error(second, reference)}
        for label, size, perms in (
            ("audit: 10 permutations, 100 background", 100, 10),
            ("5 permutations, 100 background", 100, 5),
            ("10 permutations, 50 background", 50, 10),
            ("10 permutations, 25 background", 25, 10),
        ):
            refs = background[np.sort(np.random.default_rng(1).choice(100, size, replace=False))]
            start = time.perf_counter()
            values, _ = permutation_values(fast, refs, subset, perms * evals // 10, seed=0)
            errors[label] = {
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
    stated = float(new.explainer.rsplit("±", 1)[1])
    return {
        "rows": len(held_out),
        "explained": new.row_count,
        "old_rows_explained": old_rows,
        "subset_rows": len(subset),
        "features": FEATURES,
        "old_seconds": old_s,
        "old_cpu_seconds": old_cpu,
        "callable_seconds": callable_s,
        "callable_cpu_seconds": callable_cpu,
        "new_seconds": new_s,
        "new_cpu_seconds": new_cpu,
        "old_over_new": old_s / new_s,
        "callable_over_new": callable_s / new_s,
        "new_vs_callable_max_abs": same,
        "load_at_start": loads,
        "new_explainer": new.explainer,
        "stated_ci_halfwidth": stated,
        "reference_seconds": reference_s,
        "errors": errors,
    }


TorchCase = tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor], str]


def image_case() -> TorchCase:
    """image_cnn (8,16) on digits 8x8, 10 classes: held-out rows, background, label."""
    x, y = load_digits(return_X_y=True)
    images = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    model = build_model("image_cnn", in_channels=1, num_classes=10, widths=(8, 16))
    split = len(images) // 2
    train(model, DictDataset({"image": images[:split]}, y[:split]), epochs=5, lr=5e-3, device=CPU)
    label = "image_cnn (8,16), digits 8x8, 10 classes"
    return model, {"image": images[split:]}, {"image": images[:split]}, label


def multimodal_case() -> TorchCase:
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
    return model, held_out, background, "multimodal (text x image x vitals), clinic"


def bench_torch(
    case: TorchCase, kind: str, rows: int, nsamples: int, old_rows: int
) -> dict[str, object]:
    """GradientExplainer audit, new (one torch thread) against old (default threads).

    The old one explains ``old_rows`` of the sample and is scaled to it: a row costs the
    same ``nsamples`` forward and backward passes whichever rows are chosen.
    """
    model, held_out, background, label = case
    old_rows = min(old_rows, TORCH_EXPLAINED)
    timed = {
        name: _timed(
            lambda e=explained, t=threads: audit_torch(  # type: ignore[misc]
                model,
                held_out,
                background,
                kind,
                site="bench",
                max_rows=rows,
                explain_rows=e,
                nsamples=nsamples,
                threads=t,
            )
        )
        for name, explained, threads in (("new", TORCH_EXPLAINED, 1), ("old", old_rows, None))
    }
    summary, seconds, cpu = timed["new"]
    old_seconds = timed["old"][1] * TORCH_EXPLAINED / old_rows
    return {
        "label": label,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "old_seconds": round(old_seconds, 2),
        "old_over_new": round(old_seconds / seconds, 2),
        "bytes": len(summary.to_json().encode("utf-8")),
        "rows": summary.row_count,
        "features": len(summary.feature_names),
        "explainer": summary.explainer,
    }


def warm_up() -> float:
    """Seconds of shap's one-off start-up (numba compiles its masking kernels on first use).

    A site pays this once per process; it is reported apart so the per-audit figures are
    comparable between kinds.
    """
    rows = np.random.default_rng(0).normal(size=(8, 3))
    start = time.perf_counter()
    audit_tabular(lambda b: np.stack([b[:, 0], -b[:, 0]], axis=1), rows, rows[:2], ["a", "b", "c"])
    return time.perf_counter() - start


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="held-out rows per audit")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument(
        "--old-rows",
        type=int,
        default=20,
        help="rows the old configuration explains; its time is scaled to the full sample",
    )
    parser.add_argument(
        "--subset", type=int, default=SUBSET, help="rows of the per-value error comparison"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    warm = warm_up()
    threads = torch.get_num_threads()
    print(
        f"SHAP site audit, up to {args.rows} held-out rows, {os.cpu_count()} CPU cores, "
        f"torch's default threads {threads} (shap's one-off start-up, {warm:.1f} s, "
        f"is not in the figures)\n{_uptime()}"
    )
    tab = bench_tabular(args.rows, args.old_rows, args.subset)
    print(
        f"\ntabular_mlp, {tab['rows']} rows x {FEATURES} features (make_classification), "
        f"{tab['explained']} explained"
    )
    print(f"{'audit':<58} {'wall s':>8} {'CPU s':>8} {'load':>5}")
    loads: dict[str, float] = tab["load_at_start"]  # type: ignore[assignment]
    for label, key in (
        (f"old: predict_proba function, {threads} torch threads*", "old"),
        ("predict_proba function, 1 torch thread", "callable"),
        ("new: torch model folded, inference mode, 1 thread", "new"),
    ):
        print(
            f"{label:<58} {tab[f'{key}_seconds']:>8.2f} {tab[f'{key}_cpu_seconds']:>8.2f} "
            f"{loads[key]:>5.1f}"
        )
    print(
        f"* measured on {tab['old_rows_explained']} of the {tab['explained']} rows and scaled "
        "(a row costs the same whichever it is)"
    )
    print(
        f"old / new {tab['old_over_new']:.1f}x, function on 1 thread / new "
        f"{tab['callable_over_new']:.2f}x; largest |new - function| of mean |SHAP| "
        f"{tab['new_vs_callable_max_abs']:.1e} (same rows and permutations: float rounding)"
    )
    print(f"new states: {tab['new_explainer']}")
    print(
        f"\nper-value error on {tab['subset_rows']} rows vs PermutationExplainer with 10x evals "
        f"({tab['reference_seconds']:.1f} s); error = mean |phi - ref| / mean |ref|, one thread"
    )
    print(f"{'explainer':<42} {'error':>7} {'seconds':>8}")
    errors: dict[str, dict[str, float]] = tab["errors"]  # type: ignore[assignment]
    for name, e in errors.items():
        seconds = f"{e['seconds']:>8.2f}" if "seconds" in e else f"{'':>8}"
        print(f"{name:<42} {e['error']:>7.3f} {seconds}")

    results: dict[str, object] = {"warm_up_seconds": round(warm, 2), "tabular": tab}
    cases: dict[str, Callable[[], TorchCase]] = {
        "image": image_case,
        "multimodal": multimodal_case,
    }
    print(
        f"\n{'kind':<11} {'model':<44} {'rows':>5} {'features':>8} {'wall s':>7} {'CPU s':>6} "
        f"{'old s*':>7} {'old/new':>7} {'bytes':>6}"
    )
    for kind, case in cases.items():
        r = bench_torch(case(), kind, args.rows, args.nsamples, args.old_rows)
        results[kind] = r
        print(
            f"{kind:<11} {r['label']!s:<44} {r['rows']:>5} {r['features']:>8} "
            f"{r['seconds']:>7.2f} {r['cpu_seconds']:>6.2f} {r['old_seconds']:>7.2f} "
            f"{r['old_over_new']:>7.1f} {r['bytes']:>6}"
        )
        print(f"{'':<11} {r['explainer']}")
    print(
        f"* old: torch's default threads, measured on {args.old_rows} rows and scaled\n{_uptime()}"
    )
    line = {
        "bench": "audit",
        "rows": args.rows,
        "audit_seconds_1000_rows": round(float(tab["new_seconds"]), 2),  # type: ignore[arg-type]
        "audit_cpu_seconds_1000_rows": round(float(tab["new_cpu_seconds"]), 2),  # type: ignore[arg-type]
        "old_audit_seconds_1000_rows": round(float(tab["old_seconds"]), 2),  # type: ignore[arg-type]
        "old_over_new": round(float(tab["old_over_new"]), 2),  # type: ignore[arg-type]
        "callable_one_thread_over_new": round(float(tab["callable_over_new"]), 2),  # type: ignore[arg-type]
        "old_rows_explained": tab["old_rows_explained"],
        "load_average": os.getloadavg(),
        "attribution_error": {k: round(v["error"], 4) for k, v in errors.items()},
        "ci_halfwidth_stated": tab["stated_ci_halfwidth"],
        "targets_met": {"audit_le_10s": float(tab["new_seconds"]) <= 10.0},  # type: ignore[arg-type]
        "results": results,
    }
    print(json.dumps(line, default=float))


if __name__ == "__main__":
    main()
