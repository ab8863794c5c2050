"""Task hand-out: long polls, the task a site receives, final models and model blobs."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from sqlalchemy import CursorResult, and_, bindparam, case, or_, select, update
from sqlalchemy.orm import Session

from coordinator import auditlog, identity, manifests, privacy, threshold
from coordinator.access import REVOKED
from coordinator.errors import (
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from coordinator.hub import Hub
from coordinator.queries import LIVE, site_name
from coordinator.schema import (
    ModelVersion,
    Node,
    Run,
    RunState,
    SealedKey,
    Task,
    TaskKind,
    TaskState,
)
from coordinator.schemes import scheme_of, weight_cap
from coordinator.task_watch import poll_seconds
from crypto import identity as crypto_identity
from protos import common_pb2, federation_pb2, serde

# A node's live tasks with their runs, oldest first: one statement per poll that looks.
# Entities, since the hand-out's message needs both (issue 14: the task and the run were
# two more statements). A poll looks only after its node's task mark moved, and a node
# has few live tasks, so the Run rows it loads (config, schema, key) are few.
_LIVE_TASKS = (
    select(Task, Run)
    .join(Run, Run.id == Task.run_id)
    .where(
        Task.node_id == bindparam("node_id"),
        Task.state.in_(LIVE),
        Task.deadline > bindparam("now"),
        or_(
            Run.state == RunState.RUNNING,
            and_(Task.kind == TaskKind.AUDIT, Run.state == RunState.COMPLETED),
        ),
    )
    .order_by(Task.created_at, Task.id)  # ties (one commit's tasks) in a fixed order
    .limit(2)  # the oldest, and whether there is another
)

_KIND_TO_PROTO = {
    TaskKind.INIT: federation_pb2.TASK_KIND_INIT,
    TaskKind.TRAIN: federation_pb2.TASK_KIND_TRAIN,
    TaskKind.KEYGEN: federation_pb2.TASK_KIND_KEYGEN,
    TaskKind.AUDIT: federation_pb2.TASK_KIND_AUDIT,
}


class TaskHandout:
    """What a site is asked to do, and the models it may fetch for it."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        # What a fetch was allowed on: (run, node) takes part, (run, sha256) is the run's.
        # Each fact only ever stays true (no task, model or update row is deleted; a round
        # once aggregated stays so), so later fetches skip three queries; the node's
        # credential is still checked at every call (issue 14).
        self._involved: set[tuple[str, str]] = set()
        self._models: set[tuple[str, str]] = set()
        self._granted_lock = threading.Lock()

    async def pull_task(self, node_id: str, wait_seconds: float) -> federation_pb2.Task:
        """Long poll: the node's oldest live task, or NONE once ``wait_seconds`` pass.

        A coroutine on the server's event loop: while parked it holds no thread (issue 14:
        1,000 sites parked 1,000 gRPC threads); each database step runs on the loop's
        executor (the server's thread pool). A caller that leaves cancels it, and the
        coordinator's stop wakes it.
        """
        wait = poll_seconds(wait_seconds, self.hub.limits.max_poll_seconds)
        loop = asyncio.get_running_loop()
        until = time.monotonic() + wait
        touched = time.monotonic()
        moved = True
        while True:
            if moved:
                # The database is asked again only when this node's tasks (or a run) moved.
                mark = self.hub.tasks.mark(node_id)
                if not self.hub.tasks.known_idle(node_id, mark):
                    message = await loop.run_in_executor(None, self._deliver, node_id, mark)
                    if message is not None:
                        return message
                    self.hub.tasks.found_nothing(node_id, mark)
            remaining = until - time.monotonic()
            if remaining <= 0 or self.hub.closing.is_set():
                return federation_pb2.Task(kind=federation_pb2.TASK_KIND_NONE)
            moved = await self.hub.tasks.wait(node_id, mark, min(remaining, 1.0))
            if time.monotonic() - touched > 5.0:
                # A parked poll is a sign of life; written now and then, not at every wake-up.
                touched = time.monotonic()
                self.hub.presence.seen(node_id, time.time())
            if self.hub.presence.due():
                await loop.run_in_executor(None, self.hub.presence.flush, self.hub.db)

    def pull_task_blocking(self, node_id: str, wait_seconds: float) -> federation_pb2.Task:
        """:meth:`pull_task` for a caller without an event loop (tests, scripts)."""
        return asyncio.run(self.pull_task(node_id, wait_seconds))

    def _deliver(self, node_id: str, mark: tuple[int, int]) -> federation_pb2.Task | None:
        """The node's next live task, marked delivered; None when it has none.

        Not under the hub lock: a woken poll used to wait for the scheduler's next pass
        to let go of it (30-60 ms a round, issue 14). The task is marked delivered only if
        it is still live when the write lands (one conditional UPDATE), so a task the
        scheduler cancelled or missed meanwhile is never handed out; anything else the
        message holds was read from rows that only grow or that the task's own state
        guards.
        """
        with self.hub.db.transaction() as session:
            # Credentials were checked when the call began; a poll parks for up to
            # max_poll_seconds, and a node revoked meanwhile gets no task.
            if not self.hub.credentials.is_good(node_id):
                epoch = self.hub.credentials.mark()
                node = session.get(Node, node_id)
                if node is not None and node.revoked_at:
                    raise Unauthenticated(REVOKED)
                if node is not None:
                    self.hub.credentials.remember_good(epoch, node)
            found, sole = self._next_task(session, node_id)
            if found is None:
                return None
            # The run stays referenced, so the message's session.get finds it loaded.
            task, _run = found
            message = self._task_message(session, task)
            now = time.time()
            marked: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                update(Task)
                .where(Task.id == task.id, Task.state.in_(LIVE))
                .values(
                    state=TaskState.DELIVERED,
                    delivered_at=case(
                        (Task.state == TaskState.PENDING, now), else_=Task.delivered_at
                    ),
                )
                .execution_options(synchronize_session=False)
            )
            if marked.rowcount != 1:
                # Lost to the scheduler: that task left the live states, which moves no
                # poll (coordinator/task_watch.py), yet another of the node's tasks may
                # be live. Moving the mark makes this poll look again, not note it idle.
                self.hub.tasks.bump({node_id})
                return None
            task_id = task.id
        if sole:
            self.hub.tasks.handed_out_sole(node_id, mark, task_id)
        return message

    @staticmethod
    def _next_task(session: Session, node_id: str) -> tuple[tuple[Task, Run] | None, bool]:
        """The node's oldest deliverable task with its run, and whether it is its only one."""
        rows = session.execute(_LIVE_TASKS, {"node_id": node_id, "now": time.time()})
        deliverable = [(task, run) for task, run in rows]
        if not deliverable:
            return None, False
        return deliverable[0], len(deliverable) == 1

    def _task_message(self, session: Session, task: Task) -> federation_pb2.Task:
        run = session.get(Run, task.run_id)
        assert run is not None
        config = run.config | {
            "model": run.model,
            "local_epochs": run.config.get("local_epochs", 1),
            "strategy": run.strategy,
            "rounds": run.rounds,
        }
        if run.data_schema:
            # The pinned schema: sites take their columns in its order, by name.
            config["schema"] = json.loads(run.data_schema)
        message = federation_pb2.Task(
            kind=_KIND_TO_PROTO[task.kind],
            task_id=task.id,
            run_id=run.id,
            round=task.round,
            deadline_unix=task.deadline,
            secure=serde.scheme_to_proto(run.secure),
        )
        self._secure_fields(session, run, task.node_id, message)
        plan = privacy.plan_to_proto(run.config)
        if plan is not None:
            message.privacy.CopyFrom(plan)
        if task.kind == TaskKind.KEYGEN:
            # The custodian deals the key, so the task names it, even before a statement.
            node = session.get(Node, task.node_id)
            message.custodian = run.custodian or (site_name(session, node) if node else "")
        if task.kind == TaskKind.TRAIN and scheme_of(run).encrypted:
            selected = len(
                session.scalars(
                    select(Task.id).where(
                        Task.run_id == run.id, Task.round == task.round, Task.kind == TaskKind.TRAIN
                    )
                ).all()
            )
            message.encoding.weight_cap = weight_cap(run, selected)
        if task.kind == TaskKind.TRAIN:
            self._attach_model(session, run, task.round, message)
        elif task.kind == TaskKind.AUDIT:
            # The audit explains and scores the final model: every round's aggregate.
            self._attach_model(session, run, run.rounds + 1, message)
        message.config_json = json.dumps(config, default=str)
        return message

    @staticmethod
    def _secure_fields(
        session: Session, run: Run, node_id: str, message: federation_pb2.Task
    ) -> None:
        """Encoding, public key and this node's sealed private key, for secure runs."""
        if not scheme_of(run).encrypted:
            return
        enc = run.settings().encoding
        message.encoding.CopyFrom(
            common_pb2.EncodingParams(
                clip=enc.clip,
                bits=enc.bits,
                max_weight=enc.max_weight,
                key_bits=enc.key_bits,
                key_id=run.key_id,
                public_key=run.public_key,
                key_fingerprint=run.key_fingerprint,
            )
        )
        sealed = session.scalar(
            select(SealedKey).where(SealedKey.run_id == run.id, SealedKey.node_id == node_id)
        )
        if sealed is not None:
            message.sealed_private_key = sealed.sealed
        # Sites trust none of this unless it matches what they pinned (client/keys.py).
        identity.add_participants(session, run, message)
        message.custodian = run.custodian
        if run.key_statement:
            message.key_statement.statement = run.key_statement
            message.key_statement.signature = run.key_statement_signature
            dealing = crypto_identity.KeyDealing.from_bytes(run.key_statement)
            message.key_statement.custodian = dealing.custodian
            message.custodian = dealing.custodian
        threshold.attach(session, run, message)

    def final_model(self, node_id: str, run_id: str) -> federation_pb2.Task:
        """References to a completed run's final model, for a site that took part."""
        # Under the hub lock: the "model.exported" row takes the next audit sequence number.
        with self.hub.lock, self.hub.db.transaction() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise NotFound(f"no run {run_id!r}")
            trained = run.state == RunState.RUNNING and bool(run.final_model_sha256)
            if run.state != RunState.COMPLETED and not trained:
                raise FailedPrecondition(f"run {run_id} is {run.state.value}, not completed")
            involved = session.scalar(
                select(Task.id).where(Task.run_id == run_id, Task.node_id == node_id).limit(1)
            )
            if involved is None:
                raise PermissionDenied("this site took no part in that run")
            message = federation_pb2.Task(
                kind=federation_pb2.TASK_KIND_NONE,
                run_id=run.id,
                round=run.rounds + 1,
                config_json=json.dumps(
                    run.config
                    | {"model": run.model, "strategy": run.strategy}
                    | ({"schema": json.loads(run.data_schema)} if run.data_schema else {}),
                    default=str,
                ),
                secure=serde.scheme_to_proto(run.secure),
            )
            self._secure_fields(session, run, node_id, message)
            # The DP plan too: a site's run pin holds it, and site-level DP decodes by it.
            plan = privacy.plan_to_proto(run.config)
            if plan is not None:
                message.privacy.CopyFrom(plan)
            manifests.add_participants(session, run, message)
            self._attach_model(session, run, run.rounds + 1, message)
            auditlog.append(
                session,
                "model.exported",
                run_id=run.id,
                actor=node_id,
                details={"secure": run.secure},
            )
        return message

    @staticmethod
    def _attach_model(
        session: Session, run: Run, round_number: int, message: federation_pb2.Task
    ) -> None:
        """Plaintext: the latest global model. Secure: the initial model plus every aggregate."""
        versions = list(
            session.scalars(
                select(ModelVersion)
                .where(
                    ModelVersion.run_id == run.id,
                    ModelVersion.round < round_number,
                    ModelVersion.round >= 1,
                )
                .order_by(ModelVersion.round)
            )
        )
        if not scheme_of(run).encrypted:
            message.model_sha256 = (
                versions[-1].blob_sha256 if versions else (run.initial_model_sha256)
            )
            return
        message.model_sha256 = run.initial_model_sha256
        for version in versions:
            message.aggregates.add(
                round=version.round,
                sha256=version.blob_sha256,
                total_weight=version.total_weight,
                num_updates=version.num_updates,
                count=version.count,
            )
            manifests.add_contributions(session, run.id, message.aggregates[-1])

    def fetch_model(self, node_id: str, run_id: str, sha256: str) -> bytes:
        """A model blob of a run this node takes part in (never another run's)."""
        with self._granted_lock:
            granted = (run_id, node_id) in self._involved and (run_id, sha256) in self._models
        if not granted:
            self._check_fetch(node_id, run_id, sha256)
            with self._granted_lock:
                if len(self._involved) + len(self._models) >= 100_000:
                    self._involved.clear()
                    self._models.clear()
                self._involved.add((run_id, node_id))
                self._models.add((run_id, sha256))
        return self.hub.blobs.get(sha256)

    def _check_fetch(self, node_id: str, run_id: str, sha256: str) -> None:
        """NotFound or PermissionDenied unless the node may fetch ``sha256`` of ``run_id``."""
        with self.hub.db.transaction() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise NotFound(f"no run {run_id!r}")
            involved = session.scalar(
                select(Task.id).where(Task.run_id == run_id, Task.node_id == node_id).limit(1)
            )
            if involved is None:
                raise PermissionDenied("this node has no task in that run")
            known = bool(sha256) and (
                sha256 == run.initial_model_sha256
                or session.scalar(
                    select(ModelVersion.id)
                    .where(ModelVersion.run_id == run_id, ModelVersion.blob_sha256 == sha256)
                    .limit(1)
                )
                # A secure run's sites recompute each aggregate from the signed updates.
                or (scheme_of(run).encrypted and manifests.is_update_blob(session, run_id, sha256))
            )
            if not known:
                raise NotFound(f"run {run_id} has no model {sha256!r}")
