"""A run after its last round: the final model, each trained site's audit, completion.

The run stays RUNNING in this phase (``waiting_for`` says so) until every audit task is
done, refused or past the run's audit deadline (``RunConfig.audit_deadline``); then it
completes and the log names the sites whose audits are missing. The scheduler
(coordinator/scheduler.py) calls in here; the audits themselves arrive through
coordinator/statements.py.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator import auditlog
from coordinator.queries import site_name
from coordinator.schema import ModelVersion, Node, Run, RunState, Task, TaskKind, TaskState, Update
from coordinator.selection import mark_missed, new_task


def finish_training(session: Session, run: Run, now: float) -> None:
    """The last round closed: fix the final model and ask each trained site to audit it."""
    last = session.scalar(
        select(ModelVersion)
        .where(ModelVersion.run_id == run.id)
        .order_by(ModelVersion.round.desc())
        .limit(1)
    )
    run.final_model_sha256 = last.blob_sha256 if last else run.initial_model_sha256
    participants = sorted(
        set(session.scalars(select(Update.node_id).where(Update.run_id == run.id)))
    )
    settings = run.settings()
    audited = settings.audit and bool(participants)
    deadline = now + settings.audit_deadline
    if audited:
        for node_id in participants:
            session.add(new_task(run, node_id, TaskKind.AUDIT, run.rounds, deadline))
    auditlog.append(
        session,
        "run.trained",
        run_id=run.id,
        details={
            "rounds": run.current_round,
            "final_model_sha256": run.final_model_sha256,
            "audits_requested": len(participants) if audited else 0,
            "audit_deadline_unix": deadline if audited else None,
        },
    )
    if not audited:
        complete(session, run, now)


def check_audits(session: Session, run: Run, now: float) -> bool:
    """Complete the run once no audit task is live (in, refused, or past its deadline)."""
    live = [
        t for t in _audit_tasks(session, run) if t.state in (TaskState.PENDING, TaskState.DELIVERED)
    ]
    if any(now < t.deadline for t in live):
        return False
    mark_missed(session, run, live, kind=TaskKind.AUDIT.value)
    complete(session, run, now)
    return True


def complete(session: Session, run: Run, now: float) -> None:
    """Mark the run completed and log which audits came in and whose are missing."""
    run.state = RunState.COMPLETED
    run.ended_at = now
    tasks = _audit_tasks(session, run)
    received = sorted(t.node_id for t in tasks if t.state == TaskState.DONE)
    missing = sorted(_node_name(session, t.node_id) for t in tasks if t.state != TaskState.DONE)
    auditlog.append(
        session,
        "run.completed",
        run_id=run.id,
        details={
            "rounds": run.current_round,
            "final_model_sha256": run.final_model_sha256,
            "audits_received": len(received),
            "audits_missing": missing,
        },
    )


def _audit_tasks(session: Session, run: Run) -> list[Task]:
    return list(
        session.scalars(select(Task).where(Task.run_id == run.id, Task.kind == TaskKind.AUDIT))
    )


def _node_name(session: Session, node_id: str) -> str:
    node = session.get(Node, node_id)
    return (site_name(session, node) if node is not None else "") or node_id
