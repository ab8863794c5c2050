"""Hostile SubmitUpdate headers, chunk streams, tensor payloads, replays and sizes.

See tests/fuzzing.py for what every property asserts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from fuzzing import (
    FUZZ,
    MODEL_SHAPES,
    TIMEOUT,
    WEIGHTS,
    InitTask,
    OpenRound,
    Server,
    any_text,
    coordinator_in,
    header_for,
    ids,
    json_values,
    open_round,
    refused,
    scalars,
    shas,
    split,
    submit,
    uint32,
    uint64,
    update_messages,
    waiting_for_initial_weights,
)
from helpers import wait_for
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_federation_errors import FakeSite

from protos import admin_pb2, common_pb2, federation_pb2, wire

# -- SubmitUpdate: headers ----------------------------------------------------------------

CHECKED_HEADER_FIELDS = (
    "task_id",
    "run_id",
    "round",
    "num_examples",
    "payload_size",
    "payload_sha256",
    "encoding",
)


def broken_header(draw, task: federation_pb2.Task, payload: bytes):
    """A header with at least one checked field wrong and every other field random."""
    header = header_for(
        task,
        payload,
        num_examples=draw(st.integers(1, 2**64 - 1)),
        weight=draw(uint64),
        key_id=draw(any_text),
        base_model_sha256=draw(shas),
    )
    for key, value in draw(st.dictionaries(st.text(max_size=12), scalars, max_size=3)).items():
        header.metrics[key].CopyFrom(value)
    for name in draw(st.sets(st.sampled_from(CHECKED_HEADER_FIELDS), min_size=1)):
        if name == "task_id":
            header.task_id = draw(ids.filter(lambda v: v != task.task_id))
        elif name == "run_id":
            header.run_id = draw(ids.filter(lambda v: v != task.run_id))
        elif name == "round":
            header.round = draw(uint32.filter(lambda v: v != task.round))
        elif name == "num_examples":
            header.num_examples = 0
        elif name == "payload_size":
            header.payload_size = draw(uint64.filter(lambda v: v != len(payload)))
        elif name == "payload_sha256":
            header.payload_sha256 = draw(shas.filter(lambda v: v != wire.sha256_hex(payload)))
        else:
            header.encoding = draw(
                st.one_of(
                    st.sampled_from([wire.TENSORS_Q8, wire.PAILLIER_PACKED, ""]), any_text
                ).filter(lambda v: v != wire.TENSORS_FLOAT32)
            )
    return header


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_update_with_any_wrong_header_field_is_refused_and_stores_nothing(plain, data):
    header = broken_header(data.draw, plain.task, plain.payload)
    body = data.draw(
        st.one_of(
            st.lists(st.integers(0, len(plain.payload)), max_size=3).map(
                lambda cuts: split(plain.payload, cuts)
            ),
            st.lists(st.binary(max_size=100), max_size=3),
        ),
        label="body",
    )
    before = plain.server.footprint()

    refused(lambda: submit(plain.site, update_messages(header, *body)))

    assert plain.server.footprint() == before
    plain.server.assert_serving(plain.site)


# -- SubmitUpdate: chunk streams ----------------------------------------------------------

STREAM_BREAKS = (
    "empty",
    "header_only",
    "data_first",
    "two_headers",
    "truncated",
    "oversized",
    "reordered",
    "corrupted",
)


def broken_stream(draw, header, payload: bytes) -> list[federation_pb2.UpdateMessage]:
    """The valid stream for ``payload``, broken in one of the ways a network or a peer can."""
    kind = draw(st.sampled_from(STREAM_BREAKS), label="break")
    cuts = draw(st.lists(st.integers(0, len(payload)), max_size=4), label="cuts")
    pieces = split(payload, cuts)
    head = federation_pb2.UpdateMessage(header=header)
    data = [federation_pb2.UpdateMessage(data=p) for p in pieces]
    at = draw(st.integers(0, len(data)), label="at")
    if kind == "empty":
        return []
    if kind == "header_only":
        return [head]
    if kind == "data_first":
        at = max(at, 1)
        return data[:at] + [head] + data[at:]
    if kind == "two_headers":
        second = federation_pb2.UpdateHeader()
        second.CopyFrom(header)
        second.payload_size = draw(st.sampled_from([header.payload_size, 0, 1]))
        return [head] + data[:at] + [federation_pb2.UpdateMessage(header=second)] + data[at:]
    if kind == "truncated":
        short = payload[: draw(st.integers(0, len(payload) - 1), label="keep")]
        return update_messages(header, *split(short, cuts))
    if kind == "oversized":
        extra = federation_pb2.UpdateMessage(data=draw(st.binary(min_size=1, max_size=64)))
        return [head] + data[:at] + [extra] + data[at:]
    if kind == "reordered":
        shuffled = draw(st.permutations(pieces), label="order")
        assume(b"".join(shuffled) != payload)
        return update_messages(header, *shuffled)
    index = draw(st.integers(0, len(payload) - 1), label="byte")
    flip = draw(st.integers(1, 255), label="xor")
    corrupted = payload[:index] + bytes([payload[index] ^ flip]) + payload[index + 1 :]
    return update_messages(header, *split(corrupted, cuts))


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_broken_update_streams_are_invalid_argument_and_store_nothing(plain, data):
    messages = broken_stream(data.draw, header_for(plain.task, plain.payload), plain.payload)
    before = plain.server.footprint()

    code = refused(lambda: submit(plain.site, messages))

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert plain.server.footprint() == before
    plain.server.assert_serving(plain.site)


def test_one_message_over_the_transport_limit_is_resource_exhausted(plain):
    payload = bytes(5 << 20)
    # The header declares a size the model can take (a larger one is refused from the
    # header alone, see test_intake_limits); the chunk that follows is over the limit.
    honest = header_for(plain.task, payload[:64])
    before = plain.server.footprint()

    code = refused(lambda: submit(plain.site, update_messages(honest, payload)))

    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert plain.server.footprint() == before
    plain.server.assert_serving(plain.site)


# -- SubmitUpdate: tensor payloads --------------------------------------------------------

ALLOWED_DTYPES = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8"]
spec_lists = st.lists(
    st.fixed_dictionaries(
        {
            "dtype": st.one_of(
                st.sampled_from(ALLOWED_DTYPES + ["object", "<U8", "complex64", "bool"]),
                any_text,
            ),
            # Small dimensions: one past int64 is a known defect
            # (test_initial_weights_with_an_unreadable_tensor_header_are_invalid_argument).
            "shape": st.lists(st.integers(-3, 9), max_size=3),
        }
    ),
    max_size=3,
)


def spec_nbytes(specs: list[dict[str, object]]) -> int | None:
    """Body size those specs announce, or None when the coordinator must refuse them anyway."""
    total = 0
    for spec in specs:
        shape = spec["shape"]
        if spec["dtype"] not in ALLOWED_DTYPES or any(d < 0 for d in shape):
            return None
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize
    return total


def tensor_payload(header: bytes, body: bytes, header_len: int | None = None) -> bytes:
    length = len(header) if header_len is None else header_len
    return b"CHT1" + length.to_bytes(4, "little") + header + body


def hostile_tensor_payload(draw) -> bytes:
    kind = draw(
        st.sampled_from(["bytes", "json", "lying_length", "specs", "exact", "nonfinite"]),
        label="kind",
    )
    if kind == "bytes":
        return draw(st.one_of(st.binary(max_size=300), st.binary(max_size=40).map(b"CHT1".__add__)))
    if kind == "json":
        text = json.dumps(draw(json_values)).encode()
        return tensor_payload(text, draw(st.binary(max_size=64)))
    if kind == "lying_length":
        header = json.dumps(draw(spec_lists)).encode()
        return tensor_payload(header, draw(st.binary(max_size=64)), draw(uint32))
    specs = draw(spec_lists, label="specs")
    nbytes = spec_nbytes(specs)
    if kind == "specs" or nbytes is None or nbytes > 4096:
        return tensor_payload(json.dumps(specs).encode(), draw(st.binary(max_size=200)))
    if kind == "exact":
        return tensor_payload(
            json.dumps(specs).encode(), draw(st.binary(min_size=nbytes, max_size=nbytes))
        )
    values = [np.array(w, copy=True) for w in WEIGHTS]
    bad = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    values[draw(st.integers(0, 1))].flat[0] = bad
    return wire.encode_tensors(values)


def fits_the_model(payload: bytes) -> bool:
    """Whether the payload is a finite float update of the model's shapes (so: valid)."""
    try:
        arrays = wire.decode_tensors(payload)
    except (wire.PayloadError, ValueError):
        return False
    return (
        [a.shape for a in arrays] == MODEL_SHAPES
        and all(a.dtype.kind == "f" for a in arrays)
        and all(np.isfinite(a).all() for a in arrays)
    )


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_random_tensor_payloads_are_invalid_argument_and_store_nothing(plain, data):
    payload = hostile_tensor_payload(data.draw)
    assume(not fits_the_model(payload))
    header = header_for(plain.task, payload)
    before = plain.server.footprint()

    code = refused(lambda: submit(plain.site, update_messages(header, payload)))

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert plain.server.footprint() == before
    plain.server.assert_serving(plain.site)


