"""`cohort simulate`: N virtual sites on Ray against a real coordinator on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from client.data import DataError, TabularData, load_sklearn, load_tabular, train_holdout_split
from client.simulation import PARTITIONS, SiteHost, SiteSpec, partition_rows, site_name, wait_all

BUILT_IN = ("synthetic", "breast_cancer", "digits", "wine", "iris")


@dataclass
class SimulateSettings:
    """What `cohort simulate` runs. ``dataset`` is a built-in name or a CSV/Parquet path."""

    sites: int = 10
    rounds: int = 5
    local_epochs: int = 1
    lr: float = 0.005
    dataset: str = "synthetic"
    label_column: str = "label"
    rows_per_site: int = 50
    partition: str = "dirichlet"
    alpha: float = 0.5
    labels_per_site: int = 2
    secure: bool = False
    key_bits: int = 2048
    workers: int = 2
    ray_address: str | None = None
    round_deadline: float = 600.0
    seed: int = 0
    data_dir: Path = Path("cohort-data")
    report: bool = False

    def problems(self) -> list[str]:
        """Every flag that cannot work, as the one-line messages the CLI prints."""
        out = []
        if self.sites < 2:
            out.append("--sites must be at least 2")
        if self.rounds < 1:
            out.append("--rounds must be at least 1")
        if self.local_epochs < 1:
            out.append("--local-epochs must be at least 1")
        if not (np.isfinite(self.lr) and self.lr > 0):
            out.append("--lr must be a positive number")
        if self.partition not in PARTITIONS:
            out.append(f"--partition must be one of {', '.join(PARTITIONS)}")
        if not (np.isfinite(self.alpha) and self.alpha > 0):
            out.append("--alpha must be a positive number")
        if self.labels_per_site < 1:
            out.append("--labels-per-site must be at least 1")
        if self.workers < 1:
            out.append("--workers must be at least 1")
        if self.rows_per_site < 4:
            out.append("--rows-per-site must be at least 4")
        if self.key_bits not in (1024, 2048, 3072):
            out.append("--key-bits must be 1024 (tests only), 2048 or 3072")
        if self.dataset not in BUILT_IN and not Path(self.dataset).exists():
            out.append(
                f"--dataset must be one of {', '.join(BUILT_IN)} or a data file; "
                f"no file at {self.dataset}"
            )
        return out


@dataclass
class SimulateResult:
    run_id: str
    state: str
    accuracy: float
    roc_auc: float
    rounds: list[dict[str, Any]]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    report_path: str | None = None

    def summary(self) -> dict[str, Any]:
        seconds = [r["seconds"] for r in self.rounds]
        return {
            "run_id": self.run_id,
            "state": self.state,
            "accuracy": self.accuracy,
            "roc_auc": self.roc_auc,
            "rounds": len(self.rounds),
            "round_seconds": [round(s, 3) for s in seconds],
            "round_seconds_median": float(np.median(seconds)) if seconds else float("nan"),
            "seconds": round(self.seconds, 2),
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "events": self.events,
            "report_path": self.report_path,
        }


def load_dataset(settings: SimulateSettings) -> TabularData:
    """The rows every virtual site draws from (built-in, or the user's file)."""
    if settings.dataset == "synthetic":
        from sklearn.datasets import make_classification

        rows = settings.sites * settings.rows_per_site * 5 // 4  # a fifth more for the test set
        x, y = make_classification(
            n_samples=rows,
            n_features=30,
            n_informative=12,
            n_redundant=6,
            class_sep=1.0,
            random_state=settings.seed,
        )
        return TabularData(
            x.astype(np.float32), y.astype(np.int64), [f"x{i}" for i in range(30)], ["0", "1"]
        )
    if settings.dataset in BUILT_IN:
        return load_sklearn(settings.dataset)
    return load_tabular(settings.dataset, settings.label_column)


def site_specs(settings: SimulateSettings, train: TabularData) -> list[SiteSpec]:
    parts = partition_rows(
        train.y,
        settings.sites,
        settings.partition,
        alpha=settings.alpha,
        labels_per_site=settings.labels_per_site,
        seed=settings.seed,
    )
    return [SiteSpec(site_name(i), train.x[rows], train.y[rows]) for i, rows in enumerate(parts)]


def run_simulation(settings: SimulateSettings, console: Console) -> SimulateResult:
    """Partition, start the coordinator and the Ray site hosts, run, score the final model.

    Raises
    ------
    ValueError
        On settings that cannot work (``problems``) or data that cannot be split.
    RuntimeError
        If the run does not complete.
    """
    problems = settings.problems()
    if problems:
        raise ValueError(problems[0])
    import grpc
    import ray

    from cli.scenarios import evaluate_weights
    from client.trainer import TabularTrainer
    from coordinator.hub import Limits
    from coordinator.server import CoordinatorServer
    from protos import admin_pb2, admin_pb2_grpc, common_pb2, serde

    started = time.perf_counter()
    data = load_dataset(settings)
    train, test = train_holdout_split(data, holdout=0.2, seed=settings.seed)
    specs = site_specs(settings, train)
    classes = int(data.y.max()) + 1
    workdir = settings.data_dir / time.strftime("simulate-%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    timings = {"partition": time.perf_counter() - started}
    mark = time.perf_counter()
    # Ray first: its daemons are started before this process runs gRPC threads.
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(
            address=settings.ray_address,
            num_cpus=None if settings.ray_address else settings.workers,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    timings["ray_start"] = time.perf_counter() - mark
    # Sites are swept, not long-polling: one can go unpolled while its host trains the
    # others, so "offline" means silent for longer than a whole sweep can take.
    server = CoordinatorServer(
        f"sqlite:///{workdir / 'cohort.db'}",
        workdir / "coordinator",
        port=0,
        tick_seconds=0.1,
        limits=Limits(offline_after_seconds=max(600.0, settings.round_deadline)),
    )
    address = f"127.0.0.1:{server.start()}"
    hosts: list[Any] = []
    serving: list[Any] = []
    try:
        mark = time.perf_counter()
        # Two threads per actor: ``serve`` sweeps while ``stop`` and ``export`` can still land.
        remote_host: Any = ray.remote(SiteHost).options(num_cpus=1, max_concurrency=2)
        chunks = np.array_split(np.arange(len(specs)), min(settings.workers, len(specs)))
        hosts = [
            remote_host.remote(
                address,
                [specs[i] for i in chunk],
                train.feature_names,
                train.class_names,
                str(workdir / "sites"),
                seed=settings.seed,
                min_key_bits=min(settings.key_bits, 2048),
            )
            for chunk in chunks
        ]
        fingerprints: dict[str, str] = {}
        for found in wait_all([h.fingerprints.remote() for h in hosts], 600):
            fingerprints.update(found)
        custodian = specs[0].name
        if settings.secure:
            # Agreed out of band, as the demo's hospitals do: every site pins every other
            # (the custodian seals the key only to pinned sites, and each site checks the
            # signatures of every participant on each aggregate it decrypts).
            pins = {
                name: {n: fp for n, fp in fingerprints.items() if n != name}
                for name in fingerprints
            }
            wait_all([h.pin.remote(pins) for h in hosts], 600)
        wait_all([h.join.remote() for h in hosts], 600)
        timings["sites_up"] = time.perf_counter() - mark
        serving = [h.serve.remote() for h in hosts]
        channel = grpc.insecure_channel(address)
        admin = admin_pb2_grpc.AdminStub(channel)
        config: dict[str, Any] = {
            "batch_size": 32,
            "model_config": {"num_classes": max(2, classes)},
            "audit": settings.report,
            "seed": settings.seed,
        }
        if settings.secure:
            config["encoding"] = {"max_weight": 4096, "key_bits": settings.key_bits}
        mark = time.perf_counter()
        run = admin.CreateRun(
            admin_pb2.CreateRunRequest(
                model="tabular_mlp",
                rounds=settings.rounds,
                min_clients=settings.sites,
                local_epochs=settings.local_epochs,
                lr=settings.lr,
                round_deadline_seconds=settings.round_deadline,
                name=f"simulate-{settings.sites}",
                secure=serde.scheme_to_proto("paillier" if settings.secure else "none"),
                custodian=custodian if settings.secure else "",
                config_json=json.dumps(config),
            ),
            metadata=(("x-cohort-user", "simulate"),),
        )
        # Polled once a second rather than watched: a watch is redrawn at every accepted
        # update, which with a thousand sites costs the coordinator more than the updates.
        shown = 0
        ended = (
            common_pb2.RUN_STATE_COMPLETED,
            common_pb2.RUN_STATE_FAILED,
            common_pb2.RUN_STATE_STOPPED,
        )
        while True:
            final = admin.GetRun(admin_pb2.GetRunRequest(run_id=run.run_id))
            closed = [r for r in final.round_infos if r.closed_unix > 0]
            for r in closed[shown:]:
                console.print(
                    f"round {r.number}: {r.submitted} updates in "
                    f"{r.closed_unix - r.opened_unix:.2f} s"
                )
            shown = max(shown, len(closed))
            if final.state in ended:
                break
            time.sleep(1.0)
        state = serde.run_state_name(final.state)
        if state != "completed":
            raise RuntimeError(f"simulated run {state}: {final.failure_reason}")
        timings["run"] = time.perf_counter() - mark
        # The final model as a site holds it (decrypted there in a secure run).
        weights = wait_all([hosts[0].export.remote(custodian, run.run_id)], 600)[0]
        reference = TabularTrainer(
            TabularData(test.x, test.y, train.feature_names, train.class_names),
            seed=settings.seed,
        )
        reference.accept_task({"model": "tabular_mlp", "model_config": config["model_config"]})
        scores = evaluate_weights(weights, reference, test)
        report_path = None
        if settings.report:
            from protos import wire

            report = workdir / f"report-{run.run_id}.html"
            report.write_bytes(
                wire.join_chunks(
                    admin.ExportReport(
                        admin_pb2.ExportReportRequest(run_id=run.run_id, format="html")
                    )
                )
            )
            report_path = str(report)
        rounds = [
            {
                "round": r.number,
                "updates": r.submitted,
                "seconds": r.closed_unix - r.opened_unix,
                "metrics": dict(r.metrics),
            }
            for r in final.round_infos
        ]
        for host in hosts:
            host.stop.remote()
        events: dict[str, int] = {}
        for counted in wait_all(serving, 120):
            for key, value in counted.items():
                events[key] = events.get(key, 0) + value
        serving = []
        return SimulateResult(
            run_id=run.run_id,
            state=state,
            accuracy=scores["accuracy"],
            roc_auc=scores["roc_auc"],
            rounds=rounds,
            seconds=time.perf_counter() - started,
            timings=timings,
            events=events,
            report_path=report_path,
        )
    finally:
        for host in hosts:
            host.stop.remote()
        if serving:
            ray.wait(serving, num_returns=len(serving), timeout=30)
        for host in hosts:
            ray.kill(host)
        if started_ray:
            ray.shutdown()
        server.stop(grace=1.0)


def fail_on_problems(settings: SimulateSettings) -> None:
    """Bad flags: one line, exit 2 (``cli.common.fail``)."""
    from cli.common import fail

    for problem in settings.problems():
        fail(problem)


__all__ = [
    "BUILT_IN",
    "DataError",
    "SimulateResult",
    "SimulateSettings",
    "fail_on_problems",
    "load_dataset",
    "run_simulation",
]
