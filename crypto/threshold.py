"""Threshold Paillier with a trusted dealer: t of n sites decrypt, none holds the whole key.

This module is the scheme's public face: it re-exports what callers use from the four
modules that implement it, one job each:

- :mod:`crypto.threshold_dealing`: the key objects, :func:`deal` and the Lagrange
  coefficients;
- :mod:`crypto.threshold_decryption`: partial decryptions, their batched proofs and
  :func:`combine`;
- :mod:`crypto.threshold_powers`: the exponentiations, split across the process pool;
- :mod:`crypto.threshold_encoding`: the byte encodings of shares, keys and partials.

The constants and the pool's entry points (:func:`multi_power`, :func:`powmod_chunk`) are
re-exported too, outside ``__all__`` as before, so that ``crypto.threshold.X`` still names
everything it named when the scheme was one module.

The scheme is Shoup's RSA threshold construction ("Practical threshold signatures",
EUROCRYPT 2000) as adapted to Paillier by Damgård & Jurik ("A generalisation, a
simplification and some applications of Paillier's probabilistic public-key system",
PKC 2001, with s = 1) and Fouque, Poupard & Stern ("Sharing decryption in the context of
voting or lotteries", FC 2000):

- ``n = pq`` with safe primes ``p = 2p' + 1``, ``q = 2q' + 1``; ``m = p'q'``.
- The secret ``d`` satisfies ``d ≡ 0 (mod m)`` and ``d ≡ 1 (mod n)``; the dealer shares it
  with a random polynomial ``f`` of degree ``t - 1`` over ``Z_{nm}``: ``s_i = f(i)``.
- ``Δ = N!`` for ``N`` parties clears every Lagrange denominator, so the coefficients
  ``Δ·λ_{0,i}`` are integers and nobody needs to invert modulo the secret ``nm``.
- Party ``i`` publishes ``c_i = c^{2Δ s_i} mod n²``; any ``t`` of them give
  ``c' = Π c_i^{2Δλ_{0,i}} = c^{4Δ² d}`` and ``m = L(c') · (4Δ²)^{-1} mod n``.
- Verification keys ``v`` (a random square mod ``n²``) and ``v_i = v^{Δ s_i}`` let anyone
  check a partial with a Chaum–Pedersen proof that ``log_{c^4}(c_i^2) = log_v(v_i)``.

Squares matter: the squares of ``Z*_{n²}`` form a cyclic group of order ``n·p'·q'``,
whose prime factors are all about ``bits/2`` long, so there are no small subgroups in which
a cheating party could hide an error.

The public key is phe's ``PaillierPublicKey(n)`` (``g = n + 1``), so ciphertexts from
:func:`crypto.paillier_fast.encrypt_packed` or phe decrypt here unchanged.
"""

from __future__ import annotations

from crypto.threshold_dealing import MAX_PARTIES as MAX_PARTIES
from crypto.threshold_dealing import MIN_KEY_BITS as MIN_KEY_BITS
from crypto.threshold_dealing import (
    KeyShare,
    VerificationKeys,
    deal,
    lagrange_coefficients,
)
from crypto.threshold_decryption import BATCH_COEFFICIENT_BITS as BATCH_COEFFICIENT_BITS
from crypto.threshold_decryption import CHALLENGE_BITS as CHALLENGE_BITS
from crypto.threshold_decryption import STATISTICAL_HIDING_BITS as STATISTICAL_HIDING_BITS
from crypto.threshold_decryption import (
    DecryptionProof,
    InvalidPartialError,
    PartialDecryption,
    combine,
    make_partial_decryption,
    partial_decrypt,
    prove_partials,
    verify_partials,
)
from crypto.threshold_encoding import (
    key_share_from_bytes,
    key_share_to_bytes,
    partial_decryption_from_bytes,
    partial_decryption_to_bytes,
    verification_keys_from_bytes,
    verification_keys_to_bytes,
)
from crypto.threshold_powers import multi_power as multi_power
from crypto.threshold_powers import powmod_chunk as powmod_chunk

__all__ = [
    "DecryptionProof",
    "InvalidPartialError",
    "KeyShare",
    "PartialDecryption",
    "VerificationKeys",
    "combine",
    "deal",
    "key_share_from_bytes",
    "key_share_to_bytes",
    "lagrange_coefficients",
    "make_partial_decryption",
    "partial_decrypt",
    "partial_decryption_from_bytes",
    "partial_decryption_to_bytes",
    "prove_partials",
    "verification_keys_from_bytes",
    "verification_keys_to_bytes",
    "verify_partials",
]
