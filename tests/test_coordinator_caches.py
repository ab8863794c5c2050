"""The coordinator's caches (issue 14) never serve stale security state.

Credentials, the audit log's head, empty long polls and granted model fetches are kept in
memory to spare queries; each test here changes the state behind a warm cache the way a
rogue operator, a racing scheduler or a failed transaction would, and checks that the very
next call sees the change.
"""

from __future__ import annotations

import time

import grpc
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session
from test_federation_errors import expect_status
from test_revocation import ROOT, bearer, heartbeat, joined_site

from coordinator import auditlog
from coordinator.handout import TaskHandout
from coordinator.schema import Node, Run, RunState, Task, TaskKind, TaskState
from coordinator.server import CoordinatorServer
from protos import admin_pb2, admin_pb2_grpc, federation_pb2, federation_pb2_grpc


@pytest.fixture
def auth_coordinator(tmp_path):
    """Auth on (enrolment and roles enforced), a fast scheduler, on loopback."""
    server = CoordinatorServer(
        f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "data", port=0, auth=True, tick_seconds=0.05
    )
    server.access.bootstrap_admin(ROOT)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.start()}")
    yield server, channel
    channel.close()
    server.stop(grace=0.2)


def _warm(channel: grpc.Channel, token: str) -> None:
    """Two calls: the second is served from the credential cache."""
    heartbeat(channel, token)
    heartbeat(channel, token)


def test_revocation_written_straight_to_the_node_row_is_seen_at_once(auth_coordinator):
    server, channel = auth_coordinator
    node_id, token = joined_site(channel, "clinic")
    _warm(channel, token)

    with server.hub.db.transaction() as session:
        session.get(Node, node_id).revoked_at = time.time()

    detail = expect_status(grpc.StatusCode.UNAUTHENTICATED, lambda: heartbeat(channel, token))
    assert "revoked" in detail


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [("revoked_at", 1.0, "revoked"), ("token_expires_at", 1.0, "expired")],
    ids=["revoked", "expired"],
)
def test_a_bulk_update_of_nodes_is_seen_at_once(auth_coordinator, column, value, says):
    server, channel = auth_coordinator
    node_id, token = joined_site(channel, "clinic")
    _warm(channel, token)

    with server.hub.db.transaction() as session:
        session.execute(update(Node).where(Node.id == node_id).values({column: value}))

    detail = expect_status(grpc.StatusCode.UNAUTHENTICATED, lambda: heartbeat(channel, token))
    assert says in detail


def test_a_revocation_that_rolled_back_leaves_the_site_in(auth_coordinator):
    server, channel = auth_coordinator
    node_id, token = joined_site(channel, "clinic")
    _warm(channel, token)

    with pytest.raises(RuntimeError), server.hub.db.transaction() as session:
        session.get(Node, node_id).revoked_at = time.time()
        session.flush()
        raise RuntimeError("the revoking transaction fails")

    assert heartbeat(channel, token).server_time_unix > 0


def test_a_revoked_site_cannot_fetch_a_model_it_fetched_before(auth_coordinator):
    server, channel = auth_coordinator
    node_id, token = joined_site(channel, "clinic")
    sha = server.hub.blobs.put(b"model bytes")
    _running_run(server, initial_model_sha256=sha)
    with server.hub.db.transaction() as session:
        session.add(Task(id="t", run_id="r", node_id=node_id, kind=TaskKind.INIT, deadline=1e12))
    federation = federation_pb2_grpc.FederationStub(channel)

    def fetch() -> bytes:
        chunks = federation.FetchModel(
            federation_pb2.FetchModelRequest(run_id="r", sha256=sha), metadata=bearer(token)
        )
        return b"".join(chunk.data for chunk in chunks)

    assert fetch() == b"model bytes"  # granted, and remembered
    admin_pb2_grpc.AdminStub(channel).RevokeSite(
        admin_pb2.RevokeRequest(name="clinic", reason="compromised"), metadata=bearer(ROOT)
    )

    expect_status(grpc.StatusCode.UNAUTHENTICATED, fetch)


def _running_run(server: CoordinatorServer, run_id: str = "r", **columns: object) -> None:
    """A running run the scheduler leaves alone, so only the test gives tasks."""
    server.scheduler.stop()
    row = {"model": "m", "rounds": 1, "min_clients": 1, "round_deadline": 60.0} | columns
    with server.hub.db.transaction() as session:
        session.add(Run(id=run_id, state=RunState.RUNNING, **row))


