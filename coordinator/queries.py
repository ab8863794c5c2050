"""Reads and writes of run and task rows that several coordinator modules share."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from coordinator.schema import Institution, Node, Task, TaskState, Update

LIVE = (TaskState.PENDING, TaskState.DELIVERED)
"""States of a task a site may still act on."""


def cancel_open_tasks(session: Session, run_id: str) -> None:
    """Cancel the run's tasks no site has finished: a stopped or failed run hands out nothing."""
    cancel_live_tasks(session, Task.run_id == run_id)


def cancel_live_tasks(session: Session, *where: ColumnElement[bool]) -> int:
    """Cancel the live tasks matching ``where`` (a run's, a revoked node's); how many."""
    tasks = list(session.scalars(select(Task).where(Task.state.in_(LIVE), *where)))
    for task in tasks:
        task.state = TaskState.CANCELLED
    return len(tasks)


def summed_updates(
    session: Session, run_id: str, round_number: int, closed_at: float
) -> list[Update]:
    """The updates of a round its aggregate sums: those of sites not revoked when it closed.

    A site revoked while the round was open is neither summed nor counted (its credentials
    were withdrawn, and with them what it sent); one revoked later keeps its place in the
    aggregate already made. The scheduler closes rounds with this list and the hand-out
    lists it as the aggregate's signed manifest, so the two always agree.
    """
    return list(
        session.scalars(
            select(Update)
            .join(Node, Node.id == Update.node_id)
            .where(
                Update.run_id == run_id,
                Update.round == round_number,
                or_(Node.revoked_at == 0.0, Node.revoked_at > closed_at),
            )
            .order_by(Update.node_id)
        )
    )


def site_names(session: Session, node_ids: Iterable[str] | None = None) -> dict[str, str]:
    """Node id → institution name in one query, for ``node_ids`` (every node when None)."""
    query = select(Node.id, Institution.name).join(
        Institution, Node.institution_id == Institution.id
    )
    if node_ids is not None:
        query = query.where(Node.id.in_(sorted(set(node_ids))))
    return {str(node_id): str(name) for node_id, name in session.execute(query).all()}


def site_name(session: Session, node: Node) -> str:
    """The institution name of ``node`` ("" when it has none; every enrolled node has one)."""
    institution = session.get(Institution, node.institution_id)
    return institution.name if institution is not None else ""
