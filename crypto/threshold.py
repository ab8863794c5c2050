"""Threshold Paillier with a trusted dealer: t of n sites decrypt, none holds the whole key.

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

Batching: one proof covers a whole vector of ciphertexts. The verifier (and prover) derive
128-bit coefficients ``ρ_k`` from a Fiat–Shamir hash of every ciphertext and every partial,
and the proof is about ``C = Π c_k^{4ρ_k}`` and ``P = Π c_{i,k}^{2ρ_k}``. A partial that
is wrong in any position passes only if ``Π x_k^{ρ_k} = 1`` for the non-trivial errors
``x_k``, which happens with probability at most ``2^-128`` because every ``x_k`` has order
above ``2^128`` (the small-exponent test of Bellare, Garay & Rabin, EUROCRYPT 1998).

The public key is phe's ``PaillierPublicKey(n)`` (``g = n + 1``), so ciphertexts from
:func:`crypto.paillier_fast.encrypt_packed` or phe decrypt here unchanged.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import gmpy2
from phe import PaillierPublicKey

from crypto._parallel import releases_gil, shared_pool, split_evenly, worker_count
from crypto.primes import is_safe_prime, safe_prime

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

MIN_KEY_BITS = 2048
"""Smallest modulus for real use, as in :mod:`crypto.keys`."""

MAX_PARTIES = 64
"""``Δ = N!`` grows with N; 64 sites keep it under 300 bits, far below the modulus."""

CHALLENGE_BITS = 256
"""Fiat–Shamir challenge ``e``: all of sha256."""

BATCH_COEFFICIENT_BITS = 128
"""Random-linear-combination coefficients: a wrong partial slips through with prob. 2^-128."""

STATISTICAL_HIDING_BITS = 128
"""Extra bits of the prover's nonce so that ``z = r + e·Δ·s_i`` hides ``s_i`` statistically."""

_DOMAIN = b"cohort/threshold-paillier/v1"
_MIN_PER_WORKER = 4
_MIN_MULTI_POWER_CHUNK = 256
"""Below this many bases per core, shipping them to a worker costs more than it saves."""


class InvalidPartialError(ValueError):
    """One or more parties' partial decryptions are wrong; ``parties`` names them."""

    def __init__(self, parties: Sequence[int], reason: str = "proof of correct decryption fails"):
        self.parties = tuple(sorted(parties))
        super().__init__(f"partial decryption from party {list(self.parties)}: {reason}")


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


@dataclass(frozen=True)
class DecryptionProof:
    """Non-interactive Chaum–Pedersen proof ``(e, z)`` covering a whole vector of partials."""

    challenge: int
    response: int

    def __post_init__(self) -> None:
        _check_int("challenge", self.challenge)
        _check_int("response", self.response)
        if not 0 <= self.challenge < 1 << CHALLENGE_BITS:
            raise ValueError(f"challenge must be below 2^{CHALLENGE_BITS}")
        if self.response < 0:
            raise ValueError("response must not be negative")


@dataclass(frozen=True)
class PartialDecryption:
    """Party ``index``'s partials ``c^{2Δ s_i} mod n²`` of a vector, with their proof."""

    index: int
    values: tuple[int, ...]
    proof: DecryptionProof

    def __post_init__(self) -> None:
        _check_int("index", self.index)
        if self.index < 1:
            raise ValueError(f"party index must be at least 1, got {self.index}")
        for k, value in enumerate(self.values):
            _check_int(f"partial {k}", value)


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


# --------------------------------------------------------------------------- decrypting


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


def partial_decrypt(
    share: KeyShare, ciphertexts: Sequence[int], *, workers: int | None = None
) -> list[int]:
    """Party ``share.index``'s partials ``c^{2Δ s_i} mod n²``, over ``workers`` cores.

    One full exponentiation (exponent about ``2·bits`` bits, modulus ``n²``) per
    ciphertext: the share is known only modulo the secret ``nm``, so a party cannot use
    CRT as a single key holder does.

    Raises
    ------
    TypeError
        If ``share`` is not a :class:`KeyShare` or a ciphertext is not an int.
    ValueError
        If a ciphertext is outside ``[1, n²)``.
    """
    if not isinstance(share, KeyShare):
        raise TypeError(f"expected KeyShare, got {type(share).__name__}")
    n_square = share.n * share.n
    cts = _checked_ciphertexts(ciphertexts, n_square)
    return _powmod_all(cts, share.exponent, n_square, workers)


