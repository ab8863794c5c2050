"""Node and operator tokens expire and can be revoked; revoked and expired tokens are refused."""

from __future__ import annotations

import time
from concurrent import futures

import grpc
import pytest
from sqlalchemy import select, update
from test_federation_errors import expect_status
from typer.testing import CliRunner

from cli.main import app
from coordinator.schema import AuditEvent, Node, Operator, Run, RunState, Task, TaskKind, TaskState
from coordinator.server import CoordinatorServer
from protos import admin_pb2, admin_pb2_grpc, federation_pb2, federation_pb2_grpc, wire

runner = CliRunner()
ROOT = "root-token-for-tests"


@pytest.fixture
def auth_coordinator(tmp_path):
    """Auth on, on loopback (plaintext is allowed there): enrolment and roles enforced."""
    server = CoordinatorServer(
        f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "data", port=0, auth=True, tick_seconds=0.05
    )
    server.access.bootstrap_admin(ROOT)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, port, channel
    channel.close()
    server.stop(grace=0.2)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return ((wire.NODE_TOKEN_HEADER, f"Bearer {token}"),)


def joined_site(channel: grpc.Channel, name: str = "clinic") -> tuple[str, str]:
    admin = admin_pb2_grpc.AdminStub(channel)
    enrolment = admin.EnrolSite(admin_pb2.EnrolSiteRequest(site_name=name), metadata=bearer(ROOT))
    reply = federation_pb2_grpc.FederationStub(channel).Join(
        federation_pb2.JoinRequest(
            site_name=name, x25519_public_key=b"k" * 32, enrolment_token=enrolment.token
        )
    )
    return reply.node_id, reply.node_token


def heartbeat(channel: grpc.Channel, token: str) -> object:
    return federation_pb2_grpc.FederationStub(channel).Heartbeat(
        federation_pb2.HeartbeatRequest(), metadata=bearer(token)
    )


def kinds(server: CoordinatorServer) -> list[str]:
    with server.hub.db.transaction() as session:
        return list(session.scalars(select(AuditEvent.kind)))


def test_revoked_site_is_refused_at_once_and_cannot_rejoin(auth_coordinator):
    server, _, channel = auth_coordinator
    _, token = joined_site(channel)
    heartbeat(channel, token)

    reply = admin_pb2_grpc.AdminStub(channel).RevokeSite(
        admin_pb2.RevokeRequest(name="clinic", reason="laptop stolen"), metadata=bearer(ROOT)
    )

    assert reply.revoked == 1
    detail = expect_status(grpc.StatusCode.UNAUTHENTICATED, lambda: heartbeat(channel, token))
    assert "revoked" in detail
    expect_status(
        grpc.StatusCode.UNAUTHENTICATED,
        lambda: federation_pb2_grpc.FederationStub(channel).Join(
            federation_pb2.JoinRequest(site_name="clinic", node_token=token)
        ),
    )
    assert "site.revoked" in kinds(server)


def test_expired_node_token_is_refused(auth_coordinator):
    server, _, channel = auth_coordinator
    node_id, token = joined_site(channel)
    with server.hub.db.transaction() as session:
        session.execute(
            update(Node).where(Node.id == node_id).values(token_expires_at=time.time() - 1)
        )

    detail = expect_status(grpc.StatusCode.UNAUTHENTICATED, lambda: heartbeat(channel, token))

    assert "expired" in detail


def test_a_node_token_in_use_has_a_sliding_expiry(auth_coordinator):
    server, _, channel = auth_coordinator
    node_id, token = joined_site(channel)
    with server.hub.db.transaction() as session:
        session.execute(update(Node).where(Node.id == node_id).values(last_seen=0.0))

    heartbeat(channel, token)
    server.hub.presence.flush(server.hub.db, force=True)  # signs of life are batched

    with server.hub.db.transaction() as session:
        expires = session.get(Node, node_id).token_expires_at
    idle = server.hub.limits.node_token_idle_seconds
    assert time.time() + idle - 60 < expires <= time.time() + idle


