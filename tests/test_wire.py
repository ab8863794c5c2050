"""Wire formats: chunked payloads and tensor payloads round-trip; broken ones are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos import serde, wire


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=700))
@settings(max_examples=60, deadline=None)
def test_chunks_join_back_to_the_payload(data, chunk_size):
    chunks = list(wire.chunk_stream(data, chunk_size))

    assert wire.join_chunks(chunks) == data
    assert all(len(c.data) <= chunk_size for c in chunks)


def test_reordered_chunks_are_refused():
    chunks = list(wire.chunk_stream(b"abcdefgh" * 10, 16))
    chunks[1], chunks[2] = chunks[2], chunks[1]

    with pytest.raises(wire.PayloadError, match="offset"):
        wire.join_chunks(chunks)


def test_changed_chunk_fails_the_hash():
    chunks = list(wire.chunk_stream(b"abcdefgh" * 10, 16))
    chunks[3].data = b"X" * 16

    with pytest.raises(wire.PayloadError, match="sha256"):
        wire.join_chunks(chunks)


def test_truncated_stream_is_refused():
    chunks = list(wire.chunk_stream(b"abcdefgh" * 10, 16))[:-1]

    with pytest.raises(wire.PayloadError, match="ended"):
        wire.join_chunks(chunks)


def test_a_consistent_stream_of_another_blob_is_refused():
    """A hostile server answers a fetch of blob A with blob B, announcing B's own sha256:
    every chunk checks against what it announced, not against what was asked for."""
    asked, sent = b"the aggregate that was checked", b"other bytes of the same length!"
    wanted = wire.sha256_hex(asked)
    assert wire.join_chunks(wire.chunk_stream(asked, 7), expected_sha256=wanted) == asked
    with pytest.raises(wire.PayloadError, match="asked for"):
        wire.join_chunks(wire.chunk_stream(sent, 7), expected_sha256=wanted)


def test_stream_over_limit_is_refused_before_reading_it():
    with pytest.raises(wire.PayloadError, match="limit"):
        wire.join_chunks(wire.chunk_stream(b"x" * 100, 10), max_size=50)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int8", "int64"])
def test_tensors_round_trip(dtype):
    arrays = [
        np.arange(12, dtype=dtype).reshape(3, 4),
        np.array(5, dtype=dtype),
        np.zeros((0, 2), dtype=dtype),
    ]

    back = wire.decode_tensors(wire.encode_tensors(arrays))

    assert [a.shape for a in back] == [a.shape for a in arrays]
    for a, b in zip(arrays, back, strict=True):
        np.testing.assert_array_equal(a, b)


def test_tensor_specs_read_from_header_only():
    payload = wire.encode_tensors([np.zeros((2, 3), np.float32)])

    assert wire.tensor_specs(payload) == [wire.TensorSpec("float32", (2, 3))]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"nope",
        wire.encode_tensors([np.zeros(3, np.float32)])[:-1],
        wire.encode_tensors([np.zeros(3, np.float32)]) + b"x",
        b"CHT1" + (10).to_bytes(4, "little") + b'[{"dtype":',
    ],
    ids=["empty", "magic", "short-body", "long-body", "bad-header"],
)
def test_malformed_tensor_payloads_are_refused(payload):
    with pytest.raises(wire.PayloadError):
        wire.tensor_specs(payload)


def test_object_dtype_is_refused():
    import json
    import struct

    header = json.dumps([{"dtype": "object", "shape": [1]}]).encode()
    payload = b"CHT1" + struct.pack("<I", len(header)) + header + b"\0" * 8

    with pytest.raises(wire.PayloadError, match="not allowed"):
        wire.tensor_specs(payload)


def test_metrics_keep_only_scalars():
    metrics = serde.metrics_to_proto({"a": 1.5, "b": np.float32(2), "c": [1, 2], "d": True})

    assert set(metrics) == {"a", "b", "d"}
    assert serde.scalar_from_proto(metrics["d"]) is True


def test_a_site_fetching_a_blob_gets_that_blob_or_an_error():
    from client.link import Link

    asked, sent = b"signed aggregate", b"a decoy aggregate"

    class Stub:  # a hostile coordinator: always the decoy, announced under its own hash
        def FetchModel(self, request, metadata=(), timeout=None):  # type: ignore[no-untyped-def]
            return wire.chunk_stream(sent, 4)

    link = Link(Stub(), lambda: "token")
    with pytest.raises(wire.PayloadError, match="asked for"):
        link.fetch("run", wire.sha256_hex(asked))
    assert link.fetch("run", wire.sha256_hex(sent)) == sent