def prove_partials(
    share: KeyShare,
    keys: VerificationKeys,
    ciphertexts: Sequence[int],
    partials: Sequence[int],
    context: bytes,
    *,
    workers: int | None = None,
) -> DecryptionProof:
    """Prove in zero knowledge that ``partials`` are ``c^{2Δ s_i}`` for every ciphertext.

    Fiat–Shamir over every public value and ``context`` (the run id and round, so that a
    proof cannot be replayed in another round). Costs one batched product over the vector
    (about 20 modular multiplications per ciphertext, :func:`multi_power`) and three full
    exponentiations, instead of several full exponentiations per ciphertext; verifying
    costs two such products and four exponentiations.

    Raises
    ------
    ValueError
        If the share does not belong to ``keys`` or the lengths differ.
    """
    if not isinstance(share, KeyShare):
        raise TypeError(f"expected KeyShare, got {type(share).__name__}")
    _check_keys(keys)
    _check_context(context)
    if share.n != keys.n or share.parties != keys.parties or share.threshold != keys.threshold:
        raise ValueError("key share does not belong to these verification keys")
    n_square = keys.n_square
    cts = _checked_ciphertexts(ciphertexts, n_square)
    values = _checked_ciphertexts(partials, n_square, what="partial")
    if len(values) != len(cts):
        raise ValueError(f"{len(values)} partials for {len(cts)} ciphertexts")
    secret = keys.delta * share.share  # log_v(v_i) = log_{C}(P)
    base, _ = _batched_statement(
        keys, share.index, cts, values, context, with_partials=False, workers=workers
    )
    power = gmpy2.powmod(base, secret, n_square)
    nonce = secrets.randbits(_nonce_bits(keys))
    commitment_base = gmpy2.powmod(base, nonce, n_square)
    commitment_v = gmpy2.powmod(keys.v, nonce, n_square)
    challenge = _challenge(keys, share.index, base, power, commitment_base, commitment_v, context)
    return DecryptionProof(challenge=challenge, response=nonce + challenge * secret)


@releases_gil
def make_partial_decryption(
    share: KeyShare,
    keys: VerificationKeys,
    ciphertexts: Sequence[int],
    context: bytes,
    *,
    workers: int | None = None,
) -> PartialDecryption:
    """What a site publishes in a round: its partials of ``ciphertexts`` and their proof."""
    values = partial_decrypt(share, ciphertexts, workers=workers)
    proof = prove_partials(share, keys, ciphertexts, values, context, workers=workers)
    return PartialDecryption(index=share.index, values=tuple(values), proof=proof)


@releases_gil
def verify_partials(
    keys: VerificationKeys,
    ciphertexts: Sequence[int],
    partials: Sequence[PartialDecryption],
    context: bytes,
    *,
    workers: int | None = None,
) -> None:
    """Check every party's partials and proof; raise naming each party whose check fails.

    A site calls this on the partials it received before :func:`combine`; it may then drop
    the parties named and combine the rest if ``threshold`` remain.

    Raises
    ------
    InvalidPartialError
        Naming every party whose partials are malformed or whose proof fails.
    ValueError
        If a party appears twice or a ciphertext is out of range.
    """
    _check_keys(keys)
    _check_context(context)
    n_square = keys.n_square
    cts = _checked_ciphertexts(ciphertexts, n_square)
    seen: set[int] = set()
    bad: list[int] = []
    for partial in partials:
        if not isinstance(partial, PartialDecryption):
            raise TypeError(f"expected PartialDecryption, got {type(partial).__name__}")
        if partial.index in seen:
            raise ValueError(f"party {partial.index} sent two partial decryptions")
        seen.add(partial.index)
        if not _partial_is_valid(keys, cts, partial, context, workers):
            bad.append(partial.index)
    if bad:
        raise InvalidPartialError(bad)


