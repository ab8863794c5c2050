"""Paillier obfuscators as fixed-base powers (Damgård–Jurik–Nielsen), for every site alike.

Why: a Paillier ciphertext is ``(1 + m·n) · r^n mod n²`` and ``r^n`` is all its cost: a
2·|n|-bit exponentiation modulo the 4·|n|-bit ``n²``, about 3x cheaper by CRT for a site
that holds ``p`` and ``q`` and never for a share holder of a t-of-n key, who does not.

The variant of Damgård & Jurik ("A Generalisation, a Simplification and Some Applications
of Paillier's Probabilistic Public-Key System", PKC 2001, §4.1) as stated by Damgård,
Jurik & Nielsen ("A generalization of Paillier's public-key system with applications to
electronic voting", Int. J. Inf. Secur. 9, 2010, §4.1; the ``s = 1`` case): fix
``h = -x² mod n`` for a random unit ``x`` and ``h_s = h^n mod n²``; an obfuscator is
``h_s^a mod n²`` for a random exponent ``a`` of :func:`exponent_bits` bits. It is exactly
``r^n mod n²`` for ``r = h^a mod n`` (``(y + kn)^n ≡ y^n (mod n²)``), so the ciphertexts
are ordinary phe ciphertexts: phe, :func:`crypto.paillier_fast.decrypt_packed` and the
threshold combine open them, and ``r`` serves the proof of plaintext knowledge
(:mod:`crypto.plaintext_proof`, which needs only ``Π r_i^{λ_i} = h^{Σ λ_i a_i}``:
:func:`unit_product`) unchanged. With the base fixed, the powers
``h_s^(j·2^(w·i))`` are tabulated once per key and process (:class:`FixedBasePower`), and
each obfuscator is then one multiplication per ``w``-bit digit of ``a``: about 170 products
mod ``n²`` for a 2048-bit key, where a plain ``r^n`` takes about 2,450 and the CRT path the
work of about 700.

Exponent length, the assumption, and the security level: ``a`` has ``ceil(|n|/2)`` bits
(1024 for a 2048-bit key), the choice of DJN 2010 and of secretflow/heu's Damgård–Jurik
(``r`` of ``ceil(k/2)`` bits); TNO's ``tno.mpc.encryption_schemes.paillier`` precomputes
plain ``r^n`` with uniform ``r`` (as this module's predecessor did) and offers no such
variant. Security rests on DCR plus the assumption that ``h^a`` for such a short ``a`` is
indistinguishable from a uniform element of ``<h>``; Håstad, Schrift & Shamir ("The
discrete logarithm modulo a composite hides O(n) bits", JCSS 47, 1993) show that
exponentiation modulo a composite hides half of the exponent's bits if factoring is hard,
which is why half of ``|n|`` is the floor, not a smaller per-size table. The generic
attacks on a short exponent (baby-step giant-step, Pollard's lambda) cost ``2^(|a|/2)`` =
2^512 here, far above the 112-bit level of a 2048-bit modulus (NIST SP 800-57), so the
exponent is not the weakest link; factoring ``n`` stays that. For threshold keys (safe
primes, so ``p ≡ q ≡ 3 mod 4``) ``-1`` is a non-square of Jacobi symbol 1 and ``h``
generates the Jacobi-symbol-1 subgroup with overwhelming probability, DJN's exact setting;
phe's single-custodian keys have random primes, where ``<h>`` is a large subgroup of
``Z_n^*`` of unknown small index, the setting heu's Damgård–Jurik uses too.

Where ``h`` comes from: :func:`derive_base` hashes the public key into ``Z_n^*`` (SHAKE-256
of a domain tag and ``n``, 128 bits beyond ``|n|``, so ``x`` is statistically uniform), and
every site computes it from the ``n`` whose fingerprint its custodian signed. Nothing about
``h`` travels, so a breached coordinator cannot hand a site an ``h`` of known order (``1``,
``-1``, a ``2^k``-th root of unity) that would make the obfuscators guessable; nobody
knows ``x`` either (a random oracle's output). :func:`check_base` refuses such values all the
same, so a modulus that hashes to one (only a fake one could) fails loudly.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Sequence
from functools import lru_cache

import gmpy2

__all__ = [
    "WINDOW_BITS",
    "BaseError",
    "FixedBasePower",
    "ObfuscatorTables",
    "check_base",
    "derive_base",
    "exponent_bits",
    "tables_for",
    "unit",
    "unit_product",
]

WINDOW_BITS = 6
"""Digit width ``w``: ``ceil(|a|/w)`` products per power, ``ceil(|a|/w)·2^w`` to tabulate.