def test_a_task_given_after_an_empty_poll_is_delivered(auth_coordinator):
    server, channel = auth_coordinator
    node_id, token = joined_site(channel, "clinic")
    _running_run(server)
    tasks = TaskHandout(server.hub)  # shares the hub's task marks with the servicer's
    # noted as idle
    assert tasks.pull_task_blocking(node_id, 0).kind == federation_pb2.TASK_KIND_NONE

    with server.hub.db.transaction() as session:
        session.add(Task(id="t", run_id="r", node_id=node_id, kind=TaskKind.INIT, deadline=1e12))

    assert tasks.pull_task_blocking(node_id, 0).task_id == "t"


def _start_run(session: Session) -> None:
    session.get(Run, "r").state = RunState.RUNNING


def _revive_task(session: Session) -> None:
    session.get(Task, "t").state = TaskState.PENDING


@pytest.mark.parametrize(
    ("run_state", "task_state", "change"),
    [
        (RunState.PENDING, TaskState.PENDING, _start_run),
        (RunState.RUNNING, TaskState.MISSED, _revive_task),
    ],
    ids=["a run that starts", "a task made live again"],
)
def test_a_change_that_makes_a_task_deliverable_reaches_an_idle_poll(
    auth_coordinator, run_state, task_state, change
):
    """A run's state and the task's own decide which tasks are live: either change moves polls."""
    server, channel = auth_coordinator
    node_id, token = joined_site(channel, "clinic")
    _running_run(server)
    with server.hub.db.transaction() as session:
        session.get(Run, "r").state = run_state
        session.add(
            Task(
                id="t",
                run_id="r",
                node_id=node_id,
                kind=TaskKind.INIT,
                deadline=1e12,
                state=task_state,
            )
        )
    tasks = TaskHandout(server.hub)
    # noted as idle
    assert tasks.pull_task_blocking(node_id, 0).kind == federation_pb2.TASK_KIND_NONE

    with server.hub.db.transaction() as session:
        change(session)

    assert tasks.pull_task_blocking(node_id, 0).task_id == "t"


def test_a_finished_task_or_a_run_counter_moves_no_poll(auth_coordinator):
    """Neither can give a node a task, so neither makes its parked polls query again."""
    server, channel = auth_coordinator
    node_id, token = joined_site(channel, "clinic")
    _running_run(server)
    with server.hub.db.transaction() as session:
        session.add(Task(id="t", run_id="r", node_id=node_id, kind=TaskKind.INIT, deadline=1e12))
    before = server.hub.tasks.mark(node_id)

    with server.hub.db.transaction() as session:
        session.get(Task, "t").state = TaskState.DONE
        run = session.get(Run, "r")
        run.current_round += 1
        run.round_attempts += 1

    assert server.hub.tasks.mark(node_id) == before


def test_a_task_cancelled_before_its_delivery_lands_is_not_handed_out(auth_coordinator):
    """The scheduler cancels the task between the poll's read and its write: no delivery."""
    server, channel = auth_coordinator
    node_id, token = joined_site(channel, "clinic")
    _running_run(server)
    with server.hub.db.transaction() as session:
        session.add(Task(id="t", run_id="r", node_id=node_id, kind=TaskKind.INIT, deadline=1e12))
    tasks = TaskHandout(server.hub)  # shares the hub's task marks with the servicer's
    real_message = tasks._task_message

    def cancel_meanwhile(session: Session, task: Task) -> federation_pb2.Task:
        message = real_message(session, task)
        with server.hub.lock, server.hub.db.transaction() as other:
            other.get(Task, task.id).state = TaskState.CANCELLED
        return message

    tasks._task_message = cancel_meanwhile

    assert tasks.pull_task_blocking(node_id, 0).kind == federation_pb2.TASK_KIND_NONE
    with server.hub.db.transaction() as session:
        assert session.get(Task, "t").state == TaskState.CANCELLED


