"""Long polls park coroutines, not threads (issue 14): many sites on a small thread pool.

The coordinator serves on grpc's asyncio server; a parked PullTask is a future on its
event loop. Here 60 sites park long polls at a coordinator whose thread pool has 8
threads: on the sync server (a thread per call) they would take every thread, and an
operator's or another site's call would wait for one.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_coordinator_caches import _running_run
from test_revocation import ROOT, bearer, heartbeat, joined_site

from coordinator.schema import Task, TaskKind, ThresholdPartial
from coordinator.server import CoordinatorServer
from protos import admin_pb2, admin_pb2_grpc, federation_pb2, federation_pb2_grpc

SITES = 60
POOL = 8
WATCHES = 12  # more than the pool, under one caller's cap of 16


@pytest.fixture
def small_pool(tmp_path):
    server = CoordinatorServer(
        f"sqlite:///{tmp_path / 'c.db'}",
        tmp_path / "data",
        port=0,
        auth=True,
        tick_seconds=0.05,
        max_workers=POOL,
    )
    server.access.bootstrap_admin(ROOT)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.start()}")
    yield server, channel
    channel.close()
    server.stop(grace=0.2)


def _park(channel: grpc.Channel, token: str, wait: float = 20.0) -> grpc.Future:
    """A PullTask in flight without a client thread (the stub's future form)."""
    return federation_pb2_grpc.FederationStub(channel).PullTask.future(
        federation_pb2.PullTaskRequest(wait_seconds=wait), metadata=bearer(token), timeout=30
    )


def _until(condition, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_many_parked_polls_hold_no_threads_and_others_are_served(small_pool):
    server, channel = small_pool
    sites = [joined_site(channel, f"site-{i}") for i in range(SITES)]
    threads_before = threading.active_count()

    polls = [_park(channel, token) for _, token in sites]
    _until(lambda: server.hub.tasks.parked() == SITES)

    # Every pool thread is free: calls that need one are answered at once.
    started = time.monotonic()
    for _, token in sites[:20]:
        heartbeat(channel, token)
    admin_pb2_grpc.AdminStub(channel).ListRuns(admin_pb2.ListRunsRequest(), metadata=bearer(ROOT))
    assert time.monotonic() - started < 10
    # The coordinator grew by at most its pool, not by a thread per parked poll.
    assert threading.active_count() - threads_before <= POOL
    assert server.hub.tasks.parked() == SITES

    # A task for one site reaches that site's parked poll; the others stay parked.
    node_id, _ = sites[7]
    _running_run(server)
    with server.hub.db.transaction() as session:
        session.add(Task(id="t", run_id="r", node_id=node_id, kind=TaskKind.INIT, deadline=1e12))
    assert polls[7].result(timeout=10).task_id == "t"
    _until(lambda: server.hub.tasks.parked() == SITES - 1)
    for poll in polls:
        poll.cancel()


def test_a_poll_whose_caller_leaves_stops_waiting_and_frees_its_slot(small_pool):
    """A cancelled call ends its coroutine at once: not parked, not counted against its cap."""
    server, channel = small_pool
    node_id, token = joined_site(channel, "clinic")
    # The caller's cap (16 calls at once per token) fills with polls, then they leave.
    for _ in range(3):
        polls = [_park(channel, token) for _ in range(16)]
        _until(lambda: server.hub.tasks.parked(node_id) == 16)
        for poll in polls:
            poll.cancel()
        _until(lambda: server.hub.tasks.parked(node_id) == 0)
    # Were the cancelled polls still counted, this one would be refused (RESOURCE_EXHAUSTED).
    reply = federation_pb2_grpc.FederationStub(channel).PullTask(
        federation_pb2.PullTaskRequest(wait_seconds=0), metadata=bearer(token), timeout=10
    )
    assert reply.kind == federation_pb2.TASK_KIND_NONE


def test_stopping_the_coordinator_ends_parked_polls(tmp_path):
    server = CoordinatorServer(
        f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "data", port=0, auth=True
    )
    server.access.bootstrap_admin(ROOT)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.start()}")
    node_id, token = joined_site(channel, "clinic")
    poll = _park(channel, token, wait=25)
    _until(lambda: server.hub.tasks.parked(node_id) == 1)

    started = time.monotonic()
    server.stop(grace=1.0)

    assert time.monotonic() - started < 10
    try:
        reply = poll.result(timeout=10)
    except grpc.RpcError as exc:  # the server went away: the site's agent retries
        assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    else:
        assert reply.kind == federation_pb2.TASK_KIND_NONE
    channel.close()


def test_run_watches_hold_no_threads_and_one_whose_watcher_leaves_ends(small_pool):
    """More watches than pool threads, calls still served; a watcher that leaves ends its
    watch at once (on the sync server it held its thread until the run ended)."""
    server, channel = small_pool
    admin = admin_pb2_grpc.AdminStub(channel)
    run = admin.CreateRun(
        admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, min_clients=5),
        metadata=bearer(ROOT),
    )  # waits for five sites that never come: the run stays pending
    watches = [
        admin.WatchRun(admin_pb2.GetRunRequest(run_id=run.run_id), metadata=bearer(ROOT))
        for _ in range(WATCHES)
    ]
    for watch in watches:
        assert next(watch).run.run_id == run.run_id  # the first snapshot
    _until(lambda: len(server.hub._waiters) == WATCHES)

    started = time.monotonic()
    admin.ListRuns(admin_pb2.ListRunsRequest(), metadata=bearer(ROOT))
    assert time.monotonic() - started < 10

    for watch in watches:
        watch.cancel()
    _until(lambda: not server.hub._waiters)


