"""Round wall time and bytes on the wire: Cohort (plaintext, Paillier) vs Flower's own server.

The demo workload (three hospitals, breast-cancer data split non-IID, tabular MLP) runs
three ways in this one process, with the same sites, model, epochs and learning rate:

- Cohort, plaintext FedAvg over its gRPC services;
- Cohort, Paillier secure aggregation (2048-bit key unless --key-bits);
- Flower's own gRPC server and clients (``flwr.server.start_server`` /
  ``flwr.client.start_client``, FedAvg) on loopback (its simulation engine is compared in
  bench/simulate.py).

What is timed, for both systems alike: *total* is server start to the final model (for
Cohort: coordinator up, sites joined, every round, the final model fetched by a site;
Flower's clients connect as soon as its server listens); a *round* is the server's view,
from handing out the round's work to the aggregate. Cohort's SHAP audit of the final model,
which Flower has no counterpart to, is off here (bench/audit.py times it). Before either
system is timed the process makes one torch optimiser: its first construction imports
``torch._dynamo`` (seconds), a one-time process cost whichever system ran first would pay
(Cohort's agent pays it in the background while waiting for its first task,
client/prewarm.py). Both systems train with one torch thread per site.

Then Cohort alone runs the multimodal LoRA scenario (three clinics, image + clinical note,
training for seconds a round) plaintext and secure for ``--multimodal-rounds`` rounds: issue
14's second secure / plaintext ratio, goal ≤ 1.2× (Flower has no counterpart run here).

Prints a table, then one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:
    from cli.demo import DemoSettings

# Torch, gRPC and the project are imported inside the functions: Paillier's worker
# processes come from a fork server that first imports this main module, and a heavy one
# would put seconds of imports into the first secure round, which `cohort demo` (whose
# main module is the light CLI) does not pay.


def cohort(settings: DemoSettings) -> dict[str, float]:
    from cli.demo import run_demo
    from client.data import load_tabular
    from client.trainer import TabularTrainer
    from protos import wire

    result = run_demo(settings, Console(stderr=True, quiet=True))
    uploads = [r["bytes"] for r in result.rounds]
    model_bytes = uploads[0] / 3 if settings.secure else None
    if not settings.secure:
        trainer = TabularTrainer(load_tabular(f"{result.data_dir}/sites/hospital-a.csv"))
        model_bytes = len(wire.encode_tensors(trainer.get_parameters({})))
    # Each site fetches the round's model (plaintext) or the last aggregate (secure).
    return timed(result) | {
        "bytes_up_per_round": statistics.mean(uploads),
        "bytes_down_per_round": 3 * model_bytes,
    }


def timed(result: Any) -> dict[str, float]:
    """A demo run's round times, where a site's round went, and its accuracy."""
    rounds = result.rounds
    seconds = [r["seconds"] for r in rounds]
    later = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]

    def site_median(key: str) -> float:
        # Each round's metric is the sites' weighted mean; rounds without it (none) skipped.
        values = [r["metrics"][key] for r in rounds if key in r["metrics"]]
        return statistics.median(values) if values else float("nan")

    return {
        "site_model_seconds": site_median("model_seconds"),
        "site_train_seconds": site_median("train_seconds"),
        "site_encode_seconds": site_median("encode_seconds"),
        "round_seconds_mean": statistics.mean(seconds),
        "round_seconds_median": statistics.median(seconds),
        "first_round_seconds": seconds[0],
        "first_round_extra_s": seconds[0] - later,
        "total_seconds": result.timings["run"],
        "accuracy": result.federated["accuracy"],
    }


def multimodal(rounds: int, key_bits: int) -> dict[str, Any]:
    """Issue 14's second secure-round ratio: the multimodal LoRA scenario, plaintext vs
    Paillier, where a site trains for seconds and the crypto has that to hide behind."""
    from cli.demo import run_demo
    from cli.scenarios import DemoSettings

    out: dict[str, Any] = {}
    with TemporaryDirectory() as tmp:
        for name, secure in (("plaintext", False), ("secure", True)):
            settings = DemoSettings(
                scenario="multimodal",
                secure=secure,
                rounds=rounds,
                key_bits=key_bits,
                report=False,
                audit=False,
                data_dir=Path(tmp),
            )
            out[name] = timed(run_demo(settings, Console(stderr=True, quiet=True)))
    out["secure_vs_plaintext_median"] = (
        out["secure"]["round_seconds_median"] / out["plaintext"]["round_seconds_median"]
    )
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flower(settings: DemoSettings) -> dict[str, float]:
    """The same three sites under Flower's own gRPC server and FedAvg."""
    import flwr
    import numpy as np
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.client.app import start_client
    from flwr.compat.server.app import start_server
    from flwr.server import ServerConfig
    from flwr.server.strategy import FedAvg

    from cli.demo import evaluate_weights, prepare_sites
    from cli.scenarios import TabularScenario
    from client.data import load_tabular
    from client.trainer import TabularTrainer

    logging.getLogger("flwr").setLevel(logging.ERROR)
    with TemporaryDirectory() as tmp:
        files, test = prepare_sites(settings, Path(tmp))
        trainers = [
            TabularTrainer(load_tabular(str(p)), seed=settings.seed + i)
            for i, p in enumerate(files.values())
        ]
    timings: list[float] = []
    sizes: list[int] = []
    final: list[list[np.ndarray]] = []

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            self._started = time.perf_counter()
            sizes.append(sum(len(t) for t in parameters.tensors))
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            out = super().aggregate_fit(server_round, results, failures)
            timings.append(time.perf_counter() - self._started)
            if out[0] is not None:
                final[:] = [parameters_to_ndarrays(out[0])]
            return out

    # The demo scenario's own defaults, so both systems train with the same settings.
    lr = settings.lr if settings.lr is not None else TabularScenario.default_lr
    config = {"local_epochs": settings.local_epochs, "lr": lr, "batch_size": 32}
    strategy = TimedFedAvg(
        min_fit_clients=3,
        min_available_clients=3,
        fraction_evaluate=0.0,
        initial_parameters=ndarrays_to_parameters(trainers[0].get_parameters({})),
        on_fit_config_fn=lambda rnd: {**config, "round": rnd},
    )
    address = f"127.0.0.1:{free_port()}"
    started = time.perf_counter()

    # Flower's server installs signal handlers, so it must own the main thread; the clients
    # wait in theirs until it listens (checked every 10 ms, so Flower loses no start-up time).
    def client_after_server(trainer: TabularTrainer) -> None:
        host, port = address.rsplit(":", 1)
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1.0).close()
                break
            except OSError:
                time.sleep(0.01)
        start_client(server_address=address, client=trainer.to_client(), insecure=True)

    clients = [
        threading.Thread(target=client_after_server, args=(t,), daemon=True) for t in trainers
    ]
    for thread in clients:
        thread.start()
    start_server(
        server_address=address, config=ServerConfig(num_rounds=settings.rounds), strategy=strategy
    )
    total = time.perf_counter() - started
    del flwr
    if len(final) == 0 or len(timings) < settings.rounds:
        raise RuntimeError("Flower's clients failed every round: no baseline to compare with")
    accuracy = evaluate_weights(final[0], trainers[0], test)["accuracy"]
    per_client = statistics.mean(sizes)
    return {
        "round_seconds_mean": statistics.mean(timings),
        "round_seconds_median": statistics.median(timings),
        "total_seconds": total,
        "bytes_up_per_round": 3 * per_client,
        "bytes_down_per_round": 3 * per_client,
        "accuracy": accuracy,
    }


