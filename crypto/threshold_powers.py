"""Modular exponentiations of threshold decryption, split across the shared process pool.

A party's partials are one full exponentiation per ciphertext (:func:`powmod_chunk`); a
batched proof needs ``Π b_k^{e_k}`` over the whole vector (:func:`crypto.multiexp.multi_power`,
split here across the pool). Both are worker entry points that the pool pickles by
reference, so they stay at their modules' paths (and :mod:`crypto.threshold` re-exports them).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import gmpy2

from crypto._parallel import map_in_chunks, shared_pool, split_evenly, worker_count
from crypto.multiexp import multi_power

__all__ = ["multi_power", "powmod_chunk"]

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


def _powmod_all(values: list[int], exponent: int, modulus: int, workers: int | None) -> list[int]:
    return map_in_chunks(
        functools.partial(powmod_chunk, exponent=exponent, modulus=modulus), values, workers
    )


def powmod_chunk(values: Sequence[int], exponent: int, modulus: int) -> list[int]:
    """Worker entry point: ``[v^exponent mod modulus for v in values]`` with gmpy2."""
    e, mod = gmpy2.mpz(exponent), gmpy2.mpz(modulus)
    return [int(gmpy2.powmod(v, e, mod)) for v in values]
