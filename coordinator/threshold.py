"""Threshold runs at the coordinator: check and record the dealing, relay sealed partials.

The coordinator never holds a share or a partial in the clear: shares arrive sealed to
their holders (``sealed_keys``), partials sealed under a group key only share holders
have (``threshold_partials``). What it checks is public: the custodian's signed
statement against the run, the key and the participants' registered identities. It does
not wait for every site: sites poll for partials and each combines the first ``t`` that
verify. Before any partial, holders relay signed echoes of the aggregate through it
(:func:`submit_echo`), and each waits for a quorum of them
(:func:`crypto.threshold_custody.echo_quorum`), so up to ``⌊(N − t)/2⌋`` sites may be
gone when a round is decrypted.
"""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator import auditlog, manifests
from coordinator.access import REVOKED
from coordinator.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from coordinator.identity import participant_nodes
from coordinator.queries import site_name
from coordinator.schema import ModelVersion, Node, Run, ThresholdKey, ThresholdPartial
from crypto import identity
from crypto import threshold as tp
from crypto import threshold_custody as custody
from protos import federation_pb2, wire

MAX_PARTIAL_OVERHEAD = 4096
"""Bytes a sealed partial may hold beyond its values: proof, header, signature, GCM."""
ECHO_PART = 2
"""``threshold_partials.part`` of a holder's signed echo (public: statement ‖ signature)."""
_SIGNATURE_BYTES = 64


def threshold_of(run: Run) -> int:
    """The run's t (0: a single-custodian run)."""
    value = run.config.get("threshold", 0)
    return int(value) if isinstance(value, int) else 0


def register(
    session: Session,
    run: Run,
    custodian: Node,
    bundle: federation_pb2.KeyBundle,
    dealing: identity.KeyDealing,
    n: int,
) -> dict[str, object]:
    """Check a threshold dealing before anything of it is stored; returns audit details.

    The statement must be canonical, signed by the custodian's registered identity, agree
    with the key statement (run, key, custodian, t, share holders) and the run's ``t``,
    and commit to the verification keys relayed, which must be for this ``n``.

    Raises
    ------
    InvalidArgument
        Naming the first thing that does not hold, or a dealing the run did not ask for.
    """
    t = threshold_of(run)
    given = bundle.HasField("threshold_dealing")
    if not t:
        if given or dealing.threshold:
            raise InvalidArgument("this run is not a threshold run: deal a whole key")
        return {}
    if not given or dealing.threshold != t:
        raise InvalidArgument(f"this run needs a {t}-of-n threshold dealing")
    raw = bytes(bundle.threshold_dealing.statement)
    vk_bytes = bytes(bundle.threshold_dealing.verification_keys)
    try:
        statement = custody.ThresholdStatement.from_bytes(raw)
        identity.verify(
            bytes(custodian.ed25519_public_key), raw, bytes(bundle.threshold_dealing.signature)
        )
        keys = tp.verification_keys_from_bytes(vk_bytes)
    except ValueError as exc:
        raise InvalidArgument(f"threshold dealing refused: {exc}") from exc
    if (statement.run_id, statement.key_fingerprint, statement.custodian) != (
        dealing.run_id,
        dealing.key_fingerprint,
        dealing.custodian,
    ):
        raise InvalidArgument("threshold statement names another run, key or custodian")
    if statement.threshold != t or keys.threshold != t or keys.parties != statement.parties:
        raise InvalidArgument(f"threshold statement is not {t}-of-{statement.parties}")
    holders = {h.site: h.fingerprint for h in statement.holders}
    if holders != {r.site: r.fingerprint for r in dealing.recipients}:
        raise InvalidArgument("threshold statement's holders are not the key's recipients")
    if custody.keys_sha256(vk_bytes) != statement.verification_keys_sha256 or keys.n != n:
        raise InvalidArgument("verification keys are not the ones the statement commits to")
    session.add(
        ThresholdKey(
            run_id=run.id,
            threshold=t,
            parties=statement.parties,
            verification_keys=vk_bytes,
            statement=raw,
            signature=bytes(bundle.threshold_dealing.signature),
        )
    )
    return {
        "threshold": t,
        "parties": statement.parties,
        "holders": {h.site: f"{h.index}:{h.fingerprint}" for h in statement.holders},
        "erasure": statement.erasure,
        "threshold_statement": raw.decode("utf-8", "replace"),
        "threshold_signature": bytes(bundle.threshold_dealing.signature).hex(),
    }


