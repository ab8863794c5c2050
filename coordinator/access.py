"""Who may call what: operator roles for the admin service, enrolment tokens for sites."""

from __future__ import annotations

import hashlib
import secrets
import time

from sqlalchemy import select

from coordinator import auditlog
from coordinator.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from coordinator.hub import Hub
from coordinator.queries import cancel_live_tasks
from coordinator.schema import Enrolment, Institution, Node, Operator, Task

ROLES = ("admin", "auditor")
READ_ONLY = frozenset(
    {
        "ListRuns",
        "GetRun",
        "WatchRun",
        "ListNodes",
        "GetAuditLog",
        "ExportReport",
        "GetMetrics",
        "DashboardWhoAmI",
    }
)
# The one table of permissions: admins may do everything, auditors only read.
PERMISSIONS: dict[str, frozenset[str] | None] = {"admin": None, "auditor": READ_ONLY}


def hash_token(token: str) -> str:
    """sha256 of a token: only the hash is stored, so a database leak reveals no token."""
    return hashlib.sha256(token.encode()).hexdigest()


REVOKED = "this node's credentials were revoked by the operator"


def node_credential_problem(node: Node, now: float) -> str | None:
    """Why a node's token may not be used any more, or None while it is good."""
    if node.revoked_at:
        return REVOKED
    if node.token_expires_at and now > node.token_expires_at:
        return "this node's token expired (unused too long)"
    return None


def operator_credential_problem(operator: Operator, now: float) -> str | None:
    """Why an operator's token may not be used any more, or None while it is good."""
    if operator.revoked_at:
        return "that operator token was revoked"
    if operator.expires_at and now > operator.expires_at:
        return "that operator token has expired"
    return None


