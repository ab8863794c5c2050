"""Benchmark a site's SHAP audit: seconds and bytes released, per model kind.

Trains three small models (tabular MLP on breast cancer, CNN on sklearn digits, the
multimodal clinic model) for a few epochs, then times ``explain.site_audit`` on 200
held-out rows of each and measures the JSON summary that would leave the site.
Prints a table; the last line is one JSON object with the figures.

    python bench/audit.py [--rows 200] [--nsamples 32]
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
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from explain.site_audit import audit_tabular, audit_torch
from explain.summary import AttributionSummary
from models import DictDataset, TabularDataset, build_model, predict_proba, train
from models.clinic import make_clinic_multimodal

CPU = torch.device("cpu")


def bench_tabular(rows: int) -> tuple[AttributionSummary, float, str]:
    data = load_breast_cancer()
    x = StandardScaler().fit_transform(data.data).astype(np.float32)
    x_train, x_test, y_train, _ = train_test_split(x, data.target, test_size=0.4, random_state=0)
    model = build_model("tabular_mlp", in_features=x.shape[1], num_classes=2)
    train(model, TabularDataset(x_train, y_train), epochs=20, lr=1e-2, device=CPU)

    def proba(batch: np.ndarray) -> np.ndarray:
        # One forward pass per shap call: the default 1024-row chunks cost more than the model.
        x_batch = {"x": torch.as_tensor(batch, dtype=torch.float32)}
        return predict_proba(model, x_batch, CPU, batch_size=len(batch))

    start = time.perf_counter()
    summary = audit_tabular(
        proba,
        x_train,
        x_test,
        list(data.feature_names),
        list(data.target_names),
        site="bench",
        max_rows=rows,
    )
    return summary, time.perf_counter() - start, "tabular_mlp, breast cancer (30 features)"


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
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--nsamples", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    runs: dict[str, Callable[[], tuple[AttributionSummary, float, str]]] = {
        "tabular": lambda: bench_tabular(args.rows),
        "image": lambda: bench_image(args.rows, args.nsamples),
        "multimodal": lambda: bench_multimodal(args.rows, args.nsamples),
    }
    results: dict[str, object] = {"warm_up_seconds": round(warm_up(), 2)}
    print(
        f"SHAP site audit, {args.rows} rows, {os.cpu_count()} CPU cores, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'kind':<11} {'model':<44} {'rows':>5} {'features':>8} {'seconds':>8} {'bytes':>6}"
        "  top feature"
    )
    for kind, run in runs.items():
        summary, seconds, label = run()
        size = len(summary.to_json().encode("utf-8"))
        top = summary.feature_names[int(np.argmax(summary.mean_abs))]
        results[kind] = {
            "seconds": round(seconds, 2),
            "bytes": size,
            "rows": summary.row_count,
            "features": len(summary.feature_names),
            "explainer": summary.explainer,
        }
        print(
            f"{kind:<11} {label:<44} {summary.row_count:>5} {len(summary.feature_names):>8} "
            f"{seconds:>8.2f} {size:>6}  {top}"
        )
    print(f"(not included above: shap's one-off start-up, {results['warm_up_seconds']} s)")
    print(
        json.dumps(
            {"bench": "audit", "rows": args.rows, "nsamples": args.nsamples, "results": results}
        )
    )


if __name__ == "__main__":
    main()
