"""Hostile identities: Join fields and bearer tokens on every site RPC.

See tests/fuzzing.py for what every property asserts.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import grpc
import pytest
from fuzzing import (
    FUZZ,
    SITE_NAME_RULE,
    TIMEOUT,
    OpenRound,
    answered,
    any_text,
    header_for,
    metadata_text,
    refused,
    site_names,
    update_messages,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from protos import federation_pb2, wire

# -- identity: Join and bearer tokens -----------------------------------------------------


@FUZZ
@given(
    data=st.data(),
    site_name=site_names,
    x25519=st.one_of(st.binary(max_size=64), st.binary(min_size=32, max_size=32)),
    enrolment_token=any_text,
    agent_version=st.text(max_size=64),
    capabilities=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
)
def test_join_with_random_fields_joins_or_is_refused_for_the_right_reason(
    plain, data, site_name, x25519, enrolment_token, agent_version, capabilities
):
    node_token = data.draw(st.one_of(st.just(""), st.just(plain.site.token), metadata_text))
    request = federation_pb2.JoinRequest(
        site_name=site_name,
        x25519_public_key=x25519,
        enrolment_token=enrolment_token,
        node_token=node_token,
        agent_version=agent_version,
        capabilities=capabilities,
    )
    name = site_name.strip()
    bad_version = len(agent_version) > 64 or "\x00" in agent_version
    if not re.fullmatch(SITE_NAME_RULE, name) or len(x25519) not in (0, 32) or bad_version:
        expected = grpc.StatusCode.INVALID_ARGUMENT
    elif not node_token:
        expected = grpc.StatusCode.OK
    elif node_token != plain.site.token:
        expected = grpc.StatusCode.UNAUTHENTICATED
    else:
        expected = grpc.StatusCode.OK if name == "site-a" else grpc.StatusCode.PERMISSION_DENIED

    reply = answered(lambda: plain.server.federation.Join(request, timeout=TIMEOUT))

    if expected == grpc.StatusCode.OK:
        assert isinstance(reply, federation_pb2.JoinReply), reply
        plain.server.federation.Heartbeat(
            federation_pb2.HeartbeatRequest(),
            metadata=((wire.NODE_TOKEN_HEADER, f"Bearer {reply.node_token}"),),
            timeout=TIMEOUT,
        )
    else:
        assert reply == expected
    plain.server.assert_serving(plain.site)


def site_calls(plain: OpenRound, metadata) -> dict[str, Callable[[], object]]:
    """One well-formed call of every authenticated federation RPC, under ``metadata``."""
    stub, task = plain.server.federation, plain.task
    messages = update_messages(header_for(task, plain.payload), plain.payload)
    return {
        "Heartbeat": lambda: stub.Heartbeat(
            federation_pb2.HeartbeatRequest(), metadata=metadata, timeout=TIMEOUT
        ),
        "PullTask": lambda: stub.PullTask(
            federation_pb2.PullTaskRequest(wait_seconds=0.0), metadata=metadata, timeout=TIMEOUT
        ),
        "FetchModel": lambda: list(
            stub.FetchModel(
                federation_pb2.FetchModelRequest(run_id=task.run_id, sha256=task.model_sha256),
                metadata=metadata,
                timeout=TIMEOUT,
            )
        ),
        "SubmitUpdate": lambda: stub.SubmitUpdate(
            iter(messages), metadata=metadata, timeout=TIMEOUT
        ),
        "SubmitKeys": lambda: stub.SubmitKeys(
            federation_pb2.KeyBundle(task_id=task.task_id, run_id=task.run_id),
            metadata=metadata,
            timeout=TIMEOUT,
        ),
        "SubmitAudit": lambda: stub.SubmitAudit(
            federation_pb2.AuditSubmission(task_id=task.task_id, run_id=task.run_id),
            metadata=metadata,
            timeout=TIMEOUT,
        ),
        "GetFinalModel": lambda: stub.GetFinalModel(
            federation_pb2.FinalModelRequest(run_id=task.run_id),
            metadata=metadata,
            timeout=TIMEOUT,
        ),
        "SubmitPartials": lambda: stub.SubmitPartials(
            federation_pb2.PartialSubmission(run_id=task.run_id, round=1, sealed=b"x"),
            metadata=metadata,
            timeout=TIMEOUT,
        ),
        "FetchPartials": lambda: stub.FetchPartials(
            federation_pb2.PartialFetchRequest(run_id=task.run_id, round=1),
            metadata=metadata,
            timeout=TIMEOUT,
        ),
        "ReportPartial": lambda: stub.ReportPartial(
            federation_pb2.PartialComplaint(run_id=task.run_id, round=1, accused_site="x"),
            metadata=metadata,
            timeout=TIMEOUT,
        ),
        "LedgerSubmit": lambda: stub.LedgerSubmit(
            federation_pb2.LedgerEntry(run_id=task.run_id, statement=b"{}", signature=b"x"),
            metadata=metadata,
            timeout=TIMEOUT,
        ),
        "SubmitEcho": lambda: stub.SubmitEcho(
            federation_pb2.EchoSubmission(run_id=task.run_id, round=1, statement=b"x"),
            metadata=metadata,
            timeout=TIMEOUT,
        ),
        "FetchEchoes": lambda: stub.FetchEchoes(
            federation_pb2.EchoFetchRequest(run_id=task.run_id, round=1),
            metadata=metadata,
            timeout=TIMEOUT,
        ),
    }


@settings(FUZZ, max_examples=30)
@given(token=metadata_text, scheme=st.sampled_from(["Bearer", "bearer", "BEARER"]))
def test_random_bearer_tokens_are_unauthenticated_on_every_site_rpc(plain, token, scheme):
    before = plain.server.footprint()
    calls = site_calls(plain, ((wire.NODE_TOKEN_HEADER, f"{scheme} {token}"),))

    codes = {name: refused(call) for name, call in calls.items()}

    assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}, codes
    assert plain.server.footprint() == before
    plain.server.assert_serving(plain.site)


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        ((wire.NODE_TOKEN_HEADER, "Bearer"),),
        ((wire.NODE_TOKEN_HEADER, "Bearer "),),
        ((wire.NODE_TOKEN_HEADER, "Basic dXNlcjpwYXNz"),),
        ((wire.NODE_TOKEN_HEADER, "TOKEN"),),
        ((wire.NODE_TOKEN_HEADER, "Bearer  TOKEN"),),
        ((wire.NODE_TOKEN_HEADER, "Basic TOKEN"),),
        (("x-authorization", "Bearer TOKEN"),),
        (("authorization-bin", b"Bearer TOKEN"),),
    ],
    ids=[
        "none",
        "scheme-only",
        "empty-token",
        "basic",
        "token-without-scheme",
        "two-spaces",
        "real-token-wrong-scheme",
        "other-header",
        "binary-header",
    ],
)
def test_missing_or_malformed_authorization_is_unauthenticated(plain, metadata):
    if metadata is not None:
        metadata = tuple(
            (key, value.replace("TOKEN", plain.site.token) if isinstance(value, str) else value)
            for key, value in metadata
        )
    before = plain.server.footprint()

    codes = {name: refused(call) for name, call in site_calls(plain, metadata).items()}

    assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}, codes
    assert plain.server.footprint() == before
    plain.server.assert_serving(plain.site)
