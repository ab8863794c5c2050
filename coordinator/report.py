"""Gather what the coordinator knows of a run into the compliance report's facts."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator import auditlog, report_chain
from coordinator.custody_view import report_custody
from coordinator.db import Database
from coordinator.hub import Hub
from coordinator.provenance import frozen_sites
from coordinator.queries import site_names, summed_updates
from coordinator.schema import (
    AuditEvent,
    Round,
    RoundState,
    Run,
    SiteAudit,
)
from coordinator.schemes import scheme_of
from protos.serde import SchemeName

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from explain.summary import AttributionSummary

VISIBILITY = {
    SchemeName.PAILLIER: (
        "Paillier ciphertexts of each site's quantised update, the example counts and "
        "metrics each site chose to report, and the encrypted sum; never a plaintext "
        "update, the private key or a data row."
    ),
    SchemeName.NONE: (
        "Each site's plaintext model update (weights delta), example counts and metrics; "
        "never a data row."
    ),
}


def code_version() -> str:
    """The running code's version, as reports and the audit log record it."""
    try:
        return f"cohort {version('cohort')}"
    except PackageNotFoundError:
        return "cohort (source tree)"


def _authenticated_summaries(
    session: Session, run_id: str
) -> tuple[list[AttributionSummary], list[dict[str, str]]]:
    """Each stored audit summary, attributed to the site of the node that sent it.

    Whatever site name a summary's JSON states, the report uses the sender's enrolled
    name: a site cannot put words in another site's mouth. A summary that no longer
    parses is listed as rejected with the reason instead of breaking the report.
    """
    from explain.summary import AttributionSummary

    names = site_names(session)
    summaries: list[AttributionSummary] = []
    rejected: list[dict[str, str]] = []
    audits = session.scalars(
        select(SiteAudit).where(SiteAudit.run_id == run_id).order_by(SiteAudit.id)
    )
    for audit in audits:
        sender = names.get(audit.node_id, f"node {audit.node_id}")
        data = dict(audit.summary) if isinstance(audit.summary, dict) else {}
        claimed = data.get("site")
        data["site"] = sender
        try:
            summaries.append(AttributionSummary.from_dict(data))
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            rejected.append({"site": sender, "reason": f"malformed summary: {exc}"[:300]})
            continue
        if claimed != sender:
            log.info("audit summary from %s claimed to be from %r", sender, claimed)
    return summaries, rejected


# Rows that use a finished run without changing it: a report of the run does not move
# its audit-log anchor for them (a report built twice must say the same).
_READS = ("report.produced", "model.exported", "model.downloaded")


def _frozen_sites(
    session: Session, run_id: str, participation: dict[str, list[int]]
) -> list[dict[str, Any]]:
    """Each contributing site as recorded when it first took part, never as it is now."""
    frozen = frozen_sites(session, run_id)
    names = site_names(session, participation)
    sites: list[dict[str, Any]] = []
    for node_id in participation:
        row = frozen.get(node_id)
        sites.append(
            {
                "name": row.site_name if row else names.get(node_id, f"node {node_id}"),
                "node_id": node_id,
                # No provenance (a run from before it was recorded): nothing is claimed.
                "data_fingerprint": (row.data_fingerprint or None) if row else None,
                "row_count": int(row.rows) if row else 0,
                "schema_fingerprint": (row.schema_fingerprint or None) if row else None,
                "code_version": (row.agent_version or None) if row else None,
                "rounds_participated": sorted(participation[node_id]),
            }
        )
    return sorted(sites, key=lambda site: (site["name"], site["node_id"]))


def _log_verdict(
    session: Session, run: Run
) -> tuple[auditlog.ChainVerdict, list[tuple[str, str, dict[str, Any]]]]:
    """The audit chain's verdict, and the run's rows that the report's facts are held to.

    The rows are those coordinator/report_chain.py compares. A finished run's report
    anchors the log at the run's own last row, so rows appended later (other runs,
    re-joins, this report being produced) do not change the report; `cohort audit verify`
    checks the whole log. A running run's report checks the whole log. Only rows before
    the first bad one are returned: past it nothing is evidence.
    """
    checker = auditlog.ChainChecker()
    limit = None
    if run.state.ended:
        anchor = session.scalar(
            select(AuditEvent.seq)
            .where(AuditEvent.run_id == run.id, AuditEvent.kind.not_in(_READS))
            .order_by(AuditEvent.seq.desc())
            .limit(1)
        )
        limit = int(anchor or 0)
    verified: list[AuditEvent] = []
    for row in auditlog.iter_rows(session):  # a page at a time, not the whole log
        if limit is not None and row.seq > limit:
            break
        if not checker.feed([row]):
            break
        if row.run_id == run.id:
            verified.append(row)
    return checker.verdict(), report_chain.run_rows(verified, run.id)


