"""Modular exponentiations of threshold decryption, split across the shared process pool.

A party's partials are one full exponentiation per ciphertext (:func:`powmod_chunk`); a
batched proof needs ``Π b_k^{e_k}`` over the whole vector (:func:`multi_power`). Both are
worker entry points that the pool pickles by reference, so they stay at this module's
path (and :mod:`crypto.threshold` re-exports them).
"""

from __future__ import annotations

from collections.abc import Sequence

import gmpy2

from crypto._parallel import shared_pool, split_evenly, worker_count

__all__ = ["multi_power", "powmod_chunk"]

_MIN_PER_WORKER = 4
_MIN_MULTI_POWER_CHUNK = 256
"""Below this many bases per core, shipping them to a worker costs more than it saves."""


def _multi_powers(
    vectors: Sequence[Sequence[int]], exponents: Sequence[int], modulus: int, workers: int | None
) -> list[gmpy2.mpz]:
    """``Π_k b_k^{e_k} mod modulus`` for each vector ``b``, split across ``workers`` cores.

    Each vector is cut into chunks whose products a worker computes with
    :func:`multi_power`; the chunks' results multiply together here.
    """
    count = len(exponents)
    workers = worker_count(workers)
    if workers == 1 or count < _MIN_MULTI_POWER_CHUNK * 2:
        return [multi_power(v, exponents, modulus) for v in vectors]
    parts = min(workers, count // _MIN_MULTI_POWER_CHUNK)
    bounds, start = [], 0
    for size in split_evenly(count, parts):
        bounds.append((start, start + size))
        start += size
    executor = shared_pool(workers)
    futures = [
        [executor.submit(multi_power, v[a:b], exponents[a:b], modulus) for a, b in bounds]
        for v in vectors
    ]
    mod = gmpy2.mpz(modulus)
    results = []
    for chunk_futures in futures:
        product = gmpy2.mpz(1)
        for future in chunk_futures:
            product = product * future.result() % mod
        results.append(product)
    return results


def multi_power(bases: Sequence[int], exponents: Sequence[int], modulus: int) -> gmpy2.mpz:
    """Worker entry point: ``Π b_k^{e_k} mod modulus`` by Pippenger's bucket method.

    For each ``w``-bit window of the exponents (from the top), every base goes into the
    bucket of its digit (one multiplication), and ``Π_d bucket_d^d`` is formed by running
    products (``2^{w+1}`` multiplications); the windows share their ``w`` squarings. That
    is about ``(bits / w)·(K + 2^{w+1})`` multiplications for K bases instead of
    ``K·1.2·bits`` for separate exponentiations: with 128-bit exponents and K = 3000, about
    20 per base instead of 150 (Pippenger 1980; Bernstein, "Pippenger's exponentiation
    algorithm", 2002).
    """
    mod = gmpy2.mpz(modulus)
    count = len(bases)
    bits = max((e.bit_length() for e in exponents), default=0)
    if count == 0 or bits == 0:
        return gmpy2.mpz(1)
    window = min(range(1, 17), key=lambda w: -(-bits // w) * (count + (2 << w)))
    mask = (1 << window) - 1
    mpz_bases = [gmpy2.mpz(b) for b in bases]
    result = gmpy2.mpz(1)
    for position in range(-(-bits // window) - 1, -1, -1):
        if result != 1:
            for _ in range(window):
                result = result * result % mod
        shift = position * window
        buckets: list[gmpy2.mpz | None] = [None] * (mask + 1)
        for b, e in zip(mpz_bases, exponents, strict=True):
            digit = (e >> shift) & mask
            if digit:
                held = buckets[digit]
                buckets[digit] = b if held is None else held * b % mod
        running: gmpy2.mpz | None = None
        total: gmpy2.mpz | None = None
        for digit in range(mask, 0, -1):
            held = buckets[digit]
            if held is not None:
                running = held if running is None else running * held % mod
            if running is not None:
                total = running if total is None else total * running % mod
        if total is not None:
            result = result * total % mod
    return result


def _powmod_all(values: list[int], exponent: int, modulus: int, workers: int | None) -> list[int]:
    workers = worker_count(workers)
    if workers == 1 or len(values) < _MIN_PER_WORKER * workers:
        return powmod_chunk(values, exponent, modulus)
    bounds, start = [], 0
    for size in split_evenly(len(values), 4 * workers):
        bounds.append((start, start + size))
        start += size
    executor = shared_pool(workers)
    futures = [executor.submit(powmod_chunk, values[a:b], exponent, modulus) for a, b in bounds]
    return [value for future in futures for value in future.result()]


def powmod_chunk(values: Sequence[int], exponent: int, modulus: int) -> list[int]:
    """Worker entry point: ``[v^exponent mod modulus for v in values]`` with gmpy2."""
    e, mod = gmpy2.mpz(exponent), gmpy2.mpz(modulus)
    return [int(gmpy2.powmod(v, e, mod)) for v in values]
