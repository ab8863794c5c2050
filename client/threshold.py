"""Threshold custody at a site: deal a t-of-n key and open this site's share of it.

The custodian deals (Shoup / Damgård–Jurik with a trusted dealer, :mod:`crypto.threshold`),
seals each share with the run's group key to its holder's pinned X25519 key, signs the
public parameters (:class:`crypto.threshold_custody.ThresholdStatement`) and erases the key.
Each site opens only its own share, after checking the statement against its pins and the
share against its verification key. Decrypting with the share is
:mod:`client.threshold_partials`.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import crypto
from client import keys
from client.keys import Recipient
from client.policy import TaskRefused, check_deal_bits, check_key_bits
from crypto import identity
from crypto import threshold as tp
from crypto import threshold_custody as custody
from protos import federation_pb2

if TYPE_CHECKING:
    from client.site import Site

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThresholdKey:
    """What a share holder keeps for a run: public parameters, its share, the group key."""

    verification_keys: tp.VerificationKeys
    share: tp.KeyShare
    group_key: bytes
    statement: custody.ThresholdStatement

    @property
    def public_key(self) -> Any:
        """The run's Paillier public key, from the dealt verification keys."""
        return self.verification_keys.public_key


def deal(
    agent: Site, task: federation_pb2.Task, recipients: list[Recipient], refused: list[str]
) -> federation_pb2.KeyBundle:
    """Custodian: make a t-of-N key for the task's run, seal the shares, sign, erase.

    Erasure: this function keeps no reference to ``p``, ``q``, ``d``, the Shamir
    polynomial or any share once it returns (the custodian reopens its own share from the
    coordinator like every other holder) and runs the garbage collector. CPython gives no
    way to overwrite an ``int``'s memory, so the numbers may survive in freed heap pages
    until reused (or in swap and core dumps); the signed erasure statement says exactly
    that (:data:`crypto.threshold_custody.ERASURE`).

    Raises
    ------
    TaskRefused
        ``policy`` when ``t < 2``, fewer than ``t`` trusted sites can hold a share, or the site's
        policy refuses the key size or the number of recipients.
    """
    threshold, parties = int(task.threshold), len(recipients)
    if threshold < 2:
        # One share would then decrypt alone: a single-custodian key under another name.
        raise TaskRefused(
            "policy",
            f"run {task.run_id} asks for a {threshold}-of-{parties} key; this site deals "
            "threshold keys only with a threshold of at least 2",
        )
    if parties < threshold:
        raise TaskRefused(
            "policy",
            f"run {task.run_id} needs {threshold} share holders; only {parties} trusted "
            f"sites can hold one ({'; '.join(refused) or 'too few sites'})",
        )
    keys.check_enough(task.run_id, recipients, agent.config.policy, refused)
    bits = int(task.encoding.key_bits) or 2048
    check_deal_bits(agent.config.policy, bits)
    holders = sorted(recipients, key=lambda r: r.site)
    public_key, shares, verification_keys = tp.deal(
        threshold, parties, bits, primes=_primes(agent, bits), insecure_test_size=bits < 2048
    )
    bundle = keys.new_bundle(task, public_key)
    fingerprint = bundle.key_fingerprint
    group_key = AESGCM.generate_key(bit_length=256)
    for recipient, share in zip(holders, shares, strict=True):
        sealed = crypto.seal(
            recipient.x25519_public,
            custody.share_bundle(share, group_key),
            custody.share_context(task.run_id, fingerprint, recipient.site),
        )
        bundle.sealed.add(node_id=recipient.node_id, sealed_private_key=sealed)
    # The erasure: no share, prime or exponent is referenced past this line.
    del shares, share, group_key
    gc.collect()
    vk_bytes = tp.verification_keys_to_bytes(verification_keys)
    statement = custody.ThresholdStatement(
        run_id=task.run_id,
        key_fingerprint=fingerprint,
        custodian=agent.identity.site_name,
        custodian_fingerprint=agent.identity.fingerprint,
        threshold=threshold,
        parties=parties,
        holders=tuple(
            custody.Holder(i, r.site, r.fingerprint) for i, r in enumerate(holders, start=1)
        ),
        verification_keys_sha256=custody.keys_sha256(vk_bytes),
        erasure=custody.ERASURE,
    ).to_bytes()
    bundle.threshold_dealing.verification_keys = vk_bytes
    bundle.threshold_dealing.statement = statement
    bundle.threshold_dealing.signature = agent.identity.sign(statement)
    bundle.statement.CopyFrom(
        keys.deal(
            task.run_id,
            fingerprint,
            agent.identity,
            recipients,
            agent.config.policy,
            refused,
            threshold=threshold,
            privacy_sha256=keys.task_plan_digest(task),
        )
    )
    return bundle


def _primes(agent: Site, bits: int) -> list[int] | None:
    """Two safe primes from the site's idle-time pool when it has one of the right size."""
    pool = getattr(agent, "prime_pool", None)
    if pool is None or pool.bits != bits // 2:
        return None
    return pool.take(2)


