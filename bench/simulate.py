"""`cohort simulate` vs Flower's own simulation (``flwr.simulation.run_simulation``) on one split.

Both systems get the same rows: the synthetic tabular set (or --dataset), split by the
same flwr-datasets partitioner into the same N partitions, the same tabular MLP trainer,
epochs, learning rate and batch size, and the same number of Ray workers (one CPU each).
Cohort runs a real coordinator (gRPC on 127.0.0.1, SQLite, every update checked and
logged) with its sites hosted many to a Ray actor; Flower runs its simulation engine
(in-memory messages, one ClientApp per message in its Ray actors). A round is the
server's view of it in both (work handed out to aggregate made); *total* is from starting
each system (Ray included) to its final model. Cohort's sites also score the global
model on their held-out rows every round; Flower's evaluation is off (fraction_evaluate 0).

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.scenarios import evaluate_weights
from cli.simulate import SimulateSettings, load_dataset, run_simulation, site_specs
from client.data import TabularData, train_holdout_split
from client.trainer import TabularTrainer


def cohort(settings: SimulateSettings) -> dict[str, Any]:
    started = time.perf_counter()
    result = run_simulation(settings, Console(stderr=True, quiet=True))
    seconds = [r["seconds"] for r in result.rounds]
    return {
        "round_seconds_median": statistics.median(seconds),
        "round_seconds": seconds,
        "total_seconds": time.perf_counter() - started,
        "accuracy": result.accuracy,
        "timings": result.timings,
    }


def flower(settings: SimulateSettings) -> dict[str, Any]:
    """The same partitions, model and settings under Flower's simulation engine."""
    from flwr.client import ClientApp
    from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation as flower_simulation

    logging.getLogger("flwr").setLevel(logging.ERROR)
    started = time.perf_counter()
    data = load_dataset(settings)
    train, test = train_holdout_split(data, holdout=0.2, seed=settings.seed)
    specs = site_specs(settings, train)
    names, classes = train.feature_names, train.class_names

    def client_fn(context: Context) -> Any:
        index = int(context.node_config["partition-id"])
        spec = specs[index]
        trainer = TabularTrainer(
            TabularData(np.array(spec.x), np.array(spec.y), names, classes),
            seed=settings.seed + index,
        )
        return trainer.to_client()

    reference = TabularTrainer(TabularData(test.x, test.y, names, classes), seed=settings.seed)
    timings: list[float] = []
    final: list[list[np.ndarray]] = []

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            self._started = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            out = super().aggregate_fit(server_round, results, failures)
            timings.append(time.perf_counter() - self._started)
            if out[0] is not None:
                final[:] = [parameters_to_ndarrays(out[0])]
            return out

    config = {"local_epochs": settings.local_epochs, "lr": settings.lr, "batch_size": 32}

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = TimedFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=settings.sites,
            min_available_clients=settings.sites,
            initial_parameters=ndarrays_to_parameters(reference.get_parameters({})),
            on_fit_config_fn=lambda rnd: {**config, "round": rnd},
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(settings.rounds))

    flower_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=settings.sites,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": settings.workers, "include_dashboard": False},
        },
    )
    total = time.perf_counter() - started
    if not final or len(timings) < settings.rounds:
        raise RuntimeError("Flower's simulation did not finish its rounds: no baseline")
    return {
        "round_seconds_median": statistics.median(timings),
        "round_seconds": timings,
        "total_seconds": total,
        "accuracy": evaluate_weights(final[0], reference, test)["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--partition", default="dirichlet")
    parser.add_argument("--quick", action="store_true", help="100 sites, 3 rounds")
    parser.add_argument("--no-flower", action="store_true", help="Cohort alone")
    args = parser.parse_args()
    if args.quick:
        args.sites, args.rounds = 100, 3
    with TemporaryDirectory() as tmp:
        settings = SimulateSettings(
            sites=args.sites,
            rounds=args.rounds,
            workers=args.workers,
            dataset=args.dataset,
            partition=args.partition,
            data_dir=Path(tmp),
        )
        ours = cohort(settings)
    theirs = None if args.no_flower else flower(settings)
    table = Table(
        title=f"{args.sites} simulated sites × {args.rounds} rounds ({args.partition} "
        f"partitions of {args.dataset}), {args.workers} Ray workers"
    )
    for column in ("system", "round s (median)", "rounds s", "total s", "test acc"):
        table.add_column(column, justify="right" if column != "system" else "left")
    rows = [("Cohort simulate (gRPC coordinator, SQLite)", ours)]
    if theirs is not None:
        rows.insert(0, ("Flower run_simulation (FedAvg)", theirs))
    for name, fig in rows:
        table.add_row(
            name,
            f"{fig['round_seconds_median']:.2f}",
            " ".join(f"{s:.1f}" for s in fig["round_seconds"]),
            f"{fig['total_seconds']:.1f}",
            f"{fig['accuracy']:.3f}",
        )
    Console().print(table)
    out: dict[str, Any] = {"sites": args.sites, "rounds": args.rounds, "cohort": ours}
    if theirs is not None:
        out["flower"] = theirs
        out["cohort_vs_flower_total"] = ours["total_seconds"] / theirs["total_seconds"]
        out["cohort_vs_flower_median_round"] = (
            ours["round_seconds_median"] / theirs["round_seconds_median"]
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # Flower's simulation can leave non-daemon threads behind
