"""Flower's own server under bench/load.py's workload: N clients, R rounds, the same payload.

The baseline side of ``bench/load.py``: ``flwr.compat.server.app.start_server`` (FedAvg,
``min_fit_clients = min_available_clients = N``) in a spawned process of its own (Flower's
server installs signal handlers, so it must own a main thread, and it is measured alone),
and N ``start_client`` NumPyClients in threads of one more spawned process, each adding a
random float32 delta of the same size to the model, as bench/load.py's sites do. Figures:
round time (configure_fit → aggregate_fit, Flower's own round), the server process's CPU,
peak OS threads and peak RSS. Flower keeps every client's bidirectional stream open for the
whole run, one server thread each, which is the design Cohort's long polls are compared to.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import resource
import socket
import threading
import time
from typing import Any

import numpy as np

LOOPBACK = "127.0.0.1"


def os_threads() -> int:
    """Threads of this process as the kernel counts them (gRPC's C threads included)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _server_main(address: str, clients: int, rounds: int, floats: int, out: Any) -> None:
    import logging

    from flwr.common import ndarrays_to_parameters
    from flwr.compat.server.app import start_server
    from flwr.server import ServerConfig
    from flwr.server.strategy import FedAvg

    logging.getLogger("flwr").setLevel(logging.ERROR)
    timings: list[float] = []
    peak = {"threads": os_threads(), "rss": rss_mib()}
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            peak["threads"] = max(peak["threads"], os_threads())
            peak["rss"] = max(peak["rss"], rss_mib())

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            self._started = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            out = super().aggregate_fit(server_round, results, failures)
            timings.append(time.perf_counter() - self._started)
            return out

    strategy = TimedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=clients,
        min_available_clients=clients,
        initial_parameters=ndarrays_to_parameters([np.zeros(floats, np.float32)]),
    )
    threading.Thread(target=watch, daemon=True).start()
    rss_before = rss_mib()
    cpu = time.process_time()
    started = time.perf_counter()
    start_server(server_address=address, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    done.set()
    out.put(
        {
            "cpu_seconds": time.process_time() - cpu,
            "wall_seconds": time.perf_counter() - started,
            "round_seconds": timings,
            "peak_threads": max(peak["threads"], os_threads()),
            "rss_mib_before": rss_before,
            "peak_rss_mib": max(
                peak["rss"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            ),
        }
    )


def _clients_main(address: str, clients: int, floats: int, seed: int) -> None:
    import logging

    from flwr.client import NumPyClient
    from flwr.compat.client.app import start_client

    logging.getLogger("flwr").setLevel(logging.ERROR)

    class RandomDelta(NumPyClient):  # type: ignore[misc]
        def __init__(self, index: int) -> None:
            self.rng = np.random.default_rng(seed + index)
            self.num_examples = int(self.rng.integers(50, 500))

        def get_parameters(self, config):  # type: ignore[no-untyped-def]
            return [np.zeros(floats, np.float32)]

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            delta = self.rng.standard_normal(floats).astype(np.float32) * 0.01
            loss = float(self.rng.uniform(0.1, 1.0))
            return [parameters[0] + delta], self.num_examples, {"train_loss": loss}

    def one(index: int) -> None:
        start_client(server_address=address, client=RandomDelta(index).to_client(), insecure=True)

    for index in range(clients):
        threading.Thread(target=one, args=(index,), daemon=True).start()
    while True:  # Flower's finished server never closes the clients' streams: killed instead
        time.sleep(1.0)


def run_flower(
    clients: int, rounds: int, floats: int, timeout: float, seed: int = 0
) -> dict[str, Any]:
    """Figures of one Flower run; ``{"skipped": reason}`` when it could not finish."""
    try:
        import flwr
    except ImportError as exc:
        return {"skipped": f"flwr is not installed: {exc}"}
    ctx = mp.get_context("spawn")
    address = f"{LOOPBACK}:{free_port()}"
    out = ctx.Queue()
    server = ctx.Process(
        target=_server_main, args=(address, clients, rounds, floats, out), daemon=True
    )
    server.start()
    time.sleep(2.0)  # the server listens before its clients dial
    sites = ctx.Process(target=_clients_main, args=(address, clients, floats, seed), daemon=True)
    sites.start()
    try:
        result = out.get(timeout=timeout)
    except queue.Empty:
        result = {
            "skipped": f"Flower did not finish {rounds} rounds of {clients} in {timeout:.0f} s"
        }
    finally:
        for proc in (sites, server):
            proc.terminate()
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    if "skipped" in result:
        return result
    timings = result["round_seconds"]
    updates = clients * rounds
    return {
        "flwr_version": flwr.__version__,
        "clients": clients,
        "rounds": rounds,
        "rounds_done": len(timings),
        "round_p50_s": float(np.median(timings)) if timings else None,
        "round_latencies_s": [round(t, 3) for t in timings],
        "server_cpu_seconds": result["cpu_seconds"],
        "server_cpu_ms_per_update": 1000 * result["cpu_seconds"] / updates,
        "wall_seconds": result["wall_seconds"],
        "peak_threads": result["peak_threads"],
        "peak_rss_mib": result["peak_rss_mib"],
        "rss_growth_mib": result["peak_rss_mib"] - result["rss_mib_before"],
    }


def main() -> None:
    """Flower's side alone: ``python bench/load_flower.py --clients 100 --rounds 3``.

    bench/load.py runs this beside Cohort in one process and reports both; run alone it
    prints Flower's figures and, last, one JSON line of them.
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--payload-floats", type=int, default=1000, help="float32 per update")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before giving up")
    args = parser.parse_args()
    figures = run_flower(args.clients, args.rounds, args.payload_floats, args.timeout)
    if "skipped" in figures:
        print(f"Flower: {figures['skipped']}")
    else:
        print(
            f"Flower {figures['flwr_version']}, {args.clients} clients x {args.rounds} rounds: "
            f"round p50 {figures['round_p50_s']:.2f} s, server CPU "
            f"{figures['server_cpu_ms_per_update']:.2f} ms per update, "
            f"{figures['peak_threads']} OS threads, RSS +{figures['rss_growth_mib']:.0f} MiB"
        )
    print(json.dumps({"bench": "load_flower", **figures}))


if __name__ == "__main__":
    main()