@pytest.fixture
def fresh_round(coordinator) -> OpenRound:
    """A round of its own, for inputs that might get stored and so spoil a shared one."""
    return open_round(Server.of(coordinator))


@pytest.fixture
def init_task(coordinator) -> InitTask:
    """A run of its own waiting for its initial weights, which no model shape constrains."""
    return waiting_for_initial_weights(Server.of(coordinator))


@pytest.mark.parametrize(
    "payload",
    [
        tensor_payload(json.dumps([{"dtype": "float32", "shape": [10**20]}]).encode(), b""),
        tensor_payload(json.dumps([{"dtype": "float32", "shape": [2**40] * 3}]).encode(), b""),
        tensor_payload(("[" * 10_000 + "]" * 10_000).encode(), b""),
    ],
    ids=["dimension-past-int64", "element-count-wraps-to-zero", "nested-10000-deep"],
)
def test_initial_weights_with_an_unreadable_tensor_header_are_invalid_argument(init_task, payload):
    before = init_task.server.footprint()

    code = refused(
        lambda: submit(
            init_task.site, update_messages(header_for(init_task.task, payload), payload)
        )
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert init_task.server.footprint() == before


def test_initial_weights_holding_nan_are_invalid_argument(init_task):
    payload = wire.encode_tensors([np.full((3, 2), np.nan, np.float32), np.zeros(2, np.float32)])
    before = init_task.server.footprint()

    code = refused(
        lambda: submit(
            init_task.site, update_messages(header_for(init_task.task, payload), payload)
        )
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert init_task.server.footprint() == before


@pytest.mark.parametrize(
    "changes",
    [
        {"metrics": {"loss": common_pb2.Scalar()}},
        {"num_examples": 2**63},
        {"num_examples": 2**64 - 1},
    ],
    ids=["empty-metric-scalar", "num-examples-2^63", "num-examples-max"],
)
def test_valid_payload_with_a_bad_header_scalar_is_invalid_argument_and_leaves_no_blob(
    fresh_round, changes
):
    payload = fresh_round.payload
    header = header_for(fresh_round.task, payload, **changes)
    before = fresh_round.server.footprint()

    code = refused(lambda: submit(fresh_round.site, update_messages(header, payload)))

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fresh_round.server.footprint() == before


# -- SubmitUpdate: replay and size limits -------------------------------------------------


def test_replayed_update_is_already_exists_and_stored_once(fresh_round):
    messages = update_messages(
        header_for(fresh_round.task, fresh_round.payload), fresh_round.payload
    )
    submit(fresh_round.site, messages)
    # The one update closes the round: let the scheduler store the new global model first.
    wait_for(lambda: fresh_round.server.footprint()["models"] == 2, what="round 1 to close")
    after_first = fresh_round.server.footprint()

    code = refused(lambda: submit(fresh_round.site, messages))

    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert after_first["updates"] == 1
    assert fresh_round.server.footprint() == after_first
    fresh_round.server.assert_serving(fresh_round.site)


def test_replayed_initial_weights_are_already_exists(coordinator):
    server = Server.of(coordinator)
    site = FakeSite(server.federation)
    server.admin.CreateRun(admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, min_clients=1))
    init = site.pull(federation_pb2.TASK_KIND_INIT)
    first = wire.encode_tensors(WEIGHTS)
    site.submit(init, first)
    after_first = server.footprint()

    codes = [
        refused(lambda p=p: submit(site, update_messages(header_for(init, p), p)))
        for p in (first, wire.encode_tensors([w * 2 for w in WEIGHTS]))
    ]

    assert codes == [grpc.StatusCode.ALREADY_EXISTS] * 2
    assert server.footprint() == after_first


SMALL_UPDATE_LIMIT = 4096
SMALL_AUDIT_LIMIT = 1024


@pytest.fixture(scope="module")
def small_limits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InitTask]:
    """A coordinator with small limits and a run waiting for its initial weights."""
    with coordinator_in(
        tmp_path_factory.mktemp("limits"),
        max_update_bytes=SMALL_UPDATE_LIMIT,
        max_audit_bytes=SMALL_AUDIT_LIMIT,
    ) as server:
        yield waiting_for_initial_weights(server)


