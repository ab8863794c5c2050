"""Whole runs over real gRPC: plaintext and Paillier rounds, drop-outs, failures, user clients."""

from __future__ import annotations

import json
import threading
import time

import grpc
import numpy as np
import pytest
from flwr.client import NumPyClient
from helpers import breast_cancer_sites, create_run, wait_for, wait_for_state
from sqlalchemy import select

import models
from coordinator import auditlog
from coordinator.schema import AuditEvent, Update
from protos import admin_pb2, common_pb2, federation_pb2, wire

DONE = (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED, common_pb2.RUN_STATE_STOPPED)


class RecordingClient(NumPyClient):
    """Wraps a site's client unchanged and remembers every update it produced."""

    def __init__(self, inner: NumPyClient) -> None:
        self.inner = inner
        self.deltas: list[list[np.ndarray]] = []

    def get_parameters(self, config):  # type: ignore[no-untyped-def]
        return self.inner.get_parameters(config)

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        new, n, metrics = self.inner.fit(parameters, config)
        self.deltas.append(
            [
                np.asarray(a, np.float64) - np.asarray(b, np.float64)
                for a, b in zip(new, parameters, strict=True)
            ]
        )
        return new, n, metrics

    def evaluate(self, parameters, config):  # type: ignore[no-untyped-def]
        return self.inner.evaluate(parameters, config)


def test_plaintext_run_completes_and_learns(coordinator, agents, tmp_path):
    trainers = breast_cancer_sites(3)
    agents.start(coordinator.address, trainers, tmp_path)
    admin = coordinator.admin()

    run = create_run(admin, rounds=3)
    info = wait_for_state(admin, run.run_id, DONE)

    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    assert [r.submitted for r in info.round_infos] == [3, 3, 3]
    assert info.round_infos[-1].metrics["eval_accuracy"] > 0.9
    weights = wire.decode_tensors(
        wire.join_chunks(admin.DownloadModel(admin_pb2.DownloadModelRequest(run_id=run.run_id)))
    )
    scores = trainers[0].evaluate(weights, {})
    assert scores[2]["accuracy"] > 0.9
    with coordinator.hub.db.transaction() as session:
        assert auditlog.verify_chain(auditlog.all_rows(session)).ok
    # Each round after the first opened in the scheduler pass that closed the one before.
    rounds = info.round_infos
    assert [r.opened_unix for r in rounds[1:]] == [r.closed_unix for r in rounds[:-1]]


def test_a_change_notified_while_a_waiter_looks_is_not_missed(coordinator):
    # The scheduler reads the generation, makes its pass, then waits: an update accepted
    # during the pass must end that wait at once, not a tick (or a watcher's second) later.
    hub = coordinator.hub
    seen = hub.generation
    hub.notify()  # lands between the look and the wait
    started = time.monotonic()
    hub.wait(5.0, since=seen)
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    hub.wait(0.2, since=hub.generation)  # nothing new: waits out its timeout
    assert time.monotonic() - started >= 0.15


def test_watch_streams_until_the_run_ends(coordinator, agents, tmp_path):
    agents.start(coordinator.address, breast_cancer_sites(2), tmp_path)
    admin = coordinator.admin()
    run = create_run(admin, rounds=2, min_clients=2)

    events = list(admin.WatchRun(admin_pb2.GetRunRequest(run_id=run.run_id)))

    assert events[0].run.state in (common_pb2.RUN_STATE_PENDING, common_pb2.RUN_STATE_RUNNING)
    assert events[-1].run.state == common_pb2.RUN_STATE_COMPLETED
    assert len(events) >= 4


def test_robust_strategy_runs_in_plaintext(coordinator, agents, tmp_path):
    agents.start(coordinator.address, breast_cancer_sites(3), tmp_path)
    admin = coordinator.admin()

    run = admin.CreateRun(
        admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=2, min_clients=3, strategy="median")
    )
    info = wait_for_state(admin, run.run_id, DONE)

    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason


def test_site_that_misses_the_deadline_is_left_out(coordinator, agents, tmp_path):
    """Two real sites and one that takes its task and never answers; quorum is two."""
    agents.start(coordinator.address, breast_cancer_sites(2), tmp_path)
    silent = coordinator.federation()
    token = silent.Join(federation_pb2.JoinRequest(site_name="silent")).node_token
    admin = coordinator.admin()

    run = create_run(admin, rounds=1, min_clients=3, deadline=3.0, quorum=2)
    wait_for(
        lambda: (
            silent.PullTask(
                federation_pb2.PullTaskRequest(wait_seconds=0.5),
                metadata=((wire.NODE_TOKEN_HEADER, f"Bearer {token}"),),
            ).kind
            == federation_pb2.TASK_KIND_TRAIN
        ),
        30,
        "the silent site's task",
    )
    info = wait_for_state(admin, run.run_id, DONE, timeout=60)

    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    assert info.round_infos[0].submitted == 2
    with coordinator.hub.db.transaction() as session:
        kinds = session.scalars(select(AuditEvent.kind)).all()
    assert "task.missed" in kinds


