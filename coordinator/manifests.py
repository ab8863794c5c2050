"""Signed updates and aggregate manifests: what a site needs to check an aggregate itself.

The coordinator stores each update's Ed25519 signature (over
``crypto.identity.update_statement``), refuses one that does not verify against the
node's registered identity, and hands every site, with each encrypted aggregate, the list
of signed contributions it multiplied, so that sites decrypt only what they can check.
It never needs, and never sees, a private key for any of this.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.errors import InvalidArgument
from coordinator.queries import site_name, summed_updates
from coordinator.schema import Node, Round, Run, SealedKey, Update
from coordinator.schemes import scheme_of
from crypto import identity
from protos import federation_pb2


def check_update_signature(
    session: Session, node_id: str, run: Run, header: federation_pb2.UpdateHeader, weight: int
) -> bytes:
    """The header's signature, once it verifies against the node's registered identity.

    Rule: a node with a registered Ed25519 identity must sign every update; a node with
    none may send unsigned updates to plaintext runs only (secure runs count updates
    toward the minimum sites decrypt, which only a signature can vouch for).

    Raises
    ------
    InvalidArgument
        When a required signature is missing or does not verify.
    """
    node = session.get(Node, node_id)
    assert node is not None
    public = bytes(node.ed25519_public_key or b"")
    signature = bytes(header.signature)
    if not public:
        if scheme_of(run).encrypted:
            raise InvalidArgument(
                "secure runs take signed updates only, from sites with a registered identity: "
                "this node joined without an Ed25519 identity"
            )
        return b""
    if not signature:
        raise InvalidArgument("this site has a registered identity: its updates must be signed")
    statement = identity.update_statement(
        run_id=run.id,
        round_number=header.round,
        site_name=site_name(session, node),
        payload_sha256=header.payload_sha256,
        weight=weight,
        key_id=header.key_id,
        encoding=header.encoding,
        proof_sha256=(
            hashlib.sha256(header.plaintext_proof).hexdigest() if header.plaintext_proof else ""
        ),
    )
    try:
        identity.verify(public, statement, signature)
    except ValueError as exc:
        raise InvalidArgument(
            f"the update's signature does not verify with this site's identity: {exc}"
        ) from exc
    return signature


def add_contributions(
    session: Session, run_id: str, aggregate: federation_pb2.AggregateRef
) -> None:
    """List the signed updates of the aggregate's round: what the coordinator multiplied."""
    closed = session.scalar(
        select(Round).where(Round.run_id == run_id, Round.number == aggregate.round)
    )
    closed_at = closed.closed_at if closed is not None else 0.0
    for update in summed_updates(session, run_id, aggregate.round, closed_at):
        node = session.get(Node, update.node_id)
        aggregate.contributions.add(
            node_id=update.node_id,
            site_name=site_name(session, node) if node is not None else "",
            payload_sha256=update.blob_sha256,
            weight=update.weight,
            payload_size=update.size,
            signature=update.signature or b"",
            plaintext_proof=update.plaintext_proof or b"",
        )


def is_update_blob(session: Session, run_id: str, sha256: str) -> bool:
    """True when ``sha256`` is an update of this run whose round has been aggregated.

    Sites fetch them to recompute an aggregate's product; an open round's updates are
    never handed out.
    """
    from coordinator.schema import ModelVersion

    rounds = select(ModelVersion.round).where(ModelVersion.run_id == run_id)
    return (
        session.scalar(
            select(Update.id)
            .where(
                Update.run_id == run_id,
                Update.blob_sha256 == sha256,
                Update.round.in_(rounds),
            )
            .limit(1)
        )
        is not None
    )


def add_participants(session: Session, run: Run, message: federation_pb2.Task) -> None:
    """Fill a secure task's participants when nothing else did (until S1's list lands).

    The run's key holders: the nodes its key was sealed to, fixed at KEYGEN, or
    ``run.participants`` when set. Each with the identity it registered.
    """
    if not scheme_of(run).encrypted or len(message.participants):
        return
    node_ids = list(run.participants or [])
    if not node_ids:
        node_ids = list(
            session.scalars(select(SealedKey.node_id).where(SealedKey.run_id == run.id))
        )
    for node_id in sorted(set(node_ids)):
        node = session.get(Node, node_id)
        if node is None:
            continue
        message.participants.add(
            node_id=node.id,
            site_name=site_name(session, node),
            x25519_public_key=node.x25519_public_key,
            ed25519_public_key=node.ed25519_public_key or b"",
            x25519_signature=node.x25519_signature or b"",
        )
