"""Run keys at a site: whom the custodian seals to, and which key statements a site accepts.

The coordinator relays each participant's identity (Ed25519), its sealing key (X25519) and
the identity's signature binding the two. The custodian seals the run's Paillier private
key only to participants whose identity this site pinned and whose sealing key that
identity signed, then signs a :class:`crypto.identity.KeyDealing` naming the run, the
key's fingerprint and the recipients. A site opens a run key only when that statement is
signed by a pinned custodian it trusts and names this site under its own fingerprint: a
coordinator that invents a participant, swaps a sealing key or deals its own key is
refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from phe import PaillierPublicKey

import crypto
from client.custody import SiteIdentity
from client.peers import PeerStore, UntrustedPeer
from client.policy import SitePolicy, TaskRefused
from crypto import identity
from protos import federation_pb2, serde

log = logging.getLogger(__name__)

SCHEME = "paillier"


@dataclass(frozen=True)
class Recipient:
    """A participant the custodian will seal to: checked, with the key to seal for."""

    node_id: str
    site: str
    fingerprint: str
    x25519_public: bytes


def trusted_recipients(
    participants: Sequence[federation_pb2.Participant],
    me: SiteIdentity,
    peers: PeerStore,
) -> tuple[list[Recipient], list[str]]:
    """Split the task's participants into those to seal to and the reasons others were not.

    This site itself is a recipient under its own keys, whatever the coordinator relayed
    for its name. Any other site needs a pinned identity and a sealing key that identity
    signed for that site name. A site named twice is refused both times: the coordinator
    must not decide which of two identities stands for a site.
    """
    names = [p.site_name for p in participants]
    chosen: list[Recipient] = []
    refused: list[str] = []
    for participant in participants:
        site = participant.site_name
        if names.count(site) > 1:
            refused.append(f"{site}: named more than once")
            continue
        ed25519 = bytes(participant.ed25519_public_key)
        x25519 = bytes(participant.x25519_public_key)
        if site == me.site_name:
            if ed25519 != me.ed25519_public or x25519 != me.x25519_public:
                refused.append(f"{site}: relayed keys are not this site's own")
                continue
            chosen.append(Recipient(participant.node_id, site, me.fingerprint, me.x25519_public))
            continue
        try:
            fingerprint = peers.check(site, ed25519)
            identity.verify(
                ed25519,
                identity.x25519_binding(site, x25519),
                bytes(participant.x25519_signature),
            )
        except UntrustedPeer as exc:
            refused.append(str(exc))
            continue
        except ValueError as exc:
            refused.append(f"{site}: its sealing key is not signed by its identity ({exc})")
            continue
        chosen.append(Recipient(participant.node_id, site, fingerprint, x25519))
    return chosen, refused


def check_enough(
    run_id: str, recipients: Sequence[Recipient], policy: SitePolicy, refused: Sequence[str]
) -> None:
    """Refuse to deal a key to fewer sites than this site's policy asks for.

    Raises
    ------
    TaskRefused
        ``policy`` when fewer than ``policy.min_aggregate_sites`` sites can be sealed to:
        a run key shared with fewer sites lets each aggregate reveal one site's update.
    """
    if len(recipients) < policy.min_aggregate_sites:
        detail = "; ".join(refused) if refused else "the run names too few sites"
        raise TaskRefused(
            "policy",
            f"only {len(recipients)} trusted sites to seal run {run_id}'s key to; this site's "
            f"policy needs {policy.min_aggregate_sites} ({detail})",
        )


def new_bundle(
    task: federation_pb2.Task, public_key: PaillierPublicKey
) -> federation_pb2.KeyBundle:
    """The KeyBundle a dealer starts from: the run's new public key, its fingerprint and size.

    Serves the single-key dealer (client/run_keys.py) and the t-of-n dealer
    (client/threshold.py), which then add their seals and statements.
    """
    return federation_pb2.KeyBundle(
        task_id=task.task_id,
        run_id=task.run_id,
        public_key=crypto.public_key_to_bytes(public_key),
        key_fingerprint=crypto.key_fingerprint(public_key),
        key_bits=public_key.n.bit_length(),
    )


def deal(
    run_id: str,
    key_fingerprint: str,
    me: SiteIdentity,
    recipients: Sequence[Recipient],
    policy: SitePolicy,
    refused: Sequence[str],
    *,
    threshold: int = 0,
    privacy_sha256: str = "",
) -> federation_pb2.KeyStatement:
    """The custodian's signed statement of what it dealt (see :func:`check_enough`).

    ``threshold``: t for a t-of-n key (recipients then hold shares), 0 for a whole key.
    ``privacy_sha256``: the run's DP plan as the custodian's task states it
    (protos.serde.plan_digest), which every holder checks against its own task's.
    """
    check_enough(run_id, recipients, policy, refused)
    dealing = identity.KeyDealing(
        run_id=run_id,
        scheme=SCHEME,
        key_fingerprint=key_fingerprint,
        custodian=me.site_name,
        custodian_fingerprint=me.fingerprint,
        recipients=tuple(identity.Recipient(r.site, r.fingerprint) for r in recipients),
        threshold=threshold,
        privacy_sha256=privacy_sha256,
    )
    raw = dealing.to_bytes()
    return federation_pb2.KeyStatement(
        statement=raw, signature=me.sign(raw), custodian=me.site_name
    )


def task_plan_digest(task: federation_pb2.Task) -> str:
    """The digest of the DP plan ``task`` carries ("" for none), as key statements bind it."""
    return serde.plan_digest(task.privacy if task.HasField("privacy") else None)


def check_statement(
    task: federation_pb2.Task,
    key_fingerprint: str,
    me: SiteIdentity,
    peers: PeerStore,
    policy: SitePolicy,
) -> identity.KeyDealing:
    """Accept a run key only as a trusted custodian dealt it to this site.

    Raises
    ------
    TaskRefused
        ``verify`` when the statement is missing, malformed, unsigned or signed by another
        key than the custodian's pinned identity, names another run or key, or does not
        name this site under its own fingerprint; ``policy`` when the custodian is not one
        this site trusts.
    """
    raw = bytes(task.key_statement.statement)
    if not raw:
        raise TaskRefused("verify", f"run {task.run_id}'s key comes without a signed statement")
    try:
        dealing = identity.KeyDealing.from_bytes(raw)
    except ValueError as exc:
        raise TaskRefused("verify", f"run {task.run_id}'s key statement: {exc}") from exc
    custodian = dealing.custodian
    if policy.trusted_custodians and custodian not in policy.trusted_custodians:
        raise TaskRefused(
            "policy",
            f"run {task.run_id}'s key was dealt by {custodian!r}, not a custodian this site "
            f"trusts ({', '.join(policy.trusted_custodians)})",
        )
    if custodian == me.site_name:
        custodian_key = me.ed25519_public
    else:
        relayed = [p for p in task.participants if p.site_name == custodian]
        if len(relayed) != 1:
            raise TaskRefused(
                "verify", f"custodian {custodian!r} is not named once among the run's sites"
            )
        custodian_key = bytes(relayed[0].ed25519_public_key)
        try:
            # Pinned by a person (or first-seen under TOFU): never taken from the task alone.
            peers.check(custodian, custodian_key)
        except UntrustedPeer as exc:
            raise TaskRefused("verify", f"run {task.run_id}'s key custodian: {exc}") from exc
    try:
        identity.verify(custodian_key, raw, bytes(task.key_statement.signature))
    except ValueError as exc:
        raise TaskRefused(
            "verify", f"run {task.run_id}'s key statement is not signed by {custodian!r}: {exc}"
        ) from exc
    problems = []
    if dealing.custodian_fingerprint != identity.fingerprint(custodian_key):
        problems.append("names another custodian fingerprint")
    if dealing.run_id != task.run_id:
        problems.append(f"is for run {dealing.run_id!r}")
    if dealing.scheme != SCHEME:
        problems.append(f"is for scheme {dealing.scheme!r}")
    if dealing.key_fingerprint != key_fingerprint:
        problems.append(f"names key {dealing.key_fingerprint}, not {key_fingerprint}")
    if dealing.privacy_sha256 != task_plan_digest(task):
        problems.append("binds another differential-privacy plan than this task's")
    mine = dealing.recipient(me.site_name)
    if mine is None:
        problems.append(f"does not name {me.site_name}")
    elif mine.fingerprint != me.fingerprint:
        problems.append(f"names {me.site_name} with another identity ({mine.fingerprint})")
    if problems:
        raise TaskRefused(
            "verify", f"run {task.run_id}'s key statement {'; '.join(problems)}: refusing the key"
        )
    return dealing
