"""Update intake: sizes refused from the header alone, one stream per task, per-caller caps."""

from __future__ import annotations

import threading
import time

import grpc
from fuzzing import header_for, submit, update_messages
from test_federation_errors import WEIGHTS, expect_status
from test_federation_errors import training_round as training_round
from test_secure_rounds import secure_round as secure_round

import crypto
from coordinator.call_limits import CallCounter
from coordinator.schema import Run
from coordinator.schemes import plaintext_payload_bound, secure_payload_size
from protos import federation_pb2, wire


def header_only(site, task, size: int, **fields: object):  # type: ignore[no-untyped-def]
    header = header_for(task, b"", payload_size=size, payload_sha256="0" * 64, **fields)
    return submit(site, update_messages(header))


def test_secure_update_of_the_wrong_declared_size_is_refused_from_its_header(secure_round):
    coordinator, site, run, task = secure_round
    width = crypto.ciphertext_width(site.public_key)
    with coordinator.hub.db.transaction() as session:
        expected = secure_payload_size(session.get(Run, run.run_id))

    # Header only, no payload at all: only the header can have caused the refusal.
    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: header_only(
            site,
            task,
            expected + width,
            encoding=wire.PAILLIER_PACKED,
            key_id=task.encoding.key_id,
        ),
    )

    assert f"declares {expected + width} bytes" in detail
    assert f"exactly {expected} bytes" in detail and "needs" in detail
    assert expected == len(site.ciphertexts()) * width
    site.send(task, site.ciphertexts())  # the right size is still accepted


def test_a_second_stream_for_a_task_is_refused_while_the_first_is_open(training_round):
    coordinator, site, _, task = training_round
    payload = wire.encode_tensors(WEIGHTS)
    release = threading.Event()

    def slow_messages(sent: threading.Event):  # type: ignore[no-untyped-def]
        yield federation_pb2.UpdateMessage(header=header_for(task, payload))
        sent.set()  # gRPC asks for the next message once the header is on its way
        release.wait(20)
        yield federation_pb2.UpdateMessage(data=payload)

    def open_first():  # type: ignore[no-untyped-def]
        sent = threading.Event()
        future = site.stub.SubmitUpdate.future(
            slow_messages(sent), metadata=site.metadata, timeout=30
        )
        sent.wait(10)
        time.sleep(0.1)  # let the coordinator take the task's stream slot
        return future

    first = open_first()
    seen = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if first.done():
            # A probe below held the slot when the first header arrived, so the first
            # stream was the one refused: open it again (a race of the test, not intake).
            first = open_first()
        try:
            header_only(site, task, len(payload), encoding=wire.TENSORS_FLOAT32)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                seen = exc.details()
                break
        time.sleep(0.05)
    release.set()

    assert seen is not None and "already being received" in seen
    assert first.result(timeout=30).message == "update accepted"


def test_per_caller_and_parked_call_caps():
    counter = CallCounter(max_parked=2)

    assert counter.enter("a", 2, parks=True) is None
    assert counter.enter("a", 2, parks=False) is None
    assert "too many concurrent calls" in (counter.enter("a", 2, parks=False) or "")
    assert counter.enter("b", 2, parks=True) is None
    assert "waiting calls" in (counter.enter("c", 2, parks=True) or "")
    counter.leave("a", parks=True)
    assert counter.enter("c", 2, parks=True) is None
    assert counter.by_caller == {"a": 1, "b": 1, "c": 1}


def test_one_node_cannot_hold_more_than_its_share_of_server_threads(coordinator):
    from test_federation_errors import FakeSite

    from coordinator.call_limits import MAX_CALLS_PER_CALLER

    site = FakeSite(coordinator.federation())
    polls = [
        site.stub.PullTask.future(
            federation_pb2.PullTaskRequest(wait_seconds=5), metadata=site.metadata, timeout=10
        )
        for _ in range(MAX_CALLS_PER_CALLER)
    ]
    time.sleep(0.5)  # let every poll park on the server

    try:
        detail = expect_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            lambda: site.stub.Heartbeat(
                federation_pb2.HeartbeatRequest(), metadata=site.metadata, timeout=5
            ),
        )
        other = FakeSite(coordinator.federation(), name="site-b")
        other.stub.Heartbeat(federation_pb2.HeartbeatRequest(), metadata=other.metadata)
    finally:
        for poll in polls:
            poll.cancel()

    assert "too many concurrent calls" in detail


def test_anonymous_callers_are_capped_per_address_except_on_loopback():
    from coordinator.call_limits import MAX_CALLS_PER_ANONYMOUS_ADDRESS, caller_key

    token = caller_key(((wire.NODE_TOKEN_HEADER, "Bearer abc"),), "ipv4:10.0.0.5:4000")
    remote = caller_key((), "ipv4:10.0.0.5:4000")
    same_host = caller_key((), "ipv4:10.0.0.5:4999")
    local = caller_key((), "ipv6:[::1]:4000")

    assert token[0].startswith("token:") and token[1] is not None
    assert remote == same_host == ("peer:10.0.0.5", MAX_CALLS_PER_ANONYMOUS_ADDRESS)
    assert local == ("peer:::1", None)


def test_plaintext_update_declaring_more_than_its_model_can_take_is_refused(training_round):
    coordinator, site, run, task = training_round
    with coordinator.hub.db.transaction() as session:
        bound = plaintext_payload_bound(session.get(Run, run.run_id))

    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: header_only(site, task, bound + 1, encoding=wire.TENSORS_FLOAT32),
    )

    assert f"declares {bound + 1} bytes" in detail and f"at most {bound}" in detail
    assert len(wire.encode_tensors([w.astype("float64") for w in WEIGHTS])) <= bound
    site.submit(task, wire.encode_tensors(WEIGHTS))  # an honest update still goes through
