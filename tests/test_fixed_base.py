"""DJN fixed-base obfuscators (crypto/fixed_base.py) on real keys, single and threshold."""

from __future__ import annotations

import secrets

import gmpy2
import pytest

from crypto import (
    RandomnessPool,
    decrypt_packed,
    encrypt_packed,
    generate_keypair,
)
from crypto import plaintext_proof as pp
from crypto.fixed_base import (
    BaseError,
    FixedBasePower,
    ObfuscatorTables,
    check_base,
    derive_base,
    exponent_bits,
    tables_for,
    unit,
)
from crypto.primes import safe_prime
from crypto.threshold import combine, deal, partial_decrypt

BITS = 1024
WHERE = {"run_id": "run-1", "round_number": 3, "site": "a"}


@pytest.fixture(scope="module")
def single():  # type: ignore[no-untyped-def]
    return generate_keypair(BITS, insecure_test_size=True)


@pytest.fixture(scope="module")
def threshold():  # type: ignore[no-untyped-def]
    p, q = safe_prime(BITS // 2), safe_prime(BITS // 2)
    while q == p:
        q = safe_prime(BITS // 2)
    public, shares, keys = deal(2, 3, BITS, (p, q), insecure_test_size=True)
    return public, shares, keys, (p, q)


def test_table_power_equals_powmod_for_random_exponents() -> None:
    modulus = gmpy2.mpz(secrets.randbits(1024) | 1)
    base = secrets.randbelow(int(modulus))
    for window in (1, 5, 6, 8):
        table = FixedBasePower(base, modulus, 300, window)
        for exponent in [0, 1, (1 << 300) - 1, *(secrets.randbits(300) for _ in range(20))]:
            assert table.power(exponent) == gmpy2.powmod(base, exponent, modulus)


def test_table_refuses_exponents_it_was_not_built_for() -> None:
    table = FixedBasePower(3, 1009, 16)
    with pytest.raises(ValueError, match="exponent"):
        table.power(1 << 16)
    with pytest.raises(ValueError, match="exponent"):
        table.power(-1)


def test_exponent_is_half_the_modulus() -> None:
    assert exponent_bits(1 << 2047) == 1024
    assert exponent_bits((1 << 3071) + 1) == 1536


def test_obfuscator_is_r_to_the_n_for_r_h_to_the_a(single) -> None:  # type: ignore[no-untyped-def]
    public, _ = single
    n, n_square = public.n, public.nsquare
    tables = tables_for(n)
    exponents = tables.exponents(8)
    obfuscators = tables.obfuscators(exponents)

    assert obfuscators == [int(gmpy2.powmod(tables.base_n, a, n_square)) for a in exponents]
    assert obfuscators == [int(gmpy2.powmod(unit(n, a), n, n_square)) for a in exponents]
    assert len(set(obfuscators)) == 8 and all(o != 1 for o in obfuscators)
    assert all(a.bit_length() <= exponent_bits(n) for a in exponents)


def test_single_key_ciphertexts_decrypt_with_phe_and_crt(single) -> None:  # type: ignore[no-untyped-def]
    public, private = single
    plaintexts = [0, 1, public.n - 1, *(secrets.randbelow(public.n) for _ in range(5))]

    ciphertexts = encrypt_packed(public, plaintexts, workers=1)

    assert [private.raw_decrypt(c) for c in ciphertexts] == plaintexts
    assert decrypt_packed(private, ciphertexts, workers=1) == plaintexts


def test_threshold_ciphertexts_from_a_pool_open_with_two_partials(threshold) -> None:  # type: ignore[no-untyped-def]
    public, shares, keys, _ = threshold
    plaintexts = [secrets.randbelow(public.n) for _ in range(6)]
    with RandomnessPool(keys.public_key, workers=2) as pool:
        pool.start(6)
        ciphertexts = encrypt_packed(keys.public_key, plaintexts, pool=pool)

    partials = {s.index: partial_decrypt(s, ciphertexts, workers=1) for s in shares[1:]}

    assert combine(partials, keys, ciphertexts) == plaintexts


def test_threshold_obfuscators_stay_in_the_jacobi_one_subgroup(threshold) -> None:  # type: ignore[no-untyped-def]
    """Safe primes make n a Blum integer: -1 has Jacobi symbol 1 and is no square (DJN)."""
    public, _, _, (p, q) = threshold
    n = public.n
    h = derive_base(n)
    assert gmpy2.jacobi(h, n) == 1
    assert gmpy2.legendre(h, p) == -1 and gmpy2.legendre(h, q) == -1  # -x², not a square
    for a in ObfuscatorTables(n).exponents(5):
        r = unit(n, a)
        assert gmpy2.jacobi(r, n) == 1


@pytest.mark.parametrize("key", ["single", "threshold"])
def test_proofs_of_djn_ciphertexts_verify(key: str, request: pytest.FixtureRequest) -> None:
    public = request.getfixturevalue(key)[0]
    plaintexts = [secrets.randbelow(public.n) for _ in range(5)]
    with RandomnessPool(public, workers=1) as pool:
        payload, proof_bytes = pp.encrypt_proven(public, plaintexts, pool=pool, **WHERE)  # type: ignore[arg-type]
    width = (public.n.bit_length() + 7) // 8 * 2
    ciphertexts = [
        int.from_bytes(payload[i : i + width], "big") for i in range(0, len(payload), width)
    ]
    proof = pp.PlaintextProof.from_bytes(proof_bytes, public.n)

    pp.verify(public.n, ciphertexts, proof, **WHERE)  # type: ignore[arg-type]
    with pytest.raises(pp.ProofError):
        pp.verify(public.n, ciphertexts, proof, **{**WHERE, "site": "b"})  # type: ignore[arg-type]


def test_a_proof_from_wrong_exponents_fails(single) -> None:  # type: ignore[no-untyped-def]
    public, _ = single
    plaintexts = [secrets.randbelow(public.n) for _ in range(3)]
    exponents: list[int] = []
    ciphertexts = encrypt_packed(public, plaintexts, workers=1, exponents_out=exponents)
    wrong = [exponents[0] + 1, *exponents[1:]]

    proof = pp.prove_exponents(public.n, ciphertexts, plaintexts, wrong, **WHERE)  # type: ignore[arg-type]

    with pytest.raises(pp.ProofError):
        pp.verify(public.n, ciphertexts, proof, **WHERE)  # type: ignore[arg-type]


# --- hostile bases: h comes from n alone, and a degenerate one is refused ---------------------


def test_base_is_bound_to_the_key_alone(single, threshold) -> None:  # type: ignore[no-untyped-def]
    """Nothing but n (whose fingerprint the custodian signs) decides h: no one can supply one."""
    n = single[0].n
    assert derive_base(n) == derive_base(int(n)) == ObfuscatorTables(n).base
    assert derive_base(n) != derive_base(threshold[0].n)
    check_base(n, derive_base(n))


def test_degenerate_bases_are_refused(threshold) -> None:  # type: ignore[no-untyped-def]
    """What a breached coordinator would hand a site to make every obfuscator guessable."""
    public, _, _, (p, q) = threshold
    n = public.n
    root_of_one = (p * pow(p, -1, q) * (q - 1) + q * pow(q, -1, p)) % n  # 1 mod p, -1 mod q
    assert root_of_one * root_of_one % n == 1 and root_of_one not in (1, n - 1)
    for bad in (0, 1, n - 1, p, root_of_one, n - root_of_one):
        with pytest.raises(BaseError):
            check_base(n, bad)


def test_a_modulus_with_only_small_order_units_yields_no_base() -> None:
    with pytest.raises(BaseError, match="not a Paillier key"):
        derive_base(7 * 13)  # every unit mod 91 has order dividing 12


def test_pool_for_another_key_is_refused(single, threshold) -> None:  # type: ignore[no-untyped-def]
    with (
        RandomnessPool(threshold[0], workers=1) as pool,
        pytest.raises(ValueError, match="different"),
    ):
        encrypt_packed(single[0], [1], pool=pool)
