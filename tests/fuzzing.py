"""Shared parts of the fuzz tests: a real coordinator on 127.0.0.1, hostile-input strategies,
the checks every property makes, and the module-scoped servers (a pytest plugin).

Every property asserts the same three things. The coordinator answers with a proper gRPC
status (never INTERNAL or UNKNOWN, and never a hang: every call carries a deadline, so a
hang shows up as DEADLINE_EXCEEDED); it stores nothing of what it refused (rows and blob
files are counted before and after); and it keeps serving (a health check and a valid
call still work afterwards).

Defects fuzzing found are pinned by a named regression test at the end of each section
(the coordinator fixes landed with them).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import (
    RunningCoordinator,
    start_coordinator,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from client.link import Link, update_header
from client.link import Update as SiteUpdate
from coordinator.schema import (
    AuditEvent,
    Enrolment,
    ModelVersion,
    Node,
    Operator,
    Run,
    SealedKey,
    SiteAudit,
    Update,
)
from protos import admin_pb2, admin_pb2_grpc, common_pb2, federation_pb2, federation_pb2_grpc, wire

TIMEOUT = 10.0
"""Deadline of every fuzzed call: a coordinator that hangs fails with DEADLINE_EXCEEDED."""

REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""The statuses that tell a caller what was wrong with its input."""

FRAMEWORK_DECODE_FAILURE = "Exception deserializing request!"
"""What grpcio itself answers (as INTERNAL) to bytes that do not parse as the request."""

WEIGHTS = [np.full((3, 2), 0.25, np.float32), np.full(2, -0.5, np.float32)]
MODEL_SHAPES = [(3, 2), (2,)]
SITE_NAME_RULE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"  # the documented rule, written out again
TRAVERSAL = [
    "..",
    "../../etc/passwd",
    "/etc/passwd",
    "..\\..\\windows\\win.ini",
    "%2e%2e%2f%2e%2e%2f",
    "blobs/../coordinator.db",
    ("../" * 22)[:64],
    "a" * 2 + "/" + "b" * 61,
    "\x00",
    "",
]

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# -- strategies ---------------------------------------------------------------------------

