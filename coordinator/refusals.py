"""Tasks a site refused: recorded, shown to the operator, and a failed run when it must be.

A site refuses what its own policy forbids, what disagrees with its pin of the run, and
aggregates that do not verify or do not decode. The coordinator cannot overrule that; it
records the refusal (bounded, and rate-limited in the audit log so a site cannot flood
it) and, when a site found the round's aggregate bad ("verify"/"decode"), fails the run
with a reason naming the site and the round: every later task would carry that aggregate.
"""

from __future__ import annotations

import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coordinator import auditlog
from coordinator.errors import FailedPrecondition, InvalidArgument
from coordinator.queries import LIVE, cancel_open_tasks, site_name
from coordinator.schema import Node, Run, RunState, SiteRefusal, Task, TaskKind, TaskState
from protos import admin_pb2, federation_pb2

CODES = ("policy", "pin", "verify", "decode", "budget", "model", "schema", "error")
MAX_REASON = 1000
# Audit rows per node and minute for refusals; the SiteRefusal rows are bounded anyway
# (one per task the coordinator itself created).
AUDIT_RATE = 20
_WINDOW_SECONDS = 60.0
_FATAL = ("verify", "decode")


def clean_reason(text: str) -> str:
    """A reason as stored and shown: printable, one line, at most ``MAX_REASON`` characters."""
    flat = "".join(ch if ch.isprintable() else " " for ch in text[: MAX_REASON * 4])
    return " ".join(flat.split())[:MAX_REASON]


def refuse_task(
    session: Session, node_id: str, site: str, refusal: federation_pb2.TaskRefusal
) -> federation_pb2.SubmitReply:
    """Record ``node_id``'s refusal of one of its live tasks.

    Raises
    ------
    InvalidArgument
        An oversized or unknown code, or a task id that cannot be one (nothing is written).
    FailedPrecondition
        The task is not this node's, or is no longer live.
    """
    if not refusal.task_id or len(refusal.task_id) > 36 or "\x00" in refusal.task_id:
        raise InvalidArgument("task_id must be a task id (at most 36 characters)")
    if refusal.code not in CODES:
        raise InvalidArgument(f"refusal code must be one of {', '.join(CODES)}")
    task = session.get(Task, refusal.task_id)
    if task is None or task.node_id != node_id:
        raise FailedPrecondition(f"no task {refusal.task_id!r} for this node")
    if refusal.run_id and refusal.run_id != task.run_id:
        raise InvalidArgument("run_id does not match the task's run")
    if task.state not in LIVE:
        raise FailedPrecondition(f"task {task.id} is {task.state.value}, not open")
    reason = clean_reason(refusal.reason) or "(no reason given)"
    now = time.time()
    recent = session.scalar(
        select(func.count())
        .select_from(SiteRefusal)
        .where(SiteRefusal.node_id == node_id, SiteRefusal.time >= now - _WINDOW_SECONDS)
    )
    task.state = TaskState.REFUSED
    session.add(
        SiteRefusal(
            run_id=task.run_id,
            node_id=node_id,
            task_id=task.id,
            round=task.round,
            code=refusal.code,
            reason=reason,
            time=now,
        )
    )
    if int(recent or 0) < AUDIT_RATE:
        auditlog.append(
            session,
            "task.refused",
            run_id=task.run_id,
            actor=node_id,
            details={
                "site": site,
                "kind": task.kind.value,
                "round": task.round,
                "code": refusal.code,
                "reason": reason[:300],
            },
        )
    run = session.get(Run, task.run_id)
    if (
        run is not None
        and refusal.code in _FATAL
        and task.kind in (TaskKind.TRAIN, TaskKind.AUDIT)
        and run.state == RunState.RUNNING
    ):
        fail_run(
            session,
            run,
            now,
            f"site {site} refused round {task.round} ({refusal.code}): {reason[:300]}",
        )
    return federation_pb2.SubmitReply(id=task.id, message="refusal recorded")


def fail_run(session: Session, run: Run, now: float, reason: str) -> None:
    """End ``run`` as failed with ``reason``; its open tasks are cancelled and the log says why."""
    run.state = RunState.FAILED
    run.ended_at = now
    run.failure_reason = reason
    cancel_open_tasks(session, run.id)
    auditlog.append(session, "run.failed", run_id=run.id, details={"reason": reason})


def add_refusals(session: Session, run_id: str, info: admin_pb2.RunInfo) -> None:
    """Fill ``RunInfo.refusals`` (the latest 100) for `runs show`."""
    rows = session.scalars(
        select(SiteRefusal)
        .where(SiteRefusal.run_id == run_id)
        .order_by(SiteRefusal.time.desc(), SiteRefusal.id.desc())
        .limit(100)
    ).all()
    for row in reversed(rows):
        node = session.get(Node, row.node_id)
        info.refusals.add(
            site_name=site_name(session, node) if node is not None else row.node_id,
            round=row.round,
            code=row.code,
            reason=row.reason,
            time_unix=row.time,
        )


def latest_reasons(session: Session, run_id: str, limit: int = 3) -> str:
    """The text ``"; refused: SITE (CODE): REASON, …"`` for a failure message; "" if none."""
    rows = session.scalars(
        select(SiteRefusal)
        .where(SiteRefusal.run_id == run_id)
        .order_by(SiteRefusal.time.desc(), SiteRefusal.id.desc())
        .limit(limit)
    ).all()
    if not rows:
        return ""
    named = []
    for row in reversed(rows):
        node = session.get(Node, row.node_id)
        site = site_name(session, node) if node is not None else row.node_id
        named.append(f"{site} ({row.code}): {row.reason[:200]}")
    return "; refused: " + "; ".join(named)
