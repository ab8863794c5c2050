"""Sealing the private key to an institution's X25519 key: confidentiality and integrity."""

from __future__ import annotations

import pytest

from crypto.keys import generate_keypair, private_key_from_bytes, private_key_to_bytes
from crypto.sealing import SEALED_OVERHEAD, generate_x25519, open_sealed, seal

AD = b"federation=demo;recipient=hospital-b;key=0123456789abcdef"


@pytest.fixture
def recipient() -> tuple[bytes, bytes]:
    return generate_x25519()


def test_x25519_keys_are_raw_32_bytes(recipient: tuple[bytes, bytes]) -> None:
    private_raw, public_raw = recipient

    assert (len(private_raw), len(public_raw)) == (32, 32)


def test_sealed_message_opens_with_recipient_key(recipient: tuple[bytes, bytes]) -> None:
    private_raw, public_raw = recipient

    sealed = seal(public_raw, b"the secret", AD)

    assert sealed[0] == 1
    assert len(sealed) == len(b"the secret") + SEALED_OVERHEAD
    assert open_sealed(private_raw, sealed, AD) == b"the secret"


def test_sealed_paillier_private_key_is_recovered_intact(recipient: tuple[bytes, bytes]) -> None:
    private_raw, public_raw = recipient
    public_key, private_key = generate_keypair(1024, insecure_test_size=True)

    sealed = seal(public_raw, private_key_to_bytes(private_key), AD)
    opened = private_key_from_bytes(open_sealed(private_raw, sealed, AD), public_key)

    assert opened == private_key


def test_sealing_twice_gives_unrelated_messages(recipient: tuple[bytes, bytes]) -> None:
    _, public_raw = recipient

    first, second = seal(public_raw, b"same", AD), seal(public_raw, b"same", AD)

    assert first[1:33] != second[1:33]  # fresh ephemeral key
    assert first[33:] != second[33:]


@pytest.mark.parametrize(
    "position",
    [0, 1, 32, 33, 44, 45, -1],
    ids=[
        "version",
        "ephemeral-first",
        "ephemeral-last",
        "nonce-first",
        "nonce-last",
        "ciphertext",
        "tag",
    ],
)
def test_any_altered_byte_is_detected(recipient: tuple[bytes, bytes], position: int) -> None:
    private_raw, public_raw = recipient
    sealed = bytearray(seal(public_raw, b"the secret", AD))

    sealed[position] ^= 0x01

    with pytest.raises(ValueError):
        open_sealed(private_raw, bytes(sealed), AD)


def test_message_sealed_to_another_key_does_not_open(recipient: tuple[bytes, bytes]) -> None:
    _, public_raw = recipient
    other_private, _ = generate_x25519()

    with pytest.raises(ValueError, match="could not be opened"):
        open_sealed(other_private, seal(public_raw, b"the secret", AD), AD)


def test_message_with_other_associated_data_does_not_open(
    recipient: tuple[bytes, bytes],
) -> None:
    private_raw, public_raw = recipient

    with pytest.raises(ValueError, match="could not be opened"):
        open_sealed(private_raw, seal(public_raw, b"the secret", AD), AD + b"x")


def test_truncated_message_is_rejected(recipient: tuple[bytes, bytes]) -> None:
    private_raw, public_raw = recipient

    with pytest.raises(ValueError, match="too short"):
        open_sealed(private_raw, seal(public_raw, b"", AD)[:-1], AD)


def test_key_of_wrong_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        seal(b"\x01" * 31, b"x", AD)
    with pytest.raises(ValueError, match="32 bytes"):
        open_sealed(b"\x01" * 33, b"\x01" * 100, AD)


def test_non_bytes_arguments_are_type_errors(recipient: tuple[bytes, bytes]) -> None:
    _, public_raw = recipient

    with pytest.raises(TypeError, match="plaintext"):
        seal(public_raw, "text", AD)  # type: ignore[arg-type]
