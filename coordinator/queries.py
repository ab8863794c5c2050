"""Reads and writes of run and task rows that several coordinator modules share."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.schema import Institution, Node, Task, TaskState

LIVE = (TaskState.PENDING, TaskState.DELIVERED)
"""States of a task a site may still act on."""


def cancel_open_tasks(session: Session, run_id: str) -> None:
    """Cancel the run's tasks no site has finished: a stopped or failed run hands out nothing."""
    for task in session.scalars(select(Task).where(Task.run_id == run_id, Task.state.in_(LIVE))):
        task.state = TaskState.CANCELLED


def site_name(session: Session, node: Node) -> str:
    """The institution name of ``node`` ("" when it has none; every enrolled node has one)."""
    institution = session.get(Institution, node.institution_id)
    return institution.name if institution is not None else ""
