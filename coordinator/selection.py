"""Which sites get which task: online sites, round sampling, setup sites, task rows.

The scheduler (coordinator/scheduler.py) decides when a run moves; this module decides
who is asked. A secure run's sites are its fixed participants, and only those holding a
sealed key may train.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator import auditlog, provenance
from coordinator.hub import Hub
from coordinator.queries import site_name
from coordinator.schema import Node, Round, Run, SealedKey, Task, TaskKind, TaskState
from coordinator.schemes import scheme_of


def online_nodes(session: Session, hub: Hub, now: float) -> list[Node]:
    """Nodes seen within ``offline_after_seconds`` of ``now`` and not revoked, by id.

    A revoked node is never counted towards a quorum nor selected: its last heartbeat may
    be seconds old, yet it can no longer pull a task (coordinator/handout.py checks again).
    """
    cutoff = now - hub.limits.offline_after_seconds
    return list(
        session.scalars(
            select(Node).where(Node.last_seen >= cutoff, Node.revoked_at == 0.0).order_by(Node.id)
        )
    )


def select_nodes(
    candidates: Sequence[str], *, fraction: float, min_clients: int, max_clients: int, seed: str
) -> list[str]:
    """Sample ``max(min, ceil(fraction·n))`` candidates (capped at ``max``), reproducibly."""
    count = max(min_clients, int(np.ceil(fraction * len(candidates))))
    if max_clients:
        count = min(count, max_clients)
    count = min(count, len(candidates))
    return sorted(random.Random(seed).sample(sorted(candidates), count))


def new_task(run: Run, node_id: str, kind: TaskKind, round_number: int, deadline: float) -> Task:
    """A pending task row of ``kind`` for ``node_id`` (not yet added to the session)."""
    return Task(
        id=str(uuid.uuid4()),
        run_id=run.id,
        node_id=node_id,
        kind=kind,
        round=round_number,
        deadline=deadline,
    )


def mark_missed(session: Session, run: Run, tasks: Sequence[Task], **details: object) -> None:
    """Tasks whose deadline passed: the site is left out of that step, and the log says so."""
    for task in tasks:
        task.state = TaskState.MISSED
        auditlog.append(session, "task.missed", run_id=run.id, actor=task.node_id, details=details)


def eligible(session: Session, run: Run, online: list[Node]) -> list[Node]:
    """The online sites that may train: all of them, or a secure run's keyed participants."""
    if not scheme_of(run).encrypted:
        return online
    keyed = set(session.scalars(select(SealedKey.node_id).where(SealedKey.run_id == run.id)))
    return [n for n in online if n.id in keyed]


def setup_candidates(session: Session, run: Run, kind: TaskKind, online: list[Node]) -> list[Node]:
    """Who may generate the key (KEYGEN) or send the initial weights (INIT).

    The custodian where the run names one (among a secure run's participants); in a
    secure run the site that dealt the key also supplies the initial model.
    """
    candidates = online
    if scheme_of(run).encrypted:
        candidates = [n for n in candidates if n.id in run.participants]
    if run.custodian:
        candidates = [n for n in candidates if site_name(session, n) == run.custodian]
    if kind == TaskKind.INIT and scheme_of(run).encrypted:
        keygen = session.scalar(
            select(Task).where(
                Task.run_id == run.id,
                Task.kind == TaskKind.KEYGEN,
                Task.state == TaskState.DONE,
            )
        )
        if keygen is not None:
            candidates = [n for n in online if n.id == keygen.node_id] or candidates
    return candidates


def assign(
    session: Session,
    run: Run,
    node_id: str,
    kind: TaskKind,
    number: int,
    deadline: float,
    now: float,
    recorded: set[str] | None = None,
) -> None:
    """Hand ``node_id`` a task of ``kind``, recording the site's data provenance first.

    ``recorded``: the nodes whose provenance the run holds already, when the caller read
    them once for many tasks (:func:`open_round`).
    """
    if recorded is None or node_id not in recorded:
        provenance.record(session, run, node_id, now)
    session.add(new_task(run, node_id, kind, number, deadline))


def open_round(session: Session, run: Run, number: int, online: list[Node], now: float) -> bool:
    """Open round ``number`` with a reproducible sample of the eligible sites, if enough."""
    keyed = eligible(session, run, online)
    if len(keyed) < run.min_clients:
        return False
    chosen = select_nodes(
        [n.id for n in keyed],
        fraction=run.fraction,
        min_clients=run.min_clients,
        max_clients=run.max_clients,
        seed=f"{run.id}:{number}",
    )
    session.add(
        Round(run_id=run.id, number=number, deadline=now + run.round_deadline, opened_at=now)
    )
    recorded = provenance.recorded_nodes(session, run.id)
    for node_id in chosen:
        assign(
            session, run, node_id, TaskKind.TRAIN, number, now + run.round_deadline, now, recorded
        )
    run.current_round = number
    run.round_attempts = 1
    auditlog.append(
        session, "round.opened", run_id=run.id, details={"round": number, "selected": chosen}
    )
    return True
