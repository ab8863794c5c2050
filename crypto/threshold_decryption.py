"""Partial decryptions, their batched Chaum–Pedersen proofs, and combining t of them.

Party ``i`` publishes ``c_i = c^{2Δ s_i}`` with a proof that ``log_{c^4}(c_i^2) =
log_v(v_i)`` (Shoup 2000; Damgård & Jurik, PKC 2001); any ``t`` checked partials combine
into the plaintext. :mod:`crypto.threshold` describes the whole scheme.

Batching: one proof covers a whole vector of ciphertexts. The verifier (and prover) derive
128-bit coefficients ``ρ_k`` from a Fiat–Shamir hash of every ciphertext and every partial,
and the proof is about ``C = Π c_k^{4ρ_k}`` and ``P = Π c_{i,k}^{2ρ_k}``. A partial that
is wrong in any position passes only if ``Π x_k^{ρ_k} = 1`` for the non-trivial errors
``x_k``, which happens with probability at most ``2^-128`` because every ``x_k`` has order
above ``2^128`` (the small-exponent test of Bellare, Garay & Rabin, EUROCRYPT 1998).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import gmpy2

from crypto._parallel import releases_gil
from crypto.threshold_dealing import (
    KeyShare,
    VerificationKeys,
    _check_int,
    _check_keys,
    lagrange_coefficients,
)
from crypto.threshold_powers import _multi_powers, _powmod_all

__all__ = [
    "BATCH_COEFFICIENT_BITS",
    "CHALLENGE_BITS",
    "STATISTICAL_HIDING_BITS",
    "DecryptionProof",
    "InvalidPartialError",
    "PartialDecryption",
    "combine",
    "make_partial_decryption",
    "partial_decrypt",
    "prove_partials",
    "verify_partials",
]

CHALLENGE_BITS = 256
"""Fiat–Shamir challenge ``e``: all of sha256."""

BATCH_COEFFICIENT_BITS = 128
"""Random-linear-combination coefficients: a wrong partial slips through with prob. 2^-128."""

STATISTICAL_HIDING_BITS = 128
"""Extra bits of the prover's nonce so that ``z = r + e·Δ·s_i`` hides ``s_i`` statistically."""

_DOMAIN = b"cohort/threshold-paillier/v1"


class InvalidPartialError(ValueError):
    """One or more parties' partial decryptions are wrong; ``parties`` names them."""

    def __init__(self, parties: Sequence[int], reason: str = "proof of correct decryption fails"):
        self.parties = tuple(sorted(parties))
        super().__init__(f"partial decryption from party {list(self.parties)}: {reason}")


@dataclass(frozen=True)
class DecryptionProof:
    """Non-interactive Chaum–Pedersen proof ``(e, z)`` covering a whole vector of partials."""

    challenge: int
    response: int

    def __post_init__(self) -> None:
        _check_int("challenge", self.challenge)
        _check_int("response", self.response)
        if not 0 <= self.challenge < 1 << CHALLENGE_BITS:
            raise ValueError(f"challenge must be below 2^{CHALLENGE_BITS}")
        if self.response < 0:
            raise ValueError("response must not be negative")


@dataclass(frozen=True)
class PartialDecryption:
    """Party ``index``'s partials ``c^{2Δ s_i} mod n²`` of a vector, with their proof."""

    index: int
    values: tuple[int, ...]
    proof: DecryptionProof

    def __post_init__(self) -> None:
        _check_int("index", self.index)
        if self.index < 1:
            raise ValueError(f"party index must be at least 1, got {self.index}")
        for k, value in enumerate(self.values):
            _check_int(f"partial {k}", value)


# --------------------------------------------------------------------------- decrypting


def partial_decrypt(
    share: KeyShare, ciphertexts: Sequence[int], *, workers: int | None = None
) -> list[int]:
    """Party ``share.index``'s partials ``c^{2Δ s_i} mod n²``, over ``workers`` cores.

    One full exponentiation (exponent about ``2·bits`` bits, modulus ``n²``) per
    ciphertext: the share is known only modulo the secret ``nm``, so a party cannot use
    CRT as a single key holder does.

    Raises
    ------
    TypeError
        If ``share`` is not a :class:`KeyShare` or a ciphertext is not an int.
    ValueError
        If a ciphertext is outside ``[1, n²)``.
    """
    if not isinstance(share, KeyShare):
        raise TypeError(f"expected KeyShare, got {type(share).__name__}")
    n_square = share.n * share.n
    cts = _checked_ciphertexts(ciphertexts, n_square)
    return _powmod_all(cts, share.exponent, n_square, workers)


