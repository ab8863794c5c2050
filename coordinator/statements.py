"""What sites state about a run: refusals, SHAP audit summaries, privacy-ledger entries."""

from __future__ import annotations

import json

from coordinator import auditlog, ledger_copies, refusals
from coordinator.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
)
from coordinator.hub import Hub
from coordinator.queries import site_name
from coordinator.schema import (
    Node,
    SiteAudit,
    Task,
    TaskKind,
    TaskState,
)
from protos import federation_pb2, wire


class SiteStatements:
    """Stores what a site says of a run once it checks out; the log records each."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def refuse(
        self, node_id: str, refusal: federation_pb2.TaskRefusal
    ) -> federation_pb2.SubmitReply:
        """A site said no to one of its tasks (coordinator.refusals says what follows)."""
        with self.hub.lock, self.hub.db.transaction() as session:
            node = session.get(Node, node_id)
            assert node is not None
            reply = refusals.refuse_task(session, node_id, site_name(session, node), refusal)
        self.hub.notify()
        return reply

    def ledger_entry(
        self, node_id: str, entry: federation_pb2.LedgerEntry
    ) -> federation_pb2.SubmitReply:
        """A site's signed privacy-ledger entry for a run (coordinator/ledger_copies.py checks)."""
        with self.hub.lock, self.hub.db.transaction() as session:
            node = session.get(Node, node_id)
            assert node is not None
            return ledger_copies.record_entry(session, node_id, site_name(session, node), entry)

    def submit_audit(
        self, node_id: str, submission: federation_pb2.AuditSubmission
    ) -> federation_pb2.SubmitReply:
        """Accept a site's SHAP audit summary (bounded size, valid JSON) for its audit task."""
        if len(submission.summary_json) > self.hub.limits.max_audit_bytes:
            raise ResourceExhausted("audit summary is over the size limit")
        try:
            summary = json.loads(submission.summary_json)
        except (ValueError, RecursionError) as exc:
            raise InvalidArgument(f"audit summary is not JSON: {exc}") from exc
        if not isinstance(summary, dict):
            raise InvalidArgument("audit summary must be a JSON object")
        try:
            from explain.summary import AttributionSummary

            AttributionSummary.from_dict(summary)
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise InvalidArgument(f"audit summary is malformed: {exc}") from exc
        with self.hub.lock, self.hub.db.transaction() as session:
            task = session.get(Task, submission.task_id)
            if task is None or task.node_id != node_id or task.kind != TaskKind.AUDIT:
                raise FailedPrecondition("this node holds no audit task by that id")
            if task.run_id != submission.run_id:
                raise FailedPrecondition("the audit names another run than its task")
            if task.state == TaskState.DONE:
                raise AlreadyExists("this site already sent its audit for the run")
            session.add(SiteAudit(run_id=task.run_id, node_id=node_id, summary=summary))
            task.state = TaskState.DONE
            auditlog.append(
                session,
                "audit.submitted",
                run_id=task.run_id,
                actor=node_id,
                details={
                    "rows": summary.get("row_count"),
                    "sha256": wire.sha256_hex(submission.summary_json.encode()),
                },
            )
        self.hub.notify()
        return federation_pb2.SubmitReply(id=task.id, message="audit stored")