At 6 bits a 2048-bit key's table mod ``n²`` takes about 11,000 products and 5.5 MB per
process, and each obfuscator 171 products; 8 bits would save a quarter of the products per
obfuscator for three times the table, which pays only beyond ~1,000 obfuscators per
process and key.
"""

_DOMAIN = b"cohort/djn-base/v1"
_EXTRA_BITS = 128
"""``x`` is drawn 128 bits wider than ``n`` and reduced: within 2^-128 of uniform."""
_MAX_TRIES = 64
_SMALL_ORDERS = math.lcm(*range(1, 1025))
"""A multiple of every order up to 1024."""


class BaseError(ValueError):
    """A base that would make obfuscators predictable (a unit of small order, a non-unit)."""


def exponent_bits(n: int) -> int:
    """Bits of the random exponent ``a``: ``ceil(|n|/2)`` (see the module's note)."""
    return (int(n).bit_length() + 1) // 2


def check_base(n: int, h: int) -> None:
    """Refuse ``h`` unless it is a unit mod ``n`` whose order exceeds 1024.

    Raises
    ------
    BaseError
        ``h`` is outside ``(1, n - 1)``, shares a factor with ``n``, or ``h^L ≡ 1`` for
        ``L = lcm(1, ..., 1024)`` (every order up to 1024 divides ``L``: ``h^a`` would then
        take at most 1024 values and every obfuscator would be guessable). One
        exponentiation with a ~1,450-bit exponent; a hash of a real modulus fails it with
        negligible probability.
    """
    mpz_n = gmpy2.mpz(n)
    if not 1 < h < mpz_n - 1:
        raise BaseError("the obfuscator base must lie in (1, n - 1)")
    if gmpy2.gcd(h, mpz_n) != 1:
        raise BaseError("the obfuscator base is not a unit modulo n")
    if gmpy2.powmod(h, _SMALL_ORDERS, mpz_n) == 1:
        raise BaseError("the obfuscator base has small order")


@lru_cache(maxsize=8)
def derive_base(n: int) -> int:
    """``h = -x² mod n`` with ``x`` hashed from ``n``: the key's one DJN base, for everyone.

    Raises
    ------
    BaseError
        No acceptable base after 64 counters (``n`` is not a Paillier modulus).
    """
    mpz_n = gmpy2.mpz(n)
    width = (int(n).bit_length() + _EXTRA_BITS + 7) // 8
    n_bytes = int(n).to_bytes((int(n).bit_length() + 7) // 8, "big")
    for counter in range(_MAX_TRIES):
        seed = _DOMAIN + len(n_bytes).to_bytes(4, "big") + n_bytes + counter.to_bytes(4, "big")
        x = gmpy2.mpz(int.from_bytes(hashlib.shake_256(seed).digest(width), "big")) % mpz_n
        h = (-x * x) % mpz_n
        try:
            check_base(n, int(h))
        except BaseError:
            continue
        return int(h)
    raise BaseError("no obfuscator base derives from this modulus; it is not a Paillier key")


class FixedBasePower:
    """``base^e mod modulus`` for any ``e`` below ``2^bits``, from a table of powers.

    Row ``i`` holds ``base^(j·2^(w·i))`` for ``j < 2^w``; a power is the product of one entry
    per ``w``-bit digit of ``e`` (Brickell, Gordon, McCurley & Wilson, "Fast exponentiation
    with precomputation", EUROCRYPT 1992; Menezes et al., Handbook of Applied Cryptography,
    algorithm 14.109's fixed-base windowing). No squarings are left at evaluation time.
    """

    def __init__(self, base: int, modulus: int, bits: int, window: int = WINDOW_BITS) -> None:
        if bits < 1 or window < 1:
            raise ValueError("bits and window must be positive")
        self.modulus = gmpy2.mpz(modulus)
        self.bits = bits
        self.window = window
        self._mask = (1 << window) - 1
        rows: list[list[gmpy2.mpz]] = []
        row_base = gmpy2.mpz(base) % self.modulus
        for _ in range(-(-bits // window)):
            row = [gmpy2.mpz(1)]
            power = row_base
            for _ in range(self._mask):
                row.append(power)
                power = power * row_base % self.modulus
            rows.append(row)
            row_base = power  # base^(2^(w·(i+1)))
        self._rows = rows

    def power(self, exponent: int) -> gmpy2.mpz:
        """``base^exponent mod modulus``.

        Raises
        ------
        ValueError
            ``exponent`` is negative or has more than ``bits`` bits.
        """
        if not 0 <= exponent < 1 << self.bits:
            raise ValueError(f"exponent must be in [0, 2^{self.bits})")
        result = gmpy2.mpz(1)
        modulus, mask, window = self.modulus, self._mask, self.window
        e = int(exponent)
        for row in self._rows:
            digit = e & mask
            if digit:
                result = result * row[digit] % modulus
            e >>= window
        return result


class ObfuscatorTables:
    """One key's DJN base ``h``, ``h_s = h^n mod n²`` and the table of ``h_s``'s powers."""

    def __init__(self, n: int, window: int = WINDOW_BITS) -> None:
        mpz_n = gmpy2.mpz(n)
        n_square = mpz_n * mpz_n
        self.n = int(n)
        self.exponent_bits = exponent_bits(n)
        self.base = derive_base(n)
        self.base_n = int(gmpy2.powmod(self.base, mpz_n, n_square))
        self._table = FixedBasePower(self.base_n, n_square, self.exponent_bits, window)

    def exponents(self, count: int) -> list[int]:
        """``count`` fresh exponents ``a`` of ``exponent_bits`` bits from the OS's CSPRNG.

        ``secrets`` reads the OS on every call, so forked workers draw independently.
        """
        return [secrets.randbits(self.exponent_bits) for _ in range(count)]

    def obfuscators(self, exponents: Sequence[int]) -> list[int]:
        """``h_s^a mod n²`` for each ``a``: the ``r^n`` of ``r = h^a mod n``."""
        return [int(self._table.power(a)) for a in exponents]


@lru_cache(maxsize=4)
def tables_for(n: int) -> ObfuscatorTables:
    """This process's table for ``n``, built on first use (a few keys are kept)."""
    return ObfuscatorTables(n)


def unit(n: int, exponent: int) -> int:
    """``r = h^a mod n``: the ``r`` whose ``r^n`` is the obfuscator of exponent ``a``."""
    return int(gmpy2.powmod(derive_base(n), exponent, n))


def unit_product(n: int, exponents: Sequence[int], weights: Sequence[int]) -> int:
    """``Π r_i^{w_i} mod n`` for ``r_i = h^{a_i}``: one exponentiation, ``h^(Σ w_i·a_i)``.

    What the proof of plaintext knowledge needs of the units (its batched ``r*``), without
    computing any ``r_i``.
    """
    total = sum(int(w) * int(a) for w, a in zip(weights, exponents, strict=True))
    return int(gmpy2.powmod(derive_base(n), total, n))