def open_key(agent: Site, task: federation_pb2.Task) -> ThresholdKey:
    """Open this site's share of the run's key, once everything about it checks.

    Raises
    ------
    TaskRefused
        ``verify`` when the key statement or the threshold statement is not what a
        pinned, trusted custodian signed for this run and this site, the verification keys
        are not the ones it signed, the sealed share does not open (a coordinator that
        dropped or swapped the seal), or the share does not match its verification key;
        ``policy`` when the key is smaller than the site accepts.
    """
    run = task.run_id
    public_key = crypto.public_key_from_bytes(bytes(task.encoding.public_key))
    check_key_bits(agent.config.policy, public_key.n.bit_length())
    fingerprint = crypto.key_fingerprint(public_key)
    if fingerprint != task.encoding.key_fingerprint:
        raise TaskRefused("verify", "the run's public key does not match its fingerprint")
    dealing = keys.check_statement(
        task, fingerprint, agent.identity, agent.peers, agent.config.policy
    )
    if dealing.threshold != task.threshold:
        raise TaskRefused(
            "verify",
            f"run {run}'s key was dealt {dealing.threshold}-of-n; the task says {task.threshold}",
        )
    raw = bytes(task.threshold_dealing.statement)
    try:
        statement = custody.ThresholdStatement.from_bytes(raw)
        identity.verify(
            _custodian_key(agent, task, dealing), raw, bytes(task.threshold_dealing.signature)
        )
    except ValueError as exc:
        raise TaskRefused("verify", f"run {run}'s threshold statement: {exc}") from exc
    problems = _statement_problems(statement, dealing, fingerprint, agent.identity.fingerprint)
    vk_bytes = bytes(task.threshold_dealing.verification_keys)
    if custody.keys_sha256(vk_bytes) != statement.verification_keys_sha256:
        problems.append("its verification keys are not the ones relayed")
    if problems:
        raise TaskRefused("verify", f"run {run}'s threshold statement {'; '.join(problems)}")
    try:
        verification_keys = tp.verification_keys_from_bytes(vk_bytes)
    except ValueError as exc:
        raise TaskRefused("verify", f"run {run}'s verification keys: {exc}") from exc
    if verification_keys.n != public_key.n or (
        verification_keys.threshold,
        verification_keys.parties,
    ) != (statement.threshold, statement.parties):
        raise TaskRefused("verify", f"run {run}'s verification keys are for another key")
    if not task.sealed_private_key:
        raise TaskRefused("verify", f"no sealed key share for this site in run {run}")
    try:
        share, group_key = custody.open_share_bundle(
            crypto.open_sealed(
                agent.identity.x25519_private,
                bytes(task.sealed_private_key),
                custody.share_context(run, fingerprint, agent.identity.site_name),
            )
        )
    except ValueError as exc:
        raise TaskRefused(
            "verify", f"run {run}'s sealed key share does not open with this site's key: {exc}"
        ) from exc
    mine = statement.holder(agent.identity.site_name)
    assert mine is not None  # _statement_problems checked it
    if share.index != mine.index or not custody.share_matches(share, verification_keys):
        raise TaskRefused(
            "verify",
            f"run {run}'s key share does not match verification key {mine.index}: refusing it",
        )
    return ThresholdKey(verification_keys, share, group_key, statement)


def _custodian_key(agent: Site, task: federation_pb2.Task, dealing: identity.KeyDealing) -> bytes:
    # keys.check_statement has pinned the custodian's key to this fingerprint.
    if dealing.custodian == agent.identity.site_name:
        return agent.identity.ed25519_public
    for participant in task.participants:
        if participant.site_name == dealing.custodian:
            return bytes(participant.ed25519_public_key)
    raise ValueError(f"custodian {dealing.custodian!r} is not among the run's sites")


def _statement_problems(
    statement: custody.ThresholdStatement,
    dealing: identity.KeyDealing,
    fingerprint: str,
    my_fingerprint: str,
) -> list[str]:
    problems = []
    if (statement.run_id, statement.key_fingerprint) != (dealing.run_id, fingerprint):
        problems.append("names another run or key")
    if (statement.custodian, statement.custodian_fingerprint) != (
        dealing.custodian,
        dealing.custodian_fingerprint,
    ):
        problems.append("names another custodian")
    if statement.threshold != dealing.threshold:
        problems.append(f"says t={statement.threshold}, the key statement t={dealing.threshold}")
    holders = {h.site: h.fingerprint for h in statement.holders}
    if holders != {r.site: r.fingerprint for r in dealing.recipients}:
        problems.append("names other share holders than the key statement")
    mine = [h for h in statement.holders if h.fingerprint == my_fingerprint]
    if len(mine) != 1 or statement.holder(mine[0].site) != mine[0]:
        problems.append("does not name this site once as a share holder")
    return problems
