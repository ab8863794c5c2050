"""Paillier key pairs: generation, byte encoding and human-comparable fingerprints."""

from __future__ import annotations

import hashlib

from phe import PaillierPrivateKey, PaillierPublicKey, generate_paillier_keypair

__all__ = [
    "INSECURE_TEST_KEY_BITS",
    "MIN_KEY_BITS",
    "generate_keypair",
    "key_fingerprint",
    "key_id",
    "private_key_from_bytes",
    "private_key_to_bytes",
    "public_key_from_bytes",
    "public_key_to_bytes",
]

MIN_KEY_BITS = 2048
"""Smallest modulus accepted for real use (about 112-bit security, NIST SP 800-57)."""

INSECURE_TEST_KEY_BITS = 1024
"""The one smaller size allowed, and only when the caller says it is for tests."""

MAX_KEY_BITS = 8192

_PUBLIC_MAGIC = b"CPK"
_PRIVATE_MAGIC = b"CSK"
_VERSION = 1
_FACTOR_LENGTH_BYTES = 2


def generate_keypair(
    bits: int = MIN_KEY_BITS, *, insecure_test_size: bool = False
) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    """Create a fresh Paillier key pair whose modulus has exactly ``bits`` bits.

    Parameters
    ----------
    bits
        Modulus size. 2048 (the default) or larger multiples of 256, e.g. 3072.
    insecure_test_size
        Must be ``True`` to allow 1024 bits. Such keys are breakable and exist so that tests
        run in seconds; the flag makes every use of one visible in the calling code.

    Raises
    ------
    TypeError
        If ``bits`` is not an int.
    ValueError
        If ``bits`` is not an accepted size.
    """
    if not isinstance(bits, int) or isinstance(bits, bool):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if bits == INSECURE_TEST_KEY_BITS:
        if not insecure_test_size:
            raise ValueError(
                "1024-bit Paillier keys are insecure; pass insecure_test_size=True in tests "
                f"or use {MIN_KEY_BITS} or 3072 bits"
            )
    elif bits < MIN_KEY_BITS or bits > MAX_KEY_BITS or bits % 256:
        raise ValueError(
            f"key size {bits} is not accepted: use {MIN_KEY_BITS}, 3072 or another multiple "
            f"of 256 up to {MAX_KEY_BITS}"
        )
    public_key, private_key = generate_paillier_keypair(n_length=bits)
    return public_key, private_key


def public_key_to_bytes(public_key: PaillierPublicKey) -> bytes:
    """Encode a public key as ``b"CPK" ‖ version ‖ n`` (n big-endian, minimal length).

    Only ``n`` is stored: phe fixes ``g = n + 1``, so ``n`` is the whole public key.
    """
    _require_public_key(public_key)
    n: int = public_key.n
    return _PUBLIC_MAGIC + bytes([_VERSION]) + n.to_bytes(_byte_length(n), "big")


def public_key_from_bytes(data: bytes) -> PaillierPublicKey:
    """Decode :func:`public_key_to_bytes` output.

    Raises
    ------
    TypeError
        If ``data`` is not bytes-like.
    ValueError
        If the header is wrong or ``n`` cannot be a Paillier modulus (even, or too small).
    """
    body = _strip_header(data, _PUBLIC_MAGIC, "public key")
    n = int.from_bytes(body, "big")
    if n.bit_length() < INSECURE_TEST_KEY_BITS or n % 2 == 0:
        raise ValueError(f"public key modulus is not a valid Paillier n ({n.bit_length()} bits)")
    return PaillierPublicKey(n)


def private_key_to_bytes(private_key: PaillierPrivateKey) -> bytes:
    """Encode a private key as ``b"CSK" ‖ version ‖ len(p) ‖ p ‖ q`` (big-endian).

    The result is the secret itself: seal it (:func:`crypto.sealing.seal`) before it
    leaves the process.
    """
    if not isinstance(private_key, PaillierPrivateKey):
        raise TypeError(f"expected PaillierPrivateKey, got {type(private_key).__name__}")
    p: int = private_key.p
    q: int = private_key.q
    p_bytes = p.to_bytes(_byte_length(p), "big")
    q_bytes = q.to_bytes(_byte_length(q), "big")
    length = len(p_bytes).to_bytes(_FACTOR_LENGTH_BYTES, "big")
    return _PRIVATE_MAGIC + bytes([_VERSION]) + length + p_bytes + q_bytes


def private_key_from_bytes(
    data: bytes, public_key: PaillierPublicKey | None = None
) -> PaillierPrivateKey:
    """Decode :func:`private_key_to_bytes` output.

    Parameters
    ----------
    data
        The encoded key.
    public_key
        If given, the decoded factors must multiply to its ``n``; this catches a key meant
        for another federation before it silently fails to decrypt.

    Raises
    ------
    ValueError
        On a malformed encoding or a factor pair that does not match ``public_key``.
    """
    body = _strip_header(data, _PRIVATE_MAGIC, "private key")
    if len(body) < _FACTOR_LENGTH_BYTES:
        raise ValueError("private key encoding is truncated")
    p_length = int.from_bytes(body[:_FACTOR_LENGTH_BYTES], "big")
    factors = body[_FACTOR_LENGTH_BYTES:]
    if not 0 < p_length < len(factors):
        raise ValueError("private key encoding has an impossible factor length")
    p = int.from_bytes(factors[:p_length], "big")
    q = int.from_bytes(factors[p_length:], "big")
    if p < 3 or q < 3 or p == q:
        raise ValueError("private key factors are not two distinct odd primes")
    if public_key is None:
        public_key = PaillierPublicKey(p * q)
    else:
        _require_public_key(public_key)
        if p * q != public_key.n:
            raise ValueError(
                f"private key does not belong to public key {key_fingerprint(public_key)}"
            )
    return PaillierPrivateKey(public_key, p, q)


def key_fingerprint(public_key: PaillierPublicKey) -> str:
    """Return the first 128 bits of SHA-256 of the public key, as ``"ab12:cd34:…"``.

    Operators read these aloud or compare them side by side to confirm, out of band, that
    every institution encrypts to the same key; groups of four are easy to compare.
    """
    digest = _public_key_digest(public_key)[:32]
    return ":".join(digest[i : i + 4] for i in range(0, len(digest), 4))


def key_id(public_key: PaillierPublicKey) -> str:
    """Return the first 16 hex characters of SHA-256 of the public key (for storage keys)."""
    return _public_key_digest(public_key)[:16]


def _public_key_digest(public_key: PaillierPublicKey) -> str:
    return hashlib.sha256(public_key_to_bytes(public_key)).hexdigest()


def _require_public_key(public_key: object) -> None:
    if not isinstance(public_key, PaillierPublicKey):
        raise TypeError(f"expected PaillierPublicKey, got {type(public_key).__name__}")


def _strip_header(data: bytes, magic: bytes, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what} encoding must be bytes, got {type(data).__name__}")
    data = bytes(data)
    header_length = len(magic) + 1
    if len(data) <= header_length or data[: len(magic)] != magic:
        raise ValueError(f"not a Cohort {what} encoding (missing {magic!r} header)")
    version = data[len(magic)]
    if version != _VERSION:
        raise ValueError(f"unsupported {what} encoding version {version}")
    return data[header_length:]


def _byte_length(value: int) -> int:
    return (value.bit_length() + 7) // 8
