"""The operators' domain: runs and nodes, behind the admin servicer (coordinator/services.py).

Each job lives in its own module: creating a run (coordinator/run_creation.py), showing
one (coordinator/run_views.py), and handing out models, log pages and reports
(coordinator/exports.py). Listing, stopping and watching runs, nodes and metrics live here.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator import auditlog
from coordinator.errors import FailedPrecondition, Unavailable
from coordinator.exports import Exports
from coordinator.hub import Hub
from coordinator.metrics import CoordinatorMetrics
from coordinator.queries import cancel_open_tasks
from coordinator.run_creation import RunCreation
from coordinator.run_views import find_run, run_info
from coordinator.schema import Institution, Node, Run, RunState
from protos import admin_pb2, common_pb2


class AdminService:
    """What operators and auditors may do. Raises a :class:`CohortError` on bad input."""

    def __init__(
        self, hub: Hub, enrolment_required: bool = False, metrics: CoordinatorMetrics | None = None
    ) -> None:
        self.hub = hub
        self.started = time.time()
        self.registry = metrics or CoordinatorMetrics(hub)
        self.creation = RunCreation(hub, enrolment_required)
        self.exports = Exports(hub)

    def list_runs(self) -> admin_pb2.ListRunsReply:
        """Every run, newest first, in brief."""
        with self.hub.db.transaction() as session:
            runs = session.scalars(select(Run).order_by(Run.created_at.desc())).all()
            return admin_pb2.ListRunsReply(runs=[self._info(session, r, brief=True) for r in runs])

    def get_run(self, run_id: str) -> admin_pb2.RunInfo:
        """One run in full; NotFound for an unknown id."""
        with self.hub.db.transaction() as session:
            return self._info(session, find_run(session, run_id))

    def stop_run(self, run_id: str, reason: str, actor: str) -> admin_pb2.RunInfo:
        """Stop a run that has not ended, cancel its open tasks, and audit who and why."""
        with self.hub.lock, self.hub.db.transaction() as session:
            run = find_run(session, run_id)
            if run.state.ended:
                raise FailedPrecondition(f"run {run_id} has already ended ({run.state.value})")
            run.state = RunState.STOPPED
            run.ended_at = time.time()
            run.failure_reason = reason or "stopped by operator"
            cancel_open_tasks(session, run.id)
            auditlog.append(
                session,
                "run.stopped",
                run_id=run.id,
                actor=actor,
                details={"reason": run.failure_reason},
            )
            info = self._info(session, run)
        self.hub.notify()
        return info

    async def watch_run(self, run_id: str) -> AsyncIterator[admin_pb2.RunEvent]:
        """Yield a snapshot at once, then each time the run changes, until it has ended.

        An async generator on the server's event loop: between changes a watch holds no
        thread, and a watcher that leaves cancels it at once (issue 14). Each snapshot is
        read on the loop's executor.
        """
        loop = asyncio.get_running_loop()
        last = b""
        while True:
            seen = self.hub.generation
            info = await loop.run_in_executor(None, self.get_run, run_id)
            encoded = info.SerializeToString(deterministic=True)
            if encoded != last:
                last = encoded
                yield admin_pb2.RunEvent(
                    time_unix=time.time(),
                    kind="snapshot",
                    message=common_pb2.RunState.Name(info.state),
                    run=info,
                )
            if info.state in (
                common_pb2.RUN_STATE_COMPLETED,
                common_pb2.RUN_STATE_FAILED,
                common_pb2.RUN_STATE_STOPPED,
            ):
                return
            if self.hub.closing.is_set():
                # Not a clean end: a watcher would read that as the run's end (review).
                raise Unavailable("the coordinator is stopping; watch again when it is back")
            await self.hub.wait_async(1.0, since=seen)

    def metrics(self) -> admin_pb2.MetricsReply:
        """The registry /metrics exposes, flattened (see coordinator.metrics)."""
        return admin_pb2.MetricsReply(values=self.registry.values())

    def list_nodes(self) -> admin_pb2.ListNodesReply:
        """Every enrolled node, by institution, with whether it was seen recently."""
        cutoff = time.time() - self.hub.limits.offline_after_seconds
        with self.hub.db.transaction() as session:
            rows = session.execute(
                select(Node, Institution.name)
                .join(Institution, Node.institution_id == Institution.id)
                .order_by(Institution.name)
            )
            return admin_pb2.ListNodesReply(
                nodes=[
                    admin_pb2.NodeInfo(
                        node_id=node.id,
                        site_name=name,
                        online=node.last_seen >= cutoff,
                        last_seen_unix=node.last_seen,
                        x25519_fingerprint=hashlib.sha256(node.x25519_public_key).hexdigest()[:32]
                        if node.x25519_public_key
                        else "",
                    )
                    for node, name in rows
                ]
            )

    def _info(self, session: Session, run: Run, brief: bool = False) -> admin_pb2.RunInfo:
        return run_info(session, run, self.hub.limits.offline_after_seconds, brief)