@settings(FUZZ, max_examples=30)
@given(
    announced=st.one_of(
        st.integers(SMALL_UPDATE_LIMIT + 1, 4 * SMALL_UPDATE_LIMIT),
        st.integers(SMALL_UPDATE_LIMIT + 1, 2**64 - 1),
    ),
    sent=st.integers(0, 3 * SMALL_UPDATE_LIMIT),
    pieces=st.integers(1, 4),
)
def test_update_announced_over_the_size_limit_is_resource_exhausted(
    small_limits, announced, sent, pieces
):
    payload = bytes(range(256)) * (sent // 256) + bytes(sent % 256)
    header = header_for(small_limits.task, payload, payload_size=announced)
    step = max(1, len(payload) // pieces)
    before = small_limits.server.footprint()

    code = refused(
        lambda: submit(
            small_limits.site,
            update_messages(header, *split(payload, list(range(step, len(payload), step)))),
        )
    )

    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert small_limits.server.footprint() == before
    small_limits.server.assert_serving(small_limits.site)


def test_truthful_update_over_the_size_limit_is_resource_exhausted(small_limits):
    payload = wire.encode_tensors([np.zeros(2 * SMALL_UPDATE_LIMIT, np.float32)])
    before = small_limits.server.footprint()

    code = refused(
        lambda: submit(
            small_limits.site, update_messages(header_for(small_limits.task, payload), payload)
        )
    )

    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert small_limits.server.footprint() == before


@settings(FUZZ, max_examples=20)
@given(size=st.integers(SMALL_AUDIT_LIMIT + 1, 64 * SMALL_AUDIT_LIMIT))
def test_audit_over_the_size_limit_is_resource_exhausted(small_limits, size):
    summary = ('{"site": "' + "x" * size)[:size]
    before = small_limits.server.footprint()

    code = refused(
        lambda: small_limits.server.federation.SubmitAudit(
            federation_pb2.AuditSubmission(
                task_id=small_limits.task.task_id,
                run_id=small_limits.task.run_id,
                summary_json=summary,
            ),
            metadata=small_limits.site.metadata,
            timeout=TIMEOUT,
        )
    )

    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert small_limits.server.footprint() == before