def main() -> None:
    import torch
    from flwr import __version__ as flwr_version

    from cli.demo import DemoSettings
    from client import prewarm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument(
        "--multimodal-rounds",
        type=int,
        default=5,
        help="rounds of the multimodal LoRA scenario, plaintext and secure (0: skip it)",
    )
    args = parser.parse_args()
    common = dict(
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        report=False,
        audit=False,
        key_bits=args.key_bits,
    )
    prewarm.training_imports()  # the one-time torch import, before either system is timed
    # Three sites share this process and two cores under both systems: one intra-op thread
    # each (a batch of 32 rows gains nothing from more, and more fight each other).
    torch.set_num_threads(1)
    with TemporaryDirectory() as tmp:
        plain = cohort(DemoSettings(secure=False, data_dir=Path(tmp), **common))
        secure = cohort(DemoSettings(secure=True, data_dir=Path(tmp), **common))
    # Before Flower's run: its compat clients leave threads behind (see the end of this file).
    lora = multimodal(args.multimodal_rounds, args.key_bits) if args.multimodal_rounds else None
    baseline = flower(DemoSettings(**common))
    table = Table(
        title=f"Demo workload: 3 sites, {args.rounds} rounds × {args.local_epochs} "
        "local epochs (one process, loopback gRPC)"
    )
    for column in (
        "system",
        "round s (mean)",
        "round s (median)",
        "total s",
        "KiB up / round",
        "KiB down / round",
        "test acc",
    ):
        table.add_column(column, justify="right" if column != "system" else "left")
    rows = [
        (f"Flower {flwr_version} start_server (FedAvg)", baseline),
        ("Cohort plaintext (FedAvg)", plain),
        (f"Cohort Paillier {args.key_bits}-bit", secure),
    ]
    for name, fig in rows:
        table.add_row(
            name,
            f"{fig['round_seconds_mean']:.2f}",
            f"{fig['round_seconds_median']:.2f}",
            f"{fig['total_seconds']:.1f}",
            f"{fig['bytes_up_per_round'] / 1024:.1f}",
            f"{fig['bytes_down_per_round'] / 1024:.1f}",
            f"{fig['accuracy']:.3f}",
        )
    console = Console()
    console.print(table)
    sites = Table(title="Where a site's round goes (median over rounds, mean over sites)")
    for column in ("system", "global model s", "local training s", "encode/encrypt s"):
        sites.add_column(column, justify="right" if column != "system" else "left")
    for name, fig in rows[1:]:
        sites.add_row(
            name,
            f"{fig['site_model_seconds']:.3f}",
            f"{fig['site_train_seconds']:.3f}",
            f"{fig['site_encode_seconds']:.3f}",
        )
    console.print(sites)
    total_ratio = plain["total_seconds"] / baseline["total_seconds"]
    median_ratio = plain["round_seconds_median"] / baseline["round_seconds_median"]
    secure_ratio = secure["round_seconds_median"] / plain["round_seconds_median"]
    console.print(
        f"Cohort plaintext / Flower: total {total_ratio:.2f}×, median round {median_ratio:.2f}× "
        f"(goal ≤ 1); secure / plaintext median round {secure_ratio:.2f}× (goal ≤ 1.5×); "
        f"first secure round {secure['first_round_extra_s']:+.2f} s against the later ones' "
        "median (goal ≤ 3 s)"
    )
    if lora is not None:
        plain_mm, secure_mm = lora["plaintext"], lora["secure"]
        console.print(
            f"Multimodal LoRA scenario, {args.multimodal_rounds} rounds: median round "
            f"{plain_mm['round_seconds_median']:.2f} s plaintext, "
            f"{secure_mm['round_seconds_median']:.2f} s secure: "
            f"{lora['secure_vs_plaintext_median']:.2f}× (goal ≤ 1.2×); a site's global model "
            f"{plain_mm['site_model_seconds']:.2f} / {secure_mm['site_model_seconds']:.2f} s, "
            f"training {plain_mm['site_train_seconds']:.2f} / "
            f"{secure_mm['site_train_seconds']:.2f} s, encoding "
            f"{plain_mm['site_encode_seconds']:.2f} / {secure_mm['site_encode_seconds']:.2f} s; "
            f"accuracy {plain_mm['accuracy']:.3f} / {secure_mm['accuracy']:.3f}"
        )
    print(
        json.dumps(
            {
                "flower": baseline,
                "cohort_plaintext": plain,
                "cohort_secure": secure,
                "plaintext_vs_flower_total": total_ratio,
                "plaintext_vs_flower_median": median_ratio,
                "secure_vs_plaintext_median": secure_ratio,
                "first_round_extra_s": secure["first_round_extra_s"],
                "multimodal": lora,
                "secure_vs_plaintext_median_multimodal": (
                    lora["secure_vs_plaintext_median"] if lora is not None else None
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    from crypto import shutdown_shared_pools

    shutdown_shared_pools()  # os._exit skips the atexit hook that would stop the workers
    # Flower's compat clients block forever on a stream their finished server never closes,
    # and their threads keep the interpreter from exiting: leave without waiting for them.
    os._exit(0)
