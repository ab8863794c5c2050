"""Site identity at the coordinator: joining, rejoining under a fixed identity, tokens."""

from __future__ import annotations

import secrets
import time
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator import auditlog, identity
from coordinator.access import AccessControl, hash_token, node_credential_problem
from coordinator.errors import (
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from coordinator.hub import Hub
from coordinator.queries import site_name
from coordinator.schema import (
    Institution,
    Node,
)
from crypto import identity as crypto_identity
from protos import federation_pb2, wire


def node_for_token(session: Session, token: str) -> Node:
    """The node a bearer token names, or UNAUTHENTICATED (unknown, expired or revoked)."""
    node = session.scalar(select(Node).where(Node.token_hash == hash_token(token)))
    if node is None:
        raise Unauthenticated("unknown node token: join the federation first")
    problem = node_credential_problem(node, time.time())
    if problem is not None:
        raise Unauthenticated(f"{problem}: ask the operator for `cohort admin sites enrol`")
    return node


class SiteRegistry:
    """Who the sites are: Join, bearer-token authentication and heartbeats."""

    def __init__(self, hub: Hub, access: AccessControl) -> None:
        self.hub = hub
        self.access = access
        self._last_refusal_logged = 0.0

    def join(self, request: federation_pb2.JoinRequest) -> federation_pb2.JoinReply:
        """Enrol a site (enrolment token) or re-join a node (node token) and return its token.

        A re-join under another identity key, or under another site's name, is refused; a new
        node enrolling under a known site with a different identity is audited as a key change.
        """
        name = request.site_name.strip()
        if not wire.SITE_NAME.match(name):
            raise InvalidArgument(
                "site name must be 1-128 letters, digits, '.', '_' or '-', starting with a "
                f"letter or digit; got {request.site_name!r}"
            )
        if len(request.agent_version) > 64 or "\x00" in request.agent_version:
            raise InvalidArgument("agent_version must be at most 64 characters")
        key = bytes(request.x25519_public_key)
        if key and len(key) != 32:
            raise InvalidArgument("x25519_public_key must be 32 raw bytes")
        ed25519 = bytes(request.ed25519_public_key)
        signature = bytes(request.x25519_signature)
        identity.check_join_identity(name, ed25519, key, signature)
        if request.node_token:
            self._check_rejoin(request.node_token, name, ed25519, key)
        with self.hub.lock, self.hub.db.transaction() as session:
            if request.node_token:
                node = node_for_token(session, request.node_token)
                if site_name(session, node) != name:
                    raise PermissionDenied("that node token belongs to another site")
                self._rejoin_keys(session, node, name, ed25519, key, signature)
                node.capabilities = dict(request.capabilities) or node.capabilities
                node.last_seen = time.time()
                auditlog.append(session, "site.rejoined", actor=node.id, details={"site": name})
                return self._join_reply(node.id, request.node_token)
            self.access.redeem(name, request.enrolment_token)
            institution = session.scalar(select(Institution).where(Institution.name == name))
            if institution is None:
                institution = Institution(name=name)
                session.add(institution)
                session.flush()
            # Identities this site's other nodes hold: a new one is a key change peers must
            # approve by pinning it again; until then they refuse it.
            known = {
                bytes(n.ed25519_public_key)
                for n in session.scalars(select(Node).where(Node.institution_id == institution.id))
                if n.ed25519_public_key
            }
            token = secrets.token_urlsafe(32)
            node = Node(
                id=str(uuid.uuid4()),
                institution_id=institution.id,
                token_hash=hash_token(token),
                x25519_public_key=key,
                ed25519_public_key=ed25519,
                x25519_signature=signature,
                agent_version=request.agent_version,
                capabilities=dict(request.capabilities),
            )
            session.add(node)
            session.flush()
            auditlog.append(
                session,
                "site.joined",
                actor=node.id,
                details={"site": name} | identity.identity_details(ed25519, key),
            )
            if known and ed25519 not in known:
                details: dict[str, object] = {
                    "site": name,
                    "reason": "a new node enrolled under this site with another identity",
                    "previous": sorted(crypto_identity.fingerprint(k) for k in known),
                }
                details.update(identity.identity_details(ed25519, key))
                auditlog.append(session, "site.key_changed", actor=node.id, details=details)
        self.hub.notify()
        return self._join_reply(node.id, token)

    def _check_rejoin(self, token: str, name: str, ed25519: bytes, key: bytes) -> None:
        """Refuse (and audit) a rejoin that presents another identity than the node's."""
        refusal: PermissionDenied | None = None
        with self.hub.lock, self.hub.db.transaction() as session:
            node = session.scalar(select(Node).where(Node.token_hash == hash_token(token)))
            if node is None:
                return  # the main transaction answers UNAUTHENTICATED
            try:
                identity.check_rejoin_identity(node, ed25519)
            except PermissionDenied as exc:
                refusal = exc
                # Written in its own transaction, so that the row outlives the refused call.
                auditlog.append(
                    session,
                    "site.identity_refused",
                    actor=node.id,
                    details={"site": name, "reason": str(exc)}
                    | identity.identity_details(ed25519, key),
                )
        if refusal is not None:
            raise refusal

    @staticmethod
    def _rejoin_keys(
        session: Session, node: Node, name: str, ed25519: bytes, key: bytes, signature: bytes
    ) -> None:
        """A rejoin keeps the node's identity; its sealing key changes only signed by it."""
        identity.check_rejoin_identity(node, ed25519)  # again, under the lock
        if not node.ed25519_public_key and ed25519:
            # A node that joined before identities existed registers its first one.
            node.ed25519_public_key = ed25519
            node.x25519_signature = signature if key else b""
            auditlog.append(
                session,
                "site.key_changed",
                actor=node.id,
                details={"site": name, "reason": "first identity registered"}
                | identity.identity_details(ed25519, key),
            )
        if key and key != bytes(node.x25519_public_key):
            if not node.ed25519_public_key:
                # Unsigned sealing keys change as before: such a node never joins a secure run.
                node.x25519_public_key = key
            else:
                # check_join_identity verified the signature against this same identity.
                node.x25519_public_key = key
                node.x25519_signature = signature
                auditlog.append(
                    session,
                    "site.key_changed",
                    actor=node.id,
                    details={"site": name, "reason": "new sealing key signed by the identity"}
                    | identity.identity_details(ed25519, key),
                )
        elif key and signature and bytes(node.x25519_signature) != signature:
            node.x25519_signature = signature

    def _join_reply(self, node_id: str, token: str) -> federation_pb2.JoinReply:
        return federation_pb2.JoinReply(
            node_id=node_id,
            node_token=token,
            heartbeat_interval_seconds=self.hub.limits.heartbeat_interval_seconds,
        )

    def authenticate(self, token: str | None) -> str:
        """Return the node id for a bearer token and mark the node as seen.

        A token found good is served from ``hub.credentials`` until any node row changes
        (hub.Credentials): a revoked node is refused from its next call, as before.
        """
        try:
            if not token:
                raise Unauthenticated("missing node token: send 'authorization: Bearer <token>'")
            digest = hash_token(token)
            now = time.time()
            held = self.hub.credentials.lookup(digest, now)
            if held is not None:
                node_id, last_seen = held.node_id, held.noted
            else:
                epoch = self.hub.credentials.mark()
                with self.hub.db.transaction() as session:
                    node = node_for_token(session, token)
                    node_id, last_seen = node.id, node.last_seen
                    self.hub.credentials.remember(epoch, digest, node, now)
                held = self.hub.credentials.lookup(digest, now)
            # Now and then, in one batched write for all sites (hub.Presence): a commit
            # per RPC was most of the coordinator's commits (issue 14).
            if now - last_seen > min(5.0, self.hub.limits.offline_after_seconds / 4):
                idle = self.hub.limits.node_token_idle_seconds
                # Sliding expiry: a token in use stays good; an abandoned one lapses.
                self.hub.presence.seen(node_id, now, now + idle if idle else 0.0)
                if held is not None:
                    held.noted = now
            self.hub.presence.flush(self.hub.db)
            return node_id
        except Unauthenticated as exc:
            # Logged at most once a second: a client without a token must not be able to
            # hold the coordinator's lock or grow the audit log at will.
            now = time.monotonic()
            if now - self._last_refusal_logged >= 1.0:
                self._last_refusal_logged = now
                with self.hub.lock, self.hub.db.transaction() as session:
                    auditlog.append(
                        session,
                        "auth.unauthenticated",
                        details={"service": "federation", "reason": str(exc)},
                    )
            raise

    def heartbeat(self, node_id: str) -> federation_pb2.HeartbeatReply:
        """Answer a node's heartbeat with the coordinator's clock."""
        return federation_pb2.HeartbeatReply(server_time_unix=time.time())