def test_a_poll_that_loses_its_task_to_the_scheduler_hands_out_the_next_one(auth_coordinator):
    """Review: the task a poll picked goes MISSED before its delivery lands; the node's
    other live task (another run) must still reach it, not wait behind an idle note."""
    server, channel = auth_coordinator
    node_id, token = joined_site(channel, "clinic")
    for run_id, created in (("a", 1.0), ("b", 2.0)):
        _running_run(server, run_id)
        with server.hub.db.transaction() as session:
            session.add(_task(node_id, f"t-{run_id}", run_id, created))
    tasks = TaskHandout(server.hub)
    real_message = tasks._task_message
    missed: list[str] = []

    def miss_meanwhile(session: Session, task: Task) -> federation_pb2.Task:
        message = real_message(session, task)
        if not missed:
            missed.append(task.id)
            with server.hub.lock, server.hub.db.transaction() as other:
                other.get(Task, task.id).state = TaskState.MISSED
        return message

    tasks._task_message = miss_meanwhile

    assert tasks.pull_task_blocking(node_id, 0).kind == federation_pb2.TASK_KIND_NONE  # lost "t-a"
    assert missed == ["t-a"]
    assert tasks.pull_task_blocking(node_id, 0).task_id == "t-b"


def _counting_deliveries(tasks: TaskHandout) -> list[str]:
    """Record each database look a poll makes (``_deliver``) by node."""
    looks: list[str] = []
    real = tasks._deliver

    def counted(node_id: str, mark: tuple[int, int]) -> federation_pb2.Task | None:
        looks.append(node_id)
        return real(node_id, mark)

    tasks._deliver = counted  # type: ignore[method-assign]
    return looks


def _task(node_id: str, task_id: str, run_id: str = "r", created: float = 1.0) -> Task:
    return Task(
        id=task_id,
        run_id=run_id,
        node_id=node_id,
        kind=TaskKind.TRAIN,
        round=1,
        deadline=1e12,
        created_at=created,
    )


def _t1_handed_out(auth_coordinator):  # type: ignore[no-untyped-def]
    """A site whose one task "t1" was just handed out: (server, node, hand-out, its looks)."""
    server, channel = auth_coordinator
    node_id, _ = joined_site(channel, "clinic")
    _running_run(server)
    with server.hub.db.transaction() as session:
        session.add(_task(node_id, "t1"))
    tasks = TaskHandout(server.hub)
    looks = _counting_deliveries(tasks)
    assert tasks.pull_task_blocking(node_id, 0).task_id == "t1"
    return server, node_id, tasks, looks


def test_the_poll_after_a_sole_task_finishes_makes_no_query_and_still_sees_the_next(
    auth_coordinator,
):
    """A node's one deliverable task is handed out and finished: its next poll parks without
    asking the database (the empty look after every submit), and a task added later still
    reaches it."""
    server, node_id, tasks, looks = _t1_handed_out(auth_coordinator)
    with server.hub.db.transaction() as session:
        session.get(Task, "t1").state = TaskState.DONE

    assert tasks.pull_task_blocking(node_id, 0).kind == federation_pb2.TASK_KIND_NONE
    assert looks == [node_id]  # the second poll made no query

    with server.hub.db.transaction() as session:
        session.add(_task(node_id, "t2", created=2.0))
    assert tasks.pull_task_blocking(node_id, 0).task_id == "t2"


@pytest.mark.parametrize("other_run_state", [RunState.RUNNING, RunState.PENDING])
def test_a_finished_task_that_was_not_the_only_one_leaves_the_next_poll_asking(
    auth_coordinator, other_run_state
):
    """Hostile orderings for the idle note: a second live task (its run running, or
    pending and started later) must still be handed out after the first one finishes."""
    server, channel = auth_coordinator
    node_id, token = joined_site(channel, "clinic")
    _running_run(server, "a")
    _running_run(server, "b")
    with server.hub.db.transaction() as session:
        session.get(Run, "b").state = other_run_state
        session.add(_task(node_id, "t-a", "a", created=1.0))
        session.add(_task(node_id, "t-b", "b", created=2.0))
    tasks = TaskHandout(server.hub)
    assert tasks.pull_task_blocking(node_id, 0).task_id == "t-a"
    with server.hub.db.transaction() as session:
        session.get(Task, "t-a").state = TaskState.DONE
    if other_run_state == RunState.PENDING:
        # t-b was not deliverable, so t-a was the only one: the node is idle until b starts.
        assert tasks.pull_task_blocking(node_id, 0).kind == federation_pb2.TASK_KIND_NONE
        with server.hub.db.transaction() as session:
            session.get(Run, "b").state = RunState.RUNNING

    assert tasks.pull_task_blocking(node_id, 0).task_id == "t-b"


