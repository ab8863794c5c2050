"""The signed facts of a threshold key's custody, and the group envelope partials travel in.

A t-of-n run key (:mod:`crypto.threshold`) is dealt by one custodian site. What it deals
is stated once, canonically, and signed with its Ed25519 identity (RFC 8032):
:class:`ThresholdStatement` names the run, the key's fingerprint, t and N, each share
holder by index, site and pinned fingerprint, the sha256 of the public verification keys,
and the custodian's erasure statement. Every site checks it against its pins before it
opens its share; the coordinator checks it before it stores anything and writes it to the
audit log.

Partials are the one thing that must reach the other share holders but never the
coordinator: ``t`` partials of a ciphertext open it, and the coordinator holds every
ciphertext. They travel sealed under a 256-bit group key that the custodian deals to each
holder together with its share (sealed to the holder's X25519 key). The envelope is
AES-256-GCM (NIST SP 800-38D) with the run, round, sending site and aggregate bound as
associated data, so the coordinator can neither read a partial nor move one to another
site's name, round or aggregate; inside, the sending site's Ed25519 signature stops a
share holder (who knows the group key) from speaking for another.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto.threshold import KeyShare, VerificationKeys, key_share_from_bytes, key_share_to_bytes

GROUP_KEY_BYTES = 32
_NONCE_BYTES = 12
_SIGNATURE_BYTES = 64
_STATEMENT = b"cohort/threshold-dealing/v1\x00"
_PARTIAL = b"cohort/threshold-partial/v1\x00"
_ENVELOPE = b"cohort/threshold-envelope/v1\x00"

ERASURE = (
    "The custodian generated p, q and the secret exponent d in this process, dealt d's "
    "Shamir shares, sealed each share only to its holder's pinned X25519 key, kept its own "
    "share only, then dropped every reference to p, q, d, the polynomial and the other "
    "shares and ran the garbage collector. CPython cannot overwrite freed integers, so "
    "until the memory is reused they may remain in this process's RAM (and in swap or a "
    "core dump): the erasure is of references, not of bits."
)
"""The erasure statement a custodian signs: what it did and what Python cannot promise."""


@dataclass(frozen=True)
class Holder:
    """A share holder: its Shamir index (1..N), site name and pinned identity fingerprint."""

    index: int
    site: str
    fingerprint: str


@dataclass(frozen=True)
class ThresholdStatement:
    """The custodian's signed statement of a t-of-n dealing (canonical JSON)."""

    run_id: str
    key_fingerprint: str
    custodian: str
    custodian_fingerprint: str
    threshold: int
    parties: int
    holders: tuple[Holder, ...]
    verification_keys_sha256: str
    erasure: str

    def to_bytes(self) -> bytes:
        body = {
            "run_id": self.run_id,
            "key_fingerprint": self.key_fingerprint,
            "custodian": self.custodian,
            "custodian_fingerprint": self.custodian_fingerprint,
            "threshold": self.threshold,
            "parties": self.parties,
            "holders": [
                {"index": h.index, "site": h.site, "fingerprint": h.fingerprint}
                for h in sorted(self.holders, key=lambda h: h.index)
            ],
            "verification_keys_sha256": self.verification_keys_sha256,
            "erasure": self.erasure,
        }
        return _STATEMENT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ThresholdStatement:
        """Parse a statement; refuse anything but the canonical encoding of a consistent one.

        Raises
        ------
        ValueError
            On a wrong tag, malformed JSON or fields, non-canonical bytes, or holders that
            are not exactly indices 1..N at distinct sites.
        """
        if not raw.startswith(_STATEMENT):
            raise ValueError("not a Cohort threshold dealing statement")
        try:
            body = json.loads(raw[len(_STATEMENT) :])
            statement = cls(
                run_id=str(body["run_id"]),
                key_fingerprint=str(body["key_fingerprint"]),
                custodian=str(body["custodian"]),
                custodian_fingerprint=str(body["custodian_fingerprint"]),
                threshold=int(body["threshold"]),
                parties=int(body["parties"]),
                holders=tuple(
                    Holder(int(h["index"]), str(h["site"]), str(h["fingerprint"]))
                    for h in body["holders"]
                ),
                verification_keys_sha256=str(body["verification_keys_sha256"]),
                erasure=str(body["erasure"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed threshold statement: {exc}") from exc
        if statement.to_bytes() != raw:
            raise ValueError("threshold statement is not in canonical form")
        if sorted(h.index for h in statement.holders) != list(range(1, statement.parties + 1)):
            raise ValueError("threshold statement's holders are not indices 1..N")
        if len({h.site for h in statement.holders}) != statement.parties:
            raise ValueError("threshold statement names a site twice")
        if not 2 <= statement.threshold <= statement.parties:
            raise ValueError(f"threshold {statement.threshold} of {statement.parties} parties")
        return statement

    def holder(self, site: str) -> Holder | None:
        return next((h for h in self.holders if h.site == site), None)

    def site_of(self, index: int) -> str:
        return next((h.site for h in self.holders if h.index == index), f"party {index}")


def keys_sha256(verification_keys: bytes) -> str:
    return hashlib.sha256(verification_keys).hexdigest()


def share_context(run_id: str, key_fingerprint: str, site: str) -> bytes:
    """Associated data of a sealed share: bound to the run, the key and its holder."""
    return f"cohort/threshold-share/{run_id}/{key_fingerprint}/{site}".encode()


def share_bundle(share: KeyShare, group_key: bytes) -> bytes:
    """What is sealed to a holder: the run's group key, then its key share."""
    if len(group_key) != GROUP_KEY_BYTES:
        raise ValueError(f"group key must be {GROUP_KEY_BYTES} bytes")
    return group_key + key_share_to_bytes(share)


def open_share_bundle(raw: bytes) -> tuple[KeyShare, bytes]:
    """``(share, group key)`` from :func:`share_bundle` bytes (ValueError when malformed)."""
    if len(raw) <= GROUP_KEY_BYTES:
        raise ValueError("sealed share holds no key share")
    return key_share_from_bytes(raw[GROUP_KEY_BYTES:]), raw[:GROUP_KEY_BYTES]


def share_matches(share: KeyShare, keys: VerificationKeys) -> bool:
    """True when ``v^(Δ·s_i) = v_i``: the share is the one the verification keys commit to."""
    if share.n != keys.n or (share.threshold, share.parties) != (keys.threshold, keys.parties):
        return False
    return pow(keys.v, keys.delta * share.share, keys.n_square) == keys.party_key(share.index)


def partial_statement(
    *, run_id: str, round_number: int, site: str, aggregate_sha256: str, partial: bytes
) -> bytes:
    """What a site signs for each partial it publishes."""
    body = {
        "run_id": run_id,
        "round": int(round_number),
        "site": site,
        "aggregate_sha256": aggregate_sha256,
        "partial_sha256": hashlib.sha256(partial).hexdigest(),
    }
    return _PARTIAL + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _associated(run_id: str, round_number: int, site: str, aggregate_sha256: str) -> bytes:
    body = [run_id, int(round_number), site, aggregate_sha256]
    return _ENVELOPE + json.dumps(body, separators=(",", ":")).encode()


def seal_partial(
    group_key: bytes,
    *,
    run_id: str,
    round_number: int,
    site: str,
    aggregate_sha256: str,
    partial: bytes,
    signature: bytes,
) -> bytes:
    """``nonce ‖ AES-256-GCM(signature ‖ partial)``, bound to run, round, site and aggregate.

    A fresh random 96-bit nonce per message; a run seals a few messages per round, far
    below GCM's 2^32 random-nonce limit per key.
    """
    if len(signature) != _SIGNATURE_BYTES:
        raise ValueError("an Ed25519 signature is 64 bytes")
    nonce = os.urandom(_NONCE_BYTES)
    aad = _associated(run_id, round_number, site, aggregate_sha256)
    return nonce + AESGCM(group_key).encrypt(nonce, signature + partial, aad)


def open_partial(
    group_key: bytes,
    sealed: bytes,
    *,
    run_id: str,
    round_number: int,
    site: str,
    aggregate_sha256: str,
) -> tuple[bytes, bytes]:
    """``(signature, partial)`` from :func:`seal_partial` output.

    Raises
    ------
    ValueError
        When the envelope is malformed, altered, or sealed for another run, round, site
        or aggregate (not told apart).
    """
    if len(sealed) < _NONCE_BYTES + 16 + _SIGNATURE_BYTES:
        raise ValueError("sealed partial is too short")
    aad = _associated(run_id, round_number, site, aggregate_sha256)
    try:
        plain = AESGCM(group_key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise ValueError(
            "sealed partial does not open: altered, or not sealed for this run, round, site "
            "and aggregate"
        ) from exc
    if len(plain) <= _SIGNATURE_BYTES:
        raise ValueError("sealed partial holds no partial")
    return plain[:_SIGNATURE_BYTES], plain[_SIGNATURE_BYTES:]


# -- echoes: one aggregate per round for every share holder -------------------------------

_ECHO = b"cohort/threshold-echo/v1\x00"
MAX_ECHO_BYTES = 1024
"""Longest canonical echo statement accepted (three hex digests, a run id and a round)."""


def echo_quorum(parties: int, threshold: int) -> int:
    """Signed echoes a holder needs before it releases partials: ``⌊(N + f)/2⌋ + 1``, f = t − 1.

    Consistent (echo) broadcast, Bracha 1987 ("Asynchronous Byzantine agreement
    protocols", Inf. Comput. 75(2)); Cachin, Guerraoui & Rodrigues 2011, *Introduction to
    Reliable and Secure Distributed Programming*, §3.10 (Byzantine consistent broadcast,
    "authenticated echo broadcast"). The parties here are the N share holders; the ones
    that may lie are the ``f = t − 1`` holders that may collude with the coordinator
    (``t`` colluding holders open everything anyway, so no protocol can do better). Two
    quorums of ``q`` holders share at least ``2q − N`` holders; ``q > (N + f)/2`` makes
    that more than ``f``, so at least one honest holder, who signs one echo per round,
    is in both: two different aggregates of one round can never both gather a quorum, so
    honest holders release partials of at most one aggregate per round, and the
    coordinator cannot decrypt two different subset sums whose difference is one site's
    update. Liveness: ``N − q = ⌊(N − t)/2⌋`` holders may be gone when a round is
    decrypted (2-of-3: none; 3-of-5: one; 3-of-7: two), where without echoes ``N − t``
    could be: the price of safety against a coordinator that shows holders different
    aggregates.
    """
    if not 2 <= threshold <= parties:
        raise ValueError(f"threshold {threshold} of {parties} parties")
    return (parties + threshold - 1) // 2 + 1


def manifest_sha256(
    *,
    round_number: int,
    aggregate_sha256: str,
    total_weight: int,
    count: int,
    contributions: list[tuple[str, str, int, int]],
) -> str:
    """sha256 of an aggregate's manifest: who contributed which update with what weight.

    ``contributions`` are ``(site, payload_sha256, weight, payload_size)``, in any order.
    """
    body = {
        "round": int(round_number),
        "aggregate_sha256": aggregate_sha256,
        "total_weight": int(total_weight),
        "count": int(count),
        "contributions": sorted([str(s), str(p), int(w), int(z)] for s, p, w, z in contributions),
    }
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()


def aggregate_manifest_sha256(aggregate: Any) -> str:
    """:func:`manifest_sha256` of a ``federation_pb2.AggregateRef`` (what a task carries)."""
    return manifest_sha256(
        round_number=int(aggregate.round),
        aggregate_sha256=str(aggregate.sha256),
        total_weight=int(aggregate.total_weight),
        count=int(aggregate.count),
        contributions=[
            (c.site_name, c.payload_sha256, int(c.weight), int(c.payload_size))
            for c in aggregate.contributions
        ],
    )


@dataclass(frozen=True)
class EchoStatement:
    """A share holder's signed word: "the aggregate of this round I was shown is this one"."""

    run_id: str
    round: int
    site: str
    aggregate_sha256: str
    manifest_sha256: str

    def to_bytes(self) -> bytes:
        body = {
            "run_id": self.run_id,
            "round": self.round,
            "site": self.site,
            "aggregate_sha256": self.aggregate_sha256,
            "manifest_sha256": self.manifest_sha256,
        }
        return _ECHO + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> EchoStatement:
        """Parse an echo; only the canonical encoding of one is accepted.

        Raises
        ------
        ValueError
            On a wrong tag, oversize or malformed bytes, or a non-canonical encoding.
        """
        if not raw.startswith(_ECHO) or len(raw) > MAX_ECHO_BYTES:
            raise ValueError("not a Cohort threshold echo statement")
        try:
            body = json.loads(raw[len(_ECHO) :])
            echo = cls(
                run_id=str(body["run_id"]),
                round=int(body["round"]),
                site=str(body["site"]),
                aggregate_sha256=str(body["aggregate_sha256"]),
                manifest_sha256=str(body["manifest_sha256"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed echo statement: {exc}") from exc
        if echo.to_bytes() != raw:
            raise ValueError("echo statement is not in canonical form")
        return echo

    @property
    def seen(self) -> tuple[str, str]:
        """What two echoes must agree on: the aggregate and its manifest."""
        return self.aggregate_sha256, self.manifest_sha256
