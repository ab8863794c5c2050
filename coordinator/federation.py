"""The federation's domain: the jobs a site's calls reach, and update intake.

Each job lives in its own module behind the one servicer (coordinator/services.py):
identity (coordinator/sites.py), task hand-out and model fetch (coordinator/handout.py),
keys and threshold partials (coordinator/keys.py), refusals, audits and ledger entries
(coordinator/statements.py). Update intake stays here, its stream limits and rejections
in coordinator/intake.py.
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import and_, bindparam, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coordinator import auditlog, intake, manifests, privacy, proofs
from coordinator.access import AccessControl
from coordinator.errors import (
    AlreadyExists,
    CohortError,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
)
from coordinator.handout import TaskHandout
from coordinator.hub import Hub
from coordinator.intake import UpdateIntake
from coordinator.keys import KeyRelay
from coordinator.queries import LIVE
from coordinator.schema import (
    ModelKind,
    ModelVersion,
    Round,
    RoundState,
    Run,
    RunState,
    Task,
    TaskKind,
    TaskState,
    Update,
)
from coordinator.schemes import check_tensors, scheme_of
from coordinator.sites import SiteRegistry
from coordinator.statements import SiteStatements
from protos import federation_pb2, serde, wire

SITE_NAME = wire.SITE_NAME

# Whether the task's site already sent an update for the task's round, in the same
# statement (a second SELECT per update before issue 14).
_SENT = (
    exists()
    .where(Update.run_id == Task.run_id, Update.round == Task.round, Update.node_id == Task.node_id)
    .label("sent")
)
_TASK_RUN_ROUND = (
    select(Task, Run, Round, _SENT)
    .join(Run, Run.id == Task.run_id)
    .outerjoin(Round, and_(Round.run_id == Task.run_id, Round.number == Task.round))
    .where(Task.id == bindparam("task_id"))
)


class FederationService:
    """What sites may do. Every method raises a :class:`CohortError` on bad input."""

    def __init__(self, hub: Hub, access: AccessControl | None = None) -> None:
        self.hub = hub
        self.access = access or AccessControl(hub, enabled=False)
        self.sites = SiteRegistry(hub, self.access)
        self.tasks = TaskHandout(hub)
        self.keys = KeyRelay(hub)
        self.statements = SiteStatements(hub)
        self.intake = UpdateIntake(hub)

    def submit_update(
        self, node_id: str, messages: Iterator[federation_pb2.UpdateMessage]
    ) -> federation_pb2.SubmitReply:
        """Take one update stream: header checks, bounded payload, scheme check, then one commit."""
        first = next(messages, None)
        if first is None or first.WhichOneof("msg") != "header":
            raise InvalidArgument("the first message of an update must be its header")
        header = first.header
        # Oversized ids are refused before anything is looked up or logged.
        intake.check_header_fields(header)
        try:
            with self.intake.stream(node_id, header.task_id):
                with self.hub.db.transaction() as session:
                    task, run = self._check_header(session, node_id, header)
                    task_kind = task.kind
                    intake.check_declared_size(run, task, header)
                    proof = proofs.proof_context(session, node_id, run, task, header)
                payload = intake.receive(header, messages)
                if proof is not None:
                    proofs.check_update(proof, header, payload)  # CPU: before the lock
                with self.hub.lock, self.hub.db.transaction() as session:
                    task, run = self._check_header(session, node_id, header, locked=True)
                    update_id = self._accept(session, node_id, task, run, header, payload)
        except CohortError as exc:
            self.intake.log_rejection(node_id, header, exc)
            raise
        self.hub.notify()
        kind = "initial weights" if task_kind == TaskKind.INIT else "update"
        return federation_pb2.SubmitReply(id=update_id, message=f"{kind} accepted")

    def _check_header(
        self,
        session: Session,
        node_id: str,
        header: federation_pb2.UpdateHeader,
        locked: bool = False,
    ) -> tuple[Task, Run]:
        """The header's task and run, or the error that refuses the update.

        Run twice: before the payload is read (so a bad header costs no bytes) and under
        the lock (``locked``), where the round may have moved meanwhile. The second time
        skips looking for an earlier update of the site's round: one accepted since the
        first check made this task DONE in the same commit (refused below), and the
        updates table's unique (run, round, node) refuses a duplicate at INSERT with the
        same error.
        """
        # The task, its run and its round in one statement (three, before issue 14).
        found = session.execute(_TASK_RUN_ROUND, {"task_id": header.task_id}).first()
        task, run, current, sent = found if found is not None else (None, None, None, False)
        if task is None or task.node_id != node_id:
            raise FailedPrecondition(f"no task {header.task_id!r} for this node")
        if task.kind not in (TaskKind.INIT, TaskKind.TRAIN):
            raise FailedPrecondition(f"task {task.id} is a {task.kind.value} task, not training")
        if header.run_id != task.run_id or header.round != task.round:
            raise FailedPrecondition(
                f"update names run {header.run_id} round {header.round}, but the task is for "
                f"run {task.run_id} round {task.round}"
            )
        assert run is not None
        if run.state != RunState.RUNNING:
            raise FailedPrecondition(f"run {run.id} is {run.state.value}, not running")
        if task.kind == TaskKind.TRAIN and not locked and sent:
            raise AlreadyExists(f"this site already sent its update for round {task.round}")
        if task.kind == TaskKind.TRAIN and (current is None or current.state != RoundState.OPEN):
            raise FailedPrecondition(f"round {task.round} is closed")
        if task.state not in LIVE:
            what = "already done" if task.state == TaskState.DONE else task.state.value
            if task.state == TaskState.DONE:
                raise AlreadyExists(f"task {task.id} is {what}")
            raise FailedPrecondition(f"task {task.id} is {what}: its round moved on")
        if header.payload_size > self.hub.limits.max_update_bytes:
            raise ResourceExhausted(
                f"update of {header.payload_size} bytes is over the "
                f"{self.hub.limits.max_update_bytes}-byte limit"
            )
        # A DP run's sites withhold their counts (0): coordinator/privacy.py withholds_counts.
        # Exactly 0: a count is a weight in plain FedAvg, and sites of a DP run weigh alike.
        if task.kind == TaskKind.TRAIN and privacy.withholds_counts(run):
            if header.num_examples != 0:
                raise InvalidArgument(
                    "num_examples must be 0 in a differentially private run: its sites "
                    "withhold their counts and weigh alike"
                )
        elif not 1 <= header.num_examples < 2**63:
            raise InvalidArgument("num_examples must be between 1 and 2^63 - 1")
        if any(v.WhichOneof("value") is None for v in header.metrics.values()):
            raise InvalidArgument("every metric must hold a value")
        expected = wire.TENSORS_FLOAT32
        if task.kind == TaskKind.TRAIN:
            expected = scheme_of(run).encoding(run)
        if header.encoding != expected:
            raise InvalidArgument(f"this run takes {expected!r} updates, not {header.encoding!r}")
        if (
            task.kind == TaskKind.TRAIN
            and run.base_model_sha256
            and header.base_model_sha256 != run.base_model_sha256
        ):
            raise FailedPrecondition(
                f"this site's frozen base model ({header.base_model_sha256[:12] or 'none'}) "
                f"differs from the run's ({run.base_model_sha256[:12]}): every site must "
                "build the same base model (same model, config, seed and LoRA settings)"
            )
        return task, run

    def _accept(
        self,
        session: Session,
        node_id: str,
        task: Task,
        run: Run,
        header: federation_pb2.UpdateHeader,
        payload: bytes,
    ) -> str:
        if task.kind == TaskKind.INIT:
            specs = check_tensors(payload, None)
            sha = self.hub.blobs.put(payload)
            run.initial_model_sha256 = sha
            run.base_model_sha256 = header.base_model_sha256
            run.tensor_specs = [{"dtype": s.dtype, "shape": list(s.shape)} for s in specs]
            session.add(
                ModelVersion(
                    run_id=run.id,
                    round=0,
                    kind=ModelKind.PLAINTEXT,
                    blob_sha256=sha,
                    size=len(payload),
                    count=sum(s.size for s in specs),
                )
            )
            task.state = TaskState.DONE
            auditlog.append(
                session,
                "model.initialised",
                run_id=run.id,
                actor=node_id,
                details={"model_sha256": sha, "tensors": len(specs)},
            )
            return sha
        weight = scheme_of(run).validate(session, run, task, header, payload)
        signature = manifests.check_update_signature(session, node_id, run, header, weight)
        sha = self.hub.blobs.put(payload)
        metrics = {k: serde.scalar_from_proto(v) for k, v in header.metrics.items()}
        update = Update(
            run_id=run.id,
            round=task.round,
            node_id=node_id,
            task_id=task.id,
            blob_sha256=sha,
            size=len(payload),
            encoding=header.encoding,
            num_examples=int(header.num_examples),
            weight=weight,
            metrics=metrics,
            signature=signature,
            plaintext_proof=bytes(header.plaintext_proof) if scheme_of(run).encrypted else b"",
        )
        session.add(update)
        try:
            session.flush()
        except IntegrityError as exc:
            raise AlreadyExists(
                f"this site already sent its update for round {task.round}"
            ) from exc
        task.state = TaskState.DONE
        auditlog.append(
            session,
            "update.accepted",
            run_id=run.id,
            actor=node_id,
            details={
                "round": task.round,
                "payload_sha256": sha,
                "bytes": len(payload),
                "num_examples": int(header.num_examples),
                "weight": weight,
                "encoding": header.encoding,
            },
        )
        return str(update.id)
