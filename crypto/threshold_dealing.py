"""Dealing a threshold Paillier key: a trusted dealer shares the decryption exponent.

Shamir's sharing of Damgård & Jurik's secret ``d`` (PKC 2001) as in Shoup ("Practical
threshold signatures", EUROCRYPT 2000, section 3): :func:`deal` hands each party a
:class:`KeyShare` and publishes the :class:`VerificationKeys`; :func:`lagrange_coefficients`
are the integers ``Δ·λ_{0,i}`` that recombine any ``t`` shares in the exponent. The
parameter checks here serve the other ``crypto.threshold_*`` modules too.
:mod:`crypto.threshold` describes the whole scheme.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import gmpy2
from phe import PaillierPublicKey

from crypto.primes import is_safe_prime, safe_prime

__all__ = [
    "MAX_PARTIES",
    "MIN_KEY_BITS",
    "KeyShare",
    "VerificationKeys",
    "deal",
    "lagrange_coefficients",
]

MIN_KEY_BITS = 2048
"""Smallest modulus for real use, as in :mod:`crypto.keys`."""

MAX_PARTIES = 64
"""``Δ = N!`` grows with N; 64 sites keep it under 300 bits, far below the modulus."""


@dataclass(frozen=True)
class VerificationKeys:
    """Everything public about a threshold key: ``n``, ``t``, ``N``, ``v`` and every ``v_i``.

    Sites pin this object (or its bytes) with the run: it fixes who may decrypt and lets
    each check the others' partials.
    """

    n: int
    threshold: int
    parties: int
    v: int
    party_keys: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_int("n", self.n)
        _check_params(self.threshold, self.parties)
        if self.n < 15 or self.n % 2 == 0:
            raise ValueError("n is not a valid Paillier modulus")
        if len(self.party_keys) != self.parties:
            raise ValueError(
                f"expected {self.parties} party verification keys, got {len(self.party_keys)}"
            )
        n_square = self.n * self.n
        for label, value in [
            ("v", self.v),
            *((f"v_{i + 1}", k) for i, k in enumerate(self.party_keys)),
        ]:
            _check_int(label, value)
            if not 0 < value < n_square:
                raise ValueError(f"verification key {label} is outside [1, n²)")
            if math.gcd(value, self.n) != 1:
                raise ValueError(f"verification key {label} is not a unit mod n²")

    @cached_property
    def public_key(self) -> PaillierPublicKey:
        """phe's public key (``g = n + 1``): encrypt with it as with a single key."""
        return PaillierPublicKey(self.n)

    @cached_property
    def n_square(self) -> int:
        return self.n * self.n

    @cached_property
    def delta(self) -> int:
        return math.factorial(self.parties)

    def party_key(self, index: int) -> int:
        """``v_i`` of party ``index`` (1-based)."""
        _check_index(index, self.parties)
        return self.party_keys[index - 1]


@dataclass(frozen=True, repr=False)
class KeyShare:
    """Party ``index``'s secret share ``s_i = f(i) mod nm`` of the decryption exponent.

    ``repr`` hides the share so that it never lands in a log by accident.
    """

    index: int
    share: int
    n: int
    threshold: int
    parties: int

    def __post_init__(self) -> None:
        _check_int("n", self.n)
        _check_params(self.threshold, self.parties)
        _check_index(self.index, self.parties)
        _check_int("share", self.share)
        if not 0 <= self.share < self.n * self.n:
            raise ValueError("share is outside [0, n²)")

    def __repr__(self) -> str:
        return (
            f"KeyShare(index={self.index}, threshold={self.threshold}, parties={self.parties}, "
            f"n_bits={self.n.bit_length()}, share=<secret>)"
        )

    @cached_property
    def exponent(self) -> int:
        """``2Δ·s_i``: the exponent of a partial decryption."""
        return 2 * math.factorial(self.parties) * self.share


# --------------------------------------------------------------------------- dealing


