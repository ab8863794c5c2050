"""Run keys at the coordinator: a custodian's sealed key bundle, and relayed threshold partials."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session

import crypto
from coordinator import auditlog, identity, threshold
from coordinator.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
)
from coordinator.hub import Hub
from coordinator.queries import LIVE
from coordinator.schema import (
    Node,
    Run,
    SealedKey,
    Task,
    TaskKind,
    TaskState,
)
from coordinator.task_watch import RoundKey, poll_seconds
from protos import federation_pb2, wire

_Reply = TypeVar("_Reply")
PARTIALS, ECHOES = "partials", "echoes"
"""The two relays of a threshold round (``hub.relays`` keys): a poll of one wakes for it only."""


class KeyRelay:
    """Registers a run's key (never a private key in the clear) and relays partials."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def submit_keys(
        self, node_id: str, bundle: federation_pb2.KeyBundle
    ) -> federation_pb2.SubmitReply:
        """Accept the custodian's run key: public half, and private halves sealed to participants.

        Refuses a key of fewer bits than the run asks, a fingerprint that does not match, and a
        key sealed for anyone outside the run's fixed participants or for too few of them.
        """
        with self.hub.lock, self.hub.db.transaction() as session:
            task = session.get(Task, bundle.task_id)
            if task is None or task.node_id != node_id or task.kind != TaskKind.KEYGEN:
                raise FailedPrecondition("this node holds no key-generation task by that id")
            if task.state not in LIVE or bundle.run_id != task.run_id:
                raise FailedPrecondition("that key-generation task is no longer open")
            run = session.get(Run, task.run_id)
            assert run is not None
            if run.public_key:
                raise AlreadyExists("this run already has its key")
            try:
                public_key = crypto.public_key_from_bytes(bytes(bundle.public_key))
            except ValueError as exc:
                raise InvalidArgument(f"unreadable public key: {exc}") from exc
            want_bits = run.settings().encoding.key_bits
            if public_key.n.bit_length() < want_bits - 1:
                raise InvalidArgument(
                    f"key has {public_key.n.bit_length()} bits; the run asks for {want_bits}"
                )
            fingerprint = crypto.key_fingerprint(public_key)
            if bundle.key_fingerprint and bundle.key_fingerprint != fingerprint:
                raise InvalidArgument("key fingerprint does not match the public key")
            # Keys go to the run's fixed participants only, never to whoever is online.
            known = set(run.participants)
            sealed_for: list[str] = []
            for item in bundle.sealed:
                if item.node_id in sealed_for:
                    raise InvalidArgument(f"two sealed keys for node {item.node_id!r}")
                if item.node_id not in known or not item.sealed_private_key:
                    raise InvalidArgument(
                        f"sealed key for node {item.node_id!r}, not a participant of the run"
                    )
                sealed_for.append(item.node_id)
            if len(sealed_for) < run.min_clients:
                raise InvalidArgument(
                    f"keys sealed for {len(sealed_for)} sites; the run needs {run.min_clients}"
                )
            custodian = session.get(Node, node_id)
            assert custodian is not None
            dealing = identity.check_key_statement(
                session, run, custodian, bundle.statement, fingerprint, sealed_for
            )
            custody = threshold.register(session, run, custodian, bundle, dealing, public_key.n)
            for item in bundle.sealed:
                session.add(
                    SealedKey(
                        run_id=run.id, node_id=item.node_id, sealed=bytes(item.sealed_private_key)
                    )
                )
            run.key_statement = bytes(bundle.statement.statement)
            run.key_statement_signature = bytes(bundle.statement.signature)
            run.public_key = bytes(bundle.public_key)
            run.key_id = crypto.key_id(public_key)
            run.key_fingerprint = fingerprint
            task.state = TaskState.DONE
            auditlog.append(
                session,
                "key.registered",
                run_id=run.id,
                actor=node_id,
                details={
                    "key_id": run.key_id,
                    "fingerprint": fingerprint,
                    "key_bits": public_key.n.bit_length(),
                    "sealed_for": sorted(sealed_for),
                    "custodian": dealing.custodian,
                    "custodian_fingerprint": dealing.custodian_fingerprint,
                    "recipients": {r.site: r.fingerprint for r in dealing.recipients},
                    "statement_sha256": wire.sha256_hex(run.key_statement),
                }
                | custody,
            )
        self.hub.notify()
        return federation_pb2.SubmitReply(id=run.key_id, message="key registered")

    def submit_partials(
        self, node_id: str, request: federation_pb2.PartialSubmission
    ) -> federation_pb2.SubmitReply:
        """Store a site's sealed partial decryption of an aggregate (``coordinator.threshold``)."""
        with self.hub.lock, self.hub.db.transaction() as session:
            reply = threshold.submit(session, node_id, request)
        self.hub.relays.bump((request.run_id, int(request.round), PARTIALS))
        self.hub.notify()
        return reply

    async def fetch_partials(
        self, node_id: str, request: federation_pb2.PartialFetchRequest
    ) -> federation_pb2.PartialFetchReply:
        """Long poll: the round's sealed partials once ``at_least`` are in, or at the wait's end."""
        return await self._long_poll(
            (request.run_id, int(request.round), PARTIALS),
            request.wait_seconds,
            lambda session: threshold.fetch(session, node_id, request),
            lambda reply: len(reply.partials) >= request.at_least,
        )

    def submit_echo(
        self, node_id: str, request: federation_pb2.EchoSubmission
    ) -> federation_pb2.SubmitReply:
        """Store a holder's signed echo of a round's aggregate (``coordinator.threshold``)."""
        with self.hub.lock, self.hub.db.transaction() as session:
            reply = threshold.submit_echo(session, node_id, request)
        self.hub.relays.bump((request.run_id, int(request.round), ECHOES))
        self.hub.notify()
        return reply

    async def fetch_echoes(
        self, node_id: str, request: federation_pb2.EchoFetchRequest
    ) -> federation_pb2.EchoFetchReply:
        """Long poll: the round's signed echoes once ``at_least`` are in, or at the wait's end."""
        return await self._long_poll(
            (request.run_id, int(request.round), ECHOES),
            request.wait_seconds,
            lambda session: threshold.fetch_echoes(session, node_id, request),
            lambda reply: len(reply.echoes) >= request.at_least,
        )

    async def _long_poll(
        self,
        key: RoundKey,
        wait_seconds: float,
        read: Callable[[Session], _Reply],
        enough: Callable[[_Reply], bool],
    ) -> _Reply:
        """Re-``read`` until ``enough``, the wait (at most 10 s) ends, or the caller leaves.

        Serves :meth:`fetch_partials` and :meth:`fetch_echoes`. A coroutine: between reads
        it parks on the event loop until a partial or echo of its round is stored
        (``hub.relays``), so a threshold round's polls hold no thread and other calls
        wake none of them (issue 14). Each read is its own transaction on the server's
        pool and checks again that the caller holds a share and is not revoked. A caller
        that leaves cancels the coroutine where it waits.
        """
        loop = asyncio.get_running_loop()
        until = loop.time() + poll_seconds(wait_seconds, 10.0)

        def look() -> _Reply:
            with self.hub.db.transaction() as session:
                return read(session)

        while True:
            mark = self.hub.relays.mark(key)  # before the read: one stored during it wakes
            reply = await loop.run_in_executor(None, look)
            if enough(reply) or self.hub.closing.is_set():
                return reply
            remaining = until - loop.time()
            if remaining <= 0:
                return reply
            await self.hub.relays.wait(key, mark, remaining)

    def report_partial(
        self, node_id: str, complaint: federation_pb2.PartialComplaint
    ) -> federation_pb2.SubmitReply:
        """Record a site's complaint about another's partial (``coordinator.threshold``)."""
        with self.hub.lock, self.hub.db.transaction() as session:
            return threshold.complain(session, node_id, complaint)
