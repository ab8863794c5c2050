"""Wire formats both sides share: chunked payloads and tensor payloads.

Scalars, metrics, scheme and state enums convert in protos/serde.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from protos import common_pb2
from protos.serde import metrics_to_proto as metrics_to_proto  # agent, load bench

NDArray = npt.NDArray[np.generic]
NDArrays = list[NDArray]

CHUNK_SIZE = 1 << 20
TENSORS_FLOAT32 = "tensors/float32"
TENSORS_Q8 = "tensors/q8"
PAILLIER_PACKED = "paillier/packed"
NODE_TOKEN_HEADER = "authorization"
# How the federation spells a site: checked by the coordinator at join and by sites pinning peers.
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_MAGIC = b"CHT1"
_ALLOWED_DTYPES = {"float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8"}


class PayloadError(ValueError):
    """A payload that does not parse as what its header says."""


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one tensor of a payload, checked before a payload is accepted."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def iter_chunks(data: bytes, chunk_size: int = CHUNK_SIZE) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, piece)`` covering ``data``; an empty payload still yields one piece."""
    if not data:
        yield 0, b""
        return
    for offset in range(0, len(data), chunk_size):
        yield offset, data[offset : offset + chunk_size]


def chunk_stream(data: bytes, chunk_size: int = CHUNK_SIZE) -> Iterator[common_pb2.Chunk]:
    """Server-stream a payload; the first chunk carries its total size and sha256."""
    digest = sha256_hex(data)
    for offset, piece in iter_chunks(data, chunk_size):
        first = offset == 0
        yield common_pb2.Chunk(
            data=piece,
            offset=offset,
            total_size=len(data) if first else 0,
            sha256=digest if first else "",
        )


def join_chunks(
    chunks: Iterable[common_pb2.Chunk],
    max_size: int | None = None,
    expected_sha256: str | None = None,
) -> bytes:
    """Reassemble a server-streamed payload and check its size and sha256.

    ``expected_sha256``: the blob that was asked for. Without it the stream's own
    announced sha256 is all the bytes are checked against, which a hostile server chooses.

    Raises
    ------
    PayloadError
        When chunks arrive out of order, the stream is longer than announced or than
        ``max_size``, the bytes do not hash to the announced sha256, or that is not
        ``expected_sha256``.
    """
    parts: list[bytes] = []
    received = 0
    total = -1
    digest = ""
    for chunk in chunks:
        if total < 0:
            total, digest = chunk.total_size, chunk.sha256
            if max_size is not None and total > max_size:
                raise PayloadError(f"payload of {total} bytes is over the {max_size} limit")
        if chunk.offset != received:
            raise PayloadError(f"chunk at offset {chunk.offset}, expected {received}")
        received += len(chunk.data)
        if received > total:
            raise PayloadError(f"stream is longer than the announced {total} bytes")
        parts.append(chunk.data)
    data = b"".join(parts)
    if total < 0 or len(data) != total:
        raise PayloadError(f"stream ended after {len(data)} of {max(total, 0)} bytes")
    if sha256_hex(data) != digest:
        raise PayloadError("payload does not match its sha256")
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise PayloadError(
            f"the server sent blob {digest[:12]} for the {expected_sha256[:12]} asked for"
        )
    return data


def encode_tensors(arrays: Iterable[NDArray]) -> bytes:
    """Serialise tensors as a JSON header of specs followed by their raw little-endian bytes.

    Not pickle and not ``np.save``: the coordinator checks every shape against the run's
    model from the header alone, and nothing in a payload can execute code.
    """
    arrays = [np.asarray(a) for a in arrays]
    specs = [{"dtype": a.dtype.name, "shape": list(a.shape)} for a in arrays]
    header = json.dumps(specs, separators=(",", ":")).encode()
    body = b"".join(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for a in arrays)
    return _MAGIC + struct.pack("<I", len(header)) + header + body


def tensor_specs(payload: bytes) -> list[TensorSpec]:
    """Read the specs of a tensor payload and check the body has exactly their bytes."""
    if len(payload) < 8 or payload[:4] != _MAGIC:
        raise PayloadError("not a tensor payload")
    (header_len,) = struct.unpack("<I", payload[4:8])
    if 8 + header_len > len(payload):
        raise PayloadError("tensor header runs past the payload")
    try:
        raw = json.loads(payload[8 : 8 + header_len])
        specs = [TensorSpec(str(s["dtype"]), tuple(int(d) for d in s["shape"])) for s in raw]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise PayloadError(f"unreadable tensor header: {exc}") from exc
    for spec in specs:
        if spec.dtype not in _ALLOWED_DTYPES or any(d < 0 for d in spec.shape):
            raise PayloadError(f"tensor spec not allowed: {spec}")
    body = len(payload) - 8 - header_len
    expected = sum(spec.nbytes for spec in specs)
    if body != expected:
        raise PayloadError(f"tensor body has {body} bytes, its header says {expected}")
    return specs


def decode_tensors(payload: bytes) -> NDArrays:
    """Inverse of :func:`encode_tensors`."""
    specs = tensor_specs(payload)
    (header_len,) = struct.unpack("<I", payload[4:8])
    offset = 8 + header_len
    arrays: NDArrays = []
    for spec in specs:
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        flat = np.frombuffer(payload, dtype=dtype, count=spec.size, offset=offset)
        arrays.append(flat.astype(dtype.newbyteorder("="), copy=True).reshape(spec.shape))
        offset += spec.nbytes
    return arrays


def update_quantisation(config: Mapping[str, object]) -> int | None:
    """Bits per value when a plaintext run sends quantised updates, else None.

    Set by the run's ``update_quantisation: {"bits": 8}`` config; sites compress with
    crypto.compress_update (the Paillier codec's stochastic quantiser, scaled per tensor)
    and the coordinator decompresses before aggregating.
    """
    spec = config.get("update_quantisation")
    if not spec:
        return None
    if not isinstance(spec, Mapping):
        raise ValueError('update_quantisation must be an object like {"clip": 0.1, "bits": 8}')
    bits = int(spec.get("bits", 8))
    if not 2 <= bits <= 8:
        raise ValueError("update_quantisation needs 2 <= bits <= 8")
    return bits
