"""Kill -9 the coordinator mid-round and a site mid-training: the run resumes, nothing is lost."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from helpers import wait_for
from sqlalchemy import func, select

from client.data import dirichlet_split, load_sklearn, save_csv
from coordinator import auditlog
from coordinator.db import Database
from coordinator.schema import AuditEvent, Update
from protos import admin_pb2, admin_pb2_grpc, common_pb2

COHORT = [sys.executable, "-m", "cli.main"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.running[name] = subprocess.Popen(
            [*COHORT, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def kill(self, name: str) -> None:
        process = self.running.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for name in list(self.running):
            process = self.running.pop(name)
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def processes(tmp_path):
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


@pytest.mark.slow
def test_coordinator_and_site_killed_mid_run_resume_without_loss(processes, tmp_path):
    data = load_sklearn("breast_cancer")
    files = [
        save_csv(data.subset(index), tmp_path / f"site-{i}.csv")
        for i, index in enumerate(dirichlet_split(data.y, 3, 1.0, 0, min_rows=40))
    ]
    port = free_port()
    address = f"127.0.0.1:{port}"
    db_url = f"sqlite:///{tmp_path / 'coordinator.db'}"
    serve = [
        "coordinator",
        "serve",
        "--insecure",
        "--port",
        str(port),
        "--db",
        db_url,
        "--data-dir",
        str(tmp_path / "data"),
    ]

    def site(i: int) -> list[str]:
        return [
            "client",
            "run",
            "--insecure",
            "--coordinator",
            address,
            "--name",
            f"site-{i}",
            "--data",
            str(files[i]),
            "--state-dir",
            str(tmp_path / f"state-{i}"),
        ]

    processes.start("coordinator", *serve)
    for i in range(3):
        processes.start(f"site-{i}", *site(i))
    channel = grpc.insecure_channel(address)
    admin = admin_pb2_grpc.AdminStub(channel)
    wait_for(lambda: _ready(admin), 60, "the coordinator")
    run = admin.CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=4,
            min_clients=3,
            local_epochs=20,
            lr=0.005,
            round_deadline_seconds=120,
            config_json='{"audit": false}',
        )
    )

    def round_with_updates(number: int, count: int) -> bool:
        info = admin.GetRun(admin_pb2.GetRunRequest(run_id=run.run_id), timeout=5)
        return any(r.number == number and r.submitted >= count for r in info.round_infos)

    wait_for(lambda: round_with_updates(2, 1), 120, "round 2 to receive its first update")
    processes.kill("coordinator")
    processes.kill("site-1")
    time.sleep(1.0)
    processes.start("coordinator", *serve)
    processes.start("site-1", *site(1))
    wait_for(lambda: _ready(admin), 60, "the restarted coordinator")
    info = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        info = admin.GetRun(admin_pb2.GetRunRequest(run_id=run.run_id), timeout=5)
        if info.state not in (common_pb2.RUN_STATE_RUNNING, common_pb2.RUN_STATE_PENDING):
            break
        time.sleep(0.5)
    channel.close()

    assert info is not None and info.state == common_pb2.RUN_STATE_COMPLETED, info
    assert [r.submitted for r in info.round_infos] == [3, 3, 3, 3]
    database = Database(db_url)
    with database.transaction() as session:
        updates = session.scalar(select(func.count()).select_from(Update))
        accepted = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "update.accepted")
        )
        rejoined = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "site.rejoined")
        )
        chain = auditlog.verify_chain(auditlog.all_rows(session))
    database.close()
    assert updates == accepted == 12  # none lost, none counted twice
    assert rejoined >= 1  # the killed site came back as the same node
    assert chain.ok


def _ready(admin: admin_pb2_grpc.AdminStub) -> bool:
    try:
        admin.ListRuns(admin_pb2.ListRunsRequest(), timeout=2)
        return True
    except grpc.RpcError:
        return False
