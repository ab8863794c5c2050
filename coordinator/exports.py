"""What leaves the coordinator for operators and auditors: models, log pages, reports.

Each export of a model or a report is itself written to the audit log.
"""

from __future__ import annotations

import hashlib
import logging

from sqlalchemy import select

from coordinator import auditlog
from coordinator.errors import FailedPrecondition, InvalidArgument, NotFound
from coordinator.hub import Hub
from coordinator.run_views import find_run
from coordinator.schema import ModelKind, ModelVersion
from protos import admin_pb2

log = logging.getLogger(__name__)

# A reply of the audit log stays well under gRPC's default 4 MiB message limit.
PAGE_BYTES = 3 << 20


class Exports:
    """Reads that hand data out: a round's plaintext model, the log, a compliance report."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def model_payload(self, run_id: str, round_number: int, actor: str) -> bytes:
        """The plaintext model of a round (0: the final one); refused for secure runs."""
        with self.hub.lock, self.hub.db.transaction() as session:
            run = find_run(session, run_id)
            if round_number == 0:
                if not run.final_model_sha256:
                    raise FailedPrecondition(
                        f"run {run_id} has no final model yet ({run.state.value})"
                    )
                version = session.scalar(
                    select(ModelVersion).where(
                        ModelVersion.run_id == run_id,
                        ModelVersion.blob_sha256 == run.final_model_sha256,
                    )
                )
            else:
                version = session.scalar(
                    select(ModelVersion).where(
                        ModelVersion.run_id == run_id, ModelVersion.round == round_number
                    )
                )
            if version is None:
                raise NotFound(f"run {run_id} has no model for round {round_number}")
            if version.kind == ModelKind.ENCRYPTED_AGGREGATE:
                raise FailedPrecondition(
                    "this is a secure run: the coordinator holds only encrypted aggregates; "
                    "a site exports the model with `cohort client export-model`"
                )
            auditlog.append(
                session,
                "model.downloaded",
                run_id=run_id,
                actor=actor,
                details={"round": version.round, "sha256": version.blob_sha256},
            )
            sha = version.blob_sha256
        return self.hub.blobs.get(sha)

    def audit_log(self, after_seq: int = 0, limit: int = 0) -> admin_pb2.AuditLog:
        """One page of the log: rows after ``after_seq``, at most ``limit`` (0: default).

        Pages keep every reply far under gRPC's 4 MiB message limit (rows are bounded to
        a few KiB by auditlog.append); ``more`` says whether to ask for the next page.
        """
        size = limit or auditlog.DEFAULT_PAGE_ROWS
        if size > auditlog.MAX_PAGE_ROWS:
            raise InvalidArgument(f"limit must be at most {auditlog.MAX_PAGE_ROWS} rows a page")
        with self.hub.db.transaction() as session:
            rows = auditlog.page(session, after_seq, size)
            head_seq, _ = auditlog.head(session)
        # And by bytes: rows are bounded (auditlog.MAX_DETAILS_CHARS) but many large ones
        # must still fit one reply; at least one row is always returned.
        budget, kept = PAGE_BYTES, 0
        for row in rows:
            budget -= len(row.details) + len(row.actor) + len(row.kind) + 256
            if kept and budget < 0:
                break
            kept += 1
        rows = rows[:kept]
        last = rows[-1].seq if rows else after_seq
        return admin_pb2.AuditLog(
            more=last < head_seq,
            head_seq=head_seq,
            entries=[
                admin_pb2.AuditEntry(
                    seq=r.seq,
                    time_unix=r.time,
                    run_id=r.run_id,
                    kind=r.kind,
                    actor=r.actor,
                    details_json=r.details,
                    prev_hash=r.prev_hash,
                    hash=r.hash,
                )
                for r in rows
            ],
        )

    def export_report(self, run_id: str, fmt: str, actor: str) -> bytes:
        """Render a run's compliance report and log that it was produced."""
        import tempfile
        from pathlib import Path

        from coordinator.report import facts_sha256, report_facts
        from explain.report import FORMATS, write_report

        if fmt not in FORMATS:
            raise InvalidArgument(f"report format must be one of {', '.join(FORMATS)}")
        with self.hub.db.transaction() as session:
            find_run(session, run_id)
        facts = report_facts(self.hub, run_id)
        # Equal for every build of a finished run's report (its generation time aside).
        facts_hash = facts_sha256(facts)
        if facts["run"]["state"] in ("completed", "failed", "stopped"):
            log.info("report of finished run %s: facts sha256 %s", run_id, facts_hash)
        with tempfile.TemporaryDirectory() as tmp:
            path = write_report(facts, fmt, Path(tmp) / f"report.{fmt}")
            data = path.read_bytes()
        with self.hub.lock, self.hub.db.transaction() as session:
            auditlog.append(
                session,
                "report.produced",
                run_id=run_id,
                actor=actor,
                details={
                    "format": fmt,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "facts_sha256": facts_hash,
                    "run_state": facts["run"]["state"],
                    "audit_log_verified": facts["audit_log"]["verified"],
                },
            )
        return data
