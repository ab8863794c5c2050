"""What `runs show` and the report say of a threshold run's key custody, re-verified on asking.

The custodian's signed dealing statement (stored by :func:`coordinator.threshold.register`)
is checked again each time it is shown, never echoed from the row: a statement that no
longer verifies is shown as unverified, with the problem and none of its claims.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from coordinator.identity import logged_fingerprints, participant_nodes
from coordinator.queries import site_name
from coordinator.schema import Run, ThresholdKey
from coordinator.threshold import threshold_of
from crypto import identity
from crypto import threshold_custody as custody
from protos import admin_pb2, wire


def custody_info(session: Session, run: Run) -> admin_pb2.ThresholdCustody | None:
    """T of N, the share holders, key fingerprint and erasure, for `runs show` and the report.

    Re-verified each time it is asked (:func:`_custody_problem`), never echoed from the
    row: a statement that no longer verifies comes back ``verified=False`` with the
    problem and none of its claims.
    """
    row = session.get(ThresholdKey, run.id)
    if row is None:
        return None
    problem = _custody_problem(session, run, row)
    if problem:
        return admin_pb2.ThresholdCustody(
            verified=False, problem=problem, statement_sha256=wire.sha256_hex(row.statement)
        )
    statement = custody.ThresholdStatement.from_bytes(row.statement)
    return admin_pb2.ThresholdCustody(
        threshold=statement.threshold,
        parties=statement.parties,
        holders=[f"{h.index}:{h.site}:{h.fingerprint}" for h in statement.holders],
        key_fingerprint=statement.key_fingerprint,
        custodian=statement.custodian,
        erasure=statement.erasure,
        statement_sha256=wire.sha256_hex(row.statement),
        verified=True,
        echo_quorum=custody.echo_quorum(statement.parties, statement.threshold),
    )


def _custody_problem(session: Session, run: Run, row: ThresholdKey) -> str:
    """Why the stored dealing statement cannot be shown as signed ("" when it can).

    Checked again at report time, not trusted from the row: the statement must parse,
    name this run and the run's key, commit to the stored verification keys, and carry a
    signature by the named custodian's Ed25519 identity as registered with the run.
    """
    try:
        statement = custody.ThresholdStatement.from_bytes(bytes(row.statement))
    except ValueError as exc:
        return str(exc)
    if statement.run_id != run.id:
        return f"the statement is for run {statement.run_id[:64]!r}, not this run"
    if not run.key_fingerprint or statement.key_fingerprint != run.key_fingerprint:
        return "the statement names another key than the run's registered key"
    if custody.keys_sha256(bytes(row.verification_keys)) != statement.verification_keys_sha256:
        return "the stored verification keys are not the ones the statement commits to"
    if (row.threshold, row.parties) != (statement.threshold, statement.parties):
        return "the stored threshold is not the one the statement names"
    if threshold_of(run) != statement.threshold:
        return "the run was not created as a threshold run of this t"
    nodes = participant_nodes(session, run)
    # Each holder and the custodian as the audit chain registered them, not as the node
    # rows say now: a key swapped into a row, with no site.key_changed row, would
    # otherwise sign a forged statement that then verified (review of 2026-12-03).
    logged_keys = logged_fingerprints(session, [n.id for n in nodes])
    registered = {site_name(session, n): (n, logged_keys.get(n.id, "")) for n in nodes}
    for holder in statement.holders:
        if registered.get(holder.site, (None, ""))[1] != holder.fingerprint:
            return f"share holder {holder.site[:64]!r} is not a participant with that identity"
    node, logged = registered.get(statement.custodian, (None, ""))
    key = bytes(node.ed25519_public_key or b"") if node is not None else b""
    if not key or logged != statement.custodian_fingerprint or identity.fingerprint(key) != logged:
        return (
            f"no participant {statement.custodian[:64]!r} with the custodian's identity key "
            "as the audit log registered it"
        )
    try:
        identity.verify(key, bytes(row.statement), bytes(row.signature))
    except ValueError as exc:
        return f"the custodian's signature does not verify: {exc}"
    return ""


def report_custody(session: Session, run: Run) -> dict[str, object] | None:
    """The report's ``privacy.key_custody``: the dealing as the custodian signed it.

    A statement whose signature does not verify (forged or altered in the database) is
    reported as ``verified: False`` with the problem, and none of its claims.
    """
    info = custody_info(session, run)
    if info is None:
        return None
    if not info.verified:
        return {
            "verified": False,
            "problem": info.problem,
            "statement_sha256": info.statement_sha256,
        }
    holders = []
    for holder in info.holders:
        index, site, fingerprint = holder.split(":", 2)
        holders.append({"index": int(index), "site": site, "fingerprint": fingerprint})
    return {
        "verified": True,
        "threshold": info.threshold,
        "parties": info.parties,
        "holders": holders,
        "key_fingerprint": info.key_fingerprint,
        "custodian": info.custodian,
        "erasure": info.erasure,
        "statement_sha256": info.statement_sha256,
        "echo_quorum": info.echo_quorum,
    }
