"""The round scheduler: the state machine that moves each run from pending to its end.

Pending → running (a secure run fixes its participants) → key generation → initial model
→ rounds (open, close at quorum or deadline, retry, fail) → audit phase → completed.
Who is asked for each step is coordinator/selection.py's; the audit phase is
coordinator/audit_phase.py's; a round's aggregate is its scheme's (coordinator/schemes.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from coordinator import audit_phase, auditlog, provenance, refusals, selection
from coordinator.hub import Hub
from coordinator.identity import choose_participants
from coordinator.queries import cancel_open_tasks, site_name, summed_updates
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


def weighted_metrics(updates: Sequence[Update]) -> dict[str, float]:
    """Example-weighted mean of every numeric metric the sites reported."""
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, float] = defaultdict(float)
    for update in updates:
        for key, value in (update.metrics or {}).items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            product = float(value) * update.num_examples
            if np.isfinite(product):  # 1e308 x examples is inf: PostgreSQL's JSON refuses it
                sums[key] += product
                weights[key] += update.num_examples
    means = {k: sums[k] / weights[k] for k in sums if weights[k] > 0}
    return {k: v for k, v in means.items() if np.isfinite(v)}


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
            # Only the nodes whose flag is now wrong: a pass used to load every node.
            flipped = select(Node).where(
                or_(
                    and_(Node.online.is_(True), Node.last_seen < cutoff),
                    and_(Node.online.is_(False), Node.last_seen >= cutoff),
                )
            )
            for node in session.scalars(flipped):
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
        online = selection.online_nodes(session, self.hub, now)
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
            start_deadline = run.settings().start_deadline
            if now - run.created_at > start_deadline:
                self._fail(
                    session,
                    run,
                    now,
                    f"gave up after {start_deadline:.0f} s pending (start_deadline_seconds): "
                    + waiting_for(session, run, now, self.hub.limits.offline_after_seconds),
                )
                return True
            if len(online) < run.min_clients:
                return False
            details: dict[str, object] = {"online_sites": len(online)}
            if scheme_of(run).encrypted:
                # A secure run's sites are fixed now: the key is sealed to these and no
                # others, and only sites with a signed identity can be among them.
                chosen = choose_participants(session, run, online)
                if len(chosen) < run.min_clients:
                    return False
                run.participants = [n.id for n in chosen]
                details["participants"] = {n.id: site_name(session, n) for n in chosen}
            run.state = RunState.RUNNING
            run.started_at = now
            from coordinator.report import code_version

            details["code_version"] = code_version()  # the report states the run's, not its own
            auditlog.append(session, "run.started", run_id=run.id, details=details)
            # Its first setup task goes out in this same pass and commit, not the next.
            first = TaskKind.KEYGEN if scheme_of(run).encrypted else TaskKind.INIT
            self._setup_task(session, run, first, online, now)
            return True
        if scheme_of(run).encrypted and not run.public_key:
            return self._setup_task(session, run, TaskKind.KEYGEN, online, now)
        if not run.initial_model_sha256:
            return self._setup_task(session, run, TaskKind.INIT, online, now)
        if run.final_model_sha256:
            # Trained; the run is RUNNING in its audit phase until its audits are in.
            return audit_phase.check_audits(session, run, now)
        current = session.scalar(
            select(Round).where(Round.run_id == run.id, Round.number == run.current_round)
        )
        if current is None or current.state == RoundState.CLOSED:
            if run.current_round >= run.rounds:
                audit_phase.finish_training(session, run, now)
                return True
            return selection.open_round(session, run, run.current_round + 1, online, now)
        moved = self._check_round(session, run, current, online, now)
        if current.model_sha256 and run.current_round < run.rounds:
            # Closed (it has its aggregate): the next round opens in the same pass and
            # commit, so its tasks reach the sites a whole scheduler pass sooner (issue 14).
            selection.open_round(session, run, run.current_round + 1, online, now)
        return moved

    def _setup_task(
        self, session: Session, run: Run, kind: TaskKind, online: list[Node], now: float
    ) -> bool:
        """KEYGEN and INIT go to one site (the custodian where named); retried elsewhere."""
        tasks = list(session.scalars(select(Task).where(Task.run_id == run.id, Task.kind == kind)))
        live = [t for t in tasks if t.state in (TaskState.PENDING, TaskState.DELIVERED)]
        if any(now < task.deadline for task in live):
            return False
        selection.mark_missed(session, run, live, kind=kind.value)
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
        candidates = selection.setup_candidates(session, run, kind, online)
        if len(online) < run.min_clients or not candidates:
            return False
        tried = {t.node_id for t in tasks}
        fresh = [n for n in candidates if n.id not in tried] or candidates
        node = fresh[0]
        selection.assign(session, run, node.id, kind, 0, now + run.round_deadline, now)
        auditlog.append(
            session, "task.assigned", run_id=run.id, actor=node.id, details={"kind": kind.value}
        )
        return True

    def _check_round(
        self, session: Session, run: Run, current: Round, online: list[Node], now: float
    ) -> bool:
        live = select(Task).where(
            Task.run_id == run.id,
            Task.round == current.number,
            Task.kind == TaskKind.TRAIN,
            Task.state.in_([TaskState.PENDING, TaskState.DELIVERED]),
        )
        if now < current.deadline and session.scalar(live.limit(1)) is not None:
            # Still waiting: a round with a live task closes only at its deadline. Asked
            # first, with one row, so a pass woken by an accepted update loads neither
            # the round's tasks nor its updates (issue 14: O(sites) rows a pass).
            return False
        open_tasks = list(session.scalars(live))
        # A site revoked after sending its update is neither summed nor counted.
        updates = summed_updates(session, run.id, current.number, closed_at=now)
        quorum = run.settings().quorum
        if not open_tasks and len(updates) >= quorum:
            self._close_round(session, run, current, updates, now)
            return True
        selection.mark_missed(session, run, open_tasks, round=current.number)
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
        quorum = run.settings().quorum
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
        eligible = [n.id for n in selection.eligible(session, run, online) if n.id not in submitted]
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
            selection.assign(
                session, run, node_id, TaskKind.TRAIN, current.number, current.deadline, now
            )
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
                # The report's round metrics are held to this (coordinator/report_chain.py).
                "metrics": current.metrics,
            },
        )
        if current.number >= run.rounds:
            audit_phase.finish_training(session, run, now)

    # -- ends ----------------------------------------------------------------------------

    def _fail(self, session: Session, run: Run, now: float, reason: str) -> None:
        run.state = RunState.FAILED
        run.ended_at = now
        run.failure_reason = reason
        cancel_open_tasks(session, run.id)
        auditlog.append(session, "run.failed", run_id=run.id, details={"reason": reason})
        log.warning("run %s failed: %s", run.id, reason)
