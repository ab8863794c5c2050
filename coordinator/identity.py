"""Site identities at the coordinator: checked at join, fixed per run, relayed, never trusted.

The coordinator stores each node's Ed25519 identity and the signature binding its X25519
sealing key, relays both to the sites of a secure run, and checks the custodian's signed
key statement before storing it. None of this makes the coordinator trusted: sites check
every identity against the fingerprints they pinned themselves. These checks exist so that
an honest coordinator refuses what peers would refuse anyway, and says why, early.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.errors import InvalidArgument, PermissionDenied
from coordinator.privacy import plan_to_proto
from coordinator.queries import site_name as site_name  # coordinator/threshold.py
from coordinator.schema import AuditEvent, Node, Run
from crypto import identity
from protos import federation_pb2, serde
from protos.serde import SchemeName


def check_join_identity(
    name: str, ed25519_public: bytes, x25519_public: bytes, x25519_signature: bytes
) -> None:
    """Refuse a malformed identity, or a sealing key its identity did not sign.

    A join without an Ed25519 key is accepted (plaintext runs need none), but such a node
    is never a participant of a secure run.

    Raises
    ------
    InvalidArgument
        When the key is not 32 bytes, or the X25519 key is unsigned or wrongly signed.
    """
    if not ed25519_public:
        if x25519_signature:
            raise InvalidArgument("x25519_signature needs the ed25519_public_key that made it")
        return
    if len(ed25519_public) != identity.ED25519_KEY_BYTES:
        raise InvalidArgument("ed25519_public_key must be 32 raw bytes")
    if not x25519_public:
        return
    try:
        identity.verify(
            ed25519_public, identity.x25519_binding(name, x25519_public), x25519_signature
        )
    except ValueError as exc:
        raise InvalidArgument(
            f"x25519_signature does not bind this X25519 key to site {name!r}: {exc}"
        ) from exc


def check_rejoin_identity(node: Node, ed25519_public: bytes) -> None:
    """A node keeps its identity for life: a rejoin under another key is refused.

    Raises
    ------
    PermissionDenied
        When the node has an identity and the rejoin presents none or another one.
    """
    if node.ed25519_public_key and bytes(node.ed25519_public_key) != ed25519_public:
        raise PermissionDenied(
            "this node's Ed25519 identity cannot change on rejoin: a new identity needs a "
            "fresh enrolment (`cohort admin sites enrol`), and every peer must pin it again"
        )


def identity_details(ed25519_public: bytes, x25519_public: bytes) -> dict[str, str]:
    """What the audit log records of a node's keys: fingerprints, never the keys' uses."""
    return {
        "ed25519_fingerprint": identity.fingerprint(ed25519_public) if ed25519_public else "",
        "x25519_sha256": hashlib.sha256(x25519_public).hexdigest() if x25519_public else "",
    }


def has_identity(node: Node) -> bool:
    """Whether the node can take part in a secure run: identity, sealing key, and binding."""
    return bool(node.ed25519_public_key and node.x25519_public_key and node.x25519_signature)


def choose_participants(session: Session, run: Run, online: Iterable[Node]) -> list[Node]:
    """The sites of a secure run: one node per site name, each with a bound identity.

    ``run.config["sites"]`` (a list of site names), where given, limits the run to those
    sites. Of two online nodes of one site, the most recently seen stands for it.
    """
    wanted = run.config.get("sites")
    names = {str(n) for n in wanted} if isinstance(wanted, list) else None
    by_site: dict[str, Node] = {}
    for node in online:
        if not has_identity(node):
            continue
        name = site_name(session, node)
        if names is not None and name not in names:
            continue
        if name not in by_site or node.last_seen > by_site[name].last_seen:
            by_site[name] = node
    return sorted(by_site.values(), key=lambda n: n.id)


def participant_nodes(session: Session, run: Run) -> list[Node]:
    """The run's fixed participants, in the order they were chosen."""
    nodes = {n.id: n for n in session.scalars(select(Node).where(Node.id.in_(run.participants)))}
    return [nodes[i] for i in run.participants if i in nodes]