def attach(session: Session, run: Run, message: federation_pb2.Task) -> None:
    """A threshold run's ``t`` and public dealing on every task of the run."""
    t = threshold_of(run)
    if not t:
        return
    message.threshold = t
    row = session.get(ThresholdKey, run.id)
    if row is not None:
        message.threshold_dealing.verification_keys = row.verification_keys
        message.threshold_dealing.statement = row.statement
        message.threshold_dealing.signature = row.signature


def _holder(session: Session, node_id: str, run_id: str) -> tuple[Run, str]:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run {run_id!r}")
    if not threshold_of(run):
        raise FailedPrecondition(f"run {run_id} is not a threshold run")
    if node_id not in run.participants:
        raise PermissionDenied("this site holds no share of that run's key")
    node = session.get(Node, node_id)
    assert node is not None
    if node.revoked_at:  # a relay poll parked before the revocation reads again (keys.py)
        raise Unauthenticated(f"{REVOKED}: ask the operator for `cohort admin sites enrol`")
    return run, site_name(session, node)


def _aggregate(session: Session, run: Run, round_number: int) -> ModelVersion:
    version = session.scalar(
        select(ModelVersion).where(
            ModelVersion.run_id == run.id, ModelVersion.round == round_number
        )
    )
    if version is None or round_number < 1:
        raise FailedPrecondition(f"run {run.id} has no aggregate of round {round_number}")
    return version


def submit(
    session: Session, node_id: str, request: federation_pb2.PartialSubmission
) -> federation_pb2.SubmitReply:
    """Store one site's sealed partial of a round's aggregate (once per site and round)."""
    run, site = _holder(session, node_id, request.run_id)
    version = _aggregate(session, run, int(request.round))
    if request.part not in (0, 1):
        raise InvalidArgument("part is 0 (the site's blocks) or 1 (the whole vector)")
    limit = 2 * int(version.size) + MAX_PARTIAL_OVERHEAD  # values are n²-wide, as the aggregate
    if not request.sealed or len(request.sealed) > limit:
        raise ResourceExhausted(f"a sealed partial is 1 to {limit} bytes here")
    exists = session.scalar(
        select(ThresholdPartial.id).where(
            ThresholdPartial.run_id == run.id,
            ThresholdPartial.round == int(request.round),
            ThresholdPartial.node_id == node_id,
            ThresholdPartial.part == int(request.part),
        )
    )
    if exists is not None:
        raise AlreadyExists(f"{site} already published that partial of round {request.round}")
    return _store(
        session,
        run,
        int(request.round),
        node_id,
        site,
        int(request.part),
        bytes(request.sealed),
        event="partial.published",
        message="relayed",
        details={
            "part": int(request.part),
            "sealed_sha256": wire.sha256_hex(bytes(request.sealed)),
        },
    )


def fetch(
    session: Session, node_id: str, request: federation_pb2.PartialFetchRequest
) -> federation_pb2.PartialFetchReply:
    """Every sealed partial of a round published so far, for a share holder of the run."""
    run, _ = _holder(session, node_id, request.run_id)
    reply = federation_pb2.PartialFetchReply(threshold=threshold_of(run))
    for row in session.scalars(
        select(ThresholdPartial)
        .where(
            ThresholdPartial.run_id == run.id,
            ThresholdPartial.round == int(request.round),
            ThresholdPartial.part != ECHO_PART,
        )
        .order_by(ThresholdPartial.created_at)
    ):
        reply.partials.add(
            site_name=row.site_name, node_id=row.node_id, sealed=row.sealed, part=row.part
        )
    return reply


def submit_echo(
    session: Session, node_id: str, request: federation_pb2.EchoSubmission
) -> federation_pb2.SubmitReply:
    """Store a share holder's signed echo of a round's aggregate (once per site and round).

    Sites release partials only once a quorum of holders echoed the same aggregate
    (:func:`crypto.threshold_custody.echo_quorum`), so a coordinator cannot show two
    groups of holders two different aggregates of one round and have both decrypted. The
    coordinator checks what it can: the statement is canonical, names this run, round,
    site and the round's aggregate, and is signed by the site's registered identity.
    Stored in ``threshold_partials`` as part :data:`ECHO_PART` (statement ‖ signature).

    Raises
    ------
    InvalidArgument
        A statement that does not parse, names another run, round or site, or whose
        signature does not verify.
    FailedPrecondition
        An echo of another aggregate than the round's.
    AlreadyExists
        The site already echoed this round.
    """
    run, site = _holder(session, node_id, request.run_id)
    version = _aggregate(session, run, int(request.round))
    raw, signature = bytes(request.statement), bytes(request.signature)
    node = session.get(Node, node_id)
    assert node is not None
    try:
        echo = custody.EchoStatement.from_bytes(raw)
        identity.verify(bytes(node.ed25519_public_key or b""), raw, signature)
    except ValueError as exc:
        raise InvalidArgument(f"echo refused: {exc}") from exc
    if (echo.run_id, echo.round, echo.site) != (run.id, int(request.round), site):
        raise InvalidArgument("the echo names another run, round or site")
    if echo.aggregate_sha256 != version.blob_sha256:
        raise FailedPrecondition(f"the echo is not of round {request.round}'s aggregate")
    if echo.manifest_sha256 != _manifest_sha256(session, run, version):
        # Sites would report it and wait on; refused here, it never reaches them.
        raise FailedPrecondition(f"the echo is not of round {request.round}'s manifest")
    if _echo_rows(session, run.id, int(request.round), node_id):
        raise AlreadyExists(f"{site} already echoed round {request.round}")
    return _store(
        session,
        run,
        int(request.round),
        node_id,
        site,
        ECHO_PART,
        raw + signature,
        event="echo.published",
        message="echoed",
        details={
            "aggregate_sha256": echo.aggregate_sha256,
            "manifest_sha256": echo.manifest_sha256,
        },
    )


