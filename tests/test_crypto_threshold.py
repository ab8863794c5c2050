"""Threshold Paillier: any t shares decrypt phe ciphertexts, fewer cannot, cheats are named."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import secrets

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phe import PaillierPrivateKey, PaillierPublicKey

from crypto import add_encrypted, encrypt_packed
from crypto.primes import safe_prime
from crypto.threshold import (
    DecryptionProof,
    InvalidPartialError,
    KeyShare,
    PartialDecryption,
    VerificationKeys,
    combine,
    deal,
    key_share_from_bytes,
    key_share_to_bytes,
    lagrange_coefficients,
    make_partial_decryption,
    multi_power,
    partial_decrypt,
    partial_decryption_from_bytes,
    partial_decryption_to_bytes,
    prove_partials,
    verification_keys_from_bytes,
    verification_keys_to_bytes,
    verify_partials,
)

BITS = 512
CONTEXT = b"run-7f3a/round-4"
Dealt = tuple[PaillierPublicKey, list[KeyShare], VerificationKeys, PaillierPrivateKey]


@pytest.fixture(scope="module")
def primes() -> tuple[int, int]:
    p = safe_prime(BITS // 2)
    q = safe_prime(BITS // 2)
    while q == p:
        q = safe_prime(BITS // 2)
    return p, q


def deal_with_private_key(threshold: int, parties: int, primes: tuple[int, int]) -> Dealt:
    """Deal, and keep the whole key that a real dealer erases, to compare against phe."""
    public, shares, keys = deal(threshold, parties, BITS, primes, insecure_test_size=True)
    return public, shares, keys, PaillierPrivateKey(public, *primes)


@pytest.fixture(scope="module")
def dealt(primes: tuple[int, int]) -> Dealt:
    return deal_with_private_key(2, 3, primes)


def encrypt(public: PaillierPublicKey, plaintexts: list[int]) -> list[int]:
    return encrypt_packed(public, plaintexts, workers=1)


def tampered(partial: PartialDecryption, position: int, n_square: int) -> PartialDecryption:
    values = list(partial.values)
    values[position] = values[position] % (n_square - 1) + 1  # +1, wrapping inside [1, n²)
    return dataclasses.replace(partial, values=tuple(values))


# --- decryption -------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_t_of_n_shares_decrypt_like_phe(primes: tuple[int, int], data: st.DataObject) -> None:
    parties = data.draw(st.integers(2, 5), label="parties")
    threshold = data.draw(st.integers(1, parties), label="threshold")
    subset = data.draw(
        st.lists(st.integers(1, parties), min_size=threshold, max_size=parties, unique=True),
        label="subset",
    )
    public, shares, keys, private = deal_with_private_key(threshold, parties, primes)
    plaintexts = data.draw(st.lists(st.integers(0, public.n - 1), min_size=1, max_size=4))
    ciphertexts = encrypt(public, plaintexts)

    partials = {i: partial_decrypt(shares[i - 1], ciphertexts, workers=1) for i in subset}
    decrypted = combine(partials, keys, ciphertexts)

    assert decrypted == [private.raw_decrypt(c) for c in ciphertexts] == plaintexts


def test_phe_encrypt_and_aggregates_decrypt_with_shares(dealt: Dealt) -> None:
    public, shares, keys, _ = dealt
    site_a, site_b = [1, 2, 3, 4], [10, 20, 30, 40]
    from_phe = [public.encrypt(5).ciphertext(be_secure=True)]
    aggregate = add_encrypted([encrypt(public, site_a), encrypt(public, site_b)], public)

    for ciphertexts, expected in [(from_phe, [5]), (aggregate, [11, 22, 33, 44])]:
        partials = [make_partial_decryption(s, keys, ciphertexts, CONTEXT) for s in shares[1:]]
        verify_partials(keys, ciphertexts, partials, CONTEXT)
        by_index = {p.index: p.values for p in partials}
        assert combine(by_index, keys, ciphertexts) == expected


@pytest.mark.parametrize("parties,threshold", [(3, 2), (3, 3), (5, 3), (4, 4)])
def test_fewer_than_t_partials_are_refused(
    primes: tuple[int, int], parties: int, threshold: int
) -> None:
    public, shares, keys, _ = deal_with_private_key(threshold, parties, primes)
    ciphertexts = encrypt(public, [42])
    partials = {s.index: partial_decrypt(s, ciphertexts) for s in shares[: threshold - 1]}

    with pytest.raises(ValueError, match=f"needs partials from {threshold} parties"):
        combine(partials, keys, ciphertexts)


def test_t_minus_1_partials_fit_every_plaintext(primes: tuple[int, int]) -> None:
    # With t = 2, one share s_1 is uniform mod nm whatever d is: for any target plaintext
    # there is a second share value that combines with the real first partial to it, so
    # one partial alone pins nothing down.
    public, shares, keys, _ = deal_with_private_key(2, 3, primes)
    ciphertexts = encrypt(public, [7])
    first = partial_decrypt(shares[0], ciphertexts)
    p, q = primes
    modulus = public.n * ((p - 1) // 2) * ((q - 1) // 2)

    for target in (0, 1, 123456789):
        # The line through (0, d') and (1, s_1) has f(2) = 2·s_1 - d'.
        forged_d = _exponent_decrypting_to(7, target, public.n, modulus)
        s2 = (2 * shares[0].share - forged_d) % modulus
        forged = KeyShare(index=2, share=s2, n=public.n, threshold=2, parties=3)
        assert combine({1: first, 2: partial_decrypt(forged, ciphertexts)}, keys, ciphertexts) == [
            target
        ]


def _exponent_decrypting_to(m: int, target: int, n: int, modulus: int) -> int:
    """A secret d' ≡ 0 (mod p'q') under which an encryption of ``m`` decrypts to ``target``.

    ``c^{4Δ²d'}`` decrypts to ``m·d' mod n``; pick ``d' ≡ target/m (mod n)``.
    """
    order = modulus // n
    scale = target * pow(m, -1, n) % n
    return order * (scale * pow(order, -1, n) % n) % modulus


@pytest.mark.parametrize("parties", [2, 3, 4, 5, 6])
def test_lagrange_coefficients_interpolate_at_zero_for_every_subset(parties: int) -> None:
    delta = math.factorial(parties)
    for size in range(1, parties + 1):
        for subset in itertools.combinations(range(1, parties + 1), size):
            polynomial = [secrets.randbelow(10**30) for _ in range(size)]

            coefficients = lagrange_coefficients(subset, parties)

            def f(x: int, poly: list[int] = polynomial) -> int:
                return sum(c * x**k for k, c in enumerate(poly))

            assert sum(coefficients[i] * f(i) for i in subset) == delta * f(0), subset


@pytest.mark.parametrize(
    "subset,message", [([], "empty"), ([1, 1], "repeats"), ([0, 2], "outside"), ([1, 4], "outside")]
)
def test_lagrange_rejects_bad_subsets(subset: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lagrange_coefficients(subset, 3)


def test_partial_decryption_on_all_cores_matches_one_core(dealt: Dealt) -> None:
    public, shares, _, _ = dealt
    ciphertexts = encrypt(public, list(range(40)))

    assert partial_decrypt(shares[0], ciphertexts, workers=2) == partial_decrypt(
        shares[0], ciphertexts, workers=1
    )


# --- proofs: what a cheating party would try --------------------------------------------------


@pytest.fixture(scope="module")
def round_(dealt: Dealt) -> tuple[list[int], list[PartialDecryption]]:
    public, shares, keys, _ = dealt
    ciphertexts = encrypt(public, [secrets.randbelow(public.n) for _ in range(12)])
    partials = [make_partial_decryption(s, keys, ciphertexts, CONTEXT) for s in shares]
    return ciphertexts, partials


def test_honest_partials_verify(
    dealt: Dealt, round_: tuple[list[int], list[PartialDecryption]]
) -> None:
    _, _, keys, _ = dealt
    ciphertexts, partials = round_

    verify_partials(keys, ciphertexts, partials, CONTEXT)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(party=st.integers(0, 2), position=st.integers(0, 11))
def test_one_tampered_value_is_caught_and_its_party_named(
    dealt: Dealt, round_: tuple[list[int], list[PartialDecryption]], party: int, position: int
) -> None:
    _, _, keys, _ = dealt
    ciphertexts, partials = round_
    sent = list(partials)
    sent[party] = tampered(partials[party], position, keys.n_square)

    with pytest.raises(InvalidPartialError) as caught:
        verify_partials(keys, ciphertexts, sent, CONTEXT)

    assert caught.value.parties == (party + 1,)


def test_every_cheating_party_is_named(
    dealt: Dealt, round_: tuple[list[int], list[PartialDecryption]]
) -> None:
    _, _, keys, _ = dealt
    ciphertexts, partials = round_
    sent = [
        tampered(partials[0], 3, keys.n_square),
        partials[1],
        tampered(partials[2], 0, keys.n_square),
    ]

    with pytest.raises(InvalidPartialError, match=r"\[1, 3\]") as caught:
        verify_partials(keys, ciphertexts, sent, CONTEXT)

    assert caught.value.parties == (1, 3)


def test_partials_from_a_wrong_share_with_a_fresh_proof_fail(
    primes: tuple[int, int], dealt: Dealt, round_: tuple[list[int], list[PartialDecryption]]
) -> None:
    # Party 2 uses a share from another dealing of the same n and proves honestly with it.
    _, _, keys, _ = dealt
    ciphertexts, partials = round_
    _, other_shares, _, _ = deal_with_private_key(2, 3, primes)
    wrong = other_shares[1]
    values = partial_decrypt(wrong, ciphertexts)
    proof = prove_partials(wrong, keys, ciphertexts, values, CONTEXT)

    with pytest.raises(InvalidPartialError) as caught:
        verify_partials(
            keys, ciphertexts, [partials[0], PartialDecryption(2, tuple(values), proof)], CONTEXT
        )

    assert caught.value.parties == (2,)


@pytest.mark.parametrize(
    "forge",
    [
        "challenge+1",
        "response+1",
        "response-huge",
        "proof-of-party-1",
        "other-context",
        "other-ciphertexts",
        "claims-party-3",
        "two-values-swapped",
    ],
)
def test_forged_or_replayed_proofs_fail(
    dealt: Dealt, round_: tuple[list[int], list[PartialDecryption]], forge: str
) -> None:
    public, shares, keys, _ = dealt
    ciphertexts, partials = round_
    honest = partials[1]
    proof = honest.proof
    checked_ciphertexts, context = ciphertexts, CONTEXT
    if forge == "challenge+1":
        forged = dataclasses.replace(
            honest, proof=DecryptionProof(proof.challenge ^ 1, proof.response)
        )
    elif forge == "response+1":
        forged = dataclasses.replace(
            honest, proof=DecryptionProof(proof.challenge, proof.response + 1)
        )
    elif forge == "response-huge":
        forged = dataclasses.replace(
            honest, proof=DecryptionProof(proof.challenge, proof.response + (1 << 20000))
        )
    elif forge == "proof-of-party-1":
        forged = dataclasses.replace(honest, proof=partials[0].proof)
    elif forge == "other-context":
        forged, context = honest, b"run-7f3a/round-5"
    elif forge == "other-ciphertexts":
        forged = honest
        checked_ciphertexts = encrypt(public, [1] * len(ciphertexts))
    elif forge == "claims-party-3":  # party 2 replays its partials as party 3's
        forged = dataclasses.replace(honest, index=3)
    else:  # every value is a correct partial, but of the wrong ciphertext
        values = list(honest.values)
        values[2], values[7] = values[7], values[2]
        forged = dataclasses.replace(honest, values=tuple(values))

    with pytest.raises(InvalidPartialError) as caught:
        verify_partials(keys, checked_ciphertexts, [forged], context)

    assert caught.value.parties == (forged.index,)


def test_malformed_partials_are_named_not_crashed_on(
    primes: tuple[int, int], dealt: Dealt, round_: tuple[list[int], list[PartialDecryption]]
) -> None:
    _, _, keys, _ = dealt
    ciphertexts, partials = round_
    honest = partials[0]
    not_a_unit = dataclasses.replace(honest, values=(primes[0], *honest.values[1:]))
    short = dataclasses.replace(honest, values=honest.values[:-1])
    out_of_range = dataclasses.replace(honest, values=(keys.n_square, *honest.values[1:]))
    unknown_party = dataclasses.replace(honest, index=9)

    for forged in (not_a_unit, short, out_of_range, unknown_party):
        with pytest.raises(InvalidPartialError):
            verify_partials(keys, ciphertexts, [forged], CONTEXT)


def test_a_sign_flip_is_caught_unless_proved_and_then_harmless(
    dealt: Dealt, round_: tuple[list[int], list[PartialDecryption]]
) -> None:
    # Proofs and combining both use c_i², so c_i and n² - c_i act as the same partial. The
    # proof binds the exact bytes, so a flip after proving fails; a party that flips and
    # then proves passes, and gains nothing: the plaintext is still right.
    _, shares, keys, private = dealt
    ciphertexts, partials = round_
    values = (keys.n_square - partials[0].values[0], *partials[0].values[1:])
    flipped_after = dataclasses.replace(partials[0], values=values)
    proved = PartialDecryption(
        1, values, prove_partials(shares[0], keys, ciphertexts, list(values), CONTEXT)
    )

    with pytest.raises(InvalidPartialError):
        verify_partials(keys, ciphertexts, [flipped_after], CONTEXT)
    verify_partials(keys, ciphertexts, [proved, partials[1]], CONTEXT)
    decrypted = combine({1: proved.values, 2: partials[1].values}, keys, ciphertexts)
    assert decrypted == [private.raw_decrypt(c) for c in ciphertexts]


def test_a_party_sending_twice_is_refused(
    dealt: Dealt, round_: tuple[list[int], list[PartialDecryption]]
) -> None:
    _, _, keys, _ = dealt
    ciphertexts, partials = round_

    with pytest.raises(ValueError, match="party 1 sent two"):
        verify_partials(keys, ciphertexts, [partials[0], partials[0]], CONTEXT)


def test_prover_refuses_a_share_of_another_key(primes: tuple[int, int], dealt: Dealt) -> None:
    public, shares, keys, _ = dealt
    _, _, other_keys, _ = deal_with_private_key(3, 4, primes)
    ciphertexts = encrypt(public, [1])

    with pytest.raises(ValueError, match="does not belong"):
        prove_partials(
            shares[0], other_keys, ciphertexts, partial_decrypt(shares[0], ciphertexts), CONTEXT
        )


# --- dealing ----------------------------------------------------------------------------------


def test_public_key_is_phe_with_g_n_plus_1(dealt: Dealt) -> None:
    public, shares, keys, _ = dealt

    assert isinstance(public, PaillierPublicKey) and public.g == public.n + 1
    assert public.n.bit_length() == BITS and keys.public_key.n == public.n
    assert [s.index for s in shares] == [1, 2, 3]


def test_key_share_repr_hides_the_secret(dealt: Dealt) -> None:
    share = dealt[1][0]

    assert str(share.share) not in repr(share) and "<secret>" in repr(share)


@pytest.mark.parametrize(
    "threshold,parties,message",
    [(0, 3, "threshold"), (4, 3, "threshold"), (1, 1, "parties"), (2, 65, "parties")],
)
def test_deal_rejects_impossible_thresholds(
    primes: tuple[int, int], threshold: int, parties: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        deal(threshold, parties, BITS, primes, insecure_test_size=True)


def test_deal_refuses_small_keys_unless_told_it_is_a_test(primes: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="insecure"):
        deal(2, 3, BITS, primes)


def test_deal_refuses_primes_that_are_not_safe(primes: tuple[int, int]) -> None:
    p, _ = primes
    from phe.util import getprimeover

    not_safe = getprimeover(BITS // 2)
    while (not_safe - 1) // 2 % 3 == 0 or not_safe.bit_length() != BITS // 2:
        not_safe = getprimeover(BITS // 2)

    with pytest.raises(ValueError, match="safe prime"):
        deal(2, 3, BITS, (p, not_safe), insecure_test_size=True)
    with pytest.raises(ValueError, match="distinct"):
        deal(2, 3, BITS, (p, p), insecure_test_size=True)
    with pytest.raises(ValueError, match="safe prime"):
        deal(2, 3, BITS + 2, primes, insecure_test_size=True)


def test_deal_finds_its_own_primes() -> None:
    public, shares, keys = deal(2, 2, 256, insecure_test_size=True)
    ciphertexts = encrypt(public, [99])

    partials = {s.index: partial_decrypt(s, ciphertexts) for s in shares}

    assert public.n.bit_length() == 256 and combine(partials, keys, ciphertexts) == [99]


@pytest.mark.slow
def test_a_2048_bit_key_round_trips() -> None:
    public, shares, keys = deal(2, 3, 2048)
    ciphertexts = encrypt(public, [123, 456])

    partials = [make_partial_decryption(s, keys, ciphertexts, CONTEXT) for s in shares[::2]]
    verify_partials(keys, ciphertexts, partials, CONTEXT)

    assert combine({p.index: p.values for p in partials}, keys, ciphertexts) == [123, 456]


# --- bytes ------------------------------------------------------------------------------------


def test_everything_round_trips_through_bytes(
    dealt: Dealt, round_: tuple[list[int], list[PartialDecryption]]
) -> None:
    _, shares, keys, _ = dealt
    ciphertexts, partials = round_

    shares_back = [key_share_from_bytes(key_share_to_bytes(s)) for s in shares]
    keys_back = verification_keys_from_bytes(verification_keys_to_bytes(keys))
    partials_back = [
        partial_decryption_from_bytes(partial_decryption_to_bytes(p, keys), keys) for p in partials
    ]

    assert shares_back == shares and keys_back == keys and partials_back == partials
    verify_partials(keys_back, ciphertexts, partials_back, CONTEXT)


def _encodings(dealt: Dealt, round_: tuple[list[int], list[PartialDecryption]]) -> list[bytes]:
    _, shares, keys, _ = dealt
    return [
        key_share_to_bytes(shares[0]),
        verification_keys_to_bytes(keys),
        partial_decryption_to_bytes(round_[1][0], keys),
    ]


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["share", "keys", "partial"])
def test_truncated_or_oversized_bytes_are_rejected(
    dealt: Dealt, round_: tuple[list[int], list[PartialDecryption]], kind: int
) -> None:
    keys = dealt[2]
    decode = [
        key_share_from_bytes,
        verification_keys_from_bytes,
        lambda data: partial_decryption_from_bytes(data, keys),
    ][kind]
    data = _encodings(dealt, round_)[kind]

    for cut in range(len(data)):
        with pytest.raises(ValueError):
            decode(data[:cut])
    for extra in (b"\x00", b"\x01" * 7, bytes(keys.n_square.bit_length() // 8 + 1)):
        with pytest.raises(ValueError):
            decode(data + extra)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.integers(0, 2), position=st.integers(0, 40), byte=st.integers(0, 255))
def test_corrupted_header_bytes_raise_value_error_or_decode_cleanly(
    dealt: Dealt,
    round_: tuple[list[int], list[PartialDecryption]],
    kind: int,
    position: int,
    byte: int,
) -> None:
    keys = dealt[2]
    data = bytearray(_encodings(dealt, round_)[kind])
    data[position % len(data)] = byte
    decode = [
        key_share_from_bytes,
        verification_keys_from_bytes,
        lambda raw: partial_decryption_from_bytes(raw, keys),
    ][kind]

    with contextlib.suppress(ValueError):  # the only error bad bytes may raise
        decode(bytes(data))


def test_wrong_magic_and_version_are_named(dealt: Dealt) -> None:
    data = key_share_to_bytes(dealt[1][0])

    with pytest.raises(ValueError, match="wrong magic"):
        verification_keys_from_bytes(data)
    with pytest.raises(ValueError, match="version 9"):
        key_share_from_bytes(data[:3] + b"\x09" + data[4:])
    with pytest.raises(TypeError):
        key_share_from_bytes("not bytes")  # type: ignore[arg-type]


def test_partial_for_another_key_size_is_rejected(
    dealt: Dealt, round_: tuple[list[int], list[PartialDecryption]]
) -> None:
    _, _, keys, _ = dealt
    data = partial_decryption_to_bytes(round_[1][0], keys)
    _, _, small_keys = deal(2, 3, 256, insecure_test_size=True)

    with pytest.raises(ValueError, match="bytes wide"):
        partial_decryption_from_bytes(data, small_keys)


# --- the batching arithmetic -----------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pairs=st.lists(
        st.tuples(st.integers(1, 2**200), st.integers(0, 2**128 - 1)), min_size=0, max_size=40
    ),
    modulus=st.integers(3, 2**256).map(lambda m: m | 1),
)
def test_multi_power_equals_the_product_of_powers(
    pairs: list[tuple[int, int]], modulus: int
) -> None:
    bases, exponents = [b for b, _ in pairs], [e for _, e in pairs]
    expected = 1
    for b, e in pairs:
        expected = expected * pow(b, e, modulus) % modulus

    assert multi_power(bases, exponents, modulus) % modulus == expected % modulus


def test_proofs_over_many_ciphertexts_split_across_cores_verify(dealt: Dealt) -> None:
    # 600 ciphertexts cross the size at which the batched products go to worker processes.
    public, shares, keys, private = dealt
    ciphertexts = encrypt(public, list(range(600)))
    partials = [
        make_partial_decryption(s, keys, ciphertexts, CONTEXT, workers=2) for s in shares[:2]
    ]

    verify_partials(keys, ciphertexts, partials, CONTEXT, workers=2)
    with pytest.raises(InvalidPartialError) as caught:
        verify_partials(
            keys, ciphertexts, [tampered(partials[1], 599, keys.n_square)], CONTEXT, workers=2
        )
    assert caught.value.parties == (2,)
    assert combine({p.index: p.values for p in partials}, keys, ciphertexts) == list(range(600))