def add_participants(session: Session, run: Run, message: federation_pb2.Task) -> None:
    """Every task of a secure run names its sites with their identities, for sites to pin."""
    for node in participant_nodes(session, run):
        message.participants.add(
            node_id=node.id,
            site_name=site_name(session, node),
            x25519_public_key=node.x25519_public_key,
            ed25519_public_key=node.ed25519_public_key,
            x25519_signature=node.x25519_signature,
        )


def check_key_statement(
    session: Session,
    run: Run,
    custodian: Node,
    statement: federation_pb2.KeyStatement,
    key_fingerprint: str,
    sealed_for: Iterable[str],
) -> identity.KeyDealing:
    """Check the custodian's statement of what it dealt before the coordinator stores it.

    The statement must be canonical, signed by the submitting node's identity, name this
    run, this key and the custodian as itself, and list as recipients exactly the sites
    the keys were sealed for, each a participant of the run under its registered identity.

    Raises
    ------
    InvalidArgument
        Naming the first thing that does not hold.
    """
    if not custodian.ed25519_public_key:
        raise InvalidArgument("the custodian has no Ed25519 identity: it cannot sign the key")
    raw = bytes(statement.statement)
    try:
        dealing = identity.KeyDealing.from_bytes(raw)
        identity.verify(bytes(custodian.ed25519_public_key), raw, bytes(statement.signature))
    except ValueError as exc:
        raise InvalidArgument(f"key statement refused: {exc}") from exc
    name = site_name(session, custodian)
    expected = {
        "run_id": run.id,
        "scheme": SchemeName.PAILLIER.value,
        "key_fingerprint": key_fingerprint,
        "custodian": name,
        "custodian_fingerprint": identity.fingerprint(bytes(custodian.ed25519_public_key)),
        # The run's DP plan: every holder checks the same one before it opens its key.
        "privacy_sha256": serde.plan_digest(plan_to_proto(run.config)),
    }
    for field_name, want in expected.items():
        if getattr(dealing, field_name) != want:
            raise InvalidArgument(
                f"key statement names {field_name} {getattr(dealing, field_name)!r}, not {want!r}"
            )
    if statement.custodian and statement.custodian != name:
        raise InvalidArgument(f"key statement is labelled {statement.custodian!r}, not {name!r}")
    participants = {n.id: n for n in participant_nodes(session, run)}
    sealed_sites: dict[str, str] = {}
    for node_id in sealed_for:
        node = participants.get(node_id)
        if node is None:
            raise InvalidArgument(f"sealed key for node {node_id!r}, not a participant of the run")
        sealed_sites[site_name(session, node)] = identity.fingerprint(
            bytes(node.ed25519_public_key)
        )
    listed = {r.site: r.fingerprint for r in dealing.recipients}
    if len(listed) != len(dealing.recipients):
        raise InvalidArgument("key statement lists a recipient twice")
    if listed != sealed_sites:
        raise InvalidArgument(
            "key statement's recipients differ from the participants the key was sealed for"
        )
    return dealing


def logged_fingerprints(session: Session, node_ids: list[str]) -> dict[str, str]:
    """Each node's Ed25519 fingerprint as its last join or key change in the audit log says.

    What a statement a site signed is checked against, rather than the node row: a key
    written into a row without a ``site.key_changed`` row is an edit, not the site's.
    """
    rows = session.execute(
        select(AuditEvent.actor, AuditEvent.details)
        .where(
            AuditEvent.actor.in_(node_ids),
            AuditEvent.kind.in_(("site.joined", "site.key_changed")),
        )
        .order_by(AuditEvent.seq)
    )
    out: dict[str, str] = {}
    for actor, details in rows:
        try:
            fingerprint = json.loads(details).get("ed25519_fingerprint", "")
        except (ValueError, AttributeError):
            continue
        if fingerprint:
            out[actor] = str(fingerprint)
    return out
