"""A hostile coordinator's secure round built from real parts, for the site-side gate tests.

Real Paillier ciphertexts (phe), real Ed25519 signatures, the site's real pins and gate
(client.sovereign.checked_aggregate); only the transport is replaced by a dict of blobs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crypto
from client.pins import Observed, RunPins
from client.policy import SitePolicy
from crypto import identity, plaintext_proof
from crypto.obfuscators import draw_units
from protos import common_pb2, federation_pb2, wire

RUN, KEY_ID = "run-hostile", "key-1"


@dataclass
class Config:
    site_name: str
    policy: SitePolicy = field(default_factory=SitePolicy)


@dataclass
class Identity:
    fingerprint: str


class Peers:
    """Every peer of the round is pinned: the test is about what they sign, not who they are."""

    def check(self, site: str, public: bytes) -> None:
        return None


class SiteUnderTest:
    """The gate's view of one honest site (client.sovereign.Site)."""

    def __init__(self, root: Path, name: str, round_: Round) -> None:
        self.config = Config(name)
        self.client: object = None
        self.identity = Identity(identity.fingerprint(round_.keys[name][1]))
        self.peers = Peers()
        self.pins = RunPins.load(root, name)
        self.blobs = round_.blobs
        self.pins.check(
            Observed(
                run_id=RUN,
                scheme="paillier",
                model="m",
                model_config={},
                lora="",
                participants=round_.fingerprints(),
                custodian="",
                key_fingerprint="",
            )
        )

    def fetch(self, run_id: str, sha256: str) -> bytes:
        return self.blobs[sha256]


class Round:
    """Signed updates of one round; the coordinator multiplies whichever it likes."""

    def __init__(self, public_key: Any, names: str, round_number: int = 1) -> None:
        self.public_key = public_key
        self.width = crypto.ciphertext_width(public_key)
        self.round = round_number
        self.keys = {s: identity.generate_ed25519() for s in names}
        self.ciphertexts: dict[str, list[int]] = {}
        self.headers: dict[str, federation_pb2.Contribution] = {}
        self.blobs: dict[str, bytes] = {}

    def fingerprints(self) -> dict[str, str]:
        return {s: identity.fingerprint(pk) for s, (_, pk) in self.keys.items()}

    def encrypt(self, site: str, plaintexts: list[int], weight: int = 10) -> None:
        """An honest site: encrypts, proves it knows what it encrypted, signs."""
        units = draw_units(self.public_key.n, len(plaintexts))
        n, n2 = self.public_key.n, self.public_key.nsquare
        cts = [(1 + m * n) * pow(r, n, n2) % n2 for m, r in zip(plaintexts, units, strict=True)]
        proof = plaintext_proof.prove(
            n, cts, plaintexts, units, run_id=RUN, round_number=self.round, site=site
        )
        self.submit(site, cts, weight, proof.to_bytes(n))

    def submit(
        self, site: str, ciphertexts: list[int], weight: int = 10, proof: bytes = b""
    ) -> None:
        """``site`` signs ``ciphertexts`` (and ``proof``) as its update: it holds its key."""
        payload = crypto.ciphertexts_to_bytes(ciphertexts, self.width)
        sha = hashlib.sha256(payload).hexdigest()
        statement = identity.update_statement(
            run_id=RUN,
            round_number=self.round,
            site_name=site,
            payload_sha256=sha,
            weight=weight,
            key_id=KEY_ID,
            encoding=wire.PAILLIER_PACKED,
            proof_sha256=hashlib.sha256(proof).hexdigest() if proof else "",
        )
        self.ciphertexts[site] = list(ciphertexts)
        self.blobs[sha] = payload
        self.headers[site] = federation_pb2.Contribution(
            node_id=site,
            site_name=site,
            payload_sha256=sha,
            weight=weight,
            payload_size=len(payload),
            signature=identity.sign(self.keys[site][0], statement),
            plaintext_proof=proof,
        )

    def aggregate(self, sites: str) -> federation_pb2.AggregateRef:
        """The product of ``sites``' updates, stored and described as the coordinator would."""
        n2 = self.public_key.nsquare
        product = [1] * len(self.ciphertexts[sites[0]])
        for s in sites:
            product = [a * b % n2 for a, b in zip(product, self.ciphertexts[s], strict=True)]
        payload = crypto.ciphertexts_to_bytes(product, self.width)
        sha = hashlib.sha256(payload).hexdigest()
        self.blobs[sha] = payload
        contributions = [self.headers[s] for s in sites]
        return federation_pb2.AggregateRef(
            round=self.round,
            sha256=sha,
            num_updates=len(sites),
            count=len(product),
            total_weight=sum(c.weight for c in contributions),
            contributions=contributions,
        )

    def task(self) -> federation_pb2.Task:
        return federation_pb2.Task(
            kind=federation_pb2.TASK_KIND_TRAIN,
            run_id=RUN,
            round=self.round + 1,
            secure=common_pb2.SECURE_SCHEME_PAILLIER,
            encoding=common_pb2.EncodingParams(key_id=KEY_ID),
            participants=[
                federation_pb2.Participant(node_id=s, site_name=s, ed25519_public_key=pk)
                for s, (_, pk) in self.keys.items()
            ],
        )
