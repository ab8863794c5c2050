"""Seal secrets (the Paillier private key) to an institution's X25519 key for relaying."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["SEALED_OVERHEAD", "generate_x25519", "open_sealed", "seal"]

_VERSION = 1
_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HKDF_INFO = b"cohort/seal/v1"
SEALED_OVERHEAD = 1 + _KEY_BYTES + _NONCE_BYTES + _TAG_BYTES
"""Bytes a sealed message adds to its plaintext: version, ephemeral key, nonce, GCM tag."""

_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw


def generate_x25519() -> tuple[bytes, bytes]:
    """Return a new X25519 key pair as ``(private_raw_32_bytes, public_raw_32_bytes)``."""
    private = X25519PrivateKey.generate()
    private_raw = private.private_bytes(
        _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return private_raw, private.public_key().public_bytes(_RAW, _RAW_PUBLIC)


def seal(recipient_public: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """Encrypt ``plaintext`` so only the holder of ``recipient_public``'s private key can read it.

    ECIES-style: a fresh ephemeral X25519 key agrees a secret with the recipient, HKDF-SHA256
    (info binding both public keys, so the key is tied to this sender-recipient pair)
    derives an AES-256-GCM key, and GCM authenticates ``associated_data`` too. The
    coordinator that relays the result can neither read nor undetectably alter it, nor
    replay it in another context if the caller puts that context (federation, recipient,
    key id) in ``associated_data``.

    Returns
    -------
    bytes
        ``version (1) ‖ ephemeral public key (32) ‖ nonce (12) ‖ ciphertext with tag``.

    Raises
    ------
    TypeError
        If an argument is not bytes.
    ValueError
        If ``recipient_public`` is not a 32-byte X25519 public key.
    """
    recipient_raw = _require_bytes("recipient_public", recipient_public)
    plaintext = _require_bytes("plaintext", plaintext)
    associated_data = _require_bytes("associated_data", associated_data)
    if len(recipient_raw) != _KEY_BYTES:
        raise ValueError(f"recipient_public must be {_KEY_BYTES} bytes, got {len(recipient_raw)}")
    recipient = X25519PublicKey.from_public_bytes(recipient_raw)
    ephemeral = X25519PrivateKey.generate()
    ephemeral_raw = ephemeral.public_key().public_bytes(_RAW, _RAW_PUBLIC)
    key = _derive_key(ephemeral.exchange(recipient), ephemeral_raw, recipient_raw)
    nonce = os.urandom(_NONCE_BYTES)
    header = bytes([_VERSION]) + ephemeral_raw
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, header + associated_data)
    return header + nonce + ciphertext


def open_sealed(recipient_private: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """Decrypt :func:`seal` output with the recipient's raw 32-byte X25519 private key.

    Raises
    ------
    TypeError
        If an argument is not bytes.
    ValueError
        If the message is malformed, was altered, was sealed to another key, or
        ``associated_data`` differs from the one used to seal. The cases are not told
        apart, so a failure leaks nothing about which one happened.
    """
    private_raw = _require_bytes("recipient_private", recipient_private)
    sealed = _require_bytes("sealed", sealed)
    associated_data = _require_bytes("associated_data", associated_data)
    if len(private_raw) != _KEY_BYTES:
        raise ValueError(f"recipient_private must be {_KEY_BYTES} bytes, got {len(private_raw)}")
    if len(sealed) < SEALED_OVERHEAD:
        raise ValueError("sealed message is too short")
    if sealed[0] != _VERSION:
        raise ValueError(f"unsupported sealed message version {sealed[0]}")
    header, ephemeral_raw = sealed[: 1 + _KEY_BYTES], sealed[1 : 1 + _KEY_BYTES]
    nonce = sealed[1 + _KEY_BYTES : 1 + _KEY_BYTES + _NONCE_BYTES]
    ciphertext = sealed[1 + _KEY_BYTES + _NONCE_BYTES :]
    private = X25519PrivateKey.from_private_bytes(private_raw)
    recipient_raw = private.public_key().public_bytes(_RAW, _RAW_PUBLIC)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral_raw))
    except ValueError as error:  # all-zero shared secret from a low-order ephemeral key
        raise ValueError("sealed message could not be opened") from error
    key = _derive_key(shared, ephemeral_raw, recipient_raw)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, header + associated_data)
    except InvalidTag as error:
        raise ValueError(
            "sealed message could not be opened: altered, wrong key or wrong associated data"
        ) from error


def _derive_key(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> bytes:
    info = _HKDF_INFO + ephemeral_public + recipient_public
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _require_bytes(name: str, value: object) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    return bytes(value)
