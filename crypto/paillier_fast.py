"""Fast Paillier encryption and decryption of packed plaintext ints (phe-compatible)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import gmpy2
from phe import PaillierPrivateKey, PaillierPublicKey

from crypto._parallel import map_in_chunks, releases_gil
from crypto.fixed_base import unit
from crypto.obfuscators import fresh_pairs
from crypto.randomness import RandomnessPool

__all__ = ["decrypt_packed", "encrypt_packed"]


@releases_gil
def encrypt_packed(
    public_key: PaillierPublicKey,
    plaintexts: Sequence[int],
    *,
    workers: int | None = None,
    pool: RandomnessPool | None = None,
    exponents_out: list[int] | None = None,
    units_out: list[int] | None = None,
) -> list[int]:
    """Encrypt each plaintext int as a raw phe ciphertext ``(1 + m·n) · r^n mod n²``.

    phe fixes ``g = n + 1``, so ``g^m = 1 + m·n (mod n²)`` costs one multiplication; all
    the work is the obfuscator ``r^n``, here ``h_s^a`` from the key's fixed-base table
    (Damgård–Jurik–Nielsen, crypto/fixed_base.py), the same for a key holder and a share
    holder. The output is what ``public_key.raw_encrypt(m)`` would produce for
    ``r = h^a mod n``, so ``private_key.raw_decrypt``, the threshold combine and
    :func:`crypto.aggregate.add_encrypted` treat it as any phe ciphertext.

    Parameters
    ----------
    public_key
        Federation key.
    plaintexts
        Ints in ``[0, n)``, typically from :meth:`crypto.codec.SlotCodec.encode`.
    workers
        Processes for the obfuscators: ``None`` for every core, ``1`` in this process.
    pool
        Take precomputed obfuscators from this pool instead (they are removed from it).
    exponents_out
        If given, receives each ciphertext's exponent ``a``, all that
        :func:`crypto.plaintext_proof.prove_exponents` needs.
    units_out
        If given, receives each ciphertext's ``r = h^a mod n`` (for
        :func:`crypto.plaintext_proof.prove`; one exponentiation mod ``n`` each).

    Raises
    ------
    TypeError
        If a plaintext is not an int.
    ValueError
        If a plaintext is outside ``[0, n)``, or the pool belongs to another key.
    """
    if not isinstance(public_key, PaillierPublicKey):
        raise TypeError(f"expected PaillierPublicKey, got {type(public_key).__name__}")
    n = gmpy2.mpz(public_key.n)
    for index, m in enumerate(plaintexts):
        if not isinstance(m, int) or isinstance(m, bool):
            raise TypeError(f"plaintext {index} must be an int, got {type(m).__name__}")
        if not 0 <= m < n:
            raise ValueError(f"plaintext {index} is outside [0, n)")
    if pool is not None:
        if pool.public_key.n != public_key.n:
            raise ValueError("RandomnessPool was built for a different public key")
        pairs = pool.take_pairs(len(plaintexts))
    else:
        pairs = fresh_pairs(public_key, len(plaintexts), workers=workers)
    if exponents_out is not None:
        exponents_out.extend(a for a, _ in pairs)
    if units_out is not None:
        units_out.extend(unit(public_key.n, a) for a, _ in pairs)
    n_square = n * n
    return [int((m * n + 1) * r % n_square) for m, (_, r) in zip(plaintexts, pairs, strict=True)]


@releases_gil
def decrypt_packed(
    private_key: PaillierPrivateKey, ciphertexts: Sequence[int], workers: int | None = None
) -> list[int]:
    """Decrypt raw ciphertexts to plaintext ints in ``[0, n)``, by CRT, over ``workers`` cores.

    Same result as ``private_key.raw_decrypt`` for each ciphertext, computed with gmpy2
    throughout and split across processes for long vectors.

    Raises
    ------
    TypeError
        If a ciphertext is not an int.
    ValueError
        If a ciphertext is outside ``[1, n²)``.
    """
    if not isinstance(private_key, PaillierPrivateKey):
        raise TypeError(f"expected PaillierPrivateKey, got {type(private_key).__name__}")
    n_square = private_key.public_key.nsquare
    for index, c in enumerate(ciphertexts):
        if not isinstance(c, int) or isinstance(c, bool):
            raise TypeError(f"ciphertext {index} must be an int, got {type(c).__name__}")
        if not 0 < c < n_square:
            raise ValueError(f"ciphertext {index} is outside [1, n²)")
    p, q = private_key.p, private_key.q
    return map_in_chunks(functools.partial(decrypt_chunk, p, q), list(ciphertexts), workers)


def decrypt_chunk(p: int, q: int, ciphertexts: Sequence[int]) -> list[int]:
    """Worker entry point: Paillier CRT decryption (Paillier 1999, section 7) with ``g = n+1``."""
    mpz_p, mpz_q = gmpy2.mpz(p), gmpy2.mpz(q)
    n = mpz_p * mpz_q
    p_square, q_square = mpz_p * mpz_p, mpz_q * mpz_q
    h_p = gmpy2.invert((gmpy2.powmod(n + 1, mpz_p - 1, p_square) - 1) // mpz_p, mpz_p)
    h_q = gmpy2.invert((gmpy2.powmod(n + 1, mpz_q - 1, q_square) - 1) // mpz_q, mpz_q)
    p_inverse = gmpy2.invert(mpz_p, mpz_q)
    plaintexts = []
    for c in ciphertexts:
        m_p = (gmpy2.powmod(c, mpz_p - 1, p_square) - 1) // mpz_p * h_p % mpz_p
        m_q = (gmpy2.powmod(c, mpz_q - 1, q_square) - 1) // mpz_q * h_q % mpz_q
        plaintexts.append(int(m_p + (m_q - m_p) * p_inverse % mpz_q * mpz_p))
    return plaintexts