def test_revoked_operator_is_refused(auth_coordinator):
    server, _, channel = auth_coordinator
    admin = admin_pb2_grpc.AdminStub(channel)
    token = admin.AddOperator(
        admin_pb2.AddOperatorRequest(name="eve", role="auditor"), metadata=bearer(ROOT)
    ).token
    admin.ListRuns(admin_pb2.ListRunsRequest(), metadata=bearer(token))

    admin.RevokeOperator(admin_pb2.RevokeRequest(name="eve"), metadata=bearer(ROOT))

    detail = expect_status(
        grpc.StatusCode.UNAUTHENTICATED,
        lambda: admin.ListRuns(admin_pb2.ListRunsRequest(), metadata=bearer(token)),
    )
    assert "revoked" in detail
    assert "operator.revoked" in kinds(server)


def test_expired_operator_token_is_refused(auth_coordinator):
    server, _, channel = auth_coordinator
    admin = admin_pb2_grpc.AdminStub(channel)
    token = admin.AddOperator(
        admin_pb2.AddOperatorRequest(name="ann", role="auditor"), metadata=bearer(ROOT)
    ).token
    with server.hub.db.transaction() as session:
        expires = session.scalar(select(Operator.expires_at).where(Operator.name == "ann"))
        session.execute(
            update(Operator).where(Operator.name == "ann").values(expires_at=time.time() - 1)
        )

    detail = expect_status(
        grpc.StatusCode.UNAUTHENTICATED,
        lambda: admin.ListRuns(admin_pb2.ListRunsRequest(), metadata=bearer(token)),
    )

    assert expires > time.time() + 86400  # issued with a finite lifetime
    assert "expired" in detail


def test_an_auditor_may_not_revoke(auth_coordinator):
    _, _, channel = auth_coordinator
    admin = admin_pb2_grpc.AdminStub(channel)
    token = admin.AddOperator(
        admin_pb2.AddOperatorRequest(name="aud", role="auditor"), metadata=bearer(ROOT)
    ).token

    expect_status(
        grpc.StatusCode.PERMISSION_DENIED,
        lambda: admin.RevokeSite(admin_pb2.RevokeRequest(name="x"), metadata=bearer(token)),
    )


def test_cli_revokes_sites_and_operators(auth_coordinator, tmp_path):
    _, port, channel = auth_coordinator
    _, token = joined_site(channel, "lab")
    admin_pb2_grpc.AdminStub(channel).AddOperator(
        admin_pb2.AddOperatorRequest(name="bob", role="admin"), metadata=bearer(ROOT)
    )
    token_file = tmp_path / "root.token"
    token_file.write_text(ROOT)
    common = ["--coordinator", f"127.0.0.1:{port}", "--insecure", "--token-file", str(token_file)]

    site = runner.invoke(app, ["admin", "sites", "revoke", "lab", *common])
    operator = runner.invoke(app, ["admin", "operators", "revoke", "bob", *common])
    unknown = runner.invoke(app, ["admin", "sites", "revoke", "nobody", *common])

    assert site.exit_code == 0 and "revoked 1" in site.output
    assert operator.exit_code == 0 and "revoked" in operator.output
    assert unknown.exit_code == 2 and "no site 'nobody'" in unknown.output
    expect_status(grpc.StatusCode.UNAUTHENTICATED, lambda: heartbeat(channel, token))


def test_the_init_admin_is_renewed_at_start_unless_revoked(auth_coordinator):
    server, _, _ = auth_coordinator
    with server.hub.db.transaction() as session:
        session.execute(
            update(Operator).where(Operator.name == "admin").values(expires_at=time.time() - 1)
        )

    server.access.bootstrap_admin(ROOT)

    with server.hub.db.transaction() as session:
        renewed = session.scalar(select(Operator.expires_at).where(Operator.name == "admin"))
        session.execute(
            update(Operator).where(Operator.name == "admin").values(revoked_at=time.time())
        )
    server.access.bootstrap_admin(ROOT)
    with server.hub.db.transaction() as session:
        revoked = session.scalar(select(Operator).where(Operator.name == "admin"))
    assert renewed > time.time() + 86400
    assert revoked.revoked_at  # a revoked init token stays revoked
    assert "operator.renewed" in kinds(server)


