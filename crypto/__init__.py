"""Secure aggregation for Cohort: Paillier keys, slot packing, fast encryption, key sealing.

Nothing here imports other Cohort packages; every function is usable on its own. See
DESIGN.md, "Secure aggregation", for the protocol these pieces implement. Known limits: a
malicious client can still send values that are wrong but within its slots (there are no
range proofs), and robust aggregation (median, Krum) needs plaintext updates.
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
from crypto.quantise import dequantise, quantise, quantise_step
from crypto.randomness import RandomnessPool
from crypto.sealing import generate_x25519, open_sealed, seal
from crypto.wire import ciphertext_width, ciphertexts_from_bytes, ciphertexts_to_bytes

__all__ = [
    "RandomnessPool",
    "SlotCodec",
    "add_encrypted",
    "ciphertext_width",
    "ciphertexts_from_bytes",
    "ciphertexts_to_bytes",
    "compress_update",
    "decompress_update",
    "decrypt_packed",
    "dequantise",
    "encrypt_packed",
    "generate_keypair",
    "generate_x25519",
    "key_fingerprint",
    "key_id",
    "open_sealed",
    "private_key_from_bytes",
    "private_key_to_bytes",
    "public_key_from_bytes",
    "public_key_to_bytes",
    "quantise",
    "quantise_step",
    "seal",
    "shutdown_shared_pools",
    "validate_ciphertexts",
]
