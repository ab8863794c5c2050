"""`cohort demo`: three hospitals, one coordinator, real gRPC on loopback, secure by default."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from client.agent import AgentConfig, SiteAgent
from client.data import (
    TabularData,
    dirichlet_split,
    load_sklearn,
    load_tabular,
    save_csv,
    train_holdout_split,
)
from client.trainer import TabularTrainer
from coordinator.server import CoordinatorServer
from protos import admin_pb2, admin_pb2_grpc, common_pb2, wire

SITES = ("hospital-a", "hospital-b", "hospital-c")


@dataclass
class DemoSettings:
    rounds: int = 5
    local_epochs: int = 5
    lr: float = 0.005
    secure: bool = True
    key_bits: int = 2048
    alpha: float = 1.0
    seed: int = 0
    data_dir: Path = Path("cohort-data")
    round_deadline: float = 120.0
    report: bool = True
    encrypt_workers: int | None = None
    audit_wait_seconds: float = 120.0


@dataclass
class DemoResult:
    run_id: str
    state: str
    federated: dict[str, float]
    centralised: dict[str, float]
    local_only: dict[str, dict[str, float]]
    rounds: list[dict[str, Any]]
    seconds: float
    secure: bool
    key_fingerprint: str
    report_path: str | None
    bytes_received: int
    data_dir: str
    sites: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        best_local = max((m["accuracy"] for m in self.local_only.values()), default=float("nan"))
        return {
            "run_id": self.run_id,
            "state": self.state,
            "secure": self.secure,
            "federated_accuracy": self.federated["accuracy"],
            "federated_roc_auc": self.federated["roc_auc"],
            "centralised_accuracy": self.centralised["accuracy"],
            "centralised_roc_auc": self.centralised["roc_auc"],
            "local_only_accuracy": {k: v["accuracy"] for k, v in self.local_only.items()},
            "local_only_roc_auc": {k: v["roc_auc"] for k, v in self.local_only.items()},
            "best_local_accuracy": best_local,
            "rounds": len(self.rounds),
            "seconds": round(self.seconds, 2),
            "bytes_received": self.bytes_received,
            "key_fingerprint": self.key_fingerprint,
            "report_path": self.report_path,
            "sites": self.sites,
        }


def prepare_sites(settings: DemoSettings, workdir: Path) -> tuple[dict[str, Path], TabularData]:
    """Split breast-cancer data non-IID over the hospitals; hold out a common test set."""
    data = load_sklearn("breast_cancer")
    train, test = train_holdout_split(data, holdout=0.25, seed=settings.seed)
    parts = dirichlet_split(train.y, len(SITES), settings.alpha, settings.seed, min_rows=40)
    paths = {
        name: save_csv(train.subset(index), workdir / "sites" / f"{name}.csv")
        for name, index in zip(SITES, parts, strict=True)
    }
    return paths, test


def evaluate_weights(
    weights: list[np.ndarray], reference: TabularTrainer, test: TabularData
) -> dict[str, float]:
    """Score weights on the common test set with the reference trainer's model and scaling."""
    import models

    models.set_weights(reference.model, weights)
    dataset = models.TabularDataset(reference._prepare(test.x), test.y)
    result = models.evaluate(reference.model, dataset, device=reference.device)
    return {"accuracy": float(result["accuracy"]), "roc_auc": float(result["roc_auc"])}


def train_alone(
    data: TabularData, settings: DemoSettings, test: TabularData, seed: int
) -> dict[str, float]:
    """The same model and epochs with no federation: the baselines."""
    trainer = TabularTrainer(data, seed=seed)
    weights = trainer.get_parameters({})
    config = {
        "local_epochs": settings.rounds * settings.local_epochs,
        "lr": settings.lr,
        "round": 1,
    }
    weights, _, _ = trainer.fit(weights, config)
    return evaluate_weights(weights, trainer, test)


class RoundProgress:
    """One rich progress bar per round: sites reported out of sites selected."""

    def __init__(self, console: Console, rounds: int) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} sites"),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.rounds = rounds
        self.tasks: dict[int, TaskID] = {}

    def __enter__(self) -> RoundProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, run: admin_pb2.RunInfo) -> None:
        for info in run.round_infos:
            if info.number not in self.tasks:
                self.tasks[info.number] = self.progress.add_task(
                    f"round {info.number}/{self.rounds}", total=max(info.selected, 1), note=""
                )
            note = ""
            if info.state == "closed" and "eval_accuracy" in info.metrics:
                note = f"global model acc {info.metrics['eval_accuracy']:.3f} (sites' holdout)"
            self.progress.update(
                self.tasks[info.number],
                total=max(info.selected, 1),
                completed=info.submitted,
                note=note,
            )