def test_a_sole_task_finished_after_a_new_one_arrived_leaves_the_next_poll_asking(
    auth_coordinator,
):
    """The mark moved between the hand-out and the finish: the idle note must not be made."""
    server, node_id, tasks, _ = _t1_handed_out(auth_coordinator)
    with server.hub.db.transaction() as session:
        session.add(_task(node_id, "t2", created=2.0))
    with server.hub.db.transaction() as session:
        session.get(Task, "t1").state = TaskState.DONE

    assert tasks.pull_task_blocking(node_id, 0).task_id == "t2"


def test_a_rolled_back_audit_row_does_not_move_the_log_head(auth_coordinator):
    server, _ = auth_coordinator
    hub = server.hub
    with hub.db.transaction() as session:
        auditlog.append(session, "test.committed")
    committed = hub.log_head.peek()

    with pytest.raises(RuntimeError), hub.lock, hub.db.transaction() as session:
        auditlog.append(session, "test.rolled_back")
        raise RuntimeError("the transaction fails after its row was flushed")
    with hub.lock, hub.db.transaction() as session:
        row = auditlog.append(session, "test.after")

    assert committed is not None and row.seq == committed[0] + 1
    assert row.prev_hash == committed[1]
    with hub.db.transaction() as session:
        verdict = auditlog.verify_chain(auditlog.all_rows(session))
    assert verdict.ok and verdict.head_hash == row.hash == hub.log_head.peek()[1]


def test_a_revocation_this_process_did_not_write_is_seen_within_the_cache_age(tmp_path):
    # A second coordinator process on the same database (deployment forbids it, nothing can
    # always prevent it) or an operator's psql: no event reaches this process's cache.
    url = f"sqlite:///{tmp_path / 'c.db'}"
    first = CoordinatorServer(url, tmp_path / "data", port=0, auth=True, tick_seconds=3600)
    first.access.bootstrap_admin(ROOT)
    first.hub.credentials.max_age_s = 0.3
    channel = grpc.insecure_channel(f"127.0.0.1:{first.start()}")
    other = CoordinatorServer(url, tmp_path / "data", port=0, auth=True, tick_seconds=3600)
    try:
        node_id, token = joined_site(channel, "clinic")
        _warm(channel, token)
        other.access.revoke_site("clinic", "stolen token", "root")
        time.sleep(0.4)
        # The refusal's own audit row may meet the log head the other writer moved: that
        # call fails (INTERNAL, never a fork) and the head is read again for the next.
        with pytest.raises(grpc.RpcError) as first_call:
            heartbeat(channel, token)
        assert first_call.value.code() in {
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.INTERNAL,
        }
        detail = expect_status(grpc.StatusCode.UNAUTHENTICATED, lambda: heartbeat(channel, token))
        assert "revoked" in detail
    finally:
        channel.close()
        first.stop(grace=0.1)
        other.stop(grace=0.1)


def test_a_log_head_left_behind_by_another_writer_fails_one_append_then_heals(tmp_path):
    from sqlalchemy.exc import IntegrityError

    from coordinator.hub import Hub

    url = f"sqlite:///{tmp_path / 'c.db'}"
    mine, other = Hub.open(url, tmp_path / "a"), Hub.open(url, tmp_path / "b")
    with mine.lock, mine.db.transaction() as session:
        auditlog.append(session, "mine.first")  # the head is now held in memory
    with other.lock, other.db.transaction() as session:
        auditlog.append(session, "other.row")  # the database moves on behind it

    with pytest.raises(IntegrityError), mine.lock, mine.db.transaction() as session:
        auditlog.append(session, "mine.stale")  # refused: never a fork
    with mine.lock, mine.db.transaction() as session:
        auditlog.append(session, "mine.after")  # and the next append reads the head again

    with mine.db.transaction() as session:
        rows = session.query(auditlog.AuditEvent).order_by(auditlog.AuditEvent.seq).all()
        assert [row.kind for row in rows] == ["mine.first", "other.row", "mine.after"]
        assert auditlog.verify_chain(rows).ok
