"""Bad input from a site gets the right gRPC status and stores nothing (real server, loopback)."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from fuzzing import FakeSite
from sqlalchemy import func, select

from coordinator.schema import AuditEvent, Update
from protos import admin_pb2, common_pb2, federation_pb2, wire

WEIGHTS = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]


@pytest.fixture
def training_round(coordinator):
    """A one-site run whose first round is open and whose TRAIN task is in hand."""
    site = FakeSite(coordinator.federation())
    admin = coordinator.admin()
    run = admin.CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp", rounds=2, min_clients=1, round_deadline_seconds=60
        )
    )
    init = site.pull(federation_pb2.TASK_KIND_INIT)
    site.submit(init, wire.encode_tensors(WEIGHTS))
    task = site.pull(federation_pb2.TASK_KIND_TRAIN)
    return coordinator, site, run, task


def stored_updates(coordinator) -> int:
    with coordinator.hub.db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(Update)))


def blob_count(coordinator) -> int:
    return sum(1 for p in (coordinator.data_dir / "blobs").rglob("*") if p.is_file())


def expect_status(code: grpc.StatusCode, call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    return info.value.details()


def test_unknown_node_token_is_unauthenticated(coordinator):
    stub = coordinator.federation()

    detail = expect_status(
        grpc.StatusCode.UNAUTHENTICATED,
        lambda: stub.PullTask(
            federation_pb2.PullTaskRequest(), metadata=((wire.NODE_TOKEN_HEADER, "Bearer nope"),)
        ),
    )

    assert "join" in detail


def test_missing_token_is_unauthenticated(coordinator):
    stub = coordinator.federation()

    expect_status(
        grpc.StatusCode.UNAUTHENTICATED, lambda: stub.Heartbeat(federation_pb2.HeartbeatRequest())
    )


def test_bad_site_name_is_invalid_argument(coordinator):
    stub = coordinator.federation()

    expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: stub.Join(federation_pb2.JoinRequest(site_name="../etc")),
    )


def test_valid_update_is_accepted_and_audited(training_round):
    coordinator, site, _, task = training_round

    reply = site.submit(task, wire.encode_tensors(WEIGHTS))

    assert reply.message == "update accepted"
    assert stored_updates(coordinator) == 1
    with coordinator.hub.db.transaction() as session:
        kinds = session.scalars(select(AuditEvent.kind)).all()
    assert "update.accepted" in kinds


def test_second_update_for_a_round_is_already_exists(training_round):
    coordinator, site, _, task = training_round
    payload = wire.encode_tensors([np.ones((3, 2), np.float32), np.ones(2, np.float32)])
    site.submit(task, wire.encode_tensors(WEIGHTS))

    expect_status(grpc.StatusCode.ALREADY_EXISTS, lambda: site.submit(task, payload))

    assert stored_updates(coordinator) == 1


def test_an_update_for_a_round_already_sent_is_refused_even_if_the_task_is_live(training_round):
    """A hostile or confused site finds its task live again (a hand edit, a retried
    round): the header check still sees the round's stored update and refuses it."""
    from coordinator.schema import Task, TaskState

    coordinator, site, _, task = training_round
    site.submit(task, wire.encode_tensors(WEIGHTS))
    with coordinator.hub.db.transaction() as session:
        session.get(Task, task.task_id).state = TaskState.DELIVERED

    detail = expect_status(
        grpc.StatusCode.ALREADY_EXISTS, lambda: site.submit(task, wire.encode_tensors(WEIGHTS))
    )

    assert "already sent its update for round" in detail
    assert stored_updates(coordinator) == 1


def test_update_for_wrong_round_is_failed_precondition(training_round):
    coordinator, site, _, task = training_round
    blobs = blob_count(coordinator)

    expect_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda: site.submit(task, wire.encode_tensors(WEIGHTS), round_number=7),
    )

    assert stored_updates(coordinator) == 0
    assert blob_count(coordinator) == blobs


def test_update_for_closed_round_is_failed_precondition(training_round):
    coordinator, site, run, task = training_round
    coordinator.admin().StopRun(admin_pb2.StopRunRequest(run_id=run.run_id))

    detail = expect_status(
        grpc.StatusCode.FAILED_PRECONDITION, lambda: site.submit(task, wire.encode_tensors(WEIGHTS))
    )

    assert "stopped" in detail
    assert stored_updates(coordinator) == 0


