"""Site identities: Ed25519 keys, fingerprints, and the canonical statements sites sign.

A site's identity is a long-lived Ed25519 key pair (RFC 8032) kept at the site. Its
fingerprint is exchanged out of band between institutions and pinned; from then on the
coordinator can relay what a site signed but cannot forge it. Every signed statement
starts with its own domain-separation tag, so a signature made for one purpose (binding a
sealing key, dealing a run key, vouching for an update) can never be replayed as another.

Statements are canonical JSON (sorted keys, no spaces) so that every site rebuilds the
same bytes from the same facts; a verifier rebuilds the statement from the values it
checks rather than trusting bytes it was handed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

ED25519_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
FINGERPRINT_HEX = 32  # 128 bits: what people compare and pin

_X25519_BINDING = b"cohort/x25519-binding/v1\x00"
_KEY_STATEMENT = b"cohort/key-statement/v1\x00"
_UPDATE = b"cohort/update/v1\x00"
_FINGERPRINT = b"cohort/ed25519-fingerprint/v1\x00"


def generate_ed25519() -> tuple[bytes, bytes]:
    """A fresh identity: ``(private_raw, public_raw)``, 32 bytes each."""
    private = Ed25519PrivateKey.generate()
    return (
        private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
        private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
    )


def public_from_private(private_raw: bytes) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(private_raw)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign(private_raw: bytes, message: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of ``message``."""
    return Ed25519PrivateKey.from_private_bytes(private_raw).sign(message)


def verify(public_raw: bytes, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature.

    Raises
    ------
    ValueError
        When the key is not 32 bytes, the signature not 64, or the signature is wrong.
    """
    if len(public_raw) != ED25519_KEY_BYTES:
        raise ValueError(f"Ed25519 public key must be 32 bytes, not {len(public_raw)}")
    if len(signature) != ED25519_SIGNATURE_BYTES:
        raise ValueError(f"Ed25519 signature must be 64 bytes, not {len(signature)}")
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
    except InvalidSignature as exc:
        raise ValueError("signature does not verify") from exc


def fingerprint(public_raw: bytes) -> str:
    """The identity's fingerprint: 32 hex digits of a tagged sha256 of the public key."""
    if len(public_raw) != ED25519_KEY_BYTES:
        raise ValueError(f"Ed25519 public key must be 32 bytes, not {len(public_raw)}")
    return hashlib.sha256(_FINGERPRINT + public_raw).hexdigest()[:FINGERPRINT_HEX]


def format_fingerprint(value: str) -> str:
    """A fingerprint as people read it aloud: eight groups of four hex digits."""
    clean = normalise_fingerprint(value)
    return " ".join(clean[i : i + 4] for i in range(0, len(clean), 4))


def normalise_fingerprint(value: str) -> str:
    """Accept a fingerprint with spaces, colons or dashes, in either case.

    Raises
    ------
    ValueError
        When it is not 32 hex digits once separators are removed.
    """
    clean = "".join(ch for ch in value.lower() if ch not in " :-")
    if len(clean) != FINGERPRINT_HEX or any(ch not in "0123456789abcdef" for ch in clean):
        raise ValueError(
            f"a fingerprint is {FINGERPRINT_HEX} hex digits (spaces allowed), not {value!r}"
        )
    return clean


def _canonical(tag: bytes, body: object) -> bytes:
    return tag + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def x25519_binding(site_name: str, x25519_public: bytes) -> bytes:
    """What a site signs to say "this X25519 key is mine": sealed keys are made for it."""
    return _canonical(_X25519_BINDING, {"site": site_name, "x25519": x25519_public.hex()})


@dataclass(frozen=True)
class Recipient:
    """A site a run key (or key share) was sealed to, named by its pinned identity."""

    site: str
    fingerprint: str


@dataclass(frozen=True)
class KeyDealing:
    """The custodian's statement of what it dealt for a run.

    ``threshold`` is 0 for the single-custodian mode (every recipient holds the whole key)
    and t for t-of-n threshold keys.
    """

    run_id: str
    scheme: str
    key_fingerprint: str
    custodian: str
    custodian_fingerprint: str
    recipients: tuple[Recipient, ...]
    threshold: int = 0
    # sha256 of the run's differential-privacy plan (protos.serde.plan_digest); "" without
    # one, and then absent from the statement (statements of runs without DP unchanged).
    privacy_sha256: str = ""

    def to_bytes(self) -> bytes:
        fields: dict[str, object] = {
            "run_id": self.run_id,
            "scheme": self.scheme,
            "key_fingerprint": self.key_fingerprint,
            "custodian": self.custodian,
            "custodian_fingerprint": self.custodian_fingerprint,
            "recipients": sorted(
                [{"site": r.site, "fingerprint": r.fingerprint} for r in self.recipients],
                key=lambda r: r["site"],
            ),
            "threshold": self.threshold,
        }
        if self.privacy_sha256:
            fields["privacy_sha256"] = self.privacy_sha256
        return _canonical(_KEY_STATEMENT, fields)

    @classmethod
    def from_bytes(cls, raw: bytes) -> KeyDealing:
        """Parse a statement; refuse anything but the canonical encoding of one.

        Raises
        ------
        ValueError
            When the tag, the JSON or a field is wrong, or the bytes are not canonical.
        """
        if not raw.startswith(_KEY_STATEMENT):
            raise ValueError("not a Cohort key statement")
        try:
            body = json.loads(raw[len(_KEY_STATEMENT) :])
            dealing = cls(
                run_id=str(body["run_id"]),
                scheme=str(body["scheme"]),
                key_fingerprint=str(body["key_fingerprint"]),
                custodian=str(body["custodian"]),
                custodian_fingerprint=str(body["custodian_fingerprint"]),
                recipients=tuple(
                    Recipient(str(r["site"]), str(r["fingerprint"])) for r in body["recipients"]
                ),
                threshold=int(body["threshold"]),
                privacy_sha256=str(body.get("privacy_sha256", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed key statement: {exc}") from exc
        if dealing.to_bytes() != raw:
            raise ValueError("key statement is not in canonical form")
        return dealing

    def recipient(self, site: str) -> Recipient | None:
        return next((r for r in self.recipients if r.site == site), None)


def update_statement(
    *,
    run_id: str,
    round_number: int,
    site_name: str,
    payload_sha256: str,
    weight: int,
    key_id: str,
    encoding: str,
    proof_sha256: str = "",
) -> bytes:
    """What a site signs for each update: the coordinator can neither alter nor invent one.

    ``proof_sha256``: sha256 of the update's proof of plaintext knowledge (secure runs,
    crypto.plaintext_proof). Signed so that a coordinator that spoils a proof is caught as
    the one that changed the update, instead of framing the site; absent (and so not in the
    statement) for updates without one.
    """
    fields: dict[str, object] = {
        "run_id": run_id,
        "round": int(round_number),
        "site": site_name,
        "payload_sha256": payload_sha256,
        "weight": int(weight),
        "key_id": key_id,
        "encoding": encoding,
    }
    if proof_sha256:
        fields["proof_sha256"] = proof_sha256
    return _canonical(_UPDATE, fields)


def recipients_of(pairs: Sequence[tuple[str, bytes]]) -> tuple[Recipient, ...]:
    """Recipients from ``(site name, Ed25519 public key)`` pairs."""
    return tuple(Recipient(site, fingerprint(public)) for site, public in pairs)
