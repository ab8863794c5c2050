"""Run creation: an operator's CreateRunRequest read, checked once, stored and audited.

:func:`spec_from_request` turns the request into a validated ``RunSpec`` (its config
parsed into a typed ``RunConfig``, coordinator/runs.py); :class:`RunCreation` stores it.
Nothing is stored for a request that fails a check.
"""

from __future__ import annotations

import json
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator import auditlog
from coordinator.errors import InvalidArgument
from coordinator.hub import Hub
from coordinator.model_names import check_run_model
from coordinator.provenance import operator_schema
from coordinator.run_views import run_info
from coordinator.runs import RunConfig, RunSpec
from coordinator.schema import Enrolment, Institution, Run
from explain.facts import config_sha256
from protos import admin_pb2, serde
from protos.serde import SchemeName


def spec_from_request(request: admin_pb2.CreateRunRequest, actor: str) -> RunSpec:
    """Read a CreateRunRequest into a validated RunSpec (InvalidArgument otherwise)."""
    try:
        config = serde.config_from_json(request.config_json)
        secure = serde.scheme_from_proto(request.secure)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc
    from coordinator.privacy import PRIVACY_KEY, plan_from_proto

    if PRIVACY_KEY in config:
        raise InvalidArgument("config_json may not set privacy: use the run's privacy plan")
    try:
        # Site-level DP calibrates for the updates that close a round (the run's quorum).
        settings = RunConfig.parse(config, request.min_clients or 2, secure is SchemeName.PAILLIER)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidArgument(str(exc)) from exc
    plan = plan_from_proto(
        request.privacy, secure, run_quorum=settings.quorum, max_clients=request.max_clients
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
        secure=secure,
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


class RunCreation:
    """Stores validated runs; with enrolment required, a custodian must be a known site."""

    def __init__(self, hub: Hub, enrolment_required: bool = False) -> None:
        self.hub = hub
        # With auth on, sites exist only once enrolled; with it off any name may join.
        self.enrolment_required = enrolment_required

    def _check_custodian(self, session: Session, name: str) -> None:
        """INVALID_ARGUMENT unless ``name`` is a site the federation knows (see the constructor)."""
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

    def create(self, spec: RunSpec) -> admin_pb2.RunInfo:
        """Store a run created from ``spec`` (already validated) and audit its creation."""
        run_id = str(uuid.uuid4())
        config = dict(spec.config)
        config.update(local_epochs=spec.local_epochs, lr=spec.lr)
        if spec.secure == SchemeName.PAILLIER:
            config["encoding"] = spec.settings().encoding.as_dict()
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
                    # What the report prints as its configuration sha256 (report_chain.py).
                    "config_json_sha256": config_sha256(
                        json.loads(json.dumps(config, default=str))
                    ),
                },
            )
            info = run_info(session, run, self.hub.limits.offline_after_seconds)
        self.hub.notify()
        return info
