"""Byte encodings of key shares, verification keys and partial decryptions.

Every encoding is ``magic (3 bytes) ‖ version (1) ‖ fields``; each int is ``length (4) ‖
big-endian bytes`` and partial values have a fixed width (that of n²), so a decoder can
check every length before it allocates and reject a byte too many or too few.
"""

from __future__ import annotations

from collections.abc import Sequence

from crypto.threshold_dealing import KeyShare, VerificationKeys, _check_keys
from crypto.threshold_decryption import DecryptionProof, PartialDecryption, _width

__all__ = [
    "key_share_from_bytes",
    "key_share_to_bytes",
    "partial_decryption_from_bytes",
    "partial_decryption_to_bytes",
    "verification_keys_from_bytes",
    "verification_keys_to_bytes",
]

_SHARE_MAGIC = b"CTS"
_KEYS_MAGIC = b"CTV"
_PARTIAL_MAGIC = b"CTP"
_VERSION = 1
_MAX_INT_BYTES = 4096
"""No field of a key of up to 8192 bits is longer (n² has 2048 bytes; the response less)."""


def key_share_to_bytes(share: KeyShare) -> bytes:
    """Encode a key share. The result is a secret: seal it (:func:`crypto.sealing.seal`)."""
    if not isinstance(share, KeyShare):
        raise TypeError(f"expected KeyShare, got {type(share).__name__}")
    return _encode(
        _SHARE_MAGIC, [share.index, share.threshold, share.parties], [share.n, share.share]
    )


def key_share_from_bytes(data: bytes) -> KeyShare:
    """Decode :func:`key_share_to_bytes` output.

    Raises
    ------
    ValueError
        On a wrong header, a truncated or oversized encoding, or values out of range.
    """
    (index, threshold, parties), ints = _decode_exact(data, _SHARE_MAGIC, "key share", 3)
    if len(ints) != 2:
        raise ValueError(f"key share encoding has {len(ints)} ints, expected 2")
    return KeyShare(index=index, share=ints[1], n=ints[0], threshold=threshold, parties=parties)


def verification_keys_to_bytes(keys: VerificationKeys) -> bytes:
    """Encode the public verification keys (pin these with the run)."""
    _check_keys(keys)
    return _encode(_KEYS_MAGIC, [keys.threshold, keys.parties], [keys.n, keys.v, *keys.party_keys])


def verification_keys_from_bytes(data: bytes) -> VerificationKeys:
    """Decode :func:`verification_keys_to_bytes` output.

    Raises
    ------
    ValueError
        On a wrong header, a truncated or oversized encoding, or values out of range.
    """
    (threshold, parties), ints = _decode_exact(data, _KEYS_MAGIC, "verification keys", 2)
    if len(ints) != 2 + parties:
        raise ValueError(f"verification keys encoding has {len(ints)} ints, expected {2 + parties}")
    return VerificationKeys(
        n=ints[0], threshold=threshold, parties=parties, v=ints[1], party_keys=tuple(ints[2:])
    )


def partial_decryption_to_bytes(partial: PartialDecryption, keys: VerificationKeys) -> bytes:
    """Encode a party's partials and proof; values take the fixed width of ``n²``."""
    if not isinstance(partial, PartialDecryption):
        raise TypeError(f"expected PartialDecryption, got {type(partial).__name__}")
    _check_keys(keys)
    width = _width(keys.n_square)
    head = _encode(
        _PARTIAL_MAGIC,
        [partial.index, width, len(partial.values)],
        [partial.proof.challenge, partial.proof.response],
    )
    try:
        body = b"".join(value.to_bytes(width, "big") for value in partial.values)
    except OverflowError:
        raise ValueError("a partial value does not fit below n²") from None
    return head + body


def partial_decryption_from_bytes(data: bytes, keys: VerificationKeys) -> PartialDecryption:
    """Decode :func:`partial_decryption_to_bytes` output for the key ``keys``.

    Decoding checks the shape only; :func:`verify_partials` checks the mathematics.

    Raises
    ------
    ValueError
        On a wrong header, a width that is not ``n²``'s, or a length that does not match
        the stated count.
    """
    _check_keys(keys)
    (index, width, count), ints, rest = _decode(data, _PARTIAL_MAGIC, "partial decryption", 3)
    if len(ints) != 2:
        raise ValueError(f"partial decryption encoding has {len(ints)} ints, expected 2")
    if width != _width(keys.n_square):
        raise ValueError(
            f"partial values are {width} bytes wide, this key needs {_width(keys.n_square)}"
        )
    if len(rest) != width * count:
        raise ValueError(
            f"partial decryption holds {len(rest)} value bytes, {count} values need {width * count}"
        )
    values = tuple(int.from_bytes(rest[k * width : (k + 1) * width], "big") for k in range(count))
    proof = DecryptionProof(challenge=ints[0], response=ints[1])
    return PartialDecryption(index=index, values=values, proof=proof)


def _encode(magic: bytes, small: Sequence[int], ints: Sequence[int]) -> bytes:
    out = [magic, bytes([_VERSION]), len(ints).to_bytes(2, "big")]
    out += [value.to_bytes(4, "big") for value in small]
    for value in ints:
        raw = value.to_bytes(_width(value), "big")
        out += [len(raw).to_bytes(4, "big"), raw]
    return b"".join(out)


def _decode_exact(
    data: bytes, magic: bytes, what: str, small_count: int
) -> tuple[list[int], list[int]]:
    small, ints, rest = _decode(data, magic, what, small_count)
    if rest:
        raise ValueError(f"{what} encoding has {len(rest)} bytes too many")
    return small, ints


def _decode(
    data: bytes, magic: bytes, what: str, small_count: int
) -> tuple[list[int], list[int], bytes]:
    """Split ``data`` into its small header ints, its length-prefixed ints and the rest."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes, got {type(data).__name__}")
    data = bytes(data)
    header = len(magic) + 1 + 2 + 4 * small_count
    if len(data) < header:
        raise ValueError(f"{what} encoding is truncated ({len(data)} bytes)")
    if data[: len(magic)] != magic:
        raise ValueError(f"not a {what} encoding (wrong magic)")
    if data[len(magic)] != _VERSION:
        raise ValueError(
            f"{what} encoding version {data[len(magic)]} is not supported (expected {_VERSION})"
        )
    position = len(magic) + 1
    count = int.from_bytes(data[position : position + 2], "big")
    position += 2
    small = []
    for _ in range(small_count):
        small.append(int.from_bytes(data[position : position + 4], "big"))
        position += 4
    ints = []
    for _ in range(count):
        if len(data) < position + 4:
            raise ValueError(f"{what} encoding is truncated")
        length = int.from_bytes(data[position : position + 4], "big")
        position += 4
        if not 0 < length <= _MAX_INT_BYTES:
            raise ValueError(f"{what} encoding has a field of impossible length {length}")
        if len(data) < position + length:
            raise ValueError(f"{what} encoding is truncated")
        ints.append(int.from_bytes(data[position : position + length], "big"))
        position += length
    return small, ints, data[position:]
