"""The operators' domain logic: runs, nodes, model download, the audit log."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coordinator import auditlog
from coordinator.errors import FailedPrecondition, InvalidArgument, NotFound
from coordinator.hub import Hub
from coordinator.metrics import CoordinatorMetrics
from coordinator.model_names import check_run_model
from coordinator.provenance import operator_schema
from coordinator.queries import cancel_open_tasks
from coordinator.runs import RunSpec
from coordinator.schema import (
    Enrolment,
    Institution,
    ModelKind,
    ModelVersion,
    Node,
    Round,
    Run,
    RunState,
    SiteAudit,
    Task,
    TaskKind,
    TaskState,
    Update,
)
from protos import admin_pb2, common_pb2

log = logging.getLogger(__name__)

_STATE_TO_PROTO = {
    RunState.PENDING: common_pb2.RUN_STATE_PENDING,
    RunState.RUNNING: common_pb2.RUN_STATE_RUNNING,
    RunState.COMPLETED: common_pb2.RUN_STATE_COMPLETED,
    RunState.FAILED: common_pb2.RUN_STATE_FAILED,
    RunState.STOPPED: common_pb2.RUN_STATE_STOPPED,
}
# A reply of the audit log stays well under gRPC's default 4 MiB message limit.
PAGE_BYTES = 3 << 20
_SECURE_FROM_PROTO = {
    common_pb2.SECURE_SCHEME_UNSPECIFIED: "none",
    common_pb2.SECURE_SCHEME_NONE: "none",
    common_pb2.SECURE_SCHEME_PAILLIER: "paillier",
}


def spec_from_request(request: admin_pb2.CreateRunRequest, actor: str) -> RunSpec:
    """Read a CreateRunRequest into a validated RunSpec (InvalidArgument otherwise)."""
    try:
        config = json.loads(request.config_json) if request.config_json else {}
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"config_json is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InvalidArgument("config_json must be a JSON object")
    if request.secure not in _SECURE_FROM_PROTO:
        raise InvalidArgument(f"unknown secure scheme {request.secure}")
    from coordinator.privacy import PRIVACY_KEY, plan_from_proto

    if PRIVACY_KEY in config:
        raise InvalidArgument("config_json may not set privacy: use the run's privacy plan")
    quorum = config.get("quorum", request.min_clients or 2)
    plan = plan_from_proto(
        request.privacy,
        _SECURE_FROM_PROTO[request.secure],
        # Site-level DP calibrates for the updates that close a round (scheduler's quorum).
        run_quorum=quorum if isinstance(quorum, int) and not isinstance(quorum, bool) else 0,
        max_clients=request.max_clients,
    )
    if plan is not None:
        config[PRIVACY_KEY] = plan
    # proto3 cannot tell 0 from unset: a run with no rounds is refused, never defaulted.
    spec = RunSpec(
        model=request.model,
        rounds=request.rounds,
        min_clients=request.min_clients or 2,
        max_clients=request.max_clients,
        fraction=request.fraction or 1.0,
        round_deadline=request.round_deadline_seconds or 300.0,
        local_epochs=request.local_epochs or 1,
        lr=request.lr or 0.01,
        secure=_SECURE_FROM_PROTO[request.secure],
        custodian=request.custodian,
        strategy=request.strategy or "fedavg",
        name=request.name,
        created_by=actor,
        config=config,
        allow_two_site_secure=request.allow_two_site_secure,
        threshold=request.threshold,
    )
    try:
        spec.validate()
        check_run_model(spec.model)
        operator_schema(spec.config)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidArgument(str(exc)) from exc
    return spec


class AdminService:
    """What operators and auditors may do. Raises a :class:`CohortError` on bad input."""

    def __init__(
        self, hub: Hub, enrolment_required: bool = False, metrics: CoordinatorMetrics | None = None
    ) -> None:
        self.hub = hub
        self.started = time.time()
        self.registry = metrics or CoordinatorMetrics(hub)
        # With auth on, sites exist only once enrolled; with it off any name may join.
        self.enrolment_required = enrolment_required

    def _check_custodian(self, session: Session, name: str) -> None:
        """INVALID_ARGUMENT unless ``name`` is a site the federation knows (see __init__)."""
        from protos.wire import SITE_NAME

        if not name:
            return
        if not SITE_NAME.fullmatch(name):
            raise InvalidArgument(f"custodian {name!r} is not a site name")
        if not self.enrolment_required:
            return
        known = session.scalar(select(Institution.id).where(Institution.name == name)) or (
            session.scalar(select(Enrolment.id).where(Enrolment.site_name == name).limit(1))
        )
        if not known:
            raise InvalidArgument(
                f"custodian {name!r} is not an enrolled site: enrol it with "
                f"`cohort admin sites enrol {name}` or name another site"
            )

    def create_run(self, spec: RunSpec) -> admin_pb2.RunInfo:
        """Store a run created from ``spec`` (already validated) and audit its creation."""
        run_id = str(uuid.uuid4())
        config = dict(spec.config)
        config.update(local_epochs=spec.local_epochs, lr=spec.lr)
        if spec.secure == "paillier":
            config["encoding"] = spec.encoding
        if spec.threshold:
            config["threshold"] = spec.threshold
        with self.hub.lock, self.hub.db.transaction() as session:
            self._check_custodian(session, spec.custodian)
            run = Run(
                id=run_id,
                name=spec.name,
                model=spec.model,
                rounds=spec.rounds,
                min_clients=spec.min_clients,
                max_clients=spec.max_clients,
                fraction=spec.fraction,
                round_deadline=spec.round_deadline,
                strategy=spec.strategy,
                secure=spec.secure,
                config=config,
                custodian=spec.custodian,
                created_by=spec.created_by,
                data_schema=operator_schema(spec.config),
            )
            session.add(run)
            session.flush()
            auditlog.append(
                session,
                "run.created",
                run_id=run_id,
                actor=spec.created_by,
                details={
                    "model": spec.model,
                    "rounds": spec.rounds,
                    "secure": spec.secure,
                    "strategy": spec.strategy,
                    "config_sha256": spec.config_sha256(),
                },
            )
            info = self._info(session, run)
        self.hub.notify()
        return info

    def list_runs(self) -> admin_pb2.ListRunsReply:
        """Every run, newest first, in brief."""
        with self.hub.db.transaction() as session:
            runs = session.scalars(select(Run).order_by(Run.created_at.desc())).all()
            return admin_pb2.ListRunsReply(runs=[self._info(session, r, brief=True) for r in runs])

    def get_run(self, run_id: str) -> admin_pb2.RunInfo:
        """One run in full; NotFound for an unknown id."""
        with self.hub.db.transaction() as session:
            return self._info(session, self._run(session, run_id))

    def stop_run(self, run_id: str, reason: str, actor: str) -> admin_pb2.RunInfo:
        """Stop a run that has not ended, cancel its open tasks, and audit who and why."""
        with self.hub.lock, self.hub.db.transaction() as session:
            run = self._run(session, run_id)
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

    def watch_run(
        self, run_id: str, is_active: Callable[[], bool] = lambda: True
    ) -> Iterator[admin_pb2.RunEvent]:
        """Yield a snapshot at once, then each time the run changes, until it has ended."""
        last = b""
        while is_active():
            info = self.get_run(run_id)
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
            self.hub.wait(1.0)

    def model_payload(self, run_id: str, round_number: int, actor: str) -> bytes:
        """The plaintext model of a round (0: the final one); refused for secure runs."""
        with self.hub.lock, self.hub.db.transaction() as session:
            run = self._run(session, run_id)
            if round_number == 0:
                if not run.final_model_sha256:
                    raise FailedPrecondition(
                        f"run {run_id} has no final model yet ({run.state.value})"
                    )
                version = session.scalar(
                    select(ModelVersion).where(
                        ModelVersion.run_id == run_id,
                        ModelVersion.blob_sha256 == run.final_model_sha256,
                    )
                )
            else:
                version = session.scalar(
                    select(ModelVersion).where(
                        ModelVersion.run_id == run_id, ModelVersion.round == round_number
                    )
                )
            if version is None:
                raise NotFound(f"run {run_id} has no model for round {round_number}")
            if version.kind == ModelKind.ENCRYPTED_AGGREGATE:
                raise FailedPrecondition(
                    "this is a secure run: the coordinator holds only encrypted aggregates; "
                    "a site exports the model with `cohort client export-model`"
                )
            auditlog.append(
                session,
                "model.downloaded",
                run_id=run_id,
                actor=actor,
                details={"round": version.round, "sha256": version.blob_sha256},
            )
            sha = version.blob_sha256
        return self.hub.blobs.get(sha)

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

    def audit_log(self, after_seq: int = 0, limit: int = 0) -> admin_pb2.AuditLog:
        """One page of the log: rows after ``after_seq``, at most ``limit`` (0: default).

        Pages keep every reply far under gRPC's 4 MiB message limit (rows are bounded to
        a few KiB by auditlog.append); ``more`` says whether to ask for the next page.
        """
        size = limit or auditlog.DEFAULT_PAGE_ROWS
        if size > auditlog.MAX_PAGE_ROWS:
            raise InvalidArgument(f"limit must be at most {auditlog.MAX_PAGE_ROWS} rows a page")
        with self.hub.db.transaction() as session:
            rows = auditlog.page(session, after_seq, size)
            head_seq, _ = auditlog.head(session)
        # And by bytes: rows are bounded (auditlog.MAX_DETAILS_CHARS) but many large ones
        # must still fit one reply; at least one row is always returned.
        budget, kept = PAGE_BYTES, 0
        for row in rows:
            budget -= len(row.details) + len(row.actor) + len(row.kind) + 256
            if kept and budget < 0:
                break
            kept += 1
        rows = rows[:kept]
        last = rows[-1].seq if rows else after_seq
        return admin_pb2.AuditLog(
            more=last < head_seq,
            head_seq=head_seq,
            entries=[
                admin_pb2.AuditEntry(
                    seq=r.seq,
                    time_unix=r.time,
                    run_id=r.run_id,
                    kind=r.kind,
                    actor=r.actor,
                    details_json=r.details,
                    prev_hash=r.prev_hash,
                    hash=r.hash,
                )
                for r in rows
            ],
        )

    def export_report(self, run_id: str, fmt: str, actor: str) -> bytes:
        """Render a run's compliance report and log that it was produced."""
        import tempfile
        from pathlib import Path

        from coordinator.report import facts_sha256, report_facts
        from explain.report import FORMATS, write_report

        if fmt not in FORMATS:
            raise InvalidArgument(f"report format must be one of {', '.join(FORMATS)}")
        with self.hub.db.transaction() as session:
            self._run(session, run_id)
        facts = report_facts(self.hub, run_id)
        # Equal for every build of a finished run's report (its generation time aside).
        facts_hash = facts_sha256(facts)
        if facts["run"]["state"] in ("completed", "failed", "stopped"):
            log.info("report of finished run %s: facts sha256 %s", run_id, facts_hash)
        with tempfile.TemporaryDirectory() as tmp:
            path = write_report(facts, fmt, Path(tmp) / f"report.{fmt}")
            data = path.read_bytes()
        with self.hub.lock, self.hub.db.transaction() as session:
            auditlog.append(
                session,
                "report.produced",
                run_id=run_id,
                actor=actor,
                details={
                    "format": fmt,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "facts_sha256": facts_hash,
                    "run_state": facts["run"]["state"],
                    "audit_log_verified": facts["audit_log"]["verified"],
                },
            )
        return data

    # -- views ---------------------------------------------------------------------------

    @staticmethod
    def _run(session: Session, run_id: str) -> Run:
        usable = run_id and len(run_id) <= 36 and "\x00" not in run_id
        run = session.get(Run, run_id) if usable else None
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        return run

    def _info(self, session: Session, run: Run, brief: bool = False) -> admin_pb2.RunInfo:
        info = admin_pb2.RunInfo(
            run_id=run.id,
            name=run.name,
            state=_STATE_TO_PROTO[run.state],
            model=run.model,
            rounds=run.rounds,
            current_round=run.current_round,
            min_clients=run.min_clients,
            secure=(
                common_pb2.SECURE_SCHEME_PAILLIER
                if run.secure == "paillier"
                else common_pb2.SECURE_SCHEME_NONE
            ),
            strategy=run.strategy,
            config_json=json.dumps(run.config, default=str),
            created_unix=run.created_at,
            started_unix=run.started_at,
            ended_unix=run.ended_at,
            failure_reason=run.failure_reason,
            key_fingerprint=run.key_fingerprint,
            custodian=run.custodian,
            final_model_sha256=run.final_model_sha256,
        )
        if brief:
            return info
        from coordinator.threshold import custody_info

        custody = custody_info(session, run)
        if custody is not None:
            info.threshold_custody.CopyFrom(custody)
        info.audits_received = int(
            session.scalar(
                select(func.count()).select_from(SiteAudit).where(SiteAudit.run_id == run.id)
            )
            or 0
        )
        rounds = session.scalars(
            select(Round).where(Round.run_id == run.id).order_by(Round.number)
        ).all()
        for rnd in rounds:
            selected = (
                session.scalar(
                    select(func.count())
                    .select_from(Task)
                    .where(
                        Task.run_id == run.id,
                        Task.round == rnd.number,
                        Task.kind == TaskKind.TRAIN,
                        Task.state != TaskState.CANCELLED,
                    )
                )
                or 0
            )
            received = session.execute(
                select(func.count(), func.coalesce(func.sum(Update.size), 0)).where(
                    Update.run_id == run.id, Update.round == rnd.number
                )
            ).one()
            info.round_infos.add(
                number=rnd.number,
                state=rnd.state.value,
                selected=int(selected),
                submitted=int(received[0]),
                total_weight=rnd.total_weight,
                metrics={k: float(v) for k, v in (rnd.metrics or {}).items()},
                opened_unix=rnd.opened_at,
                closed_unix=rnd.closed_at,
                model_sha256=rnd.model_sha256,
                bytes_received=int(received[1]),
            )
        from coordinator import refusals
        from coordinator.waiting import site_results, waiting_for

        refusals.add_refusals(session, run.id, info)
        now = time.time()
        info.waiting_for = waiting_for(session, run, now, self.hub.limits.offline_after_seconds)
        for site, audit, metrics in site_results(session, run, now):
            info.site_results.add(site_name=site, audit=audit, holdout_metrics=metrics)
        return info
