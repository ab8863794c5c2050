"""Packed Paillier encryption, randomness, aggregation and the wire format, on real keys."""

from __future__ import annotations

import secrets
import threading

import numpy as np
import pytest
from phe import PaillierPrivateKey, PaillierPublicKey

from crypto import (
    RandomnessPool,
    SlotCodec,
    add_encrypted,
    ciphertext_width,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
    decrypt_packed,
    encrypt_packed,
    generate_keypair,
    validate_ciphertexts,
)
from crypto.obfuscators import draw_units, obfuscators_for_units

KeyPair = tuple[PaillierPublicKey, PaillierPrivateKey]


@pytest.fixture(scope="module", params=[1024, 2048], ids=["1024-insecure-test", "2048"])
def keypair(request: pytest.FixtureRequest) -> KeyPair:
    return generate_keypair(request.param, insecure_test_size=request.param < 2048)


@pytest.fixture(scope="module")
def test_keypair() -> KeyPair:
    return generate_keypair(1024, insecure_test_size=True)


def random_plaintexts(public_key: PaillierPublicKey, count: int) -> list[int]:
    return [secrets.randbelow(public_key.n) for _ in range(count)]


# --- encryption and decryption ---------------------------------------------------------------


def test_phe_raw_decrypt_opens_our_ciphertexts(keypair: KeyPair) -> None:
    public_key, private_key = keypair
    plaintexts = [0, 1, public_key.n - 1, *random_plaintexts(public_key, 5)]

    ciphertexts = encrypt_packed(public_key, plaintexts, workers=1)

    assert [private_key.raw_decrypt(c) for c in ciphertexts] == plaintexts


def test_crt_obfuscator_equals_plain_modular_power(keypair: KeyPair) -> None:
    public_key, private_key = keypair
    units = draw_units(public_key.n, 4)

    crt = obfuscators_for_units(units, public_key.n, private_key.p, private_key.q)

    assert crt == [pow(r, public_key.n, public_key.nsquare) for r in units]


def test_same_plaintext_encrypts_differently_each_time(test_keypair: KeyPair) -> None:
    public_key, private_key = test_keypair

    first = encrypt_packed(public_key, [42] * 3, workers=1)
    second = encrypt_packed(public_key, [42] * 3, workers=1)

    assert len(set(first) | set(second)) == 6


def test_decrypt_packed_matches_phe_raw_decrypt(keypair: KeyPair) -> None:
    public_key, private_key = keypair
    ciphertexts = encrypt_packed(public_key, random_plaintexts(public_key, 6), workers=1)

    plaintexts = decrypt_packed(private_key, ciphertexts, workers=1)

    assert plaintexts == [private_key.raw_decrypt(c) for c in ciphertexts]


def test_work_split_over_processes_gives_the_same_plaintexts(test_keypair: KeyPair) -> None:
    public_key, private_key = test_keypair
    plaintexts = random_plaintexts(public_key, 40)

    ciphertexts = encrypt_packed(public_key, plaintexts, workers=2)

    assert decrypt_packed(private_key, ciphertexts, workers=2) == plaintexts


@pytest.mark.parametrize(
    ("plaintext", "error"),
    [(-1, ValueError), ("n", ValueError), (1.0, TypeError), (True, TypeError)],
    ids=["negative", "equal-to-n", "float", "bool"],
)
def test_encrypt_rejects_plaintext_outside_zero_to_n(
    test_keypair: KeyPair, plaintext: object, error: type[Exception]
) -> None:
    public_key, _ = test_keypair
    value = public_key.n if plaintext == "n" else plaintext

    with pytest.raises(error, match="plaintext 1"):
        encrypt_packed(public_key, [0, value], workers=1)  # type: ignore[list-item]


# --- precomputed randomness ------------------------------------------------------------------


def test_pool_never_hands_out_a_value_twice(test_keypair: KeyPair) -> None:
    public_key, private_key = test_keypair

    with RandomnessPool(public_key, workers=2) as pool:
        pool.start(24)
        first = pool.take(16)
        second = pool.take(16)  # 8 were precomputed; the shortfall is computed on demand
        remaining = pool.available

    assert len(set(first) | set(second)) == 32
    assert remaining == 0