def _stop_within(server: CoordinatorServer, seconds: float = 15.0) -> None:
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 0.3}, daemon=True)
    stopper.start()
    stopper.join(seconds)
    assert not stopper.is_alive(), "the coordinator's stop hung"


def test_downloads_abandoned_mid_stream_free_their_threads_and_the_stop(tmp_path, monkeypatch):
    """Review: a plain streaming handler whose caller left blocked its pool thread for
    good on grpc's asyncio server, and the stop waited for it. Sites that drop a model
    download (a deadline on a slow link) must leave the pool and their cap slots free."""
    from coordinator.handout import TaskHandout

    monkeypatch.setattr(TaskHandout, "fetch_model", lambda *_: b"m" * (8 << 20))  # 8 chunks
    server = CoordinatorServer(
        f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "data", port=0, auth=True, max_workers=2
    )
    server.access.bootstrap_admin(ROOT)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.start()}")
    node_id, token = joined_site(channel, "clinic")
    federation = federation_pb2_grpc.FederationStub(channel)
    for _ in range(20):  # more than the pool and than the caller's cap of 16
        stream = federation.FetchModel(
            federation_pb2.FetchModelRequest(run_id="r", sha256="x"),
            metadata=bearer(token),
            timeout=30,
        )
        assert next(stream).data
        stream.cancel()

    heartbeat(channel, token)  # a pool thread and a cap slot are free
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    channel.close()
    _stop_within(server)


def test_health_watches_and_run_watches_end_cleanly_at_stop(tmp_path):
    """A health Watch waits on the loop (grpc_health's asyncio servicer), and a run watch
    open when the coordinator stops ends UNAVAILABLE, not as if its run had ended."""
    server = CoordinatorServer(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "data", port=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.start()}")
    health = health_pb2_grpc.HealthStub(channel)
    left = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(POOL)]
    for watch in left:
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
    health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    open_watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
    next(open_watch)
    leaving = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
    next(leaving)
    leaving.cancel()  # upstream's servicer then forgot the other watchers (review)
    admin = admin_pb2_grpc.AdminStub(channel)
    run = admin.CreateRun(admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, min_clients=5))
    run_watch = admin.WatchRun(admin_pb2.GetRunRequest(run_id=run.run_id), timeout=30)
    next(run_watch)

    _stop_within(server)

    with pytest.raises(grpc.RpcError) as ended:
        list(run_watch)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    statuses = []
    with pytest.raises(grpc.RpcError):
        for reply in open_watch:
            statuses.append(reply.status)
    assert statuses == [health_pb2.HealthCheckResponse.NOT_SERVING]
    channel.close()