def _partial_is_valid(
    keys: VerificationKeys,
    cts: list[int],
    partial: PartialDecryption,
    context: bytes,
    workers: int | None,
) -> bool:
    n_square = keys.n_square
    if not 1 <= partial.index <= keys.parties or len(partial.values) != len(cts):
        return False
    if any(not 0 < value < n_square for value in partial.values):
        return False
    proof = partial.proof
    if proof.response >= 1 << (_nonce_bits(keys) + 1):
        return False
    base, power = _batched_statement(
        keys, partial.index, cts, list(partial.values), context, workers=workers
    )
    if gmpy2.gcd(power, keys.n) != 1:  # a partial sharing a factor with n is not c^{2Δs_i}
        return False
    # a = C^z · P^-e and b = v^z · v_i^-e recompute the commitments an honest prover hashed.
    commitment_base = (
        gmpy2.powmod(base, proof.response, n_square)
        * gmpy2.powmod(power, -proof.challenge, n_square)
        % n_square
    )
    commitment_v = (
        gmpy2.powmod(keys.v, proof.response, n_square)
        * gmpy2.powmod(keys.party_key(partial.index), -proof.challenge, n_square)
        % n_square
    )
    expected = _challenge(keys, partial.index, base, power, commitment_base, commitment_v, context)
    return expected == proof.challenge