def deal(
    threshold: int,
    parties: int,
    bits: int = MIN_KEY_BITS,
    primes: tuple[int, int] | list[int] | None = None,
    *,
    insecure_test_size: bool = False,
) -> tuple[PaillierPublicKey, list[KeyShare], VerificationKeys]:
    """Create a threshold key and deal it: ``threshold`` of ``parties`` shares decrypt.

    The dealer (the run's custodian) must erase ``p``, ``q`` and ``d`` afterwards; this
    function keeps none of them, so dropping its result's shares is that erasure.

    Parameters
    ----------
    threshold
        ``t``: how many partials a decryption needs (1 <= t <= parties).
    parties
        ``N``: number of shares (2 to 64).
    bits
        Size of ``n``: 2048 or a larger multiple of 256.
    primes
        Two distinct safe primes of ``bits / 2`` bits each, e.g. from a
        :class:`crypto.primes.SafePrimePool` filled while the site was idle; ``None`` finds
        them now.
    insecure_test_size
        Must be ``True`` for ``bits`` below 2048 (tests).

    Raises
    ------
    TypeError
        On a non-int argument.
    ValueError
        On parameters out of range, or primes that are not distinct safe primes of the
        right size.
    """
    _check_params(threshold, parties)
    _check_int("bits", bits)
    if bits < MIN_KEY_BITS and not insecure_test_size:
        raise ValueError(
            f"{bits}-bit threshold keys are insecure; use {MIN_KEY_BITS} or 3072 bits "
            "(tests pass insecure_test_size=True)"
        )
    if bits % 2 or bits < 64 or bits > 8192:
        raise ValueError(f"key size {bits} is not accepted: use an even size from 64 to 8192")
    half = bits // 2
    if primes is None:
        p = safe_prime(half)
        q = safe_prime(half)
        while q == p:
            q = safe_prime(half)
    else:
        if not isinstance(primes, tuple | list) or len(primes) != 2:
            raise TypeError("primes must be a pair (p, q), e.g. SafePrimePool.take(2)")
        p, q = primes
        _check_int("p", p)
        _check_int("q", q)
        if p == q:
            raise ValueError("p and q must be distinct")
        for label, prime in (("p", p), ("q", q)):
            if prime.bit_length() != half or not is_safe_prime(prime):
                raise ValueError(f"{label} is not a {half}-bit safe prime")
    n = p * q
    if n.bit_length() != bits:
        raise ValueError(
            f"p·q has {n.bit_length()} bits, not {bits}: use primes with both top bits set"
        )
    m = (p - 1) // 2 * ((q - 1) // 2)
    if math.gcd(n, m) != 1:  # happens only if p = 2q + 1 or q = 2p + 1
        raise ValueError("p and q are related (one is 2·other + 1); choose another pair")
    d = m * int(gmpy2.invert(m, n))  # CRT: d ≡ 0 (mod m), d ≡ 1 (mod n)
    modulus = n * m
    coefficients = [d] + [secrets.randbelow(modulus) for _ in range(threshold - 1)]
    shares = [
        KeyShare(
            index=i,
            share=_evaluate(coefficients, i, modulus),
            n=n,
            threshold=threshold,
            parties=parties,
        )
        for i in range(1, parties + 1)
    ]
    n_square = n * n
    delta = math.factorial(parties)
    v = _random_unit(n, n_square) ** 2 % n_square
    party_keys = tuple(int(gmpy2.powmod(v, delta * s.share, n_square)) for s in shares)
    keys = VerificationKeys(n=n, threshold=threshold, parties=parties, v=v, party_keys=party_keys)
    return keys.public_key, shares, keys


def _evaluate(coefficients: Sequence[int], x: int, modulus: int) -> int:
    """Horner's rule for ``f(x) mod modulus``."""
    result = 0
    for c in reversed(coefficients):
        result = (result * x + c) % modulus
    return result


def _random_unit(n: int, n_square: int) -> int:
    while True:
        r = secrets.randbelow(n_square - 2) + 2
        if math.gcd(r, n) == 1:
            return r


# --------------------------------------------------------------------------- recombining


def lagrange_coefficients(subset: Sequence[int], parties: int) -> dict[int, int]:
    """Integer coefficients ``Δ·λ_{0,i} = Δ·Π_{j≠i} j / (j − i)`` for the parties in ``subset``.

    ``Σ_i Δ·λ_{0,i}·f(i) = Δ·f(0)`` for every polynomial of degree below ``len(subset)``;
    ``Δ = parties!`` makes each coefficient an integer (Shoup 2000, section 3).

    Raises
    ------
    ValueError
        On an empty subset, a repeated index, or an index outside ``1..parties``.
    """
    indices = list(subset)
    if not indices:
        raise ValueError("subset is empty")
    if len(set(indices)) != len(indices):
        raise ValueError(f"subset repeats a party: {sorted(indices)}")
    for i in indices:
        _check_index(i, parties)
    delta = math.factorial(parties)
    result = {}
    for i in indices:
        numerator, denominator = delta, 1
        for j in indices:
            if j != i:
                numerator *= j
                denominator *= j - i
        coefficient, remainder = divmod(numerator, denominator)
        assert remainder == 0, "Δ = N! clears every denominator"
        result[i] = coefficient
    return result


# --------------------------------------------------------------------------- checks


def _check_int(label: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{label} must be an int, got {type(value).__name__}")


def _check_params(threshold: int, parties: int) -> None:
    _check_int("threshold", threshold)
    _check_int("parties", parties)
    if not 2 <= parties <= MAX_PARTIES:
        raise ValueError(f"parties must be between 2 and {MAX_PARTIES}, got {parties}")
    if not 1 <= threshold <= parties:
        raise ValueError(f"threshold must be between 1 and {parties}, got {threshold}")


def _check_index(index: int, parties: int) -> None:
    _check_int("index", index)
    if not 1 <= index <= parties:
        raise ValueError(f"party index {index} is outside 1..{parties}")


def _check_keys(keys: VerificationKeys) -> None:
    if not isinstance(keys, VerificationKeys):
        raise TypeError(f"expected VerificationKeys, got {type(keys).__name__}")
