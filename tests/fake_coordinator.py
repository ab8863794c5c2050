"""A malicious coordinator for tests: a real gRPC server on 127.0.0.1 that says what it is told.

It speaks the federation protos (FederationServicer) and hands unmodified SiteAgents
whatever tasks a test scripts: wrong schemes, foreign models, aggregates of one, keys of
its own. It records everything the sites send (joins, updates, key bundles, refusals) so
a test can show what leaked and what did not. Also a toolbox to forge the crypto a
breached coordinator could produce (Paillier keys, sealed keys, signed updates of peers
whose identities a test controls). Reusable by any suite (threshold, DP) that needs a
hostile coordinator.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

import crypto
from crypto import identity, plaintext_proof
from protos import common_pb2, federation_pb2, federation_pb2_grpc, wire

TEST_KEY_BITS = 1024


@dataclass
class Peer:
    """A site identity the test holds (an honest peer, or one the attacker made up)."""

    name: str
    private: bytes
    public: bytes

    @classmethod
    def make(cls, name: str) -> Peer:
        private, public = identity.generate_ed25519()
        return cls(name, private, public)

    @property
    def fingerprint(self) -> str:
        return identity.fingerprint(self.public)

    def sign_update(
        self,
        *,
        run_id: str,
        round_number: int,
        payload: bytes,
        weight: int,
        key_id: str,
        proof: bytes = b"",
    ) -> bytes:
        return identity.sign(
            self.private,
            identity.update_statement(
                run_id=run_id,
                round_number=round_number,
                site_name=self.name,
                payload_sha256=hashlib.sha256(payload).hexdigest(),
                weight=weight,
                key_id=key_id,
                encoding=wire.PAILLIER_PACKED,
                proof_sha256=hashlib.sha256(proof).hexdigest() if proof else "",
            ),
        )


@dataclass
class Recorded:
    joins: list[federation_pb2.JoinRequest] = field(default_factory=list)
    updates: list[tuple[federation_pb2.UpdateHeader, bytes]] = field(default_factory=list)
    key_bundles: list[federation_pb2.KeyBundle] = field(default_factory=list)
    refusals: list[federation_pb2.TaskRefusal] = field(default_factory=list)
    audits: list[federation_pb2.AuditSubmission] = field(default_factory=list)
    polls: int = 0


class FakeCoordinator(federation_pb2_grpc.FederationServicer):
    """Hands out scripted tasks, serves any blob it was given, records what sites send."""

    def __init__(self) -> None:
        self.tasks: queue.Queue[federation_pb2.Task] = queue.Queue()
        self.blobs: dict[str, bytes] = {}
        self.seen = Recorded()
        self.changed = threading.Condition()
        self._server: grpc.Server | None = None
        self.address = ""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        federation_pb2_grpc.add_FederationServicer_to_server(self, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server, self.address = server, f"127.0.0.1:{port}"
        return self.address

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0.5).wait()

    # -- scripting -------------------------------------------------------------------------

    def give(self, task: federation_pb2.Task) -> federation_pb2.Task:
        if not task.task_id:
            task.task_id = f"task-{time.monotonic_ns()}"
        self.tasks.put(task)
        return task

    def put_blob(self, payload: bytes) -> str:
        sha = hashlib.sha256(payload).hexdigest()
        self.blobs[sha] = payload
        return sha

    def wait_for(self, predicate: Callable[[Recorded], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self.seen):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; recorded {self.seen}")
                self.changed.wait(min(left, 0.2))

    def _record(self, apply: Callable[[Recorded], None]) -> None:
        with self.changed:
            apply(self.seen)
            self.changed.notify_all()

    # -- the protos ------------------------------------------------------------------------

    def Join(self, request, context):  # type: ignore[no-untyped-def]
        self._record(lambda seen: seen.joins.append(request))
        return federation_pb2.JoinReply(
            node_id=f"node-{request.site_name}", node_token=f"token-{request.site_name}"
        )

    def Heartbeat(self, request, context):  # type: ignore[no-untyped-def]
        return federation_pb2.HeartbeatReply(server_time_unix=time.time())

    def PullTask(self, request, context):  # type: ignore[no-untyped-def]
        def polled(seen: Recorded) -> None:
            seen.polls += 1

        self._record(polled)
        try:
            return self.tasks.get(timeout=min(request.wait_seconds, 0.5))
        except queue.Empty:
            return federation_pb2.Task(kind=federation_pb2.TASK_KIND_NONE)

    def FetchModel(self, request, context):  # type: ignore[no-untyped-def]
        payload = self.blobs.get(request.sha256)
        if payload is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no blob {request.sha256}")
        yield from wire.chunk_stream(payload)

    def SubmitUpdate(self, request_iterator, context):  # type: ignore[no-untyped-def]
        messages = list(request_iterator)
        header = messages[0].header
        payload = b"".join(m.data for m in messages[1:])
        self._record(lambda seen: seen.updates.append((header, payload)))
        return federation_pb2.SubmitReply(id="u", message="update accepted")

    def SubmitKeys(self, request, context):  # type: ignore[no-untyped-def]
        self._record(lambda seen: seen.key_bundles.append(request))
        return federation_pb2.SubmitReply(id="k", message="keys accepted")

    def SubmitAudit(self, request, context):  # type: ignore[no-untyped-def]
        self._record(lambda seen: seen.audits.append(request))
        return federation_pb2.SubmitReply(id="a", message="audit accepted")

    def RefuseTask(self, request, context):  # type: ignore[no-untyped-def]
        self._record(lambda seen: seen.refusals.append(request))
        return federation_pb2.SubmitReply(id=request.task_id, message="refusal recorded")

    def GetFinalModel(self, request, context):  # type: ignore[no-untyped-def]
        context.abort(grpc.StatusCode.NOT_FOUND, "scripted coordinators keep no final models")


# -- forging what a coordinator would send -------------------------------------------------


@dataclass
class RunKey:
    """A Paillier key for a scripted secure run, and the encoding that goes with it."""

    public: Any
    private: Any
    encoding: dict[str, Any]

    @classmethod
    def make(cls, encoding: dict[str, Any]) -> RunKey:
        public, private = crypto.generate_keypair(TEST_KEY_BITS, insecure_test_size=True)
        return cls(public, private, {**encoding, "key_bits": TEST_KEY_BITS})

    @property
    def fingerprint(self) -> str:
        return crypto.key_fingerprint(self.public)

    @property
    def width(self) -> int:
        return crypto.ciphertext_width(self.public)

    def codec(self) -> crypto.SlotCodec:
        return crypto.SlotCodec(
            clip=float(self.encoding["clip"]),
            bits=int(self.encoding["bits"]),
            max_weight=int(self.encoding["max_weight"]),
            key_bits=self.public.n.bit_length(),
        )

    def params(self, key_id: str = "run-key") -> common_pb2.EncodingParams:
        return common_pb2.EncodingParams(
            clip=float(self.encoding["clip"]),
            bits=int(self.encoding["bits"]),
            max_weight=int(self.encoding["max_weight"]),
            key_bits=TEST_KEY_BITS,
            key_id=key_id,
            public_key=crypto.public_key_to_bytes(self.public),
            key_fingerprint=self.fingerprint,
        )

    def sealed_for(self, x25519_public: bytes, run_id: str) -> bytes:
        """The private key sealed to a site, bound to the run as the agent expects."""
        context = f"cohort/run-key/{run_id}/{self.fingerprint}".encode()
        return crypto.seal(x25519_public, crypto.private_key_to_bytes(self.private), context)

    def encrypt(self, values: np.ndarray, weight: int) -> bytes:
        plaintexts = self.codec().encode(values, weight, np.random.default_rng(0))
        return self.encrypt_plaintexts(plaintexts)

    def encrypt_plaintexts(self, plaintexts: Sequence[int]) -> bytes:
        cts = crypto.encrypt_packed(self.public, list(plaintexts), workers=1)
        return crypto.ciphertexts_to_bytes(cts, self.width)

    def encrypt_proven(
        self, plaintexts: Sequence[int], *, run_id: str, round_number: int, site: str
    ) -> tuple[bytes, bytes]:
        """An honest peer's update: the ciphertexts and its proof of plaintext knowledge."""
        units: list[int] = []
        cts = crypto.encrypt_packed(self.public, list(plaintexts), workers=1, units_out=units)
        proof = plaintext_proof.prove(
            self.public.n,
            cts,
            list(plaintexts),
            units,
            run_id=run_id,
            round_number=round_number,
            site=site,
        )
        return crypto.ciphertexts_to_bytes(cts, self.width), proof.to_bytes(self.public.n)

    def product(self, payloads: Sequence[bytes]) -> bytes:
        vectors = [crypto.ciphertexts_from_bytes(p, self.width) for p in payloads]
        return crypto.ciphertexts_to_bytes(crypto.add_encrypted(vectors, self.public), self.width)

    def dealing(self, run_id: str, custodian: Peer, recipients: Sequence[tuple[str, str]]) -> Any:
        """The custodian's signed key statement (what S1's sites require to open a key)."""
        dealing = identity.KeyDealing(
            run_id=run_id,
            scheme="paillier",
            key_fingerprint=self.fingerprint,
            custodian=custodian.name,
            custodian_fingerprint=custodian.fingerprint,
            recipients=tuple(identity.Recipient(s, fp) for s, fp in recipients),
        )
        statement = dealing.to_bytes()
        return federation_pb2.KeyStatement(
            statement=statement,
            signature=identity.sign(custodian.private, statement),
            custodian=custodian.name,
        )


def participant(name: str, ed25519_public: bytes, x25519_public: bytes = b"") -> Any:
    return federation_pb2.Participant(
        node_id=f"node-{name}",
        site_name=name,
        ed25519_public_key=ed25519_public,
        x25519_public_key=x25519_public,
    )


def config_json(model: str = "tabular_mlp", **extra: Any) -> str:
    return json.dumps({"model": model, "local_epochs": 1, "rounds": 5, **extra})