@releases_gil
def combine(
    partials_by_index: Mapping[int, Sequence[int]],
    keys: VerificationKeys,
    ciphertexts: Sequence[int],
) -> list[int]:
    """Plaintexts in ``[0, n)`` from the partials of at least ``threshold`` parties.

    Uses the ``threshold`` lowest indices given. Verify the partials first
    (:func:`verify_partials`): this function trusts them, and a wrong one yields a wrong
    plaintext, not an error.

    Raises
    ------
    ValueError
        If fewer than ``threshold`` parties are given, an index is out of range, or a
        vector's length differs from ``ciphertexts``.
    """
    _check_keys(keys)
    n, n_square = keys.n, keys.n_square
    cts = _checked_ciphertexts(ciphertexts, n_square)
    if len(partials_by_index) < keys.threshold:
        raise ValueError(
            f"decryption needs partials from {keys.threshold} parties, got {len(partials_by_index)}"
        )
    chosen = sorted(partials_by_index)[: keys.threshold]
    coefficients = lagrange_coefficients(chosen, keys.parties)
    vectors = {}
    for i in chosen:
        values = list(partials_by_index[i])
        if len(values) != len(cts):
            raise ValueError(f"party {i} sent {len(values)} partials for {len(cts)} ciphertexts")
        vectors[i] = _checked_ciphertexts(values, n_square, what=f"party {i} partial")
    scale = int(gmpy2.invert(4 * keys.delta**2 % n, n))
    exponents = {i: 2 * coefficients[i] for i in chosen}
    plaintexts = []
    mpz_n, mpz_n_square = gmpy2.mpz(n), gmpy2.mpz(n_square)
    for k in range(len(cts)):
        product = gmpy2.mpz(1)
        for i in chosen:
            product = (
                product * gmpy2.powmod(vectors[i][k], exponents[i], mpz_n_square) % mpz_n_square
            )
        # product = c^{4Δ²d} = 1 + 4Δ²·m·n (mod n²): L(x) = (x - 1) / n.
        plaintexts.append(int((product - 1) // mpz_n * scale % mpz_n))
    return plaintexts


# --------------------------------------------------------------------------- bytes
#
# Every encoding is ``magic (3 bytes) ‖ version (1) ‖ fields``; each int is ``length (4) ‖
# big-endian bytes`` and partial values have a fixed width (that of n²), so a decoder can
# check every length before it allocates and reject a byte too many or too few.

_SHARE_MAGIC = b"CTS"
_KEYS_MAGIC = b"CTV"
_PARTIAL_MAGIC = b"CTP"
_VERSION = 1
_MAX_INT_BYTES = 4096
"""No field of a key of up to 8192 bits is longer (n² has 2048 bytes; the response less)."""


def key_share_to_bytes(share: KeyShare) -> bytes:
    """Encode a key share. The result is a secret: seal it (:func:`crypto.sealing.seal`)."""
    if not isinstance(share, KeyShare):
        raise TypeError(f"expected KeyShare, got {type(share).__name__}")
    return _encode(
        _SHARE_MAGIC, [share.index, share.threshold, share.parties], [share.n, share.share]
    )


def key_share_from_bytes(data: bytes) -> KeyShare:
    """Decode :func:`key_share_to_bytes` output.

    Raises
    ------
    ValueError
        On a wrong header, a truncated or oversized encoding, or values out of range.
    """
    (index, threshold, parties), ints = _decode_exact(data, _SHARE_MAGIC, "key share", 3)
    if len(ints) != 2:
        raise ValueError(f"key share encoding has {len(ints)} ints, expected 2")
    return KeyShare(index=index, share=ints[1], n=ints[0], threshold=threshold, parties=parties)


def verification_keys_to_bytes(keys: VerificationKeys) -> bytes:
    """Encode the public verification keys (pin these with the run)."""
    _check_keys(keys)
    return _encode(_KEYS_MAGIC, [keys.threshold, keys.parties], [keys.n, keys.v, *keys.party_keys])


def verification_keys_from_bytes(data: bytes) -> VerificationKeys:
    """Decode :func:`verification_keys_to_bytes` output.

    Raises
    ------
    ValueError
        On a wrong header, a truncated or oversized encoding, or values out of range.
    """
    (threshold, parties), ints = _decode_exact(data, _KEYS_MAGIC, "verification keys", 2)
    if len(ints) != 2 + parties:
        raise ValueError(f"verification keys encoding has {len(ints)} ints, expected {2 + parties}")
    return VerificationKeys(
        n=ints[0], threshold=threshold, parties=parties, v=ints[1], party_keys=tuple(ints[2:])
    )


def partial_decryption_to_bytes(partial: PartialDecryption, keys: VerificationKeys) -> bytes:
    """Encode a party's partials and proof; values take the fixed width of ``n²``."""
    if not isinstance(partial, PartialDecryption):
        raise TypeError(f"expected PartialDecryption, got {type(partial).__name__}")
    _check_keys(keys)
    width = _width(keys.n_square)
    head = _encode(
        _PARTIAL_MAGIC,
        [partial.index, width, len(partial.values)],
        [partial.proof.challenge, partial.proof.response],
    )
    try:
        body = b"".join(value.to_bytes(width, "big") for value in partial.values)
    except OverflowError:
        raise ValueError("a partial value does not fit below n²") from None
    return head + body


def partial_decryption_from_bytes(data: bytes, keys: VerificationKeys) -> PartialDecryption:
    """Decode :func:`partial_decryption_to_bytes` output for the key ``keys``.

    Decoding checks the shape only; :func:`verify_partials` checks the mathematics.

    Raises
    ------
    ValueError
        On a wrong header, a width that is not ``n²``'s, or a length that does not match
        the stated count.
    """
    _check_keys(keys)
    (index, width, count), ints, rest = _decode(data, _PARTIAL_MAGIC, "partial decryption", 3)
    if len(ints) != 2:
        raise ValueError(f"partial decryption encoding has {len(ints)} ints, expected 2")
    if width != _width(keys.n_square):
        raise ValueError(
            f"partial values are {width} bytes wide, this key needs {_width(keys.n_square)}"
        )
    if len(rest) != width * count:
        raise ValueError(
            f"partial decryption holds {len(rest)} value bytes, {count} values need {width * count}"
        )
    values = tuple(int.from_bytes(rest[k * width : (k + 1) * width], "big") for k in range(count))
    proof = DecryptionProof(challenge=ints[0], response=ints[1])
    return PartialDecryption(index=index, values=values, proof=proof)


def _encode(magic: bytes, small: Sequence[int], ints: Sequence[int]) -> bytes:
    out = [magic, bytes([_VERSION]), len(ints).to_bytes(2, "big")]
    out += [value.to_bytes(4, "big") for value in small]
    for value in ints:
        raw = value.to_bytes(_width(value), "big")
        out += [len(raw).to_bytes(4, "big"), raw]
    return b"".join(out)


def _decode_exact(
    data: bytes, magic: bytes, what: str, small_count: int
) -> tuple[list[int], list[int]]:
    small, ints, rest = _decode(data, magic, what, small_count)
    if rest:
        raise ValueError(f"{what} encoding has {len(rest)} bytes too many")
    return small, ints


def _decode(
    data: bytes, magic: bytes, what: str, small_count: int
) -> tuple[list[int], list[int], bytes]:
    """Split ``data`` into its small header ints, its length-prefixed ints and the rest."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes, got {type(data).__name__}")
    data = bytes(data)
    header = len(magic) + 1 + 2 + 4 * small_count
    if len(data) < header:
        raise ValueError(f"{what} encoding is truncated ({len(data)} bytes)")
    if data[: len(magic)] != magic:
        raise ValueError(f"not a {what} encoding (wrong magic)")
    if data[len(magic)] != _VERSION:
        raise ValueError(
            f"{what} encoding version {data[len(magic)]} is not supported (expected {_VERSION})"
        )
    position = len(magic) + 1
    count = int.from_bytes(data[position : position + 2], "big")
    position += 2
    small = []
    for _ in range(small_count):
        small.append(int.from_bytes(data[position : position + 4], "big"))
        position += 4
    ints = []
    for _ in range(count):
        if len(data) < position + 4:
            raise ValueError(f"{what} encoding is truncated")
        length = int.from_bytes(data[position : position + 4], "big")
        position += 4
        if not 0 < length <= _MAX_INT_BYTES:
            raise ValueError(f"{what} encoding has a field of impossible length {length}")
        if len(data) < position + length:
            raise ValueError(f"{what} encoding is truncated")
        ints.append(int.from_bytes(data[position : position + length], "big"))
        position += length
    return small, ints, data[position:]


# --------------------------------------------------------------------------- proof internals


def _nonce_bits(keys: VerificationKeys) -> int:
    # Δ·s_i < Δ·n², and z = r + e·Δ·s_i must hide it up to 2^-128.
    return (
        2 * keys.n.bit_length() + keys.delta.bit_length() + CHALLENGE_BITS + STATISTICAL_HIDING_BITS
    )


def _batched_statement(
    keys: VerificationKeys,
    index: int,
    cts: list[int],
    partials: list[int],
    context: bytes,
    *,
    with_partials: bool = True,
    workers: int | None = None,
) -> tuple[int, int]:
    """``C = Π c_k^{4ρ_k}`` and ``P = Π p_k^{2ρ_k}`` with ρ from a hash of everything public."""
    width = _width(keys.n_square)
    digest = hashlib.sha256()
    for part in (_DOMAIN, b"batch", _frame(context), _int_bytes(keys.n), index.to_bytes(2, "big")):
        digest.update(part)
    digest.update(len(cts).to_bytes(8, "big"))
    for c in cts:
        digest.update(c.to_bytes(width, "big"))
    for value in partials:
        digest.update(value.to_bytes(width, "big"))
    stream = hashlib.shake_256(digest.digest()).digest(len(cts) * BATCH_COEFFICIENT_BITS // 8)
    step = BATCH_COEFFICIENT_BITS // 8
    rhos = [int.from_bytes(stream[k * step : (k + 1) * step], "big") for k in range(len(cts))]
    jobs = [cts, partials] if with_partials else [cts]
    products = _multi_powers(jobs, rhos, keys.n_square, workers)
    n_square = gmpy2.mpz(keys.n_square)
    base = gmpy2.powmod(products[0], 4, n_square)
    power = gmpy2.powmod(products[1], 2, n_square) if with_partials else 0
    return int(base), int(power)


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


def _challenge(
    keys: VerificationKeys,
    index: int,
    base: int,
    power: int,
    commitment_base: int,
    commitment_v: int,
    context: bytes,
) -> int:
    width = _width(keys.n_square)
    digest = hashlib.sha256()
    for part in (
        _DOMAIN,
        b"challenge",
        _frame(context),
        _int_bytes(keys.n),
        index.to_bytes(2, "big"),
    ):
        digest.update(part)
    for value in (keys.v, keys.party_key(index), base, power, commitment_base, commitment_v):
        digest.update(int(value).to_bytes(width, "big"))
    return int.from_bytes(digest.digest(), "big")


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _int_bytes(value: int) -> bytes:
    return _frame(value.to_bytes(_width(value), "big"))


def _width(value: int) -> int:
    return max(1, (value.bit_length() + 7) // 8)


# --------------------------------------------------------------------------- parallel work


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


def _check_context(context: bytes) -> None:
    if not isinstance(context, bytes):
        raise TypeError(f"context must be bytes (run id and round), got {type(context).__name__}")


def _checked_ciphertexts(
    values: Sequence[int], n_square: int, what: str = "ciphertext"
) -> list[int]:
    checked = list(values)
    for k, c in enumerate(checked):
        if not isinstance(c, int) or isinstance(c, bool):
            raise TypeError(f"{what} {k} must be an int, got {type(c).__name__}")
        if not 0 < c < n_square:
            raise ValueError(f"{what} {k} is outside [1, n²)")
    return checked
