"""Round scheduler: moves each run through key generation, initial model, rounds and audits."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator import auditlog, provenance, refusals
from coordinator.hub import Hub
from coordinator.identity import choose_participants
from coordinator.queries import cancel_open_tasks
from coordinator.schema import (
    ModelVersion,
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
from coordinator.waiting import waiting_for

log = logging.getLogger(__name__)

MAX_ROUND_ATTEMPTS = 3
SETUP_ATTEMPTS = 3
# How long a run waits for its sites' SHAP audits once training ends (run config key
# "audit_deadline_seconds"); after it the run completes and names the sites whose are missing.
AUDIT_DEADLINE_SECONDS = 600.0
# How long a pending run waits for enough sites before it gives up with a reason (run
# config key "start_deadline_seconds").
START_DEADLINE_SECONDS = 24 * 3600.0


def _config_seconds(run: Run, key: str, default: float) -> float:
    value = run.config.get(key, default)
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return seconds if np.isfinite(seconds) and seconds > 0 else default


def audit_deadline(run: Run) -> float:
    """The run's stated audit deadline in seconds (config ``audit_deadline_seconds``)."""
    return _config_seconds(run, "audit_deadline_seconds", AUDIT_DEADLINE_SECONDS)


def start_deadline(run: Run) -> float:
    """How long the run may stay pending (config ``start_deadline_seconds``, default 1 day)."""
    return _config_seconds(run, "start_deadline_seconds", START_DEADLINE_SECONDS)


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


def weighted_metrics(updates: Sequence[Update]) -> dict[str, float]:
    """Example-weighted mean of every numeric metric the sites reported."""
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, float] = defaultdict(float)
    for update in updates:
        for key, value in (update.metrics or {}).items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if np.isfinite(value):
                sums[key] += float(value) * update.num_examples
                weights[key] += update.num_examples
    return {k: sums[k] / weights[k] for k in sums if weights[k] > 0}


