"""Intake check of a secure update's proof of plaintext knowledge (crypto.plaintext_proof).

Every site checks every contribution's proof before it decrypts or publishes a partial
(client/verify.py verify_proofs) and never trusts the coordinator to have done it. The
coordinator checks it too, at intake, so that one site's update without a valid proof is
refused on arrival (INVALID_ARGUMENT, an ``update.rejected`` audit row whose reason names
the site) instead of being summed into an aggregate that every honest site then refuses,
failing the whole round. The check runs after the payload is received and before the
coordinator's lock is taken: it is pure CPU (one batched exponentiation of the update,
Bellare–Garay–Rabin 1998; the Σ-protocol of Damgård & Jurik 2001, §5) and must not stall
other sites' calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

import crypto
from coordinator.errors import InvalidArgument
from coordinator.identity import site_name
from coordinator.schema import Node, Run, Task, TaskKind
from crypto import plaintext_proof
from protos import federation_pb2, wire


@dataclass(frozen=True)
class ProofContext:
    """What checking a proof needs from the run, read by intake's first header check."""

    run_id: str
    round_number: int
    site: str
    public_key: bytes


def proof_context(
    session: Session, node_id: str, run: Run, task: Task, header: federation_pb2.UpdateHeader
) -> ProofContext | None:
    """The context to check ``header``'s proof in, or None when no proof is checked here.

    Only a secure TRAIN update under the run's key is checked here: one that names another
    key is refused by the scheme's own check (coordinator.schemes.PaillierScheme.validate),
    with its own reason, once the lock is held; a plaintext run has no proof to check.
    """
    if (
        task.kind != TaskKind.TRAIN
        or run.secure != "paillier"
        or not run.public_key
        or header.encoding != wire.PAILLIER_PACKED
        or header.key_id != run.key_id
    ):
        return None
    node = session.get(Node, node_id)
    if node is None:
        return None
    return ProofContext(run.id, int(task.round), site_name(session, node), bytes(run.public_key))


def check_update(
    context: ProofContext, header: federation_pb2.UpdateHeader, payload: bytes
) -> None:
    """Refuse a secure training update whose proof does not verify for its site and round.

    Only a well-formed update is checked here: one that holds the wrong number of
    ciphertexts or a ciphertext that is not a unit mod n² is refused by the scheme's own
    check, with its own reason, once the lock is held.

    Raises
    ------
    InvalidArgument
        Naming the site: the proof is missing, malformed or does not verify.
    """
    site, run_id, round_number = context.site, context.run_id, context.round_number
    public_key = crypto.public_key_from_bytes(context.public_key)
    width = crypto.ciphertext_width(public_key)
    try:
        ciphertexts = crypto.ciphertexts_from_bytes(payload, width)
        crypto.validate_ciphertexts(ciphertexts, public_key)
    except ValueError:
        return  # not well-formed: PaillierScheme.validate refuses it, saying why
    if not ciphertexts:
        return
    try:
        proof = plaintext_proof.PlaintextProof.from_bytes(
            bytes(header.plaintext_proof), public_key.n
        )
        plaintext_proof.verify(
            public_key.n, ciphertexts, proof, run_id=run_id, round_number=round_number, site=site
        )
    except ValueError as exc:  # ProofError is a ValueError
        raise InvalidArgument(
            f"site {site}'s update of round {round_number} carries no valid proof that it "
            f"knows its plaintexts ({exc}); refused at intake, so the round is not failed"
        ) from exc
