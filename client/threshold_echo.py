"""Echoes before partials: a share holder releases partials of one aggregate per round only.

A coordinator that is breached could show two groups of ``t`` holders two different
aggregates of one round, each validly signed by enough sites but summing different
subsets; decrypting both would reveal the difference, one site's update. So before a
holder publishes any partial of a round it signs an echo (run, round, aggregate sha256,
manifest sha256, :class:`crypto.threshold_custody.EchoStatement`), publishes it through
the coordinator, and waits until holders of the run, as the custodian's signed statement
names and the site's pins identify them, have signed echoes of the same aggregate in a
quorum of :func:`crypto.threshold_custody.echo_quorum` (Bracha 1987; Cachin, Guerraoui &
Rodrigues 2011, §3.10, authenticated echo broadcast). Two different aggregates of a
round cannot both gather one, so a signed echo of another aggregate does not stop a site
whose own aggregate gathers its quorum: it is reported, naming its signer (it signed
another aggregate, or the coordinator showed it one), and the round goes on. Refusing at
the first such echo would hand any one holder a veto over every round. The site refuses
when those echoes leave too few holders for its quorum, or at the deadline, naming who
echoed what. Only holders this site pins (``cohort client peers``) count.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import grpc

from client.policy import TaskRefused
from crypto import identity
from crypto import threshold_custody as custody
from protos import federation_pb2

if TYPE_CHECKING:
    from client.site import Site
    from client.threshold import ThresholdKey

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0
"""Longest single wait for echoes at the coordinator (it answers as soon as one arrives)."""


def manifest_of(task: federation_pb2.Task, round_number: int, aggregate_sha256: str) -> str:
    """The manifest digest of the task's aggregate of ``round_number`` (already checked).

    Raises
    ------
    TaskRefused
        ``verify`` when the task carries no such aggregate.
    """
    for aggregate in task.aggregates:
        if int(aggregate.round) == round_number and aggregate.sha256 == aggregate_sha256:
            return custody.aggregate_manifest_sha256(aggregate)
    raise TaskRefused("verify", f"the task carries no aggregate {aggregate_sha256[:16]}")


def echo(
    agent: Site, task: federation_pb2.Task, round_number: int, aggregate_sha256: str
) -> custody.EchoStatement:
    """Sign and publish this site's echo of the round's aggregate; returns it.

    An echo already published stands (the coordinator answers ALREADY_EXISTS): the site's
    aggregate pin allows one aggregate per round, so it is the same one.
    """
    statement = custody.EchoStatement(
        run_id=task.run_id,
        round=round_number,
        site=agent.identity.site_name,
        aggregate_sha256=aggregate_sha256,
        manifest_sha256=manifest_of(task, round_number, aggregate_sha256),
    )
    raw = statement.to_bytes()
    try:
        agent.stub.SubmitEcho(
            federation_pb2.EchoSubmission(
                run_id=task.run_id,
                round=round_number,
                statement=raw,
                signature=agent.identity.sign(raw),
            ),
            metadata=agent._metadata(),
            timeout=60,
        )
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    return statement


def await_quorum(
    agent: Site,
    task: federation_pb2.Task,
    key: ThresholdKey,
    mine: custody.EchoStatement,
    deadline: float,
) -> None:
    """Return once a quorum of the run's holders signed echoes of this site's aggregate.

    Holders whose signed echo names another aggregate or manifest are reported (module
    docstring) and do not stop the wait: quorum intersection, not a refusal, keeps two
    aggregates of a round from both being decrypted.

    Raises
    ------
    TaskRefused
        ``verify`` when holders that echoed something else leave fewer than a quorum
        able to agree with this site, or when the quorum is not reached by ``deadline``
        (holders gone, the coordinator withholding echoes, or showing holders different
        aggregates); no partial is released either way.
    """
    statement = key.statement
    quorum = custody.echo_quorum(statement.parties, statement.threshold)
    agreeing: set[str] = set()
    conflicting: dict[str, custody.EchoStatement] = {}
    seen = 0
    while True:
        reply = agent.stub.FetchEchoes(
            federation_pb2.EchoFetchRequest(
                run_id=task.run_id,
                round=mine.round,
                wait_seconds=min(POLL_SECONDS, max(deadline - time.time(), 0.0)),
                at_least=seen + 1,
            ),
            metadata=agent._metadata(),
            timeout=POLL_SECONDS + 60,
        )
        seen = len(reply.echoes)
        for envelope in reply.echoes:
            other = checked_echo(agent, task, key, envelope, mine)
            if other is None:
                continue
            if other.seen == mine.seen:
                agreeing.add(other.site)
            elif other.site not in conflicting:
                conflicting[other.site] = other
                _report_conflict(agent, mine, other)
        if len(agreeing) >= quorum:
            return
        # Holders that signed only another aggregate cannot (if honest) sign this one.
        able = statement.parties - len(set(conflicting) - agreeing)
        if able < quorum:
            raise TaskRefused(
                "verify",
                _equivocation(mine, conflicting)
                + f": {able} holders could still agree, fewer than the quorum of {quorum}",
            )
        if time.time() >= deadline or agent._closing.is_set():
            why = _equivocation(mine, conflicting) + "; " if conflicting else ""
            raise TaskRefused(
                "verify",
                f"{why}round {mine.round}: only {len(agreeing)} of the {quorum} signed echoes "
                f"of this aggregate that a {statement.threshold}-of-{statement.parties} run "
                "needs before a share holder releases partials arrived by the deadline "
                "(holders gone, or the coordinator withholding echoes); no partial published",
            )


def checked_echo(
    agent: Site,
    task: federation_pb2.Task,
    key: ThresholdKey,
    envelope: federation_pb2.EchoEnvelope,
    mine: custody.EchoStatement,
) -> custody.EchoStatement | None:
    """A relayed echo, if a share holder of the key signed it for this run and round.

    Anything else (not a holder, identity not the one dealt to, bad signature, another
    run or round or site) counts for nothing and is logged: the relay could have made it.
    """
    site = envelope.site_name
    holder = key.statement.holder(site)
    try:
        if holder is None:
            raise ValueError("not a share holder of the key")
        public = holder_identity(agent, task, site, holder.fingerprint)
        identity.verify(public, bytes(envelope.statement), bytes(envelope.signature))
        other = custody.EchoStatement.from_bytes(bytes(envelope.statement))
        if (other.run_id, other.round, other.site) != (mine.run_id, mine.round, site):
            raise ValueError("it names another run, round or site")
    except ValueError as exc:
        log.warning("run %s round %d: echo from %r ignored: %s", mine.run_id, mine.round, site, exc)
        return None
    return other


def holder_identity(
    agent: Site, task: federation_pb2.Task, site: str, dealt_fingerprint: str
) -> bytes:
    """``site``'s Ed25519 key as the task relays it, if it is the holder's and trusted here.

    It must have the fingerprint the custodian dealt the share to, checked first, so that
    trust-on-first-use never pins a key the relay made up (review of 2026-12-03). This
    site's own name must carry its own key; any other must be pinned here (``cohort
    client peers``): a holder this site has unpinned counts for nothing.

    Raises
    ------
    ValueError
        (:class:`client.peers.UntrustedPeer` for a peer not pinned) when it does not.
    """
    if site == agent.identity.site_name:
        public = agent.identity.ed25519_public
    else:
        public = next(
            (bytes(p.ed25519_public_key) for p in task.participants if p.site_name == site),
            b"",
        )
    if not public:
        raise ValueError(f"{site[:128]!r} is not a participant of the run")
    if identity.fingerprint(public) != dealt_fingerprint:
        raise ValueError("not a share holder with the identity the custodian dealt to")
    if site != agent.identity.site_name:
        agent.peers.check(site, public)
    return public


def report(agent: Site, run: str, round_number: int, site: str, reason: str) -> None:
    """Name a share holder whose partial or echo failed, for the run's audit log (best effort)."""
    log.warning("run %s round %d: %s refused: %s", run, round_number, site, reason)
    agent.listener(
        "partial_refused", {"run_id": run, "round": round_number, "site": site, "reason": reason}
    )
    try:
        agent.stub.ReportPartial(
            federation_pb2.PartialComplaint(
                run_id=run, round=round_number, accused_site=site[:128], reason=reason[:500]
            ),
            metadata=agent._metadata(),
            timeout=30,
        )
    except grpc.RpcError as exc:
        log.warning("could not report %s: %s", site, exc)


def _report_conflict(
    agent: Site, mine: custody.EchoStatement, other: custody.EchoStatement
) -> None:
    report(
        agent,
        mine.run_id,
        mine.round,
        other.site,
        f"its signed echo names aggregate {other.aggregate_sha256[:16]} (manifest "
        f"{other.manifest_sha256[:16]}), this site was shown {mine.aggregate_sha256[:16]} "
        f"(manifest {mine.manifest_sha256[:16]}): it signed another aggregate, or the "
        "coordinator showed it one",
    )


def _equivocation(
    mine: custody.EchoStatement, conflicting: dict[str, custody.EchoStatement]
) -> str:
    named = "; ".join(
        f"{site} signed aggregate {e.aggregate_sha256[:16]} (manifest {e.manifest_sha256[:16]})"
        for site, e in sorted(conflicting.items())
    )
    return (
        f"round {mine.round}: share holders were shown different aggregates (this site: "
        f"{mine.aggregate_sha256[:16]}, manifest {mine.manifest_sha256[:16]}; {named}): the "
        "coordinator equivocated, or those holders signed another; no partial published"
    )