def _pull(channel: grpc.Channel, token: str, wait: float) -> federation_pb2.Task:
    return federation_pb2_grpc.FederationStub(channel).PullTask(
        federation_pb2.PullTaskRequest(wait_seconds=wait), metadata=bearer(token), timeout=30
    )


def _parked_then_revoked(
    server, channel: grpc.Channel, token: str, node_id: str, pool: futures.Executor
) -> futures.Future:
    """A 20 s PullTask, parked at the coordinator, then the site revoked: the poll's future."""
    parked = pool.submit(_pull, channel, token, 20)
    deadline = time.monotonic() + 10
    while not server.hub.tasks.parked(node_id) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.hub.tasks.parked(node_id), "the poll never parked"
    admin_pb2_grpc.AdminStub(channel).RevokeSite(
        admin_pb2.RevokeRequest(name="clinic", reason="compromised"), metadata=bearer(ROOT)
    )
    return parked


def test_a_revoked_site_is_neither_counted_nor_selected(auth_coordinator):
    """Revoked seconds after its last heartbeat, a site must not fill a run's quorum."""
    server, _, channel = auth_coordinator
    clinic, clinic_token = joined_site(channel, "clinic")
    heartbeat(channel, clinic_token)
    admin_pb2_grpc.AdminStub(channel).RevokeSite(
        admin_pb2.RevokeRequest(name="clinic", reason="compromised"), metadata=bearer(ROOT)
    )
    lab, lab_token = joined_site(channel, "lab")
    heartbeat(channel, lab_token)
    run = admin_pb2_grpc.AdminStub(channel).CreateRun(
        admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, min_clients=2),
        metadata=bearer(ROOT),
    )
    time.sleep(0.5)  # many scheduler ticks

    with server.hub.db.transaction() as session:
        assert session.get(Run, run.run_id).state == RunState.PENDING
        assert not list(session.scalars(select(Task).where(Task.node_id == clinic)))

    museum, museum_token = joined_site(channel, "museum")
    heartbeat(channel, museum_token)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with server.hub.db.transaction() as session:
            if session.get(Run, run.run_id).state == RunState.RUNNING:
                break
        time.sleep(0.05)
    with server.hub.db.transaction() as session:
        assert session.get(Run, run.run_id).state == RunState.RUNNING
        assert {t.node_id for t in session.scalars(select(Task))} <= {lab, museum}


def test_a_poll_parked_before_revocation_is_handed_no_task(auth_coordinator):
    """A PullTask authenticated before the revocation must not wake up to a task after it."""
    server, _, channel = auth_coordinator
    node_id, token = joined_site(channel, "clinic")
    run = admin_pb2_grpc.AdminStub(channel).CreateRun(
        admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, min_clients=3),
        metadata=bearer(ROOT),
    )
    with futures.ThreadPoolExecutor(1) as pool:
        parked = _parked_then_revoked(server, channel, token, node_id, pool)
        # A task for the node appears after the revocation (a scheduler pass that raced it).
        with server.hub.db.transaction() as session:
            session.get(Run, run.run_id).state = RunState.RUNNING
            session.add(
                Task(
                    id="raced-task",
                    run_id=run.run_id,
                    node_id=node_id,
                    kind=TaskKind.INIT,
                    deadline=time.time() + 600,
                )
            )

        detail = expect_status(grpc.StatusCode.UNAUTHENTICATED, parked.result)
    assert "revoked" in detail
    with server.hub.db.transaction() as session:
        assert session.get(Task, "raced-task").state == TaskState.PENDING


def test_a_parked_poll_is_refused_as_soon_as_its_site_is_revoked(auth_coordinator):
    server, _, channel = auth_coordinator
    node_id, token = joined_site(channel, "clinic")
    with futures.ThreadPoolExecutor(1) as pool:
        parked = _parked_then_revoked(server, channel, token, node_id, pool)
        # Woken by the revocation: a poll left to run out would answer "no task" instead.
        expect_status(grpc.StatusCode.UNAUTHENTICATED, parked.result)