class RoundScheduler:
    """Advances every active run; runs in its own thread and after each state change."""

    def __init__(self, hub: Hub, tick_seconds: float = 0.25) -> None:
        self.hub = hub
        self.tick_seconds = tick_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the scheduling loop on a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="round-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the loop and wait (up to 10 s) for it."""
        self._stop.set()
        self.hub.notify()
        if self._thread:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        streak = 0
        while not self._stop.is_set():
            seen = self.hub.generation
            try:
                moved = self.advance_all()
            except Exception:
                log.exception("scheduler tick failed")
                moved = False
            streak = streak + 1 if moved else 0
            if moved and streak < 100:
                # One step leads to the next (a closed round opens the next one): take it
                # now rather than a tick later. Each step is a state change, so this ends;
                # the cap only keeps a step that reports a change it did not make from
                # spinning.
                continue
            streak = 0
            # Wake on any change (an accepted update closes its round at once) or the tick.
            self.hub.wait(self.tick_seconds, since=seen)

    def advance_all(self, now: float | None = None) -> bool:
        """One pass over every active run; True when any run or site changed state."""
        now = time.time() if now is None else now
        with self.hub.lock:
            with self.hub.db.transaction() as session:
                active = session.scalars(
                    select(Run.id).where(Run.state.in_([RunState.PENDING, RunState.RUNNING]))
                ).all()
            moved = self._mark_presence(now)
            for run_id in active:
                with self.hub.db.transaction() as session:
                    run = session.get(Run, run_id)
                    if run is not None:
                        moved |= self._advance(session, run, now)
        if moved:
            self.hub.notify()
        return moved

    def _mark_presence(self, now: float) -> bool:
        """Audit each site going offline (no poll or heartbeat lately) and coming back."""
        cutoff = now - self.hub.limits.offline_after_seconds
        changed = False
        self.hub.presence.flush(self.hub.db)  # batched signs of life (hub.Presence)
        with self.hub.db.transaction() as session:
            for node in session.scalars(select(Node)):
                online = node.last_seen >= cutoff
                if online != node.online:
                    node.online = online
                    changed = True
                    auditlog.append(
                        session,
                        "site.online" if online else "site.offline",
                        actor=node.id,
                        details={"last_seen": node.last_seen},
                    )
        return changed

    # -- one run -------------------------------------------------------------------------

    def _advance(self, session: Session, run: Run, now: float) -> bool:
        online = online_nodes(session, self.hub, now)
        if run.state == RunState.PENDING and len(online) >= run.min_clients:
            # Schema agreement before anything is dealt: pinned now, misfits left out.
            provenance.pin_schema(session, run, online)
        # Sites whose data does not fit the run, or that refused its model, take no part.
        online = provenance.admissible(session, run, online, now)
        if len(online) < run.min_clients:
            hopeless = provenance.impossible(session, run)
            if hopeless is not None:
                self._fail(session, run, now, hopeless)
                return True
        if run.state == RunState.PENDING:
            if now - run.created_at > start_deadline(run):
                self._fail(
                    session,
                    run,
                    now,
                    f"gave up after {start_deadline(run):.0f} s pending (start_deadline_seconds): "
                    + waiting_for(session, run, now, self.hub.limits.offline_after_seconds),
                )
                return True
            if len(online) < run.min_clients:
                return False
            details: dict[str, object] = {"online_sites": len(online)}
            if run.secure == "paillier":
                # A secure run's sites are fixed now: the key is sealed to these and no
                # others, and only sites with a signed identity can be among them.
                chosen = choose_participants(session, run, online)
                if len(chosen) < run.min_clients:
                    return False
                run.participants = [n.id for n in chosen]
                details["participants"] = {n.id: self._site_name(session, n) for n in chosen}
            run.state = RunState.RUNNING
            run.started_at = now
            auditlog.append(session, "run.started", run_id=run.id, details=details)
            return True
        if run.secure == "paillier" and not run.public_key:
            return self._setup_task(session, run, TaskKind.KEYGEN, online, now)
        if not run.initial_model_sha256:
            return self._setup_task(session, run, TaskKind.INIT, online, now)
        if run.final_model_sha256:
            # Trained; the run is RUNNING in its audit phase until its audits are in.
            return self._check_audits(session, run, now)
        current = session.scalar(
            select(Round).where(Round.run_id == run.id, Round.number == run.current_round)
        )
        if current is None or current.state == RoundState.CLOSED:
            if run.current_round >= run.rounds:
                self._finish_training(session, run, now)
                return True
            return self._open_round(session, run, run.current_round + 1, online, now)
        moved = self._check_round(session, run, current, online, now)
        if current.model_sha256 and run.current_round < run.rounds:
            # Closed (it has its aggregate): the next round opens in the same pass and
            # commit, so its tasks reach the sites a whole scheduler pass sooner (issue 14).
            self._open_round(session, run, run.current_round + 1, online, now)
        return moved

    def _custodian_candidates(self, session: Session, run: Run, online: list[Node]) -> list[Node]:
        if run.secure == "paillier":
            online = [n for n in online if n.id in run.participants]
        if not run.custodian:
            return online
        return [n for n in online if self._site_name(session, n) == run.custodian]

    @classmethod
    def _node_name(cls, session: Session, node_id: str) -> str:
        node = session.get(Node, node_id)
        return (cls._site_name(session, node) if node is not None else "") or node_id

    @staticmethod
    def _site_name(session: Session, node: Node) -> str:
        from coordinator.schema import Institution

        institution = session.get(Institution, node.institution_id)
        return institution.name if institution else ""

    def _setup_task(
        self, session: Session, run: Run, kind: TaskKind, online: list[Node], now: float
    ) -> bool:
        """KEYGEN and INIT go to one site (the custodian where named); retried elsewhere."""
        tasks = list(session.scalars(select(Task).where(Task.run_id == run.id, Task.kind == kind)))
        live = [t for t in tasks if t.state in (TaskState.PENDING, TaskState.DELIVERED)]
        if any(now < task.deadline for task in live):
            return False
        mark_missed(session, run, live, kind=kind.value)
        if len(tasks) >= SETUP_ATTEMPTS:
            what = "generate the run's keys" if kind == TaskKind.KEYGEN else "send initial weights"
            self._fail(
                session,
                run,
                now,
                f"no site could {what} after {len(tasks)} attempts"
                + refusals.latest_reasons(session, run.id),
            )
            return True
        candidates = self._custodian_candidates(session, run, online)
        if kind == TaskKind.INIT and run.secure == "paillier":
            # The key custodian also supplies the initial model: one site starts the run.
            keygen = session.scalar(
                select(Task).where(
                    Task.run_id == run.id,
                    Task.kind == TaskKind.KEYGEN,
                    Task.state == TaskState.DONE,
                )
            )
            if keygen is not None:
                candidates = [n for n in online if n.id == keygen.node_id] or candidates
        if len(online) < run.min_clients or not candidates:
            return False
        tried = {t.node_id for t in tasks}
        fresh = [n for n in candidates if n.id not in tried] or candidates
        node = fresh[0]
        provenance.record(session, run, node.id, now)
        session.add(new_task(run, node.id, kind, 0, now + run.round_deadline))
        auditlog.append(
            session, "task.assigned", run_id=run.id, actor=node.id, details={"kind": kind.value}
        )
        return True

    def _eligible(self, session: Session, run: Run, online: list[Node]) -> list[Node]:
        if run.secure != "paillier":
            return online
        from coordinator.schema import SealedKey

        keyed = set(session.scalars(select(SealedKey.node_id).where(SealedKey.run_id == run.id)))
        return [n for n in online if n.id in keyed]

    def _open_round(
        self, session: Session, run: Run, number: int, online: list[Node], now: float
    ) -> bool:
        eligible = self._eligible(session, run, online)
        if len(eligible) < run.min_clients:
            return False
        chosen = select_nodes(
            [n.id for n in eligible],
            fraction=run.fraction,
            min_clients=run.min_clients,
            max_clients=run.max_clients,
            seed=f"{run.id}:{number}",
        )
        session.add(
            Round(run_id=run.id, number=number, deadline=now + run.round_deadline, opened_at=now)
        )
        for node_id in chosen:
            provenance.record(session, run, node_id, now)
            session.add(new_task(run, node_id, TaskKind.TRAIN, number, now + run.round_deadline))
        run.current_round = number
        run.round_attempts = 1
        auditlog.append(
            session, "round.opened", run_id=run.id, details={"round": number, "selected": chosen}
        )
        return True

    def _check_round(
        self, session: Session, run: Run, current: Round, online: list[Node], now: float
    ) -> bool:
        tasks = list(
            session.scalars(
                select(Task).where(
                    Task.run_id == run.id, Task.round == current.number, Task.kind == TaskKind.TRAIN
                )
            )
        )
        open_tasks = [t for t in tasks if t.state in (TaskState.PENDING, TaskState.DELIVERED)]
        updates = list(
            session.scalars(
                select(Update).where(Update.run_id == run.id, Update.round == current.number)
            )
        )
        quorum = int(run.config.get("quorum", run.min_clients))  # type: ignore[call-overload]
        if not open_tasks and len(updates) >= quorum:
            self._close_round(session, run, current, updates, now)
            return True
        if now < current.deadline and open_tasks:
            return False
        mark_missed(session, run, open_tasks, round=current.number)
        if len(updates) >= quorum:
            self._close_round(session, run, current, updates, now)
            return True
        return self._retry_round(session, run, current, updates, online, now)

    def _retry_round(
        self,
        session: Session,
        run: Run,
        current: Round,
        updates: list[Update],
        online: list[Node],
        now: float,
    ) -> bool:
        """Keep the updates already accepted, ask other sites for the rest, up to a limit."""
        quorum = int(run.config.get("quorum", run.min_clients))  # type: ignore[call-overload]
        if run.round_attempts >= MAX_ROUND_ATTEMPTS:
            self._fail(
                session,
                run,
                now,
                f"round {current.number} got {len(updates)} of the {quorum} updates it "
                f"needs in {run.round_attempts} attempts"
                + refusals.latest_reasons(session, run.id),
            )
            return True
        submitted = {u.node_id for u in updates}
        eligible = [n.id for n in self._eligible(session, run, online) if n.id not in submitted]
        if len(submitted) + len(eligible) < quorum:
            if now < current.deadline + run.round_deadline:
                return False  # wait one more deadline for sites to come back
            self._fail(
                session,
                run,
                now,
                f"round {current.number} needs {quorum} sites; only "
                f"{len(submitted) + len(eligible)} are online and keyed",
            )
            return True
        run.round_attempts += 1
        current.deadline = now + run.round_deadline
        for node_id in eligible:
            provenance.record(session, run, node_id, now)
            session.add(new_task(run, node_id, TaskKind.TRAIN, current.number, current.deadline))
        auditlog.append(
            session,
            "round.retried",
            run_id=run.id,
            details={"round": current.number, "attempt": run.round_attempts, "selected": eligible},
        )
        return True

    # -- closing a round -----------------------------------------------------------------

    def _close_round(
        self, session: Session, run: Run, current: Round, updates: list[Update], now: float
    ) -> None:
        total_weight = sum(u.weight for u in updates)
        aggregate = scheme_of(run).aggregate(self.hub, session, run, current.number, updates)
        sha, size, count, kind = aggregate.sha256, aggregate.size, aggregate.count, aggregate.kind
        session.add(
            ModelVersion(
                run_id=run.id,
                round=current.number,
                kind=kind,
                blob_sha256=sha,
                size=size,
                total_weight=total_weight,
                num_updates=len(updates),
                count=count,
                created_at=now,
            )
        )
        current.state = RoundState.CLOSED
        current.closed_at = now
        current.model_sha256 = sha
        current.total_weight = total_weight
        current.num_updates = len(updates)
        # Examples as the sites reported them: secure runs weigh by capped, encoded weights.
        current.metrics = weighted_metrics(updates) | {
            "examples": float(sum(int(u.num_examples) for u in updates))
        }
        auditlog.append(
            session,
            "round.closed",
            run_id=run.id,
            details={
                "round": current.number,
                "updates": len(updates),
                "total_weight": total_weight,
                "model_sha256": sha,
                "aggregation": kind.value,
                "sites": sorted(u.node_id for u in updates),
            },
        )
        if current.number >= run.rounds:
            self._finish_training(session, run, now)

    # -- ends ----------------------------------------------------------------------------

    def _finish_training(self, session: Session, run: Run, now: float) -> None:
        """The last round closed: fix the final model and ask each trained site to audit it.

        The run stays RUNNING (its audit phase, shown in ``waiting_for``) until every
        audit is in, refused, or past the run's audit deadline; then it completes.
        """
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
        audited = bool(run.config.get("audit", True)) and bool(participants)
        deadline = now + audit_deadline(run)
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
            self._complete(session, run, now)

    def _check_audits(self, session: Session, run: Run, now: float) -> bool:
        """Complete the run once no audit task is live (in, refused, or past its deadline)."""
        tasks = list(
            session.scalars(select(Task).where(Task.run_id == run.id, Task.kind == TaskKind.AUDIT))
        )
        live = [t for t in tasks if t.state in (TaskState.PENDING, TaskState.DELIVERED)]
        if any(now < t.deadline for t in live):
            return False
        mark_missed(session, run, live, kind=TaskKind.AUDIT.value)
        self._complete(session, run, now)
        return True

    def _complete(self, session: Session, run: Run, now: float) -> None:
        run.state = RunState.COMPLETED
        run.ended_at = now
        tasks = list(
            session.scalars(select(Task).where(Task.run_id == run.id, Task.kind == TaskKind.AUDIT))
        )
        received = sorted(t.node_id for t in tasks if t.state == TaskState.DONE)
        missing = sorted(
            self._node_name(session, t.node_id) for t in tasks if t.state != TaskState.DONE
        )
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

    def _fail(self, session: Session, run: Run, now: float, reason: str) -> None:
        run.state = RunState.FAILED
        run.ended_at = now
        run.failure_reason = reason
        cancel_open_tasks(session, run.id)
        auditlog.append(session, "run.failed", run_id=run.id, details={"reason": reason})
        log.warning("run %s failed: %s", run.id, reason)


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
