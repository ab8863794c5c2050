"""Record-level DP's hyper-parameters for the tabular demo, chosen on validation rows only.

A small grid at ε = 8 (δ = 1e-5), scored on every site's validation rows pooled (each
trainer's holdout, carved from its own training file), never on the common test set that
``bench/dp.py`` reports. Stage 1: learning rate x clip norm x batch size at the quick
schedule (3 rounds x 2 epochs); stage 2: the best three under other schedules (rounds x
epochs per round). Each point is the mean of ``--repeats`` runs (the noise comes from the
OS, so a single run moves by about ±0.02). The winner's values are ``bench/dp.py``'s
DP_* constants. Prints one JSON line: every point, best first.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dp import federate
from cli.demo import DemoSettings, prepare_sites

EPSILON = 8.0
LRS = (0.05, 0.1, 0.2)
CLIPS = (0.5, 1.0, 2.0)
BATCHES = (32, 64, 128)
SCHEDULES = ((3, 1), (5, 1), (5, 2))
MM_LRS = (0.01, 0.03, 0.1, 0.3)
MM_BATCHES = (16, 32)


def point(paths, lr, clip, batch, rounds, epochs, repeats) -> dict[str, float]:
    """Mean validation accuracy and ROC-AUC of ``repeats`` private federated runs."""
    scores = [
        federate(paths, None, EPSILON, rounds, epochs, lr=lr, batch=batch, clip=clip)[0]
        for _ in range(repeats)
    ]
    return {
        "lr": lr,
        "clip": clip,
        "batch": batch,
        "rounds": rounds,
        "epochs": epochs,
        "val_accuracy": round(float(np.mean([s["accuracy"] for s in scores])), 4),
        "val_roc_auc": round(float(np.mean([s["roc_auc"] for s in scores])), 4),
    }


def multimodal_grid() -> list[dict[str, float]]:
    """The clinics at ε = 8 under the quick schedule (2 rounds x 1 epoch), one run a point."""
    from bench.dp import federate_multimodal
    from cli.scenarios import MultimodalScenario

    points = []
    with TemporaryDirectory() as tmp:
        scenario = MultimodalScenario(
            DemoSettings(rounds=2, local_epochs=1, scenario="multimodal"), Path(tmp)
        )
        for lr, batch in itertools.product(MM_LRS, MM_BATCHES):
            scores, _, _ = federate_multimodal(
                scenario, EPSILON, 2, 1, lr=lr, batch=batch, validation=True
            )
            points.append({"lr": lr, "batch": batch, "val_accuracy": round(scores["accuracy"], 4)})
    return sorted(points, key=lambda p: p["val_accuracy"], reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--multimodal", action="store_true", help="the clinics' grid instead")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small models: more threads only contend on a shared machine
    if args.multimodal:
        print(json.dumps(multimodal_grid()))
        return
    key = lambda p: (p["val_accuracy"], p["val_roc_auc"])  # noqa: E731
    with TemporaryDirectory() as tmp:
        paths, _ = prepare_sites(DemoSettings(rounds=3, local_epochs=2), Path(tmp))
        points = [
            point(paths, lr, clip, batch, 3, 2, args.repeats)
            for lr, clip, batch in itertools.product(LRS, CLIPS, BATCHES)
        ]
        for p in sorted(points, key=key, reverse=True)[:3]:
            for rounds, epochs in SCHEDULES:
                points.append(
                    point(paths, p["lr"], p["clip"], p["batch"], rounds, epochs, args.repeats)
                )
    print(json.dumps(sorted(points, key=key, reverse=True)))


if __name__ == "__main__":
    main()
