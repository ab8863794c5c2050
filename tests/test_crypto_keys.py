"""Paillier key generation rules, byte encodings and fingerprints."""

from __future__ import annotations

import hashlib
import re

import pytest
from phe import PaillierPrivateKey, PaillierPublicKey

from crypto.keys import (
    generate_keypair,
    key_fingerprint,
    key_id,
    private_key_from_bytes,
    private_key_to_bytes,
    public_key_from_bytes,
    public_key_to_bytes,
)


@pytest.fixture(scope="module", params=[1024, 2048], ids=["1024-insecure-test", "2048"])
def keypair(request: pytest.FixtureRequest) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    return generate_keypair(request.param, insecure_test_size=request.param < 2048)


def test_generated_modulus_has_exactly_the_requested_bits(
    keypair: tuple[PaillierPublicKey, PaillierPrivateKey],
) -> None:
    public_key, private_key = keypair

    assert public_key.n.bit_length() in (1024, 2048)
    assert private_key.p * private_key.q == public_key.n


def test_1024_bit_key_needs_the_explicit_insecure_flag() -> None:
    with pytest.raises(ValueError, match="insecure_test_size"):
        generate_keypair(1024)


@pytest.mark.parametrize("bits", [512, 1536, 2000, 16384], ids=str)
def test_other_key_sizes_are_rejected(bits: int) -> None:
    with pytest.raises(ValueError, match="not accepted"):
        generate_keypair(bits, insecure_test_size=True)


def test_key_size_must_be_an_int() -> None:
    with pytest.raises(TypeError):
        generate_keypair(2048.0)  # type: ignore[arg-type]


def test_public_key_bytes_round_trip_with_versioned_header(
    keypair: tuple[PaillierPublicKey, PaillierPrivateKey],
) -> None:
    public_key, _ = keypair

    data = public_key_to_bytes(public_key)

    assert data[:4] == b"CPK\x01"
    assert int.from_bytes(data[4:], "big") == public_key.n
    assert public_key_from_bytes(data) == public_key


def test_private_key_bytes_round_trip_with_and_without_public_key(
    keypair: tuple[PaillierPublicKey, PaillierPrivateKey],
) -> None:
    public_key, private_key = keypair

    data = private_key_to_bytes(private_key)

    assert private_key_from_bytes(data) == private_key
    restored = private_key_from_bytes(data, public_key)
    assert restored == private_key
    assert restored.public_key is public_key


def test_private_key_for_another_public_key_is_rejected() -> None:
    _, private_key = generate_keypair(1024, insecure_test_size=True)
    other_public, _ = generate_keypair(1024, insecure_test_size=True)

    with pytest.raises(ValueError, match="does not belong"):
        private_key_from_bytes(private_key_to_bytes(private_key), other_public)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"CPK",
        b"XYZ\x01" + b"\x01" * 128,
        b"CPK\x02" + b"\x01" * 128,
        b"CPK\x01" + b"\x02" * 128,
        b"CPK\x01\x03",
    ],
    ids=["empty", "header-only", "bad-magic", "bad-version", "even-modulus", "tiny-modulus"],
)
def test_malformed_public_key_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(ValueError):
        public_key_from_bytes(data)


def test_malformed_private_key_bytes_are_rejected() -> None:
    with pytest.raises(ValueError, match="factor length"):
        private_key_from_bytes(b"CSK\x01\x00\x09" + b"\x01" * 4)


def test_fingerprint_is_sha256_prefix_in_colon_separated_groups_of_four(
    keypair: tuple[PaillierPublicKey, PaillierPrivateKey],
) -> None:
    public_key, _ = keypair
    digest = hashlib.sha256(public_key_to_bytes(public_key)).hexdigest()

    fingerprint = key_fingerprint(public_key)

    assert re.fullmatch(r"([0-9a-f]{4}:){7}[0-9a-f]{4}", fingerprint)
    assert fingerprint.replace(":", "") == digest[:32]
    assert key_id(public_key) == digest[:16]


def test_different_keys_have_different_fingerprints() -> None:
    first, _ = generate_keypair(1024, insecure_test_size=True)
    second, _ = generate_keypair(1024, insecure_test_size=True)

    assert key_fingerprint(first) != key_fingerprint(second)
    assert key_id(first) != key_id(second)