def run_demo(
    settings: DemoSettings,
    console: Console,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> DemoResult:
    started = time.perf_counter()
    workdir = settings.data_dir / time.strftime("demo-%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    site_files, test = prepare_sites(settings, workdir)
    server = CoordinatorServer(
        f"sqlite:///{workdir / 'cohort.db'}", workdir / "coordinator", port=0, tick_seconds=0.1
    )
    port = server.start()
    address = f"127.0.0.1:{port}"
    stop = threading.Event()
    agents: dict[str, SiteAgent] = {}
    trainers: dict[str, TabularTrainer] = {}
    threads = []
    try:
        for index, (name, path) in enumerate(site_files.items()):
            trainers[name] = TabularTrainer(load_tabular(str(path)), seed=settings.seed + index)
            agents[name] = SiteAgent(
                AgentConfig(
                    address,
                    name,
                    workdir / "sites" / name,
                    poll_seconds=5.0,
                    encrypt_workers=settings.encrypt_workers,
                    seed=settings.seed,
                ),
                trainers[name],
                listener=on_event,
            )
            thread = threading.Thread(target=agents[name].run, args=(stop,), name=name, daemon=True)
            thread.start()
            threads.append(thread)
        channel = grpc.insecure_channel(address)
        admin = admin_pb2_grpc.AdminStub(channel)
        config: dict[str, Any] = {"batch_size": 32}
        if settings.secure:
            # Deltas of the input normaliser's running means reach ~8 in round one on
            # log-scaled features, hence the clip; 20 bits keep the step at 1.5e-5.
            config["encoding"] = {
                "clip": 16.0,
                "bits": 20,
                "max_weight": 4096,
                "key_bits": settings.key_bits,
            }
        run = admin.CreateRun(
            admin_pb2.CreateRunRequest(
                model="tabular_mlp",
                rounds=settings.rounds,
                min_clients=len(SITES),
                local_epochs=settings.local_epochs,
                lr=settings.lr,
                round_deadline_seconds=settings.round_deadline,
                name="demo",
                secure=(
                    common_pb2.SECURE_SCHEME_PAILLIER
                    if settings.secure
                    else common_pb2.SECURE_SCHEME_NONE
                ),
                custodian=SITES[0] if settings.secure else "",
                config_json=json.dumps(config),
            ),
            metadata=(("x-cohort-user", "demo"),),
        )
        with RoundProgress(console, settings.rounds) as progress:
            for event in admin.WatchRun(admin_pb2.GetRunRequest(run_id=run.run_id)):
                progress.update(event.run)
        final = admin.GetRun(admin_pb2.GetRunRequest(run_id=run.run_id))
        state = common_pb2.RunState.Name(final.state).removeprefix("RUN_STATE_").lower()
        if state != "completed":
            raise RuntimeError(f"demo run {state}: {final.failure_reason}")
        # The final model is decrypted by a site, never by the coordinator.
        weights = agents[SITES[0]].export_model(run.run_id)
        federated = evaluate_weights(weights, trainers[SITES[0]], test)
        report_path = None
        if settings.report:
            deadline = time.monotonic() + settings.audit_wait_seconds
            while time.monotonic() < deadline:
                info = admin.GetRun(admin_pb2.GetRunRequest(run_id=run.run_id))
                if info.audits_received >= len(SITES):
                    break
                time.sleep(0.5)
            payload = wire.join_chunks(
                admin.ExportReport(admin_pb2.ExportReportRequest(run_id=run.run_id, format="html"))
            )
            report = workdir / f"report-{run.run_id}.html"
            report.write_bytes(payload)
            report_path = str(report)
        raw = {name: load_tabular(str(path)) for name, path in site_files.items()}
        everything = TabularData(
            np.concatenate([d.x for d in raw.values()]),
            np.concatenate([d.y for d in raw.values()]),
            test.feature_names,
        )
        centralised = train_alone(everything, settings, test, settings.seed)
        local_only = {
            name: train_alone(data, settings, test, settings.seed + i)
            for i, (name, data) in enumerate(raw.items())
        }
        rounds = [
            {
                "round": r.number,
                "updates": r.submitted,
                "bytes": r.bytes_received,
                "seconds": r.closed_unix - r.opened_unix,
                "metrics": dict(r.metrics),
            }
            for r in final.round_infos
        ]
        return DemoResult(
            run_id=run.run_id,
            state=state,
            federated=federated,
            centralised=centralised,
            local_only=local_only,
            rounds=rounds,
            seconds=time.perf_counter() - started,
            secure=settings.secure,
            key_fingerprint=final.key_fingerprint,
            report_path=report_path,
            bytes_received=sum(r.bytes_received for r in final.round_infos),
            data_dir=str(workdir),
            sites={k: len(v.y) for k, v in raw.items()},
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        for agent in agents.values():
            agent.close()
        server.stop(grace=1.0)