class AccessControl:
    """Checks operator tokens and roles and site enrolment tokens; logs every refusal.

    With ``enabled=False`` (the demo, loopback tests) every admin call is allowed as the
    "operator" actor and sites join without enrolment.
    """

    def __init__(self, hub: Hub, enabled: bool) -> None:
        self.hub = hub
        self.enabled = enabled
        self.throttle = auditlog.RowThrottle(interval=1.0)

    def _operator_expiry(self) -> float:
        ttl = self.hub.limits.operator_token_seconds
        return time.time() + ttl if ttl else 0.0

    def bootstrap_admin(self, token: str, name: str = "admin") -> None:
        """Register the first admin from ``cohort admin init``'s token (idempotent).

        The init token lives beside the coordinator's TLS key, whose holder already owns
        the coordinator; so while it is not revoked, each start renews it when less than
        half its lifetime is left, rather than let the federation lock itself out.
        """
        with self.hub.lock, self.hub.db.transaction() as session:
            digest = hash_token(token)
            existing = session.scalar(select(Operator).where(Operator.token_hash == digest))
            if existing is not None:
                ttl = self.hub.limits.operator_token_seconds
                left = existing.expires_at - time.time()
                if not existing.revoked_at and existing.expires_at and left < ttl / 2:
                    existing.expires_at = self._operator_expiry()
                    auditlog.append(
                        session,
                        "operator.renewed",
                        actor="init",
                        details={"name": existing.name, "expires": existing.expires_at},
                    )
                return
            if session.scalar(select(Operator).where(Operator.name == name)):
                return
            session.add(
                Operator(
                    name=name, role="admin", token_hash=digest, expires_at=self._operator_expiry()
                )
            )
            auditlog.append(
                session, "operator.added", actor="init", details={"name": name, "role": "admin"}
            )

    def authorise(self, token: str | None, rpc: str) -> str:
        """The operator's name for ``rpc``; UNAUTHENTICATED or PERMISSION_DENIED otherwise."""
        if not self.enabled:
            return "operator"
        with self.hub.db.transaction() as session:
            operator = (
                session.scalar(select(Operator).where(Operator.token_hash == hash_token(token)))
                if token
                else None
            )
            name, role = (operator.name, operator.role) if operator else ("", "")
            problem = operator_credential_problem(operator, time.time()) if operator else None
        if operator is None:
            self._refuse("auth.unauthenticated", "", rpc, "missing or unknown operator token")
            raise Unauthenticated(
                "missing or unknown operator token: pass --token-file "
                "(from `cohort admin init` or `cohort admin operators add`)"
            )
        if problem is not None:
            self._refuse("auth.unauthenticated", name, rpc, problem)
            raise Unauthenticated(f"{problem}: ask an admin for `cohort admin operators add`")
        allowed = PERMISSIONS.get(role)
        if allowed is not None and rpc not in allowed:
            self._refuse("auth.denied", name, rpc, f"role {role} may not call {rpc}")
            raise PermissionDenied(f"operator {name} ({role}) may not call {rpc}")
        return name

    def role_of(self, token: str | None) -> str:
        """The role of an operator token already authorised (admin when auth is off)."""
        if not self.enabled:
            return "admin"
        with self.hub.db.transaction() as session:
            role = session.scalar(
                select(Operator.role).where(Operator.token_hash == hash_token(token or ""))
            )
        return str(role or "")

    def add_operator(self, name: str, role: str, actor: str) -> str:
        """Create an operator with ``role`` and return its token (shown once, stored hashed)."""
        if role not in ROLES:
            raise InvalidArgument(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if not name.strip() or len(name) > 128 or "\x00" in name:
            raise InvalidArgument("operator name must be 1-128 characters")
        token = secrets.token_urlsafe(32)
        with self.hub.lock, self.hub.db.transaction() as session:
            if session.scalar(select(Operator).where(Operator.name == name)):
                raise InvalidArgument(f"operator {name!r} exists already")
            session.add(
                Operator(
                    name=name,
                    role=role,
                    token_hash=hash_token(token),
                    expires_at=self._operator_expiry(),
                )
            )
            auditlog.append(
                session, "operator.added", actor=actor, details={"name": name, "role": role}
            )
        return token

    def enrol_site(self, site_name: str, ttl_seconds: float, actor: str) -> tuple[str, float]:
        """A one-time token for ``site_name``, stored only as its sha256, expiring."""
        from protos.wire import SITE_NAME

        if not SITE_NAME.fullmatch(site_name):
            raise InvalidArgument(f"{site_name!r} is not a site name Join would accept")
        if not 60 <= ttl_seconds <= 30 * 86400:
            raise InvalidArgument("enrolment tokens live between 60 s and 30 days")
        token = secrets.token_urlsafe(32)
        expires = time.time() + ttl_seconds
        with self.hub.lock, self.hub.db.transaction() as session:
            session.add(
                Enrolment(
                    site_name=site_name,
                    token_hash=hash_token(token),
                    expires_at=expires,
                    created_by=actor,
                )
            )
            auditlog.append(
                session,
                "site.enrolled",
                actor=actor,
                details={"site": site_name, "expires": expires},
            )
        return token, expires

    def redeem(self, site_name: str, token: str) -> None:
        """Spend a site's enrolment token at its first join (in the caller's lock)."""
        if not self.enabled:
            return
        now = time.time()
        with self.hub.db.transaction() as session:
            enrolment = (
                session.scalar(select(Enrolment).where(Enrolment.token_hash == hash_token(token)))
                if token
                else None
            )
            problem = None
            if enrolment is None:
                problem = "missing or unknown enrolment token"
            elif enrolment.site_name != site_name:
                problem = "that enrolment token is for another site"
            elif enrolment.used_at:
                problem = "that enrolment token was used already"
            elif enrolment.expires_at < now:
                problem = "that enrolment token has expired"
            if problem is None and enrolment is not None:
                enrolment.used_at = now
                return
        self._refuse("auth.unauthenticated", site_name, "Join", problem or "")
        raise Unauthenticated(
            f"{problem}: ask the operator for `cohort admin sites enrol {site_name}`"
        )

    def revoke_site(self, site_name: str, reason: str, actor: str) -> int:
        """Revoke every node credential of ``site_name`` and its unused enrolments.

        The site's agents are refused (UNAUTHENTICATED) from their next call; it comes back
        only through a fresh `cohort admin sites enrol`. Returns the nodes revoked.
        """
        if len(reason) > 500:
            raise InvalidArgument("the reason must be at most 500 characters")
        now = time.time()
        with self.hub.lock, self.hub.db.transaction() as session:
            institution = session.scalar(
                select(Institution).where(Institution.name == site_name[:128])
            )
            pending = list(
                session.scalars(
                    select(Enrolment).where(
                        Enrolment.site_name == site_name[:128], Enrolment.used_at == 0.0
                    )
                )
            )
            if institution is None and not pending:
                raise NotFound(f"no site {site_name[:128]!r}: `cohort admin sites list` shows them")
            nodes = (
                list(
                    session.scalars(
                        select(Node).where(
                            Node.institution_id == institution.id, Node.revoked_at == 0.0
                        )
                    )
                )
                if institution is not None
                else []
            )
            for node in nodes:
                node.revoked_at = now
            revoked = {node.id for node in nodes}
            # Its live tasks end now (a round stops waiting for it), and the scheduler sums
            # no update of a revoked node, even one accepted before (coordinator/scheduler.py).
            cancelled = cancel_live_tasks(session, Task.node_id.in_(sorted(revoked)))
            for enrolment in pending:
                enrolment.used_at = now  # spent: it can no longer enrol anything
            auditlog.append(
                session,
                "site.revoked",
                actor=actor,
                details={
                    "site": site_name,
                    "nodes": sorted(n.id for n in nodes),
                    "enrolments_voided": len(pending),
                    "tasks_cancelled": cancelled,
                    "reason": reason,
                },
            )
        # Its parked long polls wake now and are refused, not left to run out (cancelled
        # tasks move no poll: coordinator/task_watch.py), its threshold polls too.
        self.hub.tasks.bump(revoked)
        self.hub.relays.wake_all()
        return len(nodes)

    def revoke_operator(self, name: str, reason: str, actor: str) -> int:
        """Revoke an operator's token at once; their next call is UNAUTHENTICATED."""
        if len(reason) > 500:
            raise InvalidArgument("the reason must be at most 500 characters")
        with self.hub.lock, self.hub.db.transaction() as session:
            operator = session.scalar(select(Operator).where(Operator.name == name[:128]))
            if operator is None:
                raise NotFound(f"no operator {name[:128]!r}")
            if operator.revoked_at:
                return 0
            operator.revoked_at = time.time()
            auditlog.append(
                session,
                "operator.revoked",
                actor=actor,
                details={"name": name, "role": operator.role, "reason": reason},
            )
        return 1

    def _refuse(self, kind: str, actor: str, rpc: str, reason: str) -> None:
        """Log a refusal, at most one row a second per (kind, actor): see RowThrottle."""
        held = self.throttle.admit(kind, actor)
        if held is None:
            return
        details: dict[str, object] = {"rpc": rpc, "reason": reason}
        if held:
            details["similar_rows_held_back"] = held
        with self.hub.lock, self.hub.db.transaction() as session:
            auditlog.append(session, kind, actor=actor, details=details)
