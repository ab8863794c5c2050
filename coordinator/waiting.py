"""What a pending or running run waits for, in the words `runs show` and `runs watch` print."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.queries import site_names
from coordinator.schema import (
    Node,
    Round,
    RoundState,
    Run,
    RunState,
    Task,
    TaskKind,
    TaskState,
    Update,
)
from coordinator.schemes import scheme_of

_LIVE = (TaskState.PENDING, TaskState.DELIVERED)


def _names(session: Session, node_ids: list[str]) -> list[str]:
    # One query, not two lookups a site: `runs watch` redraws this line at every change,
    # and a round of a thousand sites has a thousand changes.
    found = site_names(session, node_ids)
    return sorted(found.get(node_id, node_id) for node_id in node_ids)


def _open(
    session: Session, run: Run, kind: TaskKind, round_number: int | None = None
) -> list[Task]:
    query = select(Task).where(Task.run_id == run.id, Task.kind == kind, Task.state.in_(_LIVE))
    if round_number is not None:
        query = query.where(Task.round == round_number)
    return list(session.scalars(query))


def waiting_for(session: Session, run: Run, now: float, offline_after: float) -> str:
    """One line: which sites the run waits for, and for what; "" once it has ended."""
    if run.state not in (RunState.PENDING, RunState.RUNNING):
        return ""
    online = list(session.scalars(select(Node.id).where(Node.last_seen >= now - offline_after)))
    if run.state == RunState.PENDING:
        return f"sites: {len(online)} of {run.min_clients} online"
    if scheme_of(run).encrypted and not run.public_key:
        return _setup_line(session, run, TaskKind.KEYGEN, "run key", len(online), now)
    if not run.initial_model_sha256:
        return _setup_line(session, run, TaskKind.INIT, "initial model", len(online), now)
    if run.final_model_sha256:
        audits = list(
            session.scalars(select(Task).where(Task.run_id == run.id, Task.kind == TaskKind.AUDIT))
        )
        done = sum(1 for t in audits if t.state == TaskState.DONE)
        live = [t for t in audits if t.state in _LIVE]
        line = f"audits: {done} of {len(audits)} in"
        if live:
            left = max(0.0, max(t.deadline for t in live) - now)
            waiting = ", ".join(_names(session, [t.node_id for t in live]))
            line += f"; waiting for {waiting} (deadline in {left:.0f} s)"
        return line
    current = session.scalar(
        select(Round).where(Round.run_id == run.id, Round.number == run.current_round)
    )
    if current is None or current.state == RoundState.CLOSED:
        return (
            f"round {run.current_round + 1}: {len(online)} of {run.min_clients} sites online "
            "to open it"
        )
    open_tasks = _open(session, run, TaskKind.TRAIN, current.number)
    submitted = set(
        session.scalars(
            select(Update.node_id).where(Update.run_id == run.id, Update.round == current.number)
        )
    )
    if not open_tasks:
        return (
            f"round {current.number}: {len(submitted)} updates in; waiting for sites to "
            "come back online"
        )
    names = ", ".join(_names(session, [t.node_id for t in open_tasks]))
    left = max(0.0, current.deadline - now)
    return f"round {current.number}: waiting for {names} (deadline in {left:.0f} s)"


def _setup_line(
    session: Session, run: Run, kind: TaskKind, what: str, online: int, now: float
) -> str:
    live = _open(session, run, kind)
    if live:
        names = ", ".join(_names(session, [t.node_id for t in live]))
        return f"{what}: waiting for {names}"
    if run.custodian:
        return f"{what}: waiting for custodian {run.custodian} to come online"
    return f"{what}: waiting for a site ({online} of {run.min_clients} online)"


def site_results(session: Session, run: Run, now: float) -> list[tuple[str, str, dict[str, float]]]:
    """Per site asked to audit: (site, audit state, final-model metrics on its held-out rows)."""
    from coordinator.schema import SiteAudit

    summaries = {
        a.node_id: a.summary
        for a in session.scalars(select(SiteAudit).where(SiteAudit.run_id == run.id))
    }
    results = []
    for task in session.scalars(
        select(Task).where(Task.run_id == run.id, Task.kind == TaskKind.AUDIT)
    ):
        if task.state == TaskState.DONE:
            state = "in"
        elif task.state == TaskState.REFUSED:
            state = "refused"
        elif task.state in _LIVE and now < task.deadline:
            state = "waiting"
        else:
            state = "missing"
        summary = summaries.get(task.node_id)
        raw = summary.get("holdout_metrics", {}) if isinstance(summary, dict) else {}
        metrics = {
            str(k): float(v)
            for k, v in (raw if isinstance(raw, dict) else {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        results.append((_names(session, [task.node_id])[0], state, metrics))
    return sorted(results)
