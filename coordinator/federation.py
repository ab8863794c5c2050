"""The federation's domain logic: joining, task hand-out, model fetch, update intake."""

from __future__ import annotations

import json
import math
import secrets
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import crypto
from coordinator import auditlog, identity, intake, manifests, refusals
from coordinator.access import AccessControl, hash_token, node_credential_problem
from coordinator.errors import (
    AlreadyExists,
    CohortError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from coordinator.hub import Hub
from coordinator.intake import UpdateIntake
from coordinator.schema import (
    Institution,
    ModelKind,
    ModelVersion,
    Node,
    Round,
    RoundState,
    Run,
    RunState,
    SealedKey,
    SiteAudit,
    Task,
    TaskKind,
    TaskState,
    Update,
)
from crypto import identity as crypto_identity
from protos import common_pb2, federation_pb2, wire

SITE_NAME = wire.SITE_NAME
_LIVE = (TaskState.PENDING, TaskState.DELIVERED)
_KIND_TO_PROTO = {
    TaskKind.INIT: federation_pb2.TASK_KIND_INIT,
    TaskKind.TRAIN: federation_pb2.TASK_KIND_TRAIN,
    TaskKind.KEYGEN: federation_pb2.TASK_KIND_KEYGEN,
    TaskKind.AUDIT: federation_pb2.TASK_KIND_AUDIT,
}


def weight_cap(run: Run, selected: int) -> int:
    """Largest weight one site may use so that the round's Σw can never pass max_weight."""
    max_weight = int(run.encoding()["max_weight"])
    return max(1, max_weight // max(selected, run.min_clients, 1))


class FederationService:
    """What sites may do. Every method raises a :class:`CohortError` on bad input."""

    def __init__(self, hub: Hub, access: AccessControl | None = None) -> None:
        self.hub = hub
        self.access = access or AccessControl(hub, enabled=False)
        self._last_refusal_logged = 0.0
        self.intake = UpdateIntake(hub)

    # -- identity ------------------------------------------------------------------------

    def join(self, request: federation_pb2.JoinRequest) -> federation_pb2.JoinReply:
        name = request.site_name.strip()
        if not SITE_NAME.match(name):
            raise InvalidArgument(
                "site name must be 1-128 letters, digits, '.', '_' or '-', starting with a "
                f"letter or digit; got {request.site_name!r}"
            )
        if len(request.agent_version) > 64 or "\x00" in request.agent_version:
            raise InvalidArgument("agent_version must be at most 64 characters")
        key = bytes(request.x25519_public_key)
        if key and len(key) != 32:
            raise InvalidArgument("x25519_public_key must be 32 raw bytes")
        ed25519 = bytes(request.ed25519_public_key)
        signature = bytes(request.x25519_signature)
        identity.check_join_identity(name, ed25519, key, signature)
        if request.node_token:
            self._check_rejoin(request.node_token, name, ed25519, key)
        with self.hub.lock, self.hub.db.transaction() as session:
            if request.node_token:
                node = self._node_for_token(session, request.node_token)
                if self._site(session, node) != name:
                    raise PermissionDenied("that node token belongs to another site")
                self._rejoin_keys(session, node, name, ed25519, key, signature)
                node.capabilities = dict(request.capabilities) or node.capabilities
                node.last_seen = time.time()
                auditlog.append(session, "site.rejoined", actor=node.id, details={"site": name})
                return self._join_reply(node.id, request.node_token)
            self.access.redeem(name, request.enrolment_token)
            institution = session.scalar(select(Institution).where(Institution.name == name))
            if institution is None:
                institution = Institution(name=name)
                session.add(institution)
                session.flush()
            # Identities this site's other nodes hold: a new one is a key change peers must
            # approve by pinning it again; until then they refuse it.
            known = {
                bytes(n.ed25519_public_key)
                for n in session.scalars(select(Node).where(Node.institution_id == institution.id))
                if n.ed25519_public_key
            }
            token = secrets.token_urlsafe(32)
            node = Node(
                id=str(uuid.uuid4()),
                institution_id=institution.id,
                token_hash=hash_token(token),
                x25519_public_key=key,
                ed25519_public_key=ed25519,
                x25519_signature=signature,
                agent_version=request.agent_version,
                capabilities=dict(request.capabilities),
            )
            session.add(node)
            session.flush()
            auditlog.append(
                session,
                "site.joined",
                actor=node.id,
                details={"site": name} | identity.identity_details(ed25519, key),
            )
            if known and ed25519 not in known:
                details: dict[str, object] = {
                    "site": name,
                    "reason": "a new node enrolled under this site with another identity",
                    "previous": sorted(crypto_identity.fingerprint(k) for k in known),
                }
                details.update(identity.identity_details(ed25519, key))
                auditlog.append(session, "site.key_changed", actor=node.id, details=details)
        self.hub.notify()
        return self._join_reply(node.id, token)

    def _check_rejoin(self, token: str, name: str, ed25519: bytes, key: bytes) -> None:
        """Refuse (and audit) a rejoin that presents another identity than the node's."""
        refusal: PermissionDenied | None = None
        with self.hub.lock, self.hub.db.transaction() as session:
            node = session.scalar(select(Node).where(Node.token_hash == hash_token(token)))
            if node is None:
                return  # the main transaction answers UNAUTHENTICATED
            try:
                identity.check_rejoin_identity(node, ed25519)
            except PermissionDenied as exc:
                refusal = exc
                # Written in its own transaction, so that the row outlives the refused call.
                auditlog.append(
                    session,
                    "site.identity_refused",
                    actor=node.id,
                    details={"site": name, "reason": str(exc)}
                    | identity.identity_details(ed25519, key),
                )
        if refusal is not None:
            raise refusal

    @staticmethod
    def _rejoin_keys(
        session: Session, node: Node, name: str, ed25519: bytes, key: bytes, signature: bytes
    ) -> None:
        """A rejoin keeps the node's identity; its sealing key changes only signed by it."""
        identity.check_rejoin_identity(node, ed25519)  # again, under the lock
        if not node.ed25519_public_key and ed25519:
            # A node that joined before identities existed registers its first one.
            node.ed25519_public_key = ed25519
            node.x25519_signature = signature if key else b""
            auditlog.append(
                session,
                "site.key_changed",
                actor=node.id,
                details={"site": name, "reason": "first identity registered"}
                | identity.identity_details(ed25519, key),
            )
        if key and key != bytes(node.x25519_public_key):
            if not node.ed25519_public_key:
                # Unsigned sealing keys change as before: such a node never joins a secure run.
                node.x25519_public_key = key
            else:
                # check_join_identity verified the signature against this same identity.
                node.x25519_public_key = key
                node.x25519_signature = signature
                auditlog.append(
                    session,
                    "site.key_changed",
                    actor=node.id,
                    details={"site": name, "reason": "new sealing key signed by the identity"}
                    | identity.identity_details(ed25519, key),
                )
        elif key and signature and bytes(node.x25519_signature) != signature:
            node.x25519_signature = signature

    def _join_reply(self, node_id: str, token: str) -> federation_pb2.JoinReply:
        return federation_pb2.JoinReply(
            node_id=node_id,
            node_token=token,
            heartbeat_interval_seconds=self.hub.limits.heartbeat_interval_seconds,
        )

    @staticmethod
    def _node_for_token(session: Session, token: str) -> Node:
        node = session.scalar(select(Node).where(Node.token_hash == hash_token(token)))
        if node is None:
            raise Unauthenticated("unknown node token: join the federation first")
        problem = node_credential_problem(node, time.time())
        if problem is not None:
            raise Unauthenticated(f"{problem}: ask the operator for `cohort admin sites enrol`")
        return node

    @staticmethod
    def _site(session: Session, node: Node) -> str:
        institution = session.get(Institution, node.institution_id)
        return institution.name if institution else ""

    def authenticate(self, token: str | None) -> str:
        """Return the node id for a bearer token and mark the node as seen."""
        try:
            if not token:
                raise Unauthenticated("missing node token: send 'authorization: Bearer <token>'")
            with self.hub.db.transaction() as session:
                node = self._node_for_token(session, token)
                now = time.time()
                # Now and then, in one batched write for all sites (hub.Presence): a commit
                # per RPC was most of the coordinator's commits (issue 14).
                if now - node.last_seen > min(5.0, self.hub.limits.offline_after_seconds / 4):
                    idle = self.hub.limits.node_token_idle_seconds
                    # Sliding expiry: a token in use stays good; an abandoned one lapses.
                    self.hub.presence.seen(node.id, now, now + idle if idle else 0.0)
                node_id = node.id
            self.hub.presence.flush(self.hub.db)
            return node_id
        except Unauthenticated as exc:
            # Logged at most once a second: a client without a token must not be able to
            # hold the coordinator's lock or grow the audit log at will.
            now = time.monotonic()
            if now - self._last_refusal_logged >= 1.0:
                self._last_refusal_logged = now
                with self.hub.lock, self.hub.db.transaction() as session:
                    auditlog.append(
                        session,
                        "auth.unauthenticated",
                        details={"service": "federation", "reason": str(exc)},
                    )
            raise

    def heartbeat(self, node_id: str) -> federation_pb2.HeartbeatReply:
        return federation_pb2.HeartbeatReply(server_time_unix=time.time())

    # -- tasks ---------------------------------------------------------------------------

    def pull_task(
        self, node_id: str, wait_seconds: float, is_active: Callable[[], bool] = lambda: True
    ) -> federation_pb2.Task:
        """Long poll: the node's oldest live task, or NONE once ``wait_seconds`` pass.

        Gives up early when the caller has gone or the coordinator is stopping, so an
        abandoned poll does not hold a server thread for its whole wait.
        """
        if math.isnan(wait_seconds):
            raise InvalidArgument("wait_seconds must be a number of seconds, not NaN")
        wait = min(max(wait_seconds, 0.0), self.hub.limits.max_poll_seconds)
        until = time.monotonic() + wait
        touched = time.monotonic()
        moved = True
        while True:
            if moved:
                # The database is asked again only when this node's tasks (or a run) moved.
                mark = self.hub.tasks.mark(node_id)
                with self.hub.lock, self.hub.db.transaction() as session:
                    task = self._next_task(session, node_id)
                    if task is not None:
                        message = self._task_message(session, task)
                        if task.state == TaskState.PENDING:
                            task.state = TaskState.DELIVERED
                            task.delivered_at = time.time()
                        return message
            remaining = until - time.monotonic()
            if remaining <= 0 or self.hub.closing.is_set() or not is_active():
                return federation_pb2.Task(kind=federation_pb2.TASK_KIND_NONE)
            moved = self.hub.tasks.wait(node_id, mark, min(remaining, 1.0))
            if time.monotonic() - touched > 5.0:
                # A parked poll is a sign of life; written now and then, not at every wake-up.
                touched = time.monotonic()
                self.hub.presence.seen(node_id, time.time())
            self.hub.presence.flush(self.hub.db)

    @staticmethod
    def _next_task(session: Session, node_id: str) -> Task | None:
        now = time.time()
        for task in session.scalars(
            select(Task)
            .where(Task.node_id == node_id, Task.state.in_(_LIVE))
            .order_by(Task.created_at)
        ):
            run = session.get(Run, task.run_id)
            if run is None or now >= task.deadline:
                continue
            if task.kind == TaskKind.AUDIT and run.state == RunState.COMPLETED:
                return task
            if run.state == RunState.RUNNING:
                return task
        return None

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
            secure=(
                common_pb2.SECURE_SCHEME_PAILLIER
                if run.secure == "paillier"
                else common_pb2.SECURE_SCHEME_NONE
            ),
        )
        self._secure_fields(session, run, task.node_id, message)
        if task.kind == TaskKind.KEYGEN:
            # The custodian deals the key, so the task names it, even before a statement.
            node = session.get(Node, task.node_id)
            message.custodian = run.custodian or (self._site(session, node) if node else "")
        if task.kind == TaskKind.TRAIN:
            selected = len(
                session.scalars(
                    select(Task.id).where(
                        Task.run_id == run.id, Task.round == task.round, Task.kind == TaskKind.TRAIN
                    )
                ).all()
            )
            config["weight_cap"] = weight_cap(run, selected)
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
        if run.secure != "paillier":
            return
        enc = run.encoding()
        message.encoding.CopyFrom(
            common_pb2.EncodingParams(
                clip=float(enc["clip"]),
                bits=int(enc["bits"]),
                max_weight=int(enc["max_weight"]),
                key_bits=int(enc["key_bits"]),
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
                secure=(
                    common_pb2.SECURE_SCHEME_PAILLIER
                    if run.secure == "paillier"
                    else common_pb2.SECURE_SCHEME_NONE
                ),
            )
            self._secure_fields(session, run, node_id, message)
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
        if run.secure != "paillier":
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

    def refuse(
        self, node_id: str, refusal: federation_pb2.TaskRefusal
    ) -> federation_pb2.SubmitReply:
        """A site said no to one of its tasks (coordinator.refusals says what follows)."""
        with self.hub.lock, self.hub.db.transaction() as session:
            node = session.get(Node, node_id)
            assert node is not None
            reply = refusals.refuse_task(session, node_id, self._site(session, node), refusal)
        self.hub.notify()
        return reply

    # -- models --------------------------------------------------------------------------

    def fetch_model(self, node_id: str, run_id: str, sha256: str) -> bytes:
        """A model blob of a run this node takes part in (never another run's)."""
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
                or (run.secure == "paillier" and manifests.is_update_blob(session, run_id, sha256))
            )
            if not known:
                raise NotFound(f"run {run_id} has no model {sha256!r}")
        return self.hub.blobs.get(sha256)

    # -- updates -------------------------------------------------------------------------

    def submit_update(
        self, node_id: str, messages: Iterator[federation_pb2.UpdateMessage]
    ) -> federation_pb2.SubmitReply:
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
                payload = intake.receive(header, messages)
                with self.hub.lock, self.hub.db.transaction() as session:
                    task, run = self._check_header(session, node_id, header)
                    update_id = self._accept(session, node_id, task, run, header, payload)
        except CohortError as exc:
            self.intake.log_rejection(node_id, header, exc)
            raise
        self.hub.notify()
        kind = "initial weights" if task_kind == TaskKind.INIT else "update"
        return federation_pb2.SubmitReply(id=update_id, message=f"{kind} accepted")

    def _check_header(
        self, session: Session, node_id: str, header: federation_pb2.UpdateHeader
    ) -> tuple[Task, Run]:
        task = session.get(Task, header.task_id)
        if task is None or task.node_id != node_id:
            raise FailedPrecondition(f"no task {header.task_id!r} for this node")
        if task.kind not in (TaskKind.INIT, TaskKind.TRAIN):
            raise FailedPrecondition(f"task {task.id} is a {task.kind.value} task, not training")
        if header.run_id != task.run_id or header.round != task.round:
            raise FailedPrecondition(
                f"update names run {header.run_id} round {header.round}, but the task is for "
                f"run {task.run_id} round {task.round}"
            )
        run = session.get(Run, task.run_id)
        assert run is not None
        if run.state != RunState.RUNNING:
            raise FailedPrecondition(f"run {run.id} is {run.state.value}, not running")
        if task.kind == TaskKind.TRAIN:
            exists = session.scalar(
                select(Update.id).where(
                    Update.run_id == run.id, Update.round == task.round, Update.node_id == node_id
                )
            )
            if exists is not None:
                raise AlreadyExists(f"this site already sent its update for round {task.round}")
            current = session.scalar(
                select(Round).where(Round.run_id == run.id, Round.number == task.round)
            )
            if current is None or current.state != RoundState.OPEN:
                raise FailedPrecondition(f"round {task.round} is closed")
        if task.state not in _LIVE:
            what = "already done" if task.state == TaskState.DONE else task.state.value
            if task.state == TaskState.DONE:
                raise AlreadyExists(f"task {task.id} is {what}")
            raise FailedPrecondition(f"task {task.id} is {what}: its round moved on")
        if header.payload_size > self.hub.limits.max_update_bytes:
            raise ResourceExhausted(
                f"update of {header.payload_size} bytes is over the "
                f"{self.hub.limits.max_update_bytes}-byte limit"
            )
        if not 1 <= header.num_examples < 2**63:
            raise InvalidArgument("num_examples must be between 1 and 2^63 - 1")
        if any(v.WhichOneof("value") is None for v in header.metrics.values()):
            raise InvalidArgument("every metric must hold a value")
        expected = wire.TENSORS_FLOAT32
        if task.kind == TaskKind.TRAIN and run.secure == "paillier":
            expected = wire.PAILLIER_PACKED
        elif task.kind == TaskKind.TRAIN and wire.update_quantisation(run.config):
            expected = wire.TENSORS_Q8
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
            specs = self._check_tensors(payload, None)
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
        if run.secure == "paillier":
            weight = self._check_ciphertexts(session, run, task, header, payload)
        else:
            self._check_tensors(payload, run, quantised=header.encoding == wire.TENSORS_Q8)
            weight = int(header.num_examples)
        signature = manifests.check_update_signature(session, node_id, run, header, weight)
        sha = self.hub.blobs.put(payload)
        metrics = {k: wire.scalar_from_proto(v) for k, v in header.metrics.items()}
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

    @staticmethod
    def _check_tensors(
        payload: bytes, run: Run | None, quantised: bool = False
    ) -> list[wire.TensorSpec]:
        try:
            specs = wire.tensor_specs(payload)
        except wire.PayloadError as exc:
            raise InvalidArgument(f"update is not a tensor payload: {exc}") from exc
        allowed = ("int8", "float32") if quantised else ("float32", "float64", "float16")
        if any(s.dtype not in allowed for s in specs):
            raise InvalidArgument(f"update tensors must be {' or '.join(allowed)}")
        if quantised:
            try:
                crypto.decompress_update(wire.decode_tensors(payload), 8)
            except ValueError as exc:
                raise InvalidArgument(f"bad quantised update: {exc}") from exc
            specs = specs[:-1]  # the last tensor is the per-tensor scales
        if run is not None:
            expected = run.model_shapes()
            got = [(s.dtype, s.shape) for s in specs]
            if len(got) != len(expected):
                raise InvalidArgument(
                    f"update has {len(got)} tensors, the model has {len(expected)}"
                )
            for index, (have, want) in enumerate(zip(got, expected, strict=True)):
                if have[1] != want[1]:
                    raise InvalidArgument(
                        f"tensor {index} has shape {list(have[1])}, the model's is {list(want[1])}"
                    )
        arrays = wire.decode_tensors(payload)
        if not all(np.isfinite(a).all() for a in arrays if a.dtype.kind == "f"):
            raise InvalidArgument("update holds NaN or infinite values")
        return specs

    def _check_ciphertexts(
        self,
        session: Session,
        run: Run,
        task: Task,
        header: federation_pb2.UpdateHeader,
        payload: bytes,
    ) -> int:
        if header.key_id != run.key_id:
            raise FailedPrecondition(
                f"update is encrypted under key {header.key_id!r}; this run's key is {run.key_id!r}"
            )
        enc = run.encoding()
        selected = len(
            session.scalars(
                select(Task.id).where(
                    Task.run_id == run.id, Task.round == task.round, Task.kind == TaskKind.TRAIN
                )
            ).all()
        )
        cap = weight_cap(run, selected)
        weight = int(header.weight)
        if not 1 <= weight <= cap:
            raise InvalidArgument(f"weight {weight} is outside 1..{cap} for this round")
        accepted = sum(
            session.scalars(
                select(Update.weight).where(Update.run_id == run.id, Update.round == task.round)
            ).all()
        )
        if accepted + weight > int(enc["max_weight"]):
            raise InvalidArgument(
                f"total weight {accepted + weight} would pass the slot bound {enc['max_weight']}"
            )
        public_key = crypto.public_key_from_bytes(run.public_key)
        codec = crypto.SlotCodec(
            clip=float(enc["clip"]),
            bits=int(enc["bits"]),
            max_weight=int(enc["max_weight"]),
            key_bits=public_key.n.bit_length(),
        )
        count = run.value_count()
        width = crypto.ciphertext_width(public_key)
        expected = codec.num_plaintexts(count)
        if len(payload) != expected * width:
            raise InvalidArgument(
                f"update holds {len(payload) / width:.1f} ciphertexts; the model needs {expected}"
            )
        try:
            ciphertexts = crypto.ciphertexts_from_bytes(payload, width)
            crypto.validate_ciphertexts(ciphertexts, public_key)
        except ValueError as exc:
            raise InvalidArgument(f"bad ciphertext: {exc}") from exc
        return weight

    # -- keys and audits -----------------------------------------------------------------

    def submit_keys(
        self, node_id: str, bundle: federation_pb2.KeyBundle
    ) -> federation_pb2.SubmitReply:
        with self.hub.lock, self.hub.db.transaction() as session:
            task = session.get(Task, bundle.task_id)
            if task is None or task.node_id != node_id or task.kind != TaskKind.KEYGEN:
                raise FailedPrecondition("this node holds no key-generation task by that id")
            if task.state not in _LIVE or bundle.run_id != task.run_id:
                raise FailedPrecondition("that key-generation task is no longer open")
            run = session.get(Run, task.run_id)
            assert run is not None
            if run.public_key:
                raise AlreadyExists("this run already has its key")
            try:
                public_key = crypto.public_key_from_bytes(bytes(bundle.public_key))
            except ValueError as exc:
                raise InvalidArgument(f"unreadable public key: {exc}") from exc
            want_bits = int(run.encoding()["key_bits"])
            if public_key.n.bit_length() < want_bits - 1:
                raise InvalidArgument(
                    f"key has {public_key.n.bit_length()} bits; the run asks for {want_bits}"
                )
            fingerprint = crypto.key_fingerprint(public_key)
            if bundle.key_fingerprint and bundle.key_fingerprint != fingerprint:
                raise InvalidArgument("key fingerprint does not match the public key")
            # Keys go to the run's fixed participants only, never to whoever is online.
            known = set(run.participants)
            sealed_for: list[str] = []
            for item in bundle.sealed:
                if item.node_id in sealed_for:
                    raise InvalidArgument(f"two sealed keys for node {item.node_id!r}")
                if item.node_id not in known or not item.sealed_private_key:
                    raise InvalidArgument(
                        f"sealed key for node {item.node_id!r}, not a participant of the run"
                    )
                sealed_for.append(item.node_id)
            if len(sealed_for) < run.min_clients:
                raise InvalidArgument(
                    f"keys sealed for {len(sealed_for)} sites; the run needs {run.min_clients}"
                )
            custodian = session.get(Node, node_id)
            assert custodian is not None
            dealing = identity.check_key_statement(
                session, run, custodian, bundle.statement, fingerprint, sealed_for
            )
            for item in bundle.sealed:
                session.add(
                    SealedKey(
                        run_id=run.id, node_id=item.node_id, sealed=bytes(item.sealed_private_key)
                    )
                )
            run.key_statement = bytes(bundle.statement.statement)
            run.key_statement_signature = bytes(bundle.statement.signature)
            run.public_key = bytes(bundle.public_key)
            run.key_id = crypto.key_id(public_key)
            run.key_fingerprint = fingerprint
            task.state = TaskState.DONE
            auditlog.append(
                session,
                "key.registered",
                run_id=run.id,
                actor=node_id,
                details={
                    "key_id": run.key_id,
                    "fingerprint": fingerprint,
                    "key_bits": public_key.n.bit_length(),
                    "sealed_for": sorted(sealed_for),
                    "custodian": dealing.custodian,
                    "custodian_fingerprint": dealing.custodian_fingerprint,
                    "recipients": {r.site: r.fingerprint for r in dealing.recipients},
                    "statement_sha256": wire.sha256_hex(run.key_statement),
                },
            )
        self.hub.notify()
        return federation_pb2.SubmitReply(id=run.key_id, message="key registered")

    def submit_audit(
        self, node_id: str, submission: federation_pb2.AuditSubmission
    ) -> federation_pb2.SubmitReply:
        if len(submission.summary_json) > self.hub.limits.max_audit_bytes:
            raise ResourceExhausted("audit summary is over the size limit")
        try:
            summary = json.loads(submission.summary_json)
        except (ValueError, RecursionError) as exc:
            raise InvalidArgument(f"audit summary is not JSON: {exc}") from exc
        if not isinstance(summary, dict):
            raise InvalidArgument("audit summary must be a JSON object")
        try:
            from explain.summary import AttributionSummary

            AttributionSummary.from_dict(summary)
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise InvalidArgument(f"audit summary is malformed: {exc}") from exc
        with self.hub.lock, self.hub.db.transaction() as session:
            task = session.get(Task, submission.task_id)
            if task is None or task.node_id != node_id or task.kind != TaskKind.AUDIT:
                raise FailedPrecondition("this node holds no audit task by that id")
            if task.run_id != submission.run_id:
                raise FailedPrecondition("the audit names another run than its task")
            if task.state == TaskState.DONE:
                raise AlreadyExists("this site already sent its audit for the run")
            session.add(SiteAudit(run_id=task.run_id, node_id=node_id, summary=summary))
            task.state = TaskState.DONE
            auditlog.append(
                session,
                "audit.submitted",
                run_id=task.run_id,
                actor=node_id,
                details={
                    "rows": summary.get("row_count"),
                    "sha256": wire.sha256_hex(submission.summary_json.encode()),
                },
            )
        self.hub.notify()
        return federation_pb2.SubmitReply(id=task.id, message="audit stored")