def test_concurrent_takers_get_disjoint_values(test_keypair: KeyPair) -> None:
    public_key, private_key = test_keypair
    results: list[list[int]] = []

    with RandomnessPool(public_key, workers=1) as pool:
        threads = [threading.Thread(target=lambda: results.append(pool.take(10))) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    assert len(results) == 3
    assert len({value for taken in results for value in taken}) == 30


def test_pool_values_are_nth_residues_that_phe_decrypts_to_zero(test_keypair: KeyPair) -> None:
    public_key, private_key = test_keypair

    with RandomnessPool(public_key, workers=1) as pool:
        values = pool.take(3)

    # An obfuscator alone is an encryption of 0 (m = 0 gives c = r^n).
    assert [private_key.raw_decrypt(v) for v in values] == [0, 0, 0]


def test_encrypting_from_a_pool_consumes_its_values(test_keypair: KeyPair) -> None:
    public_key, private_key = test_keypair
    plaintexts = random_plaintexts(public_key, 5)

    with RandomnessPool(public_key, workers=1) as pool:
        pool.start(8)
        assert pool.wait_available(8, timeout=30)
        ciphertexts = encrypt_packed(public_key, plaintexts, pool=pool)
        left = pool.available

    assert left == 3
    assert decrypt_packed(private_key, ciphertexts, workers=1) == plaintexts


def test_waiting_for_more_than_was_queued_is_refused(test_keypair: KeyPair) -> None:
    public_key, _ = test_keypair

    with RandomnessPool(public_key, workers=1) as pool:
        pool.start(2)
        with pytest.raises(ValueError, match="ready or queued"):
            pool.wait_available(3)


def test_closed_pool_refuses_to_hand_out_values(test_keypair: KeyPair) -> None:
    public_key, _ = test_keypair
    pool = RandomnessPool(public_key, workers=1)
    pool.start(2)

    pool.close()

    assert pool.available == 0
    with pytest.raises(RuntimeError, match="closed"):
        pool.take(1)


def test_pool_for_another_key_is_rejected(test_keypair: KeyPair) -> None:
    public_key, _ = test_keypair
    other_public, _ = generate_keypair(1024, insecure_test_size=True)

    with (
        RandomnessPool(other_public, workers=1) as pool,
        pytest.raises(ValueError, match="different public key"),
    ):
        encrypt_packed(public_key, [1], pool=pool)


# --- validation and aggregation --------------------------------------------------------------


def test_valid_ciphertexts_pass_validation(test_keypair: KeyPair) -> None:
    public_key, _ = test_keypair

    validate_ciphertexts(encrypt_packed(public_key, [1, 2, 3], workers=1), public_key)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("zero", "outside"),
        ("n_square", "outside"),
        ("above_n_square", "outside"),
        ("factor_p", "not coprime"),
        ("multiple_of_n", "not coprime"),
    ],
)
def test_invalid_ciphertext_is_rejected_naming_index_and_reason(
    test_keypair: KeyPair, bad: str, reason: str
) -> None:
    public_key, private_key = test_keypair
    value = {
        "zero": 0,
        "n_square": public_key.nsquare,
        "above_n_square": public_key.nsquare + 5,
        "factor_p": private_key.p,
        "multiple_of_n": 7 * public_key.n,
    }[bad]
    ciphertexts = [*encrypt_packed(public_key, [1, 2], workers=1), value]

    with pytest.raises(ValueError, match=f"ciphertext 2 .*{reason}"):
        validate_ciphertexts(ciphertexts, public_key)


def test_product_of_ciphertexts_decrypts_to_sum_of_plaintexts(keypair: KeyPair) -> None:
    public_key, private_key = keypair
    vectors = [[3, 10, 0], [4, 20, 0], [5, 30, 1]]
    encrypted = [encrypt_packed(public_key, v, workers=1) for v in vectors]

    total = add_encrypted(encrypted, public_key)

    assert decrypt_packed(private_key, total, workers=1) == [12, 60, 1]


def test_adding_vectors_of_different_lengths_is_rejected(test_keypair: KeyPair) -> None:
    public_key, _ = test_keypair

    with pytest.raises(ValueError, match="vector 1 has 1"):
        add_encrypted([[1, 1], [1]], public_key)
    with pytest.raises(ValueError, match="at least one"):
        add_encrypted([], public_key)


# --- wire format -----------------------------------------------------------------------------


def test_ciphertext_bytes_round_trip_at_fixed_width(keypair: KeyPair) -> None:
    public_key, _ = keypair
    width = ciphertext_width(public_key)
    ciphertexts = [*encrypt_packed(public_key, [0, 7], workers=1), 1]

    data = ciphertexts_to_bytes(ciphertexts, width)

    assert width == public_key.n.bit_length() // 4
    assert len(data) == 3 * width
    assert ciphertexts_from_bytes(data, width) == ciphertexts


def test_byte_length_not_a_multiple_of_width_is_rejected() -> None:
    with pytest.raises(ValueError, match="whole number"):
        ciphertexts_from_bytes(b"\x00" * 513, 256)


def test_ciphertext_too_wide_for_width_is_rejected() -> None:
    with pytest.raises(ValueError, match="ciphertext 0"):
        ciphertexts_to_bytes([1 << 16], 2)


# --- the whole protocol ----------------------------------------------------------------------


def test_three_clients_weighted_mean_survives_encrypt_add_decrypt(test_keypair: KeyPair) -> None:
    public_key, private_key = test_keypair
    codec = SlotCodec.for_public_key(public_key, clip=0.5, bits=8, max_weight=1000)
    rng = np.random.default_rng(7)
    count = 500
    updates = [rng.normal(0, 0.3, count) for _ in range(3)]
    weights = [120, 455, 33]
    width = ciphertext_width(public_key)

    # Each client takes a different encryption path; all must aggregate together.
    with RandomnessPool(public_key, workers=1) as pool:
        paths = [
            {"workers": 1},
            {"workers": 2},
            {"pool": pool},
        ]
        uploads = [
            ciphertexts_to_bytes(
                encrypt_packed(public_key, codec.encode(u, w, rng), **path),
                width,  # type: ignore[arg-type]
            )
            for u, w, path in zip(updates, weights, paths, strict=True)
        ]
    received = [ciphertexts_from_bytes(data, width) for data in uploads]
    for ciphertexts in received:
        validate_ciphertexts(ciphertexts, public_key)
    codec.check_total_weight(sum(weights))
    aggregate = add_encrypted(received, public_key)
    decoded = codec.decode(decrypt_packed(private_key, aggregate), sum(weights), count)

    clipped = [np.clip(u, -0.5, 0.5) for u in updates]
    expected = sum(w * c for w, c in zip(weights, clipped, strict=True)) / sum(weights)
    assert np.abs(decoded - expected).max() <= codec.step