any_text = st.text(max_size=80)
ids = st.one_of(any_text, st.uuids().map(str), st.sampled_from(TRAVERSAL))
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
shas = st.one_of(hex64, hex64.map(str.upper), any_text, st.sampled_from(TRAVERSAL))
metadata_text = st.text(string.ascii_letters + string.digits + string.punctuation, max_size=60)
uint32 = st.integers(0, 2**32 - 1)
uint64 = st.integers(0, 2**64 - 1)
scalars = st.one_of(
    st.builds(common_pb2.Scalar),
    st.floats().map(lambda v: common_pb2.Scalar(double_value=v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: common_pb2.Scalar(int_value=v)),
    st.booleans().map(lambda v: common_pb2.Scalar(bool_value=v)),
    st.text(max_size=20).map(lambda v: common_pb2.Scalar(string_value=v)),
)
# Integers stay within float range: past it, summaries and run configs hit a known defect
# (test_audit_summary_that_overflows_or_nests_deeply_is_invalid_argument and
# test_create_run_with_a_malformed_config_is_invalid_argument).
json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(-(2**64), 2**64) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


# -- calling the coordinator --------------------------------------------------------------


def refused(call: Callable[[], object]) -> grpc.StatusCode:
    """Run a call that must be refused; its status must say what was wrong with the input."""
    try:
        reply = call()
    except grpc.RpcError as exc:
        assert exc.code() in REFUSALS, f"{exc.code().name}: {exc.details()}"
        return exc.code()
    raise AssertionError(f"hostile input was accepted: {reply!r:.300}")


def answered(call: Callable[[], object]) -> object:
    """Run a call that may succeed; if it is refused, the status must be a proper one."""
    try:
        return call()
    except grpc.RpcError as exc:
        assert exc.code() in REFUSALS, f"{exc.code().name}: {exc.details()}"
        return exc.code()


@dataclass
class Server:
    """A running coordinator and one channel's stubs on it."""

    running: RunningCoordinator
    federation: federation_pb2_grpc.FederationStub
    admin: admin_pb2_grpc.AdminStub
    health: health_pb2_grpc.HealthStub
    channel: grpc.Channel

    @classmethod
    def of(cls, running: RunningCoordinator) -> Server:
        channel = running.channel()
        return cls(
            running,
            federation_pb2_grpc.FederationStub(channel),
            admin_pb2_grpc.AdminStub(channel),
            health_pb2_grpc.HealthStub(channel),
            channel,
        )

    def footprint(self) -> dict[str, int]:
        """Rows that hold what sites and operators sent, and the files of the blob store."""
        tables = (Update, ModelVersion, SealedKey, SiteAudit, Run, Node, Enrolment, Operator)
        with self.running.hub.db.transaction() as session:
            counts = {
                table.__tablename__: int(session.scalar(select(func.count()).select_from(table)))
                for table in tables
            }
            counts["keyed_runs"] = int(
                session.scalar(select(func.count()).select_from(Run).where(Run.public_key != b""))
            )
        blobs = self.running.data_dir / "blobs"
        counts["blob_files"] = sum(1 for path in blobs.rglob("*") if path.is_file())
        return counts

    def audit_rows(self) -> int:
        with self.running.hub.db.transaction() as session:
            return int(session.scalar(select(func.count()).select_from(AuditEvent)))

    def assert_serving(self, site: FakeSite | None = None) -> None:
        check = self.health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        self.admin.ListRuns(admin_pb2.ListRunsRequest(), timeout=TIMEOUT)
        if site is not None:
            self.federation.Heartbeat(
                federation_pb2.HeartbeatRequest(), metadata=site.metadata, timeout=TIMEOUT
            )


@contextmanager
def coordinator_in(directory: Path, **limits: float) -> Iterator[Server]:
    running = start_coordinator(
        f"sqlite:///{directory / 'coordinator.db'}", directory / "data", **limits
    )
    try:
        yield Server.of(running)
    finally:
        for channel in running.channels:
            channel.close()
        running.server.stop(grace=0.5)


class FakeSite:
    """A hand-driven site over the agent's link (client/link.py): tests can break any message."""

    def __init__(self, stub, name: str = "site-a") -> None:
        self.stub = stub
        self.link = Link(stub, lambda: self.token)
        self.token = ""
        reply = self.link.join(
            federation_pb2.JoinRequest(site_name=name, x25519_public_key=b"k" * 32)
        )
        self.token = reply.node_token
        self.node_id = reply.node_id

    @property
    def metadata(self):  # type: ignore[no-untyped-def]
        return self.link.metadata()

    def pull(self, kind: int) -> federation_pb2.Task:
        for _ in range(50):
            task = self.link.pull(0.5)
            if task.kind == kind:
                return task
        raise AssertionError(f"no task of kind {kind}")

    def submit(
        self,
        task,
        payload: bytes,
        *,
        chunks: list[bytes] | None = None,
        sha: str | None = None,
        round_number: int | None = None,
        size: int | None = None,
        encoding: str = wire.TENSORS_FLOAT32,
    ):
        fields: dict[str, object] = {"encoding": encoding}
        if sha is not None:
            fields["payload_sha256"] = sha
        if round_number is not None:
            fields["round"] = round_number
        if size is not None:
            fields["payload_size"] = size
        header = header_for(task, payload, **fields)
        return self.link.send(header, chunks if chunks is not None else [payload])


def header_for(task: federation_pb2.Task, payload: bytes, **fields: object):
    """The header a well-behaved site sends with ``payload`` for ``task``, then ``fields``.

    The one place tests make a header a site would not send: the site's own header
    (client.link.update_header, unsigned: ten examples of float32 tensors) with ``fields``
    put over it as they are, defaults and nonsense included.
    """
    header = update_header(
        task, SiteUpdate(payload, wire.TENSORS_FLOAT32, num_examples=10, weight=10)
    )
    for name in fields:
        header.ClearField(name)
    header.MergeFrom(federation_pb2.UpdateHeader(**fields))
    return header


def update_messages(header, *pieces: bytes) -> list[federation_pb2.UpdateMessage]:
    """A stream a site's link would not send: every piece, empty ones too, as given."""
    return [federation_pb2.UpdateMessage(header=header)] + [
        federation_pb2.UpdateMessage(data=piece) for piece in pieces
    ]


def submit(site: FakeSite, messages: list[federation_pb2.UpdateMessage]):
    return site.stub.SubmitUpdate(iter(messages), metadata=site.metadata, timeout=TIMEOUT)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({min(max(c, 0), len(data)) for c in cuts}), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# -- servers under test -------------------------------------------------------------------


@dataclass
class OpenRound:
    """A plaintext run whose round 1 is open, with the site's TRAIN task in hand."""

    server: Server
    site: FakeSite
    outsider: FakeSite  # joined, but takes part in no run
    run: admin_pb2.RunInfo
    task: federation_pb2.Task
    payload: bytes  # a valid update for ``task``; the properties never send it whole


def open_round(server: Server) -> OpenRound:
    site = FakeSite(server.federation, "site-a")
    run = server.admin.CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=2,
            min_clients=1,
            round_deadline_seconds=3600,
        )
    )
    init = site.pull(federation_pb2.TASK_KIND_INIT)
    site.submit(init, wire.encode_tensors(WEIGHTS))
    task = site.pull(federation_pb2.TASK_KIND_TRAIN)
    outsider = FakeSite(server.federation, "site-b")
    payload = wire.encode_tensors([w + 1 for w in WEIGHTS])
    return OpenRound(server, site, outsider, run, task, payload)


@dataclass
class InitTask:
    """A run waiting for its initial weights, with the site's INIT task in hand."""

    server: Server
    site: FakeSite
    task: federation_pb2.Task


def waiting_for_initial_weights(server: Server) -> InitTask:
    site = FakeSite(server.federation)
    server.admin.CreateRun(admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, min_clients=1))
    return InitTask(server, site, site.pull(federation_pb2.TASK_KIND_INIT))


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenRound]:
    with coordinator_in(tmp_path_factory.mktemp("plain")) as server:
        yield open_round(server)


@pytest.fixture(scope="module")
def admin_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A coordinator with no sites (so runs stay pending) and one pending run."""
    with coordinator_in(tmp_path_factory.mktemp("admin")) as server:
        run = server.admin.CreateRun(
            admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, min_clients=1)
        )
        yield server, run.run_id


site_names = st.one_of(
    any_text,
    st.from_regex(SITE_NAME_RULE, fullmatch=True),
    st.from_regex(SITE_NAME_RULE, fullmatch=True).map(lambda name: f" {name}\n"),
    st.sampled_from(TRAVERSAL + ["site-a", "a" * 128, "a" * 129, "-a", ".", "a b"]),
)