def test_an_update_sent_before_revocation_is_not_summed(tmp_path):
    """Revoked mid-round after sending a (poisoned) update: the round neither sums nor counts it."""
    from conftest import start_coordinator
    from fuzzing import WEIGHTS, FakeSite, Server

    from coordinator.schema import Round, Update

    running = start_coordinator(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "data")
    server = Server.of(running)
    try:
        a, b = FakeSite(server.federation, "clinic-a"), FakeSite(server.federation, "clinic-b")
        run = server.admin.CreateRun(
            admin_pb2.CreateRunRequest(
                model="tabular_mlp",
                rounds=2,
                min_clients=2,
                round_deadline_seconds=3600,
                config_json='{"quorum": 1}',
            )
        )
        init_site = None
        deadline = time.monotonic() + 10
        while init_site is None and time.monotonic() < deadline:
            holders = {t.node_id for t in _tasks(running.server) if t.kind == TaskKind.INIT}
            init_site = next((s for s in (a, b) if s.node_id in holders), None)
            time.sleep(0.02)
        assert init_site is not None, "no INIT task"
        init = init_site.pull(federation_pb2.TASK_KIND_INIT)
        init_site.submit(init, wire.encode_tensors(WEIGHTS))
        train_a = a.pull(federation_pb2.TASK_KIND_TRAIN)
        train_b = b.pull(federation_pb2.TASK_KIND_TRAIN)
        a.submit(train_a, wire.encode_tensors([w + 100 for w in WEIGHTS]))
        assert running.server.access.revoke_site("clinic-a", "compromised", "root") == 1
        b.submit(train_b, wire.encode_tensors([w + 1 for w in WEIGHTS]))

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with running.server.hub.db.transaction() as session:
                first = session.scalar(
                    select(Round).where(Round.run_id == run.run_id, Round.number == 1)
                )
                if first is not None and first.model_sha256:
                    break
            time.sleep(0.05)
        with running.server.hub.db.transaction() as session:
            first = session.scalar(
                select(Round).where(Round.run_id == run.run_id, Round.number == 1)
            )
            assert first.model_sha256, "round 1 never closed"
            assert first.num_updates == 1
            assert len(list(session.scalars(select(Update)))) == 2  # a's stays on record
    finally:
        running.server.stop(grace=0.2)


def _tasks(server: CoordinatorServer) -> list[Task]:
    with server.hub.db.transaction() as session:
        tasks = list(session.scalars(select(Task)))
        session.expunge_all()
    return tasks


def test_the_manifest_lists_exactly_what_the_round_summed_across_revocations(tmp_path):
    """Second review (HIGH): the scheduler left a revoked site's update out of the sum while
    the signed manifest still listed it, so every site refused the secure aggregate."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from coordinator import manifests, queries
    from coordinator.schema import Base, Institution, Round, Update

    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Institution(id=1, name="i"))
        session.add_all(
            [
                Node(id="during", institution_id=1, token_hash="x", revoked_at=150.0),
                Node(id="honest", institution_id=1, token_hash="y"),
                Node(id="after", institution_id=1, token_hash="z", revoked_at=300.0),
            ]
        )
        session.add(Run(id="r", model="m", rounds=1, min_clients=1, round_deadline=60.0))
        session.add(Round(run_id="r", number=1, deadline=1e9, closed_at=200.0))
        for node in ("during", "honest", "after"):
            session.add(
                Update(
                    run_id="r",
                    round=1,
                    node_id=node,
                    task_id=f"t-{node}",
                    blob_sha256=node[0] * 64,
                    weight=1,
                    size=10,
                    num_examples=5,
                    encoding="paillier",
                )
            )
        session.commit()

        summed = queries.summed_updates(session, "r", 1, closed_at=200.0)
        aggregate = federation_pb2.AggregateRef(round=1, total_weight=len(summed))
        manifests.add_contributions(session, "r", aggregate)

    assert [u.node_id for u in summed] == ["after", "honest"]  # revoked after: still summed
    assert [c.node_id for c in aggregate.contributions] == ["after", "honest"]
    assert sum(c.weight for c in aggregate.contributions) == aggregate.total_weight