def facts_sha256(facts: Mapping[str, Any]) -> str:
    """sha256 of the facts without their generation time: equal for equal reports."""
    body = {k: v for k, v in facts.items() if k != "generated_at"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def report_facts(hub: Hub, run_id: str) -> dict[str, Any]:
    """Build and validate the facts document of ``run_id`` (explain.report.build_facts)."""
    return facts_from_database(hub.db, run_id)


def facts_from_database(db: Database, run_id: str) -> dict[str, Any]:
    """The facts of ``run_id`` from the database alone; reads, writes nothing.

    The coordinator's report and ``cohort audit report --db`` (a backup, no coordinator
    running) both come from here, so the two can only differ in their generation time.
    """
    from coordinator.ledger_copies import privacy_facts
    from explain.report import build_facts, config_sha256

    with db.transaction() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise KeyError(run_id)
        rounds = session.scalars(
            select(Round).where(Round.run_id == run_id).order_by(Round.number)
        ).all()
        closed = [r for r in rounds if r.state == RoundState.CLOSED]
        # Only what each closed round's aggregate summed counts (as the scheduler closed it:
        # not an update of a round never aggregated, nor of a site revoked before the close).
        updates = [
            u for r in closed for u in summed_updates(session, run_id, r.number, r.closed_at)
        ]
        participation: dict[str, list[int]] = {}
        contributors: dict[int, set[str]] = {}
        for update in updates:
            participation.setdefault(update.node_id, []).append(update.round)
            contributors.setdefault(update.round, set()).add(update.node_id)
        sites = _frozen_sites(session, run_id, participation)
        summaries, rejected = _authenticated_summaries(session, run_id)
        verdict, logged = _log_verdict(session, run)
        config = json.loads(json.dumps(run.config, default=str))
        key = report_chain.registered_key(logged)
        disagreements = report_chain.discrepancies(
            run, config_sha256(config), sites, closed, contributors, logged
        )
        scheme = scheme_of(run)
        # As stored at creation, like "config" below: the report pins what the run held.
        encoding = run.config.get("encoding") if scheme.encrypted else None
        facts = build_facts(
            run={
                "id": run.id,
                "model": run.model,
                "state": run.state.value,
                "rounds_planned": run.rounds,
                "rounds_completed": len(closed),
                "config": config,
                "model_sha256": run.final_model_sha256 or None,
                # The version that ran it, as run.started logged it (since 2026-12-03).
                "code_version": report_chain.run_version(logged)
                or f"{code_version()} (wrote this report; the run's version is not logged)",
                "created_at": run.created_at,
                "started_at": run.started_at or None,
                "ended_at": run.ended_at or None,
                "started_by": run.created_by or "not recorded",
                "failure_reason": run.failure_reason or None,
            },
            sites=sites,
            privacy={
                "secure_aggregation": run.secure,
                # As the verified log registered the key, not as the run's columns say now.
                "key_bits": int(key["key_bits"])
                if key and "key_bits" in key
                else (run.settings().encoding.key_bits if scheme.encrypted else None),
                "key_custodian": (key or {}).get("custodian") or run.custodian or None,
                "key_fingerprints": [str(key["fingerprint"])]
                if key and key.get("fingerprint")
                else ([run.key_fingerprint] if run.key_fingerprint else []),
                "coordinator_visibility": VISIBILITY[scheme.name],
                "update_quantisation": encoding if isinstance(encoding, dict) else "float32",
                "differential_privacy": privacy_facts(session, run),
                "key_custody": report_custody(session, run),
            },
            metrics=[
                {
                    "round": r.number,
                    "num_updates": r.num_updates,
                    "total_weight": int(r.total_weight),
                    "metrics": dict(r.metrics or {}),
                }
                for r in closed
            ],
            summaries=summaries,
            rejected=rejected,
            audit_log={
                "verified": verdict.ok,
                "rows": verdict.rows,
                "first_bad_row": verdict.first_bad_seq,
                "reason": verdict.reason,
                "head_hash": verdict.head_hash,
                "discrepancies": disagreements,
            },
        )
    return dict(facts)
