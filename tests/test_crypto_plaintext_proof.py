"""Proofs of plaintext knowledge: honest ones verify; derived or tampered ones do not."""

from __future__ import annotations

import secrets

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phe import paillier

from crypto import plaintext_proof as pp
from crypto.obfuscators import draw_units


@pytest.fixture(scope="module")
def key():
    public, _ = paillier.generate_paillier_keypair(n_length=512)
    return public


def encrypt(pk, plaintexts):
    units = draw_units(pk.n, len(plaintexts))
    cts = [
        (1 + m * pk.n) * pow(r, pk.n, pk.nsquare) % pk.nsquare
        for m, r in zip(plaintexts, units, strict=True)
    ]
    return cts, units


WHERE = {"run_id": "r", "round_number": 3, "site": "A"}


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**200), min_size=1, max_size=6))
def test_an_honest_proof_verifies_and_round_trips(key, plaintexts):
    cts, units = encrypt(key, plaintexts)
    proof = pp.prove(key.n, cts, plaintexts, units, **WHERE)
    again = pp.PlaintextProof.from_bytes(proof.to_bytes(key.n), key.n)
    pp.verify(key.n, cts, again, **WHERE)


def test_the_inverse_of_another_sites_ciphertext_cannot_be_proven(key):
    """The review's attack: A submits c_C⁻¹ (times its own ciphertext) and proves what it knows."""
    victim, _ = encrypt(key, [1000, 2000, 3000])
    own_plain = [5, 6, 7]
    own, own_units = encrypt(key, own_plain)
    derived = [
        int(gmpy2.invert(c, key.nsquare)) * o % key.nsquare
        for c, o in zip(victim, own, strict=True)
    ]
    # A's best: open its own part. It cannot open the victim's, so the proof fails.
    for plaintexts in (own_plain, [0, 0, 0], [(key.n - p) % key.n for p in own_plain]):
        proof = pp.prove(key.n, derived, plaintexts, own_units, **WHERE)
        with pytest.raises(pp.ProofError, match="did not prove"):
            pp.verify(key.n, derived, proof, **WHERE)


def test_one_foreign_ciphertext_among_honest_ones_fails_the_batch(key):
    cts, units = encrypt(key, [1, 2, 3, 4])
    foreign, _ = encrypt(key, [99])
    cts[2] = foreign[0]
    proof = pp.prove(key.n, cts, [1, 2, 3, 4], units, **WHERE)
    with pytest.raises(pp.ProofError):
        pp.verify(key.n, cts, proof, **WHERE)


@pytest.mark.parametrize(
    "change",
    [
        {"run_id": "other"},
        {"round_number": 4},
        {"site": "B"},
    ],
)
def test_a_proof_is_bound_to_its_run_round_and_site(key, change):
    cts, units = encrypt(key, [10, 20])
    proof = pp.prove(key.n, cts, [10, 20], units, **WHERE)
    with pytest.raises(pp.ProofError):
        pp.verify(key.n, cts, proof, **{**WHERE, **change})


def test_a_proof_is_bound_to_every_ciphertext(key):
    cts, units = encrypt(key, [10, 20])
    proof = pp.prove(key.n, cts, [10, 20], units, **WHERE)
    with pytest.raises(pp.ProofError):
        pp.verify(key.n, [cts[1], cts[0]], proof, **WHERE)
    with pytest.raises(pp.ProofError):
        pp.verify(key.n, cts[:1], proof, **WHERE)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(["a", "w", "z"]), st.integers(min_value=1, max_value=2**64))
def test_a_tampered_proof_fails(key, field, delta):
    cts, units = encrypt(key, [7, 8, 9])
    proof = pp.prove(key.n, cts, [7, 8, 9], units, **WHERE)
    values = {"a": proof.a, "w": proof.w, "z": proof.z}
    modulus = {"a": key.nsquare, "w": key.n, "z": 2**4096}[field]
    values[field] = (values[field] + delta) % modulus or 1
    with pytest.raises(pp.ProofError):
        pp.verify(key.n, cts, pp.PlaintextProof(**values), **WHERE)


def test_malformed_proof_bytes_are_a_proof_error(key):
    with pytest.raises(pp.ProofError):
        pp.PlaintextProof.from_bytes(b"\x00" * 10, key.n)
    with pytest.raises(pp.ProofError, match="range"):
        pp.verify(key.n, [5], pp.PlaintextProof(0, 1, 1), **WHERE)
    with pytest.raises(pp.ProofError, match="larger"):
        pp.verify(key.n, [5], pp.PlaintextProof(2, 1, 1 << 5000), **WHERE)
    with pytest.raises(pp.ProofError):
        pp.verify(key.n, [], pp.PlaintextProof(2, 1, secrets.randbits(64)), **WHERE)


def test_the_response_does_not_tell_how_large_the_plaintexts_are(key):
    """z's length follows a public bound, not m*: tiny and near-n plaintexts look alike."""
    lengths = {}
    for label, plaintexts in (("tiny", [1, 2, 3]), ("large", [key.n - 5, key.n - 6, key.n - 7])):
        cts, units = encrypt(key, plaintexts)
        lengths[label] = [
            pp.prove(key.n, cts, plaintexts, units, **WHERE).z.bit_length() for _ in range(8)
        ]
    # Each z is a uniform draw of the same public width plus e·m*: at most a few bits apart.
    assert abs(max(lengths["tiny"]) - max(lengths["large"])) <= 2
    assert min(lengths["tiny"]) > max(lengths["large"]) - 16


def test_the_batched_ciphertext_is_the_product_of_each_one_raised_to_its_lambda(key):
    # Pippenger's shared squarings (crypto/multiexp.py) must give exactly Π c_i^λ_i.
    cts, _ = encrypt(key, [secrets.randbelow(2**64) for _ in range(70)])
    lambdas = pp._lambdas(secrets.token_bytes(32), len(cts))
    expected = 1
    for c, lam in zip(cts, lambdas, strict=True):
        expected = expected * pow(c, lam, key.nsquare) % key.nsquare

    assert pp._combine(cts, lambdas, gmpy2.mpz(key.nsquare)) == expected