def prove_partials(
    share: KeyShare,
    keys: VerificationKeys,
    ciphertexts: Sequence[int],
    partials: Sequence[int],
    context: bytes,
    *,
    workers: int | None = None,
) -> DecryptionProof:
    """Prove in zero knowledge that ``partials`` are ``c^{2Δ s_i}`` for every ciphertext.

    Fiat–Shamir over every public value and ``context`` (the run id and round, so that a
    proof cannot be replayed in another round). Costs one batched product over the vector
    (about 20 modular multiplications per ciphertext, :func:`multi_power`) and three full
    exponentiations, instead of several full exponentiations per ciphertext; verifying
    costs two such products and four exponentiations.

    Raises
    ------
    ValueError
        If the share does not belong to ``keys`` or the lengths differ.
    """
    if not isinstance(share, KeyShare):
        raise TypeError(f"expected KeyShare, got {type(share).__name__}")
    _check_keys(keys)
    _check_context(context)
    if share.n != keys.n or share.parties != keys.parties or share.threshold != keys.threshold:
        raise ValueError("key share does not belong to these verification keys")
    n_square = keys.n_square
    cts = _checked_ciphertexts(ciphertexts, n_square)
    values = _checked_ciphertexts(partials, n_square, what="partial")
    if len(values) != len(cts):
        raise ValueError(f"{len(values)} partials for {len(cts)} ciphertexts")
    secret = keys.delta * share.share  # log_v(v_i) = log_{C}(P)
    base, _ = _batched_statement(
        keys, share.index, cts, values, context, with_partials=False, workers=workers
    )
    power = gmpy2.powmod(base, secret, n_square)
    nonce = secrets.randbits(_nonce_bits(keys))
    commitment_base = gmpy2.powmod(base, nonce, n_square)
    commitment_v = gmpy2.powmod(keys.v, nonce, n_square)
    challenge = _challenge(keys, share.index, base, power, commitment_base, commitment_v, context)
    return DecryptionProof(challenge=challenge, response=nonce + challenge * secret)


@releases_gil
def make_partial_decryption(
    share: KeyShare,
    keys: VerificationKeys,
    ciphertexts: Sequence[int],
    context: bytes,
    *,
    workers: int | None = None,
) -> PartialDecryption:
    """What a site publishes in a round: its partials of ``ciphertexts`` and their proof."""
    values = partial_decrypt(share, ciphertexts, workers=workers)
    proof = prove_partials(share, keys, ciphertexts, values, context, workers=workers)
    return PartialDecryption(index=share.index, values=tuple(values), proof=proof)


@releases_gil
def verify_partials(
    keys: VerificationKeys,
    ciphertexts: Sequence[int],
    partials: Sequence[PartialDecryption],
    context: bytes,
    *,
    workers: int | None = None,
) -> None:
    """Check every party's partials and proof; raise naming each party whose check fails.

    A site calls this on the partials it received before :func:`combine`; it may then drop
    the parties named and combine the rest if ``threshold`` remain.

    Raises
    ------
    InvalidPartialError
        Naming every party whose partials are malformed or whose proof fails.
    ValueError
        If a party appears twice or a ciphertext is out of range.
    """
    _check_keys(keys)
    _check_context(context)
    n_square = keys.n_square
    cts = _checked_ciphertexts(ciphertexts, n_square)
    seen: set[int] = set()
    bad: list[int] = []
    for partial in partials:
        if not isinstance(partial, PartialDecryption):
            raise TypeError(f"expected PartialDecryption, got {type(partial).__name__}")
        if partial.index in seen:
            raise ValueError(f"party {partial.index} sent two partial decryptions")
        seen.add(partial.index)
        if not _partial_is_valid(keys, cts, partial, context, workers):
            bad.append(partial.index)
    if bad:
        raise InvalidPartialError(bad)


def _partial_is_valid(
    keys: VerificationKeys,
    cts: list[int],
    partial: PartialDecryption,
    context: bytes,
    workers: int | None,
) -> bool:
    n_square = keys.n_square
    if not 1 <= partial.index <= keys.parties or len(partial.values) != len(cts):
        return False
    if any(not 0 < value < n_square for value in partial.values):
        return False
    proof = partial.proof
    if proof.response >= 1 << (_nonce_bits(keys) + 1):
        return False
    base, power = _batched_statement(
        keys, partial.index, cts, list(partial.values), context, workers=workers
    )
    if gmpy2.gcd(power, keys.n) != 1:  # a partial sharing a factor with n is not c^{2Δs_i}
        return False
    # a = C^z · P^-e and b = v^z · v_i^-e recompute the commitments an honest prover hashed.
    commitment_base = (
        gmpy2.powmod(base, proof.response, n_square)
        * gmpy2.powmod(power, -proof.challenge, n_square)
        % n_square
    )
    commitment_v = (
        gmpy2.powmod(keys.v, proof.response, n_square)
        * gmpy2.powmod(keys.party_key(partial.index), -proof.challenge, n_square)
        % n_square
    )
    expected = _challenge(keys, partial.index, base, power, commitment_base, commitment_v, context)
    return expected == proof.challenge