@pytest.mark.parametrize(
    "weights, why",
    [
        ([np.zeros((3, 2), np.float32)], "tensors"),
        ([np.zeros((2, 3), np.float32), np.zeros(2, np.float32)], "shape"),
    ],
    ids=["wrong-count", "wrong-shape"],
)
def test_wrong_tensors_are_invalid_argument(training_round, weights, why):
    coordinator, site, _, task = training_round
    blobs = blob_count(coordinator)

    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: site.submit(task, wire.encode_tensors(weights))
    )

    assert why in detail
    assert stored_updates(coordinator) == 0
    assert blob_count(coordinator) == blobs


def test_chunk_hash_mismatch_is_invalid_argument(training_round):
    coordinator, site, _, task = training_round
    payload = wire.encode_tensors(WEIGHTS)

    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: site.submit(task, payload, sha="0" * 64)
    )

    assert "sha256" in detail
    assert stored_updates(coordinator) == 0


def test_truncated_stream_is_invalid_argument(training_round):
    coordinator, site, _, task = training_round
    payload = wire.encode_tensors(WEIGHTS)

    expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: site.submit(task, payload, chunks=[payload[:10]])
    )

    assert stored_updates(coordinator) == 0


def test_nan_update_is_invalid_argument(training_round):
    coordinator, site, _, task = training_round
    bad = [np.full((3, 2), np.nan, np.float32), np.zeros(2, np.float32)]

    expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: site.submit(task, wire.encode_tensors(bad))
    )

    assert stored_updates(coordinator) == 0


def test_plaintext_run_refuses_ciphertexts(training_round):
    _, site, _, task = training_round

    expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: site.submit(task, b"\x01" * 256, encoding=wire.PAILLIER_PACKED),
    )


def test_oversized_update_is_resource_exhausted(tmp_path):
    from conftest import start_coordinator

    running = start_coordinator(
        f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "d", max_update_bytes=1000
    )
    try:
        site = FakeSite(running.federation())
        running.admin().CreateRun(
            admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, min_clients=1)
        )
        init = site.pull(federation_pb2.TASK_KIND_INIT)

        expect_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: site.submit(init, b"x" * 10, size=10_000)
        )
    finally:
        running.server.stop(grace=0.2)


def test_rejections_are_written_to_the_audit_log(training_round):
    coordinator, site, _, task = training_round

    with pytest.raises(grpc.RpcError):
        site.submit(task, wire.encode_tensors(WEIGHTS), sha="f" * 64)

    with coordinator.hub.db.transaction() as session:
        row = session.scalar(select(AuditEvent).where(AuditEvent.kind == "update.rejected"))
    assert row is not None
    assert json.loads(row.details)["status"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "request_, code",
    [
        (admin_pb2.CreateRunRequest(model="", rounds=1), grpc.StatusCode.INVALID_ARGUMENT),
        (
            admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, fraction=2.0),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            admin_pb2.CreateRunRequest(
                model="tabular_mlp",
                rounds=1,
                strategy="median",
                secure=common_pb2.SECURE_SCHEME_PAILLIER,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, config_json="{nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
    ids=["no-model", "bad-fraction", "robust-strategy-in-secure-mode", "bad-json"],
)
def test_bad_run_requests_are_refused_and_nothing_stored(coordinator, request_, code):
    admin = coordinator.admin()

    expect_status(code, lambda: admin.CreateRun(request_))

    assert len(admin.ListRuns(admin_pb2.ListRunsRequest()).runs) == 0


def test_unknown_run_is_not_found(coordinator):
    admin = coordinator.admin()

    expect_status(
        grpc.StatusCode.NOT_FOUND, lambda: admin.GetRun(admin_pb2.GetRunRequest(run_id="nope"))
    )


def test_fetching_another_runs_model_is_refused(training_round):
    coordinator, site, _, task = training_round
    other = FakeSite(coordinator.federation(), "site-b")

    expect_status(
        grpc.StatusCode.PERMISSION_DENIED,
        lambda: list(
            other.stub.FetchModel(
                federation_pb2.FetchModelRequest(run_id=task.run_id, sha256=task.model_sha256),
                metadata=other.metadata,
            )
        ),
    )
