"""Paillier obfuscators ``r^n mod n²``: the one expensive step of every encryption."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import gmpy2
from phe import PaillierPrivateKey, PaillierPublicKey

from crypto._parallel import shared_pool, split_evenly, worker_count

__all__ = [
    "draw_units",
    "fresh_obfuscators",
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


def fresh_obfuscators(
    public_key: PaillierPublicKey,
    count: int,
    *,
    private_key: PaillierPrivateKey | None = None,
    workers: int | None = None,
    executor: ProcessPoolExecutor | None = None,
) -> list[int]:
    """Compute ``count`` obfuscators from fresh randomness, spread over ``workers`` processes.

    Parameters
    ----------
    public_key
        Key whose ``n`` is used.
    count
        How many obfuscators to make.
    private_key
        If given, use the CRT fast path (its factors are sent to local worker processes).
    workers
        ``None`` for every core, ``1`` to stay in this process.
    executor
        Pool to submit to; by default this process's shared pool of ``workers`` processes.
    """
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    n = public_key.n
    p, q = (private_key.p, private_key.q) if private_key is not None else (None, None)
    workers = worker_count(workers)
    if workers == 1 or count < _MIN_PER_WORKER * workers:
        return obfuscators_for_units(draw_units(n, count), n, p, q)
    chunks = split_evenly(count, 4 * workers)
    return _gather(executor or shared_pool(workers), chunks, n, p, q)


def fresh_obfuscator_chunk(n: int, p: int | None, q: int | None, count: int) -> list[int]:
    """Worker entry point: draw ``count`` units and return their obfuscators."""
    return obfuscators_for_units(draw_units(n, count), n, p, q)


def fresh_pair_chunk(n: int, p: int | None, q: int | None, count: int) -> list[tuple[int, int]]:
    """Worker entry point: ``count`` pairs ``(r, r^n mod n²)``.

    A site that must prove it knows its ciphertexts' openings (crypto.plaintext_proof)
    needs ``r`` itself, not only ``r^n``.
    """
    units = draw_units(n, count)
    return list(zip(units, obfuscators_for_units(units, n, p, q), strict=True))


def fresh_pairs(
    public_key: PaillierPublicKey,
    count: int,
    *,
    private_key: PaillierPrivateKey | None = None,
    workers: int | None = None,
) -> list[tuple[int, int]]:
    """Like :func:`fresh_obfuscators`, keeping each unit ``r`` beside its ``r^n``."""
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    n = public_key.n
    p, q = (private_key.p, private_key.q) if private_key is not None else (None, None)
    workers = worker_count(workers)
    if workers == 1 or count < _MIN_PER_WORKER * workers:
        return fresh_pair_chunk(n, p, q, count)
    executor = shared_pool(workers)
    futures = [
        executor.submit(fresh_pair_chunk, n, p, q, size)
        for size in split_evenly(count, 4 * workers)
    ]
    return [pair for future in futures for pair in future.result()]


def _gather(
    executor: ProcessPoolExecutor, chunks: list[int], n: int, p: int | None, q: int | None
) -> list[int]:
    futures = [executor.submit(fresh_obfuscator_chunk, n, p, q, size) for size in chunks]
    return [value for future in futures for value in future.result()]