def test_run_that_cannot_reach_its_minimum_fails_with_a_reason(
    coordinator, agents, tmp_path, background
):
    agents.start(coordinator.address, breast_cancer_sites(1), tmp_path)
    silent = coordinator.federation()
    token = silent.Join(federation_pb2.JoinRequest(site_name="silent")).node_token
    metadata = ((wire.NODE_TOKEN_HEADER, f"Bearer {token}"),)
    admin = coordinator.admin()
    run = create_run(admin, rounds=1, min_clients=2, deadline=1.0)
    stop_polling = threading.Event()

    def keep_polling_without_working() -> None:
        while not stop_polling.is_set():
            silent.PullTask(federation_pb2.PullTaskRequest(wait_seconds=0.5), metadata=metadata)

    background.append(threading.Thread(target=keep_polling_without_working, daemon=True))
    background[-1].start()
    try:
        info = wait_for_state(admin, run.run_id, DONE, timeout=60)
    finally:
        stop_polling.set()

    assert info.state == common_pb2.RUN_STATE_FAILED
    assert "round 1" in info.failure_reason and "updates" in info.failure_reason


def test_stopped_run_cancels_its_tasks(coordinator):
    admin = coordinator.admin()
    run = create_run(admin, rounds=1, min_clients=5)

    stopped = admin.StopRun(admin_pb2.StopRunRequest(run_id=run.run_id, reason="test"))

    assert stopped.state == common_pb2.RUN_STATE_STOPPED
    with pytest.raises(grpc.RpcError) as info:
        admin.StopRun(admin_pb2.StopRunRequest(run_id=run.run_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_any_flower_numpyclient_runs_unchanged(coordinator, agents, tmp_path):
    """A plain Flower client (no Cohort code in it) loaded through --app's loader."""
    from client.apps import load_app

    clients = [load_app("flower_app:client_fn", partition=i) for i in range(2)]
    agents.start(coordinator.address, clients, tmp_path)
    admin = coordinator.admin()

    run = create_run(admin, rounds=2, min_clients=2)
    info = wait_for_state(admin, run.run_id, DONE)

    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    assert "eval_accuracy" in info.round_infos[-1].metrics


@pytest.mark.slow
def test_secure_run_learns_and_the_coordinator_sees_nothing(coordinator, agents, tmp_path):
    import crypto

    recorders = [RecordingClient(t) for t in breast_cancer_sites(3)]
    sites = agents.start(coordinator.address, recorders, tmp_path)
    seeds = [np.random.default_rng(100 + i) for i in range(3)]
    for agent, rng in zip(sites, seeds, strict=True):
        agent.rng = rng
    admin = coordinator.admin()

    run = create_run(admin, secure=True, rounds=2)
    info = wait_for_state(admin, run.run_id, DONE, timeout=180)

    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    assert info.key_fingerprint
    with pytest.raises(grpc.RpcError) as refused:
        list(admin.DownloadModel(admin_pb2.DownloadModelRequest(run_id=run.run_id)))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    weights = sites[1].export_model(run.run_id)
    assert recorders[1].inner.evaluate(weights, {})[2]["accuracy"] > 0.85

    # Everything the coordinator stored: database file (and its WAL) and every blob.
    stored = b"".join(
        p.read_bytes()
        for p in coordinator.data_dir.parent.rglob("*")
        if p.is_file() and "site-" not in str(p)
    )
    _, private_key = sites[0].custody.keys[run.run_id]
    for secret in (private_key.p, private_key.q):
        raw = secret.to_bytes((secret.bit_length() + 7) // 8, "big")
        assert raw not in stored and str(secret).encode() not in stored
        assert raw.hex().encode() not in stored
    assert crypto.private_key_to_bytes(private_key) not in stored
    for recorder in recorders:
        for delta in recorder.deltas:
            biggest = max(delta, key=lambda a: a.size).astype(np.float32)
            assert _distinctive_window(biggest) not in stored
    with coordinator.hub.db.transaction() as session:
        update = session.scalars(select(Update)).first()
        assert update is not None and update.encoding == wire.PAILLIER_PACKED
    # The same quantised integers the first site packed, as the coordinator could see them.
    codec = crypto.SlotCodec(
        clip=16.0, bits=20, max_weight=4096, key_bits=private_key.public_key.n.bit_length()
    )
    flat = np.concatenate([d.ravel() for d in recorders[0].deltas[0]])
    quantised = crypto.quantise(flat, codec.clip, codec.bits, np.random.default_rng(100))
    assert _distinctive_window(quantised.astype(np.int64)) not in stored
    assert _distinctive_window(quantised.astype(np.int32)) not in stored


def _distinctive_window(values: np.ndarray, width: int = 16) -> bytes:
    """The bytes of the first run of `width` values that are all distinct.

    A dead ReLU unit leaves whole rows of an update at zero, and 64 zero bytes are in
    any SQLite file, so searching for a prefix of the raw array proves nothing.
    """
    flat = values.ravel()
    for start in range(flat.size - width + 1):
        window = flat[start : start + width]
        if np.unique(window).size == width:
            return window.tobytes()
    raise AssertionError("the update holds no run of distinct values to search for")


def test_weights_payload_holds_what_get_weights_returns():
    model = models.build_model("tabular_mlp", in_features=4)
    weights = models.get_weights(model)

    back = wire.decode_tensors(wire.encode_tensors(weights))

    assert len(back) == len(weights)


def test_quantised_updates_travel_as_int8_and_still_learn(coordinator, agents, tmp_path):
    agents.start(coordinator.address, breast_cancer_sites(3), tmp_path)
    admin = coordinator.admin()

    run = create_run(admin, rounds=3, update_quantisation={"bits": 8})
    info = wait_for_state(admin, run.run_id, DONE)

    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    assert info.round_infos[-1].metrics["eval_accuracy"] > 0.85
    with coordinator.hub.db.transaction() as session:
        encodings = set(session.scalars(select(Update.encoding)))
    assert encodings == {wire.TENSORS_Q8}


def test_site_with_another_frozen_base_is_refused(coordinator, agents, tmp_path):
    trainers = breast_cancer_sites(2)
    trainers[0].base_model_hash = "a" * 64
    trainers[1].base_model_hash = "b" * 64
    agents.start(coordinator.address, trainers, tmp_path)
    admin = coordinator.admin()

    run = create_run(admin, rounds=1, min_clients=2, deadline=3.0)
    wait_for(lambda: _has_audit_row(coordinator, "update.rejected"), 30, "a rejected update")

    with coordinator.hub.db.transaction() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.kind == "update.rejected")).all()
    assert any("frozen base" in row.details for row in rows)
    admin.StopRun(admin_pb2.StopRunRequest(run_id=run.run_id))


def _has_audit_row(coordinator, kind: str) -> bool:
    with coordinator.hub.db.transaction() as session:
        return session.scalar(select(AuditEvent.seq).where(AuditEvent.kind == kind)) is not None


def test_site_audits_reach_the_compliance_report(coordinator, agents, tmp_path):
    agents.start(coordinator.address, breast_cancer_sites(3), tmp_path)
    admin = coordinator.admin()
    run = create_run(admin, rounds=1, audit=True)
    wait_for_state(admin, run.run_id, DONE)
    wait_for(
        lambda: admin.GetRun(admin_pb2.GetRunRequest(run_id=run.run_id)).audits_received == 3,
        120,
        "three audits",
    )

    report = json.loads(
        wire.join_chunks(
            admin.ExportReport(admin_pb2.ExportReportRequest(run_id=run.run_id, format="json"))
        )
    )

    assert {s["site"] for s in report["attribution"]["sites"]} == {"site-0", "site-1", "site-2"}
    assert sum(s["row_count"] for s in report["attribution"]["sites"]) > 50
    assert report["audit_log"]["verified"] is True
    assert len(report["attribution"]["global"]["feature_names"]) == 30
    with coordinator.hub.db.transaction() as session:
        kinds = set(session.scalars(select(AuditEvent.kind)))
    assert {"audit.submitted", "report.produced"} <= kinds


def test_sites_are_marked_offline_and_back_online(tmp_path):
    from conftest import start_coordinator

    running = start_coordinator(
        f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "d", offline_after_seconds=1.0
    )
    try:
        stub = running.federation()
        token = stub.Join(federation_pb2.JoinRequest(site_name="a")).node_token
        metadata = ((wire.NODE_TOKEN_HEADER, f"Bearer {token}"),)
        wait_for(lambda: _has_audit_row(running, "site.offline"), 10, "the site to go offline")

        stub.Heartbeat(federation_pb2.HeartbeatRequest(), metadata=metadata)

        wait_for(lambda: _has_audit_row(running, "site.online"), 10, "the site to come back")
    finally:
        running.server.stop(grace=0.2)


def test_a_second_run_starts_from_fresh_weights_not_the_last_runs(coordinator, agents, tmp_path):
    from coordinator.schema import Run

    agents.start(coordinator.address, breast_cancer_sites(2), tmp_path)
    admin = coordinator.admin()
    first = create_run(admin, rounds=1, min_clients=2)
    wait_for_state(admin, first.run_id, DONE)

    second = create_run(admin, rounds=1, min_clients=2)
    wait_for_state(admin, second.run_id, DONE)

    with coordinator.hub.db.transaction() as session:
        starts = [session.get(Run, r.run_id).initial_model_sha256 for r in (first, second)]
    assert starts[0] == starts[1]  # same seed, same fresh initial model


def test_export_without_joining_first_is_refused(coordinator, tmp_path):
    from client.agent import AgentConfig, AgentError, SiteAgent

    agent = SiteAgent(
        AgentConfig(coordinator.address, "never-joined", tmp_path), breast_cancer_sites(1)[0]
    )
    try:
        with pytest.raises(AgentError, match="has not joined"):
            agent.export_model("any")
    finally:
        agent.close()
