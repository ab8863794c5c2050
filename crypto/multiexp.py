"""``Π b_k^{e_k} mod m`` in one pass: the batch tests of both schemes' proofs.

A batched proof (the plaintext proofs of :mod:`crypto.plaintext_proof`, the proofs of
correct decryption of :mod:`crypto.threshold_decryption`) combines a whole vector of
ciphertexts with short random exponents; separate exponentiations would pay every
squaring once per ciphertext. A worker entry point of the shared pool: it stays at this
module's path.
"""

from __future__ import annotations

from collections.abc import Sequence

import gmpy2

__all__ = ["multi_power"]


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
