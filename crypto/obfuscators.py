"""Paillier obfuscators ``r^n mod n²``: the one expensive step of every encryption.

Sites make them as Damgård–Jurik–Nielsen fixed-base powers (crypto/fixed_base.py), with
or without the private key. :func:`draw_units` and :func:`obfuscators_for_units` compute
classic ``r^n`` for a uniform unit ``r`` (by CRT when the factors are given): the
reference the benchmarks compare against, and what tests use to build ciphertexts the way
phe does.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import gmpy2
from phe import PaillierPublicKey

from crypto._parallel import shared_pool, split_evenly, worker_count
from crypto.fixed_base import tables_for

__all__ = [
    "draw_units",
    "fresh_pair_chunk",
    "fresh_pairs",
    "obfuscators_for_units",
]

_MIN_PER_WORKER = 4
"""Below this many exponentiations per worker, starting processes costs more than it saves."""


def draw_units(n: int, count: int) -> list[int]:
    """Draw ``count`` independent uniform ``r`` in ``[1, n)`` with ``gcd(r, n) == 1``.

    ``secrets`` reads the operating system's CSPRNG on every call, so values drawn in
    different worker processes are independent even though the processes were forked.
    """
    units: list[int] = []
    while len(units) < count:
        r = secrets.randbelow(n - 1) + 1
        if gmpy2.gcd(r, n) == 1:  # fails with negligible probability unless n is tiny
            units.append(r)
    return units


def obfuscators_for_units(
    units: Sequence[int], n: int, p: int | None = None, q: int | None = None
) -> list[int]:
    """Return ``r^n mod n²`` for each ``r`` in ``units``.

    Without the factors this is one 2·|n|-bit exponentiation modulo the 4·|n|-bit ``n²``.
    With them (the key holders' fast path) it splits by the Chinese remainder theorem:
    ``r^n ≡ (r^q mod p)^p (mod p²)`` because ``x^p mod p²`` depends only on ``x mod p``,
    and ``r^q ≡ r^(q mod (p-1)) (mod p)`` by Fermat. Both exponents have |n|/2 bits and the
    moduli half the size, which is about 3x faster; the result is bit-for-bit the same.
    """
    mpz_n = gmpy2.mpz(n)
    n_square = mpz_n * mpz_n
    if p is None or q is None:
        return [int(gmpy2.powmod(r, mpz_n, n_square)) for r in units]
    mpz_p, mpz_q = gmpy2.mpz(p), gmpy2.mpz(q)
    if mpz_p * mpz_q != mpz_n:
        raise ValueError("p * q does not equal n")
    p_square, q_square = mpz_p * mpz_p, mpz_q * mpz_q
    q_mod_p1, p_mod_q1 = mpz_q % (mpz_p - 1), mpz_p % (mpz_q - 1)
    p_square_inverse = gmpy2.invert(p_square, q_square)
    result = []
    for r in units:
        to_p = gmpy2.powmod(gmpy2.powmod(r, q_mod_p1, mpz_p), mpz_p, p_square)
        to_q = gmpy2.powmod(gmpy2.powmod(r, p_mod_q1, mpz_q), mpz_q, q_square)
        lift = gmpy2.f_mod((to_q - to_p) * p_square_inverse, q_square)
        result.append(int(to_p + p_square * lift))
    return result


def fresh_pairs(
    public_key: PaillierPublicKey, count: int, *, workers: int | None = None
) -> list[tuple[int, int]]:
    """``count`` fresh DJN obfuscators with their exponents: ``(a, h_s^a mod n²)``.

    The key's base and table derive from ``n`` alone (crypto/fixed_base.py), so a share
    holder without ``p`` and ``q`` computes them as fast as the custodian. ``a`` is kept
    for the proof of plaintext knowledge (crypto.plaintext_proof), whose ``r`` is
    ``h^a mod n``. ``workers``: ``None`` for every core, ``1`` to stay in this process.
    """
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    workers = worker_count(workers)
    if workers == 1 or count < _MIN_PER_WORKER * workers:
        return fresh_pair_chunk(public_key.n, count)
    executor = shared_pool(workers)
    futures = [
        executor.submit(fresh_pair_chunk, public_key.n, size)
        for size in split_evenly(count, 4 * workers)
    ]
    return [pair for future in futures for pair in future.result()]


def fresh_pair_chunk(n: int, count: int) -> list[tuple[int, int]]:
    """Worker entry point: ``count`` pairs ``(a, h_s^a mod n²)`` for fresh exponents ``a``.

    The worker builds its tables for ``n`` on its first chunk and keeps them.
    """
    tables = tables_for(n)
    exponents = tables.exponents(count)
    return list(zip(exponents, tables.obfuscators(exponents), strict=True))