def _manifest_sha256(session: Session, run: Run, version: ModelVersion) -> str:
    """The manifest digest of the aggregate as this coordinator hands it to sites."""
    ref = federation_pb2.AggregateRef(
        round=version.round,
        sha256=version.blob_sha256,
        total_weight=version.total_weight,
        count=version.count,
    )
    manifests.add_contributions(session, run.id, ref)
    return custody.aggregate_manifest_sha256(ref)


def _store(
    session: Session,
    run: Run,
    round_number: int,
    node_id: str,
    site: str,
    part: int,
    sealed: bytes,
    *,
    event: str,
    message: str,
    details: dict[str, object],
) -> federation_pb2.SubmitReply:
    """Add one ``threshold_partials`` row (a partial or an echo) and its audit entry.

    Serves :func:`submit` and :func:`submit_echo`; the audit details start with the
    round and the site, then ``details``.
    """
    session.add(
        ThresholdPartial(
            run_id=run.id,
            round=round_number,
            node_id=node_id,
            site_name=site,
            part=part,
            sealed=sealed,
            created_at=time.time(),
        )
    )
    auditlog.append(
        session,
        event,
        run_id=run.id,
        actor=node_id,
        details={"round": round_number, "site": site, **details},
    )
    return federation_pb2.SubmitReply(id=f"{run.id}/{round_number}/{site}", message=message)


def _echo_rows(
    session: Session, run_id: str, round_number: int, node_id: str | None = None
) -> list[ThresholdPartial]:
    query = select(ThresholdPartial).where(
        ThresholdPartial.run_id == run_id,
        ThresholdPartial.round == round_number,
        ThresholdPartial.part == ECHO_PART,
    )
    if node_id is not None:
        query = query.where(ThresholdPartial.node_id == node_id)
    return list(session.scalars(query.order_by(ThresholdPartial.created_at)))


def fetch_echoes(
    session: Session, node_id: str, request: federation_pb2.EchoFetchRequest
) -> federation_pb2.EchoFetchReply:
    """Every signed echo of a round so far, for a share holder of the run."""
    run, _ = _holder(session, node_id, request.run_id)
    reply = federation_pb2.EchoFetchReply()
    for row in _echo_rows(session, run.id, int(request.round)):
        raw = bytes(row.sealed)
        reply.echoes.add(
            site_name=row.site_name,
            node_id=row.node_id,
            statement=raw[:-_SIGNATURE_BYTES],
            signature=raw[-_SIGNATURE_BYTES:],
        )
    return reply


def complain(
    session: Session, node_id: str, complaint: federation_pb2.PartialComplaint
) -> federation_pb2.SubmitReply:
    """Record, in the audit log, a site naming another whose partial failed its check.

    The coordinator cannot check the claim (it cannot open partials); the row names the
    accused and the accuser, and any share holder can re-check the sealed partial.
    """
    run, site = _holder(session, node_id, complaint.run_id)
    sites = {site_name(session, n) for n in participant_nodes(session, run)}
    if complaint.accused_site not in sites:
        raise InvalidArgument(f"{complaint.accused_site[:128]!r} is not a site of the run")
    auditlog.append(
        session,
        "partial.refused",
        run_id=run.id,
        actor=node_id,
        details={
            "round": int(complaint.round),
            "site": complaint.accused_site,
            "reported_by": site,
            "reason": complaint.reason[:500],
        },
    )
    return federation_pb2.SubmitReply(id=run.id, message="recorded")
