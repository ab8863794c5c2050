"""Hostile PullTask and FetchModel calls.

See tests/fuzzing.py for what every property asserts.
"""

from __future__ import annotations

import time

import grpc
from fuzzing import (
    FUZZ,
    TIMEOUT,
    WEIGHTS,
    answered,
    ids,
    refused,
    shas,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_federation_errors import FakeSite

from protos import admin_pb2, federation_pb2, wire

# -- PullTask -----------------------------------------------------------------------------


@settings(FUZZ, max_examples=25)
@given(wait=st.floats(max_value=0.2, allow_nan=False))
def test_pull_task_with_any_number_as_wait_answers_within_the_wait(plain, wait):
    started = time.monotonic()

    reply = plain.server.federation.PullTask(
        federation_pb2.PullTaskRequest(wait_seconds=wait),
        metadata=plain.outsider.metadata,
        timeout=TIMEOUT,
    )

    assert reply.kind == federation_pb2.TASK_KIND_NONE
    assert time.monotonic() - started < max(wait, 0.0) + 2.0


def test_pull_task_with_nan_wait_answers_at_once(plain):
    reply = answered(
        lambda: plain.server.federation.PullTask(
            federation_pb2.PullTaskRequest(wait_seconds=float("nan")),
            metadata=plain.outsider.metadata,
            timeout=3.0,
        )
    )

    assert isinstance(reply, federation_pb2.Task) or reply == grpc.StatusCode.INVALID_ARGUMENT


# -- FetchModel ---------------------------------------------------------------------------


@settings(FUZZ, max_examples=50)
@given(data=st.data(), outsider=st.booleans())
def test_fetch_model_with_random_run_or_sha_is_not_found_or_denied(plain, data, outsider):
    real_run, real_sha = plain.task.run_id, plain.task.model_sha256
    run_id = data.draw(st.one_of(st.just(real_run), ids), label="run_id")
    sha = data.draw(
        st.one_of(
            shas,
            st.just(real_sha[:-1]),
            st.just(real_sha + "/"),
            st.just("../" + real_sha),
            st.just(real_sha.upper()),
        ),
        label="sha256",
    )
    site = plain.outsider if outsider else plain.site
    if run_id != real_run:
        expected = grpc.StatusCode.NOT_FOUND
    elif outsider:
        expected = grpc.StatusCode.PERMISSION_DENIED
    else:
        assume(sha != real_sha)
        expected = grpc.StatusCode.NOT_FOUND

    code = refused(
        lambda: list(
            plain.server.federation.FetchModel(
                federation_pb2.FetchModelRequest(run_id=run_id, sha256=sha),
                metadata=site.metadata,
                timeout=TIMEOUT,
            )
        )
    )

    assert code == expected
    chunks = plain.server.federation.FetchModel(
        federation_pb2.FetchModelRequest(run_id=real_run, sha256=real_sha),
        metadata=plain.site.metadata,
        timeout=TIMEOUT,
    )
    assert wire.join_chunks(chunks) == wire.encode_tensors(WEIGHTS)


def test_fetch_model_with_empty_sha_before_the_initial_model_is_not_found(coordinator):
    site = FakeSite(coordinator.federation())
    run = coordinator.admin().CreateRun(
        admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, min_clients=1)
    )
    site.pull(federation_pb2.TASK_KIND_INIT)

    code = refused(
        lambda: list(
            site.stub.FetchModel(
                federation_pb2.FetchModelRequest(run_id=run.run_id, sha256=""),
                metadata=site.metadata,
                timeout=TIMEOUT,
            )
        )
    )

    assert code == grpc.StatusCode.NOT_FOUND