def test_a_plain_handler_that_runs_after_its_caller_left_reads_the_call_safely(
    tmp_path, monkeypatch
):
    """Review: grpc.aio releases a call when its caller leaves; a pool thread that then
    asked it for its peer crashed the process. Plain handlers see what was read on the
    event loop when the call began."""
    from coordinator.services import FederationServicer

    seen: list[tuple[str, int]] = []
    done = threading.Event()

    def slow_heartbeat(self, request, context):  # type: ignore[no-untyped-def]
        time.sleep(0.6)  # the caller's 0.2 s deadline passes meanwhile
        seen.append((context.peer(), len(context.invocation_metadata())))
        done.set()
        return federation_pb2.HeartbeatReply()

    monkeypatch.setattr(FederationServicer, "Heartbeat", slow_heartbeat)
    server = CoordinatorServer(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "data", port=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.start()}")
    stub = federation_pb2_grpc.FederationStub(channel)
    with pytest.raises(grpc.RpcError) as late:
        stub.Heartbeat(federation_pb2.HeartbeatRequest(), metadata=bearer("t"), timeout=0.2)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert done.wait(10)
    assert seen[0][0].startswith("ipv4:127.0.0.1:") and seen[0][1] >= 1
    channel.close()
    _stop_within(server)


def _threshold_run(server: CoordinatorServer, holders: list[str]) -> None:
    """A running 2-of-N run whose share holders are ``holders``; no scheduler moves it."""
    _running_run(server, "th", min_clients=2, config={"threshold": 2}, participants=holders)


