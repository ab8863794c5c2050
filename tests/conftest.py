"""Shared fixtures: databases (SQLite always, PostgreSQL where reachable), a real coordinator."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

# Tests use 1024-bit Paillier keys for speed; a site accepts them only when its own
# environment says so (the default minimum is 2048). Subprocesses inherit this.
os.environ.setdefault("COHORT_MIN_KEY_BITS", "1024")
import pg_scratch
from helpers import AgentPool

from coordinator.hub import Limits
from coordinator.server import CoordinatorServer
from protos import admin_pb2_grpc, federation_pb2_grpc

# The fuzz tests share their running coordinators (one per module) through this plugin.
pytest_plugins = ["fuzzing"]

POSTGRES_ADMIN_URL = os.environ.get(
    "COHORT_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _postgres_reason() -> str | None:
    """None when PostgreSQL answers; else why not (CI must have it, so there it fails)."""
    return pg_scratch.postgres_reason(POSTGRES_ADMIN_URL)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    reason = _postgres_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} — CI must run the PostgreSQL tests, not skip them")
        pytest.skip(reason)
    return POSTGRES_ADMIN_URL


# The names the fuzz tests import (tests/pg_scratch.py holds the one implementation).
_fresh_postgres_database = pg_scratch.fresh_database
_drop_postgres_database = pg_scratch.drop_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cohort.db'}"
        return
    admin = request.getfixturevalue("postgres_server")
    url, name = _fresh_postgres_database(admin)
    try:
        yield url
    finally:
        _drop_postgres_database(admin, name)


@dataclass
class RunningCoordinator:
    server: CoordinatorServer
    port: int
    data_dir: Path
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def hub(self):  # type: ignore[no-untyped-def]
        return self.server.hub

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address)
        self.channels.append(channel)
        return channel

    def admin(self) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(self.channel())

    def federation(self) -> federation_pb2_grpc.FederationStub:
        return federation_pb2_grpc.FederationStub(self.channel())


def start_coordinator(database_url: str, data_dir: Path, **limits: float) -> RunningCoordinator:
    server = CoordinatorServer(
        database_url,
        data_dir,
        port=0,
        tick_seconds=0.05,
        limits=Limits(**limits) if limits else None,
    )  # type: ignore[arg-type]
    return RunningCoordinator(server, server.start(), data_dir)


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[RunningCoordinator]:
    """A real coordinator on 127.0.0.1 with an ephemeral port and a SQLite file."""
    running = start_coordinator(f"sqlite:///{tmp_path / 'coordinator.db'}", tmp_path / "data")
    yield running
    for channel in running.channels:
        channel.close()
    running.server.stop(grace=0.5)


@pytest.fixture
def agents() -> Iterator[AgentPool]:
    """Start site agents with ``agents.start(address, trainers, dir)``; all joined at teardown."""
    pool = AgentPool()
    yield pool
    pool.close()


@pytest.fixture
def background() -> Iterator[list[threading.Thread]]:
    """Threads a test starts itself; joined (after the test sets their stop) at teardown."""
    threads: list[threading.Thread] = []
    yield threads
    for thread in threads:
        thread.join(timeout=30)
