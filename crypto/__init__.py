"""Secure aggregation for Cohort: Paillier keys, slot packing, fast encryption, key sealing.

Threshold mode (:mod:`crypto.threshold`, :mod:`crypto.primes`): a dealer splits the key
into t-of-n shares so that no site holds it whole; each decryption needs t partials, each
with a proof that names a cheating party.

Nothing here imports other Cohort packages; every function is usable on its own. The
protocol these pieces implement is told in the README ("How a round flows", "Threat
model"). Known limits: a malicious client can still send values that are wrong but within
its slots (there are no range proofs), and robust aggregation (median, Krum) needs
plaintext updates.
"""

from crypto._parallel import shutdown_shared_pools
from crypto.aggregate import add_encrypted, validate_ciphertexts
from crypto.codec import SlotCodec
from crypto.compress import compress_update, decompress_update
from crypto.keys import (
    generate_keypair,
    key_fingerprint,
    key_id,
    private_key_from_bytes,
    private_key_to_bytes,
    public_key_from_bytes,
    public_key_to_bytes,
)
from crypto.paillier_fast import decrypt_packed, encrypt_packed
from crypto.primes import SafePrimePool, is_safe_prime, safe_prime
from crypto.quantise import dequantise, quantise, quantise_step
from crypto.randomness import RandomnessPool
from crypto.sealing import generate_x25519, open_sealed, seal
from crypto.threshold import (
    DecryptionProof,
    InvalidPartialError,
    KeyShare,
    PartialDecryption,
    VerificationKeys,
    combine,
    deal,
    key_share_from_bytes,
    key_share_to_bytes,
    lagrange_coefficients,
    make_partial_decryption,
    partial_decrypt,
    partial_decryption_from_bytes,
    partial_decryption_to_bytes,
    prove_partials,
    verification_keys_from_bytes,
    verification_keys_to_bytes,
    verify_partials,
)
from crypto.wire import ciphertext_width, ciphertexts_from_bytes, ciphertexts_to_bytes

__all__ = [
    "DecryptionProof",
    "InvalidPartialError",
    "KeyShare",
    "PartialDecryption",
    "RandomnessPool",
    "SafePrimePool",
    "SlotCodec",
    "VerificationKeys",
    "add_encrypted",
    "ciphertext_width",
    "ciphertexts_from_bytes",
    "ciphertexts_to_bytes",
    "combine",
    "compress_update",
    "deal",
    "decompress_update",
    "decrypt_packed",
    "dequantise",
    "encrypt_packed",
    "generate_keypair",
    "generate_x25519",
    "is_safe_prime",
    "key_fingerprint",
    "key_id",
    "key_share_from_bytes",
    "key_share_to_bytes",
    "lagrange_coefficients",
    "make_partial_decryption",
    "open_sealed",
    "partial_decrypt",
    "partial_decryption_from_bytes",
    "partial_decryption_to_bytes",
    "private_key_from_bytes",
    "private_key_to_bytes",
    "prove_partials",
    "public_key_from_bytes",
    "public_key_to_bytes",
    "quantise",
    "quantise_step",
    "safe_prime",
    "seal",
    "shutdown_shared_pools",
    "validate_ciphertexts",
    "verification_keys_from_bytes",
    "verification_keys_to_bytes",
    "verify_partials",
]