def _stored_as_sent(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """SubmitPartials stores what it is sent, unchecked (its checks need a dealt run), so a
    test's submit goes through the servicer and the relay's wake-up as a real one does."""
    from coordinator import threshold

    def store(session, node_id, request):  # type: ignore[no-untyped-def]
        session.add(
            ThresholdPartial(
                run_id=request.run_id,
                round=request.round,
                node_id=node_id,
                site_name="holder",
                sealed=bytes(request.sealed),
            )
        )
        return federation_pb2.SubmitReply(id="stored", message="stored")

    monkeypatch.setattr(threshold, "submit", store)


def test_threshold_polls_hold_no_threads_and_wake_on_a_partial(small_pool, monkeypatch):
    """FetchPartials and FetchEchoes park on the event loop like PullTask: a threshold
    round's holders, more than the pool's threads, leave every thread free."""
    _stored_as_sent(monkeypatch)
    server, channel = small_pool
    sites = [joined_site(channel, f"holder-{i}") for i in range(20)]
    _threshold_run(server, [node_id for node_id, _ in sites])
    stub = federation_pb2_grpc.FederationStub(channel)
    threads_before = threading.active_count()

    def ask(method, request_type, token):  # type: ignore[no-untyped-def]
        request = request_type(run_id="th", round=1, at_least=1, wait_seconds=20)
        return method.future(request, metadata=bearer(token), timeout=30)

    partials = [ask(stub.FetchPartials, federation_pb2.PartialFetchRequest, t) for _, t in sites]
    echoes = [ask(stub.FetchEchoes, federation_pb2.EchoFetchRequest, t) for _, t in sites]
    _until(lambda: server.hub.relays.parked() == 2 * len(sites))

    started = time.monotonic()
    for _, token in sites:
        heartbeat(channel, token)
    admin_pb2_grpc.AdminStub(channel).ListRuns(admin_pb2.ListRunsRequest(), metadata=bearer(ROOT))
    assert time.monotonic() - started < 10
    assert threading.active_count() - threads_before <= POOL

    # A partial is published: every partial poll answers with it; echo polls wait on.
    stub.SubmitPartials(
        federation_pb2.PartialSubmission(run_id="th", round=1, sealed=b"s"),
        metadata=bearer(sites[0][1]),
        timeout=10,
    )
    for poll in partials:
        assert [p.sealed for p in poll.result(timeout=10).partials] == [b"s"]
    _until(lambda: server.hub.relays.parked() == len(sites))
    assert not any(poll.done() for poll in echoes)

    # Callers that leave end their polls at once.
    for poll in echoes:
        poll.cancel()
    _until(lambda: server.hub.relays.parked() == 0)


def test_a_threshold_poll_ends_at_its_wait(small_pool):
    server, channel = small_pool
    node_id, token = joined_site(channel, "holder")
    _threshold_run(server, [node_id])
    started = time.monotonic()
    reply = federation_pb2_grpc.FederationStub(channel).FetchEchoes(
        federation_pb2.EchoFetchRequest(run_id="th", round=1, at_least=1, wait_seconds=0.3),
        metadata=bearer(token),
        timeout=10,
    )
    assert list(reply.echoes) == []
    assert 0.25 < time.monotonic() - started < 5
    assert server.hub.relays.parked() == 0


def test_other_changes_wake_no_threshold_poll(small_pool, monkeypatch):
    """A relay poll reads again only when a partial or echo of its round is stored: a
    join, an update or a scheduler step elsewhere (each a hub notify) wakes none."""
    from coordinator import threshold

    server, channel = small_pool
    node_id, token = joined_site(channel, "holder")
    _threshold_run(server, [node_id])
    reads = []
    real = threshold.fetch_echoes
    monkeypatch.setattr(threshold, "fetch_echoes", lambda *a: reads.append(1) or real(*a))
    poll = federation_pb2_grpc.FederationStub(channel).FetchEchoes.future(
        federation_pb2.EchoFetchRequest(run_id="th", round=1, at_least=1, wait_seconds=20),
        metadata=bearer(token),
        timeout=30,
    )
    _until(lambda: server.hub.relays.parked() == 1)
    for _ in range(5):
        server.hub.notify()
    time.sleep(0.3)
    assert len(reads) == 1 and not poll.done()
    server.hub.relays.bump(("th", 2, "echoes"))  # another round's echo
    server.hub.relays.bump(("th", 1, "partials"))  # this round's partial
    time.sleep(0.3)
    assert len(reads) == 1
    server.hub.relays.bump(("th", 1, "echoes"))
    _until(lambda: len(reads) == 2)
    poll.cancel()


@pytest.mark.parametrize("when", ["parked", "reading"])
def test_a_holder_revoked_while_its_poll_waits_is_refused_at_once(small_pool, monkeypatch, when):
    """Revoked while its poll is parked, or while the poll reads (before it parks): either
    way it reads again at once and is refused, rather than waiting out its wait."""
    from coordinator import threshold

    server, channel = small_pool
    node_id, token = joined_site(channel, "holder")
    _threshold_run(server, [node_id])
    reading, real = threading.Event(), threshold.fetch

    def slow_first(*args):  # type: ignore[no-untyped-def]
        reply = real(*args)  # read before the revocation; the poll parks after it
        if not reading.is_set():
            reading.set()
            time.sleep(0.5)
        return reply

    if when == "reading":
        monkeypatch.setattr(threshold, "fetch", slow_first)
    poll = federation_pb2_grpc.FederationStub(channel).FetchPartials.future(
        federation_pb2.PartialFetchRequest(run_id="th", round=1, at_least=1, wait_seconds=20),
        metadata=bearer(token),
        timeout=30,
    )
    if when == "reading":
        assert reading.wait(10)
    else:
        _until(lambda: server.hub.relays.parked() == 1)
    started = time.monotonic()
    admin_pb2_grpc.AdminStub(channel).RevokeSite(
        admin_pb2.RevokeRequest(name="holder", reason="test"), metadata=bearer(ROOT)
    )
    with pytest.raises(grpc.RpcError) as caught:
        poll.result(timeout=15)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - started < 5


def test_a_threshold_poll_with_a_nan_wait_is_refused(small_pool):
    server, channel = small_pool
    node_id, token = joined_site(channel, "holder")
    _threshold_run(server, [node_id])
    stub = federation_pb2_grpc.FederationStub(channel)
    for method, request in (
        (stub.FetchPartials, federation_pb2.PartialFetchRequest),
        (stub.FetchEchoes, federation_pb2.EchoFetchRequest),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            method(
                request(run_id="th", round=1, at_least=1, wait_seconds=float("nan")),
                metadata=bearer(token),
                timeout=10,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "NaN" in caught.value.details()
    assert server.hub.relays.parked() == 0
