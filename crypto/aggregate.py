"""Homomorphic aggregation: check ciphertexts and add them without decrypting."""

from __future__ import annotations

from collections.abc import Sequence

import gmpy2
from phe import PaillierPublicKey

from crypto._parallel import releases_gil

__all__ = ["add_encrypted", "validate_ciphertexts"]


def validate_ciphertexts(cts: Sequence[int], public_key: PaillierPublicKey) -> None:
    """Check that every ciphertext is a unit modulo ``n²``, i.e. a possible encryption.

    The coordinator calls this on receipt. A value outside ``[1, n²)`` or sharing a factor
    with ``n`` cannot come from an honest encryption; a non-coprime one would even reveal a
    factor of ``n`` to whoever decrypts, and either would poison the whole sum.

    Raises
    ------
    TypeError
        If a ciphertext is not an int.
    ValueError
        Naming the first bad index and why.
    """
    if not isinstance(public_key, PaillierPublicKey):
        raise TypeError(f"expected PaillierPublicKey, got {type(public_key).__name__}")
    n = gmpy2.mpz(public_key.n)
    n_square = n * n
    for index, c in enumerate(cts):
        if not isinstance(c, int) or isinstance(c, bool):
            raise TypeError(f"ciphertext {index} must be an int, got {type(c).__name__}")
        if not 1 <= c < n_square:
            raise ValueError(f"ciphertext {index} is outside [1, n²)")
        if gmpy2.gcd(c, n) != 1:
            raise ValueError(f"ciphertext {index} is not coprime with n")


@releases_gil
def add_encrypted(vectors: Sequence[Sequence[int]], public_key: PaillierPublicKey) -> list[int]:
    """Return the slot-wise product modulo ``n²``: an encryption of the slot-wise plaintext sum.

    Paillier is additively homomorphic: ``E(a) · E(b) = E(a + b mod n)``. Combined with
    :class:`crypto.codec.SlotCodec` packing, one multiplication adds ``slots_per_plaintext``
    weighted values of every client at once.

    Raises
    ------
    ValueError
        If ``vectors`` is empty or the vectors differ in length.
    """
    if not isinstance(public_key, PaillierPublicKey):
        raise TypeError(f"expected PaillierPublicKey, got {type(public_key).__name__}")
    if not vectors:
        raise ValueError("need at least one ciphertext vector to add")
    length = len(vectors[0])
    for index, vector in enumerate(vectors):
        if len(vector) != length:
            raise ValueError(
                f"ciphertext vector {index} has {len(vector)} ciphertexts, vector 0 has {length}"
            )
    n_square = gmpy2.mpz(public_key.nsquare)
    sums = [gmpy2.mpz(c) for c in vectors[0]]
    for vector in vectors[1:]:
        sums = [total * c % n_square for total, c in zip(sums, vector, strict=True)]
    return [int(total) for total in sums]