@releases_gil
def combine(
    partials_by_index: Mapping[int, Sequence[int]],
    keys: VerificationKeys,
    ciphertexts: Sequence[int],
) -> list[int]:
    """Plaintexts in ``[0, n)`` from the partials of at least ``threshold`` parties.

    Uses the ``threshold`` lowest indices given. Verify the partials first
    (:func:`verify_partials`): this function trusts them, and a wrong one yields a wrong
    plaintext, not an error.

    Raises
    ------
    ValueError
        If fewer than ``threshold`` parties are given, an index is out of range, or a
        vector's length differs from ``ciphertexts``.
    """
    _check_keys(keys)
    n, n_square = keys.n, keys.n_square
    cts = _checked_ciphertexts(ciphertexts, n_square)
    if len(partials_by_index) < keys.threshold:
        raise ValueError(
            f"decryption needs partials from {keys.threshold} parties, got {len(partials_by_index)}"
        )
    chosen = sorted(partials_by_index)[: keys.threshold]
    coefficients = lagrange_coefficients(chosen, keys.parties)
    vectors = {}
    for i in chosen:
        values = list(partials_by_index[i])
        if len(values) != len(cts):
            raise ValueError(f"party {i} sent {len(values)} partials for {len(cts)} ciphertexts")
        vectors[i] = _checked_ciphertexts(values, n_square, what=f"party {i} partial")
    scale = int(gmpy2.invert(4 * keys.delta**2 % n, n))
    exponents = {i: 2 * coefficients[i] for i in chosen}
    plaintexts = []
    mpz_n, mpz_n_square = gmpy2.mpz(n), gmpy2.mpz(n_square)
    for k in range(len(cts)):
        product = gmpy2.mpz(1)
        for i in chosen:
            product = (
                product * gmpy2.powmod(vectors[i][k], exponents[i], mpz_n_square) % mpz_n_square
            )
        # product = c^{4Δ²d} = 1 + 4Δ²·m·n (mod n²): L(x) = (x - 1) / n.
        plaintexts.append(int((product - 1) // mpz_n * scale % mpz_n))
    return plaintexts


# --------------------------------------------------------------------------- proof internals


def _nonce_bits(keys: VerificationKeys) -> int:
    # Δ·s_i < Δ·n², and z = r + e·Δ·s_i must hide it up to 2^-128.
    return (
        2 * keys.n.bit_length() + keys.delta.bit_length() + CHALLENGE_BITS + STATISTICAL_HIDING_BITS
    )


def _batched_statement(
    keys: VerificationKeys,
    index: int,
    cts: list[int],
    partials: list[int],
    context: bytes,
    *,
    with_partials: bool = True,
    workers: int | None = None,
) -> tuple[int, int]:
    """``C = Π c_k^{4ρ_k}`` and ``P = Π p_k^{2ρ_k}`` with ρ from a hash of everything public."""
    width = _width(keys.n_square)
    digest = hashlib.sha256()
    for part in (_DOMAIN, b"batch", _frame(context), _int_bytes(keys.n), index.to_bytes(2, "big")):
        digest.update(part)
    digest.update(len(cts).to_bytes(8, "big"))
    for c in cts:
        digest.update(c.to_bytes(width, "big"))
    for value in partials:
        digest.update(value.to_bytes(width, "big"))
    stream = hashlib.shake_256(digest.digest()).digest(len(cts) * BATCH_COEFFICIENT_BITS // 8)
    step = BATCH_COEFFICIENT_BITS // 8
    rhos = [int.from_bytes(stream[k * step : (k + 1) * step], "big") for k in range(len(cts))]
    jobs = [cts, partials] if with_partials else [cts]
    products = _multi_powers(jobs, rhos, keys.n_square, workers)
    n_square = gmpy2.mpz(keys.n_square)
    base = gmpy2.powmod(products[0], 4, n_square)
    power = gmpy2.powmod(products[1], 2, n_square) if with_partials else 0
    return int(base), int(power)


def _challenge(
    keys: VerificationKeys,
    index: int,
    base: int,
    power: int,
    commitment_base: int,
    commitment_v: int,
    context: bytes,
) -> int:
    width = _width(keys.n_square)
    digest = hashlib.sha256()
    for part in (
        _DOMAIN,
        b"challenge",
        _frame(context),
        _int_bytes(keys.n),
        index.to_bytes(2, "big"),
    ):
        digest.update(part)
    for value in (keys.v, keys.party_key(index), base, power, commitment_base, commitment_v):
        digest.update(int(value).to_bytes(width, "big"))
    return int.from_bytes(digest.digest(), "big")


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _int_bytes(value: int) -> bytes:
    return _frame(value.to_bytes(_width(value), "big"))


def _width(value: int) -> int:
    return max(1, (value.bit_length() + 7) // 8)


# --------------------------------------------------------------------------- checks


def _check_context(context: bytes) -> None:
    if not isinstance(context, bytes):
        raise TypeError(f"context must be bytes (run id and round), got {type(context).__name__}")


def _checked_ciphertexts(
    values: Sequence[int], n_square: int, what: str = "ciphertext"
) -> list[int]:
    checked = list(values)
    for k, c in enumerate(checked):
        if not isinstance(c, int) or isinstance(c, bool):
            raise TypeError(f"{what} {k} must be an int, got {type(c).__name__}")
        if not 0 < c < n_square:
            raise ValueError(f"{what} {k} is outside [1, n²)")
    return checked
